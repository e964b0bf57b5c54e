//! The real `svid-broker` daemon, started from a config written into a temp dir and stopped
//! (SIGTERM, then SIGKILL after a bound) when the [`Daemon`] drops.
//!
//! ```ignore
//! use svid_broker_test_support::daemon::{Daemon, DaemonConfig};
//!
//! let d = Daemon::start(DaemonConfig::new().entry_for_me("spiffe://example.org/test"));
//! let out = d.cli(&["api", "fetch", "jwt", "--audience", "a"]);
//! ```
//!
//! [`DaemonConfig`] holds both what goes into `config.toml` and how the process runs (its log,
//! its environment, when it counts as ready, how long it may take to stop); its defaults are
//! the integration tests': trust domain `example.org`, ready once the socket answers and the log
//! says "serving". Nothing is written outside the temp dir. When a test panics, the log is
//! printed as the value drops.
//!
//! Dropping a [`Daemon`] blocks the thread until the daemon has exited. In an async test, use
//! `#[tokio::test(flavor = "multi_thread")]`: on a current-thread runtime the test's own gRPC
//! connections cannot answer the daemon's GOAWAY while the drop blocks, so the daemon waits out
//! its whole `shutdown_grace`.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use crate::euid;

pub const TRUST_DOMAIN: &str = "example.org";
/// How long the daemon may take to answer on its socket, unless [`DaemonConfig::start_timeout`].
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after SIGTERM before SIGKILL, unless [`DaemonConfig::stop_timeout`].
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// `svid-broker` next to the running executable, or one directory up (integration tests run
/// from `target/<profile>/deps/`, the daemon is in `target/<profile>/`).
///
/// # Errors
/// It is in neither place.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("svid-broker");
    let above = me
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("svid-broker"));
    [Some(beside), above]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no svid-broker next to {} (build it with `cargo build --bin svid-broker`)",
                me.display()
            )
        })
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

/// When a started daemon counts as ready. The socket always has to accept a connection.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// The log also contains this.
    pub log_contains: Option<String>,
    /// The admin socket also exists.
    pub admin_socket: bool,
}

/// What the daemon is configured with and how it is run. Built with the methods below; the
/// fields are public for the rare test that needs to look.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The daemon binary; `None` is [`default_binary`].
    pub binary: Option<PathBuf>,
    pub trust_domain: String,
    pub entries: Vec<Entry>,
    pub ca_ttl: Option<String>,
    pub jwt_key_ttl: Option<String>,
    pub shutdown_grace: Option<String>,
    /// Persist keys under `<dir>/data` (else memory only).
    pub data_dir: bool,
    /// Serve the admin socket at `<dir>/admin.sock`.
    pub admin_socket: bool,
    /// `[telemetry] metrics_addr`.
    pub metrics_addr: Option<SocketAddr>,
    /// Cedar policy text, written to `<dir>/policy.cedar` and named in `[policy]`.
    pub policy: Option<String>,
    /// `[audit] path = <dir>/<name>`.
    pub audit: Option<String>,
    /// `key = value` lines of `[broker]`; `Some(empty)` writes the bare table.
    pub broker: Option<Vec<String>>,
    /// Appended verbatim, `@DIR@` replaced by the temp dir (top-level keys must come before
    /// any table: use tables here).
    pub extra_toml: String,
    /// Other files to write into the temp dir: (name, contents).
    pub files: Vec<(String, String)>,
    /// `RUST_LOG` of the daemon.
    pub rust_log: String,
    /// Set `NO_COLOR=1` for the daemon.
    pub no_color: bool,
    /// Name of the temp dir (a prefix), and where it goes (default: the system temp dir).
    pub dir_prefix: String,
    pub dir_parent: Option<PathBuf>,
    /// Permissions of the temp dir (e.g. 0o755 when other uids must reach the socket).
    pub dir_mode: Option<u32>,
    /// Name of the log file in the temp dir.
    pub log_name: String,
    /// Append to the log on each start, instead of starting it afresh.
    pub append_log: bool,
    pub ready: Ready,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    /// On drop, SIGKILL at once instead of SIGTERM first.
    pub kill_on_drop: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            binary: None,
            trust_domain: TRUST_DOMAIN.to_string(),
            entries: Vec::new(),
            ca_ttl: None,
            jwt_key_ttl: None,
            shutdown_grace: None,
            data_dir: false,
            admin_socket: false,
            metrics_addr: None,
            policy: None,
            audit: None,
            broker: None,
            extra_toml: String::new(),
            files: Vec::new(),
            rust_log: "info,svid_broker=debug".to_string(),
            no_color: true,
            dir_prefix: "svid-broker-test.".to_string(),
            dir_parent: None,
            dir_mode: None,
            log_name: "daemon.log".to_string(),
            append_log: false,
            ready: Ready {
                log_contains: Some("serving".to_string()),
                admin_socket: false,
            },
            start_timeout: START_TIMEOUT,
            stop_timeout: STOP_TIMEOUT,
            kill_on_drop: false,
        }
    }
}

impl DaemonConfig {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn trust_domain(mut self, td: &str) -> Self {
        self.trust_domain = td.to_string();
        self
    }

    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// An entry that this process (and its children) match: `unix:uid:<euid>`.
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

    pub fn admin_socket(mut self, on: bool) -> Self {
        self.admin_socket = on;
        self
    }

    pub fn metrics_addr(mut self, addr: SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    pub fn policy(mut self, cedar: &str) -> Self {
        self.policy = Some(cedar.to_string());
        self
    }

    pub fn audit(mut self, file_name: &str) -> Self {
        self.audit = Some(file_name.to_string());
        self
    }

    /// Adds a `key = value` line to `[broker]` (and writes the table even with no line).
    pub fn broker(mut self, line: &str) -> Self {
        self.broker
            .get_or_insert_with(Vec::new)
            .push(line.to_string());
        self
    }

    /// Writes an empty `[broker]` table unless lines are added.
    pub fn broker_table(mut self) -> Self {
        self.broker.get_or_insert_with(Vec::new);
        self
    }

    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_string(), contents.to_string()));
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    pub fn no_color(mut self, on: bool) -> Self {
        self.no_color = on;
        self
    }

    pub fn dir_prefix(mut self, prefix: &str) -> Self {
        self.dir_prefix = prefix.to_string();
        self
    }

    pub fn dir_in(mut self, parent: impl Into<PathBuf>) -> Self {
        self.dir_parent = Some(parent.into());
        self
    }

    pub fn dir_mode(mut self, mode: u32) -> Self {
        self.dir_mode = Some(mode);
        self
    }

    pub fn log_name(mut self, name: &str) -> Self {
        self.log_name = name.to_string();
        self
    }

    pub fn append_log(mut self, on: bool) -> Self {
        self.append_log = on;
        self
    }

    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    pub fn start_timeout(mut self, t: Duration) -> Self {
        self.start_timeout = t;
        self
    }

    pub fn stop_timeout(mut self, t: Duration) -> Self {
        self.stop_timeout = t;
        self
    }

    pub fn kill_on_drop(mut self, on: bool) -> Self {
        self.kill_on_drop = on;
        self
    }

    /// The daemon binary this config runs.
    ///
    /// # Panics
    /// None was set and [`default_binary`] finds none.
    pub fn binary_path(&self) -> PathBuf {
        match &self.binary {
            Some(b) => b.clone(),
            None => default_binary().unwrap_or_else(|e| panic!("{e:#}")),
        }
    }

    /// The TOML text for a daemon whose files live in `dir`.
    pub fn render(&self, dir: &Path, socket: &Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let p = |name: &str| q(&dir.join(name).display().to_string());
        let mut t = format!(
            "trust_domain = {}\nsocket_path = {}\n",
            q(&self.trust_domain),
            q(&socket.display().to_string())
        );
        if self.admin_socket {
            t += &format!("admin_socket_path = {}\n", p("admin.sock"));
        }
        if self.data_dir {
            t += &format!("data_dir = {}\n", p("data"));
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
        if let Some(addr) = self.metrics_addr {
            t += &format!("\n[telemetry]\nmetrics_addr = \"{addr}\"\n");
        }
        if self.policy.is_some() {
            t += &format!("\n[policy]\nfile = {}\n", p("policy.cedar"));
        }
        if let Some(name) = &self.audit {
            t += &format!("\n[audit]\npath = {}\n", p(name));
        }
        if let Some(lines) = &self.broker {
            t += "\n[broker]\n";
            for l in lines {
                t += l;
                t += "\n";
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
            t += &self.extra_toml.replace("@DIR@", &dir.display().to_string());
        }
        t
    }

    /// `svid-broker run --config FILE` with this config's environment, its output in `log`
    /// (created afresh, or appended to with [`DaemonConfig::append_log`]). Does not wait.
    ///
    /// # Panics
    /// The log cannot be opened or the binary cannot be started.
    pub fn spawn(&self, config: &Path, log: &Path) -> Child {
        self.try_spawn(config, log)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`DaemonConfig::spawn`], returning failures.
    ///
    /// # Errors
    /// The log cannot be opened or the binary cannot be started.
    pub fn try_spawn(&self, config: &Path, log: &Path) -> anyhow::Result<Child> {
        let out = if self.append_log {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        } else {
            std::fs::File::create(log)
        }
        .with_context(|| format!("open daemon log {}", log.display()))?;
        let err = out.try_clone()?;
        let binary = self.binary_path();
        let mut cmd = Command::new(&binary);
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", &self.rust_log)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if self.no_color {
            cmd.env("NO_COLOR", "1");
        }
        cmd.spawn()
            .with_context(|| format!("start {}", binary.display()))
    }

    /// Creates the temp dir, writes the config and files, and returns the daemon not yet
    /// started (see [`Daemon::spawn`], [`Daemon::start_again`]).
    pub fn prepare(self) -> Daemon {
        let mut b = tempfile::Builder::new();
        b.prefix(&self.dir_prefix);
        let dir = match &self.dir_parent {
            Some(parent) => {
                std::fs::create_dir_all(parent).expect("create the temp dir's parent");
                b.tempdir_in(parent)
            }
            None => b.tempdir(),
        }
        .expect("create a temp dir");
        if let Some(mode) = self.dir_mode {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod the temp dir");
        }
        let socket = dir.path().join("api.sock");
        Daemon::prepare_in(dir, socket, self)
    }

    /// Writes everything and starts the daemon; see [`Daemon::start`].
    pub fn start(self) -> Daemon {
        let mut d = self.prepare();
        d.start_again();
        d
    }
}

/// A daemon in its temp dir: running once started, until stopped or dropped.
pub struct Daemon {
    config: DaemonConfig,
    binary: PathBuf,
    dir: tempfile::TempDir,
    socket: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    started_at: Option<Instant>,
}

/// How a daemon stopped.
#[derive(Clone, Copy, Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// It did not exit within the stop timeout after SIGTERM and was killed.
    pub killed: bool,
}

impl Daemon {
    /// Writes the config, starts the daemon and waits until it is ready.
    ///
    /// # Panics
    /// The daemon exits or is not ready within the start timeout; the log is in the message.
    pub fn start(config: DaemonConfig) -> Self {
        config.start()
    }

    /// Like [`Daemon::start`], in a temp dir and with the socket at a path the caller chose.
    pub fn start_in(dir: tempfile::TempDir, socket: PathBuf, config: &DaemonConfig) -> Self {
        let mut d = Self::prepare_in(dir, socket, config.clone());
        d.start_again();
        d
    }

    /// Writes the config and files into `dir`; does not start the daemon.
    pub fn prepare_in(dir: tempfile::TempDir, socket: PathBuf, config: DaemonConfig) -> Self {
        let root = dir.path();
        let config_path = root.join("config.toml");
        std::fs::write(&config_path, config.render(root, &socket)).expect("write config");
        if let Some(policy) = &config.policy {
            std::fs::write(root.join("policy.cedar"), policy).expect("write policy");
        }
        for (name, contents) in &config.files {
            std::fs::write(root.join(name), contents)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        let log_path = root.join(&config.log_name);
        let binary = config.binary_path();
        Self {
            config,
            binary,
            dir,
            socket,
            config_path,
            log_path,
            child: None,
            started_at: None,
        }
    }

    /// Starts the daemon and returns at once (for start-failure tests and own readiness
    /// checks).
    ///
    /// # Panics
    /// It is already running.
    pub fn spawn(&mut self) -> &mut Child {
        self.try_spawn().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Daemon::spawn`], returning failures.
    ///
    /// # Errors
    /// The log cannot be opened or the binary cannot be started.
    pub fn try_spawn(&mut self) -> anyhow::Result<&mut Child> {
        assert!(self.child.is_none(), "daemon already running");
        self.started_at = Some(Instant::now());
        let child = self.config.try_spawn(&self.config_path, &self.log_path)?;
        Ok(self.child.insert(child))
    }

    /// Starts the daemon (again, after [`Daemon::stop`] or [`Daemon::kill`]) on the same
    /// config and temp dir and waits until it is ready.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Stops the daemon and starts it again with the same config and temp dir.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Waits until the socket answers (and what [`Ready`] adds).
    ///
    /// # Panics
    /// The daemon exits first, or the start timeout passes.
    pub fn wait_ready(&mut self) {
        let timeout = self.config.start_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "svid-broker exited during startup with {status}\nconfig:\n{}\nlog:\n{}",
                    self.config_text(),
                    self.log()
                );
            }
            if self.is_ready() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "svid-broker did not answer on {} within {timeout:?}\nlog:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn is_ready(&self) -> bool {
        let ready = &self.config.ready;
        UnixStream::connect(&self.socket).is_ok()
            && (!ready.admin_socket || self.admin_socket_path().exists())
            && ready
                .log_contains
                .as_ref()
                .is_none_or(|needle| self.log().contains(needle.as_str()))
    }

    /// The exit status, once the daemon has exited (the handle is then released).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten();
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// When the daemon was last spawned.
    pub fn started_at(&self) -> Option<Instant> {
        self.started_at
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `<dir>/admin.sock` (served only with [`DaemonConfig::admin_socket`]).
    pub fn admin_socket_path(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
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

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The PID of the running daemon, 0 when it is not running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything the daemon has logged so far, without terminal colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&self.log_raw())
    }

    /// Everything the daemon has logged so far, as written.
    pub fn log_raw(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Runs the daemon binary as a CLI with `SPIFFE_ENDPOINT_SOCKET` pointing at this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .stdin(Stdio::null())
            .output()
            .expect("run svid-broker")
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
        self.child.as_ref()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline || self.child.is_none() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within the stop timeout. `None` when it was
    /// not running.
    pub fn stop(&mut self) -> Option<Stopped> {
        self.child.as_ref()?;
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_exit(self.config.stop_timeout) {
            return Some(Stopped {
                status,
                killed: false,
            });
        }
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok().map(|status| Stopped {
            status,
            killed: true,
        })
    }

    /// SIGKILL now, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let killed = if self.config.kill_on_drop {
            self.kill();
            false
        } else {
            self.stop().is_some_and(|s| s.killed)
        };
        if panicking || killed {
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
