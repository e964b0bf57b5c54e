//! The real `svid-broker` daemon for integration tests, started by the one launcher in
//! `svid_broker_test_support::daemon` (see there), plus what only these tests need: the CLI
//! run against a socket and the Python peers. Include it with
//!
//! ```ignore
//! #[path = "support/daemon.rs"]
//! mod daemon;
//! use daemon::{Daemon, DaemonConfig};
//!
//! let d = Daemon::start(DaemonConfig::new().entry_for_me("spiffe://example.org/test"));
//! let out = d.cli(&["api", "fetch", "jwt", "--audience", "a"]);
//! ```
//!
//! The trust domain is `example.org`. Nothing is written outside the temp dir. When a test
//! panics, the daemon's log is printed as the value drops.
//!
//! The Python peers come from `scripts/install-peers.sh`; [`venv_python`] and [`venv_bin`]
//! find them or panic saying how to install them: a missing peer is a failure, never a skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

// Each test file uses its own part of this module.
#[allow(unused_imports)]
pub use svid_broker_test_support::daemon::{
    euid, strip_ansi, Daemon, DaemonConfig, Entry, START_TIMEOUT, STOP_TIMEOUT, TRUST_DOMAIN,
};

/// The `svid-broker` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_svid-broker")
}

/// Starts `svid-broker run --config FILE` with its output in `log`, as [`Daemon`] does, without
/// waiting (for configs the daemon must refuse).
pub fn spawn_daemon(config: &Path, log: &Path) -> Child {
    DaemonConfig::new().binary(bin()).spawn(config, log)
}

/// Runs the CLI with `SPIFFE_ENDPOINT_SOCKET=endpoint`.
pub fn cli_with_endpoint(endpoint: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .stdin(Stdio::null())
        .output()
        .expect("run svid-broker")
}

/// The venv that `scripts/install-peers.sh` creates: `$SVID_BROKER_VENV`, else `<repo>/.venv`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("SVID_BROKER_VENV") {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                p
            } else {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
            }
        }
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"),
    }
}

/// A program installed in the venv (`python`, `buf`).
///
/// # Panics
/// It is not there: run `scripts/install-peers.sh`.
pub fn venv_bin(name: &str) -> PathBuf {
    let path = venv_dir().join("bin").join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run scripts/install-peers.sh (it installs the Python test peers into \
             $SVID_BROKER_VENV, default <repo>/.venv); this test needs them and does not skip",
            path.display()
        );
    }
    path
}

/// The venv's python, with the peers installed.
///
/// # Panics
/// Missing venv: run `scripts/install-peers.sh`.
pub fn venv_python() -> PathBuf {
    venv_bin("python")
}

/// Runs the Python peer `tests/peers/python/<script>` with `args`, pointed at the Workload API
/// at `endpoint`, and returns the one JSON object it prints.
///
/// # Panics
/// The venv is missing, or the peer fails or prints something else: the panic shows its output.
pub fn python_peer(script: &str, args: &[&str], endpoint: &str) -> serde_json::Value {
    let out = Command::new(venv_python())
        .arg(peer_file(&format!("python/{script}")))
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{script} printed no JSON object ({e}):\n{stdout}"))
}

/// A program on PATH, or a panic with how to install it.
pub fn require_tool(name: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found on PATH: {hint}; this test needs it and does not skip");
}

/// A file of a test peer under `tests/peers/`.
pub fn peer_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(rel)
}
