//! The one way the integration tests and the benchmark start processes: [`daemon`] writes a
//! config into a temp dir and runs `svid-broker run` on it; [`spire`] runs a SPIRE server and
//! agent on another. Each is a builder of options plus a handle that stops what it started
//! when it drops.

pub mod daemon;
pub mod spire;

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a test that needs root runs: as root it does; otherwise it fails saying so, unless
/// `SVID_BROKER_TESTS_NOT_ROOT=1` skips it explicitly. `what` completes "this test …". Shared by
/// the crate's unit tests and the integration tests.
pub fn root_or_opt_out(what: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    if std::env::var_os("SVID_BROKER_TESTS_NOT_ROOT").is_some_and(|v| v == "1") {
        eprintln!("SVID_BROKER_TESTS_NOT_ROOT=1: skipping a test that {what}");
        return false;
    }
    panic!(
        "this test {what}, which needs root. Run it as root, or set \
         SVID_BROKER_TESTS_NOT_ROOT=1 to skip it explicitly"
    );
}

/// The workspace root (where `target/` and `tests/peers/` are).
pub fn workspace_root() -> &'static std::path::Path {
    // Two levels up, without `..` components: peers are registered by their path as
    // `/proc/<pid>/exe` shows it.
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap_or(crate_dir)
}
