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
    Ok(())
}
