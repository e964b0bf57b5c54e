//! Helpers shared by the crate's unit tests.

/// Whether a test that needs root runs: as root it does; otherwise it fails saying so, unless
/// `SVID_BROKER_TESTS_NOT_ROOT=1` skips it explicitly. `what` completes "this test …".
pub(crate) fn root_or_opt_out(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
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
