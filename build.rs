//! Compiles every proto under `proto/` with protox (pure Rust), so no system `protoc` is needed.

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/workload.proto",
    "proto/svidbroker/v1/broker.proto",
    "proto/svidbroker/v1/admin.proto",
    "proto/spire/api/types/types.proto",
    "proto/spire/api/agent/delegatedidentity/v1/delegatedidentity.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by the reflection service so grpcurl / buf curl need no proto files. SPIRE's APIs
    // are only called, never served: keep them out.
    let mut served = descriptors.clone();
    served.file.retain(|f| !f.package().starts_with("spire."));
    std::fs::write(
        out_dir.join("svid_broker_descriptor.bin"),
        served.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // prost's codec with small buffers: a stream keeps its buffer while open (src/proto/codec.rs).
        .codec_path("crate::proto::codec::SmallBufferCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    order_text_for_release();
    Ok(())
}

/// Lays out the release daemon's functions in the order `link/svid-broker.order` gives: what
/// start-up and an idle daemon run first, then the serving path. The kernel maps a code page
/// fault's whole 64 KiB neighbourhood, so start-up code spread over the text made an idle
/// daemon map most of it (BENCHMARKS.md, "idle RSS is the code start-up touched").
/// `scripts/text-order.sh` writes the file; names it lists that a build no longer has are
/// skipped, so a stale list only costs memory.
///
/// `--symbol-ordering-file` is lld's. It is passed only to release-like builds whose linker is
/// known to be the toolchain's own lld, and `SVID_BROKER_NO_TEXT_ORDER=1` leaves it out.
fn order_text_for_release() {
    const ORDER: &str = "link/svid-broker.order";
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=SVID_BROKER_NO_TEXT_ORDER");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let opted_out = std::env::var_os("SVID_BROKER_NO_TEXT_ORDER").is_some_and(|v| v == "1");
    if !release || opted_out || !links_with_bundled_lld() {
        return;
    }
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let order = std::path::Path::new(&dir).join(ORDER);
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=svid-broker=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=svid-broker=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links this build with the lld it ships: rustup's toolchains do so for
/// x86_64-unknown-linux-gnu since Rust 1.90, through `gcc-ld/ld.lld` in the sysroot. A
/// toolchain built without it (some distributions') links with the system's GNU ld, and a
/// build that picks its own linker in its flags may too: both are left alone.
fn links_with_bundled_lld() -> bool {
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") || flags.contains("self-contained") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let ask = |arg: &str| -> Option<String> {
        let out = std::process::Command::new(&rustc).arg(arg).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)": the minor version of the 1.x line.
    let minor = ask("-V").and_then(|v| {
        let version = v.split_whitespace().nth(1)?.to_string();
        version.split('.').nth(1)?.parse::<u32>().ok()
    });
    let Some(sysroot) = ask("--print=sysroot") else {
        return false;
    };
    let bundled = std::path::Path::new(&sysroot)
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
        .is_file();
    minor.is_some_and(|m| m >= 90) && bundled
}
