//! The real `svid-broker` daemon for integration tests: a config written into a temp dir, the
//! binary started on its own temp socket, and stopped (SIGTERM, then SIGKILL after a bound) when
//! the [`Daemon`] drops. Include it with
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
//! Dropping a [`Daemon`] blocks the thread until the daemon has exited. In an async test, use
//! `#[tokio::test(flavor = "multi_thread")]`: on a current-thread runtime the test's own gRPC
//! connections cannot answer the daemon's GOAWAY while the drop blocks, so the daemon waits out
//! its whole `shutdown_grace`.
//!
//! The Python peers come from `scripts/install-peers.sh`; [`venv_python`] and [`venv_bin`]
//! find them or panic saying how to install them: a missing peer is a failure, never a skip.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const TRUST_DOMAIN: &str = "example.org";
/// How long the daemon may take to answer on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The `svid-broker` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_svid-broker")
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// One `[[entry]]`.
#[derive(Clone, Debug)]
pub struct Entry {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    pub x509_ttl: Option<String>,
    pub jwt_ttl: Option<String>,
    pub hint: Option<String>,
}

impl Entry {
    pub fn new(spiffe_id: &str, selectors: &[&str]) -> Self {
        Self {
            spiffe_id: spiffe_id.to_string(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            x509_ttl: None,
            jwt_ttl: None,
            hint: None,
        }
    }

    pub fn x509_ttl(mut self, ttl: &str) -> Self {
        self.x509_ttl = Some(ttl.to_string());
        self
    }

    pub fn jwt_ttl(mut self, ttl: &str) -> Self {
        self.jwt_ttl = Some(ttl.to_string());
        self
    }

    pub fn hint(mut self, hint: &str) -> Self {
        self.hint = Some(hint.to_string());
        self
    }
}

/// A config for the daemon, written as TOML by [`Daemon::start`].
#[derive(Clone, Debug, Default)]
pub struct DaemonConfig {
    pub entries: Vec<Entry>,
    pub ca_ttl: Option<String>,
    pub jwt_key_ttl: Option<String>,
    pub shutdown_grace: Option<String>,
    /// Persist keys under `<tempdir>/data` (else memory only).
    pub data_dir: bool,
    /// Appended verbatim (top-level keys must come before any table: use tables here).
    pub extra_toml: String,
}

impl DaemonConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// An entry that this test process (and its children) match: `unix:uid:<euid>`.
    pub fn entry_for_me(self, spiffe_id: &str) -> Self {
        let uid = format!("unix:uid:{}", euid());
        self.entry(Entry::new(spiffe_id, &[&uid]))
    }

    pub fn ca_ttl(mut self, ttl: &str) -> Self {
        self.ca_ttl = Some(ttl.to_string());
        self
    }

    pub fn jwt_key_ttl(mut self, ttl: &str) -> Self {
        self.jwt_key_ttl = Some(ttl.to_string());
        self
    }

    pub fn shutdown_grace(mut self, grace: &str) -> Self {
        self.shutdown_grace = Some(grace.to_string());
        self
    }

    pub fn data_dir(mut self, on: bool) -> Self {
        self.data_dir = on;
        self
    }

    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// The TOML text for a daemon whose files live in `dir`.
    pub fn render(&self, dir: &Path, socket: &Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut t = format!(
            "trust_domain = {}\nsocket_path = {}\n",
            q(TRUST_DOMAIN),
            q(&socket.display().to_string())
        );
        if self.data_dir {
            t += &format!(
                "data_dir = {}\n",
                q(&dir.join("data").display().to_string())
            );
        }
        if let Some(g) = &self.shutdown_grace {
            t += &format!("shutdown_grace = {}\n", q(g));
        }
        if self.ca_ttl.is_some() || self.jwt_key_ttl.is_some() {
            t += "\n[authority]\n";
            if let Some(v) = &self.ca_ttl {
                t += &format!("ca_ttl = {}\n", q(v));
            }
            if let Some(v) = &self.jwt_key_ttl {
                t += &format!("jwt_key_ttl = {}\n", q(v));
            }
        }
        for e in &self.entries {
            t += "\n[[entry]]\n";
            t += &format!("spiffe_id = {}\n", q(&e.spiffe_id));
            let sels: Vec<String> = e.selectors.iter().map(|s| q(s)).collect();
            t += &format!("selectors = [{}]\n", sels.join(", "));
            if let Some(v) = &e.x509_ttl {
                t += &format!("x509_ttl = {}\n", q(v));
            }
            if let Some(v) = &e.jwt_ttl {
                t += &format!("jwt_ttl = {}\n", q(v));
            }
            if let Some(v) = &e.hint {
                t += &format!("hint = {}\n", q(v));
            }
        }
        if !self.extra_toml.is_empty() {
            t += "\n";
            t += &self.extra_toml;
        }
        t
    }
}

/// A running daemon.
pub struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Writes the config, starts the daemon and waits until its socket answers.
    ///
    /// # Panics
    /// The daemon exits or does not answer within [`START_TIMEOUT`]; the log is in the message.
    pub fn start(config: DaemonConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("svid-broker-test.")
            .tempdir()
            .expect("create a temp dir");
        let socket = dir.path().join("api.sock");
        Self::start_in(dir, socket, &config)
    }

    /// Like [`Daemon::start`], with the socket at a path the caller chose (inside `dir`).
    pub fn start_in(dir: tempfile::TempDir, socket: PathBuf, config: &DaemonConfig) -> Self {
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config.render(dir.path(), &socket)).expect("write config");
        let log_path = dir.path().join("daemon.log");
        let child = spawn_daemon(&config_path, &log_path);
        let mut d = Self {
            dir,
            socket,
            config_path,
            log_path,
            child: Some(child),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "svid-broker exited during startup with {status}\nconfig:\n{}\nlog:\n{}",
                    self.config_text(),
                    self.log()
                );
            }
            if UnixStream::connect(&self.socket).is_ok() && self.log().contains("serving") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "svid-broker did not answer on {} within {START_TIMEOUT:?}\nlog:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `unix:///…`, as `SPIFFE_ENDPOINT_SOCKET` wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The temp dir holding the config, log, socket and (optionally) keys.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the daemon has logged so far, without terminal colour codes.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        strip_ansi(&s)
    }

    /// Runs the CLI with `SPIFFE_ENDPOINT_SOCKET` pointing at this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_endpoint(&self.endpoint(), args)
    }

    /// Runs the CLI and returns its stdout, panicking with both streams on failure.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "svid-broker {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// A JWT-SVID for `audience`, through the CLI: proves the daemon still serves.
    pub fn fetch_jwt(&self, audience: &str) -> String {
        self.cli_ok(&[
            "api",
            "fetch",
            "jwt",
            "--audience",
            audience,
            "--token-only",
        ])
        .trim()
        .to_string()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        if pid > 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child, not
            // yet reaped (we hold the Child), so it cannot name another process.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Stops the daemon and starts it again with the same config and temp dir.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_daemon(&self.config_path, &self.log_path));
        self.wait_ready();
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`]. Returns the exit
    /// status and whether it needed SIGKILL.
    pub fn stop(&mut self) -> Option<(ExitStatus, bool)> {
        self.child.as_ref()?;
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_exit(STOP_TIMEOUT) {
            return Some((status, false));
        }
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok().map(|s| (s, true))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let killed = self.stop().is_some_and(|(_, killed)| killed);
        if std::thread::panicking() || killed {
            eprintln!(
                "---- svid-broker log ({}){} ----\n{}\n---- end of log ----",
                self.log_path.display(),
                if killed { ", needed SIGKILL" } else { "" },
                self.log()
            );
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts `svid-broker run --config FILE` with its output in `log`.
pub fn spawn_daemon(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("create daemon log");
    let err = out.try_clone().expect("clone log fd");
    Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,svid_broker=debug")
        .env("NO_COLOR", "1")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn svid-broker")
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
