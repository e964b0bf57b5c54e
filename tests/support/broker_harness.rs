//! The real `svid-broker` daemon for the TaskBroker tests, with several agent identities.
//!
//! Include it with `#[path = "support/broker_harness.rs"] mod harness;`.
//!
//! Each [`Broker`] owns a temp dir (under `CARGO_TARGET_TMPDIR`, so hard links to the binary
//! work) holding its config, policy, audit log, data dir and sockets. The svid-broker binary
//! is linked (or copied) to `agent-a`, `agent-b`, `agent-c`, `agent-d` and `tool-x` there, and
//! each copy is registered by `unix:path:<copy>`, so running a copy as a CLI acts as that
//! agent. This test binary itself is registered as [`RUNNER`] (and [`RUNNER2`], a second
//! identity of the same process) by `unix:path:<test binary>`, for in-process gRPC clients.
//!
//! The daemon (started by `svid_broker_test_support::daemon`) gets SIGTERM when the value
//! drops; [`Broker::restart`] keeps the data dir and audit log; [`Broker::kill9`] kills it hard.
//! Use `#[tokio::test(flavor = "multi_thread")]`: dropping blocks until the daemon has exited.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use svid_broker::client::{connect, with_header, HeaderChannel};
use svid_broker::proto::svidbroker::v1::admin_client::AdminClient;
use svid_broker::proto::svidbroker::v1::task_broker_client::TaskBrokerClient;
use svid_broker_test_support::daemon::{Daemon, DaemonConfig, Entry, Ready};
use tonic::transport::Channel;

pub const TD: &str = "example.org";
pub const RUNNER: &str = "spiffe://example.org/test/runner";
pub const RUNNER2: &str = "spiffe://example.org/test/runner2";
pub const AGENT_A: &str = "spiffe://example.org/agent/a";
pub const AGENT_B: &str = "spiffe://example.org/agent/b";
pub const AGENT_C: &str = "spiffe://example.org/agent/c";
pub const AGENT_D: &str = "spiffe://example.org/agent/d";
pub const TOOL_X: &str = "spiffe://example.org/tool/x";

/// (file name of the binary copy, SPIFFE ID)
pub const AGENTS: &[(&str, &str)] = &[
    ("agent-a", AGENT_A),
    ("agent-b", AGENT_B),
    ("agent-c", AGENT_C),
    ("agent-d", AGENT_D),
    ("tool-x", TOOL_X),
];

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_svid-broker"))
}

/// The agent binaries: hard links to the daemon binary (copies where the file system refuses
/// links), made once per test process and shared by every broker it starts. Each link made or
/// removed changes the inode's ctime, which is part of the caller fingerprint the daemon
/// compares before and after attesting: links made and removed by brokers of tests running in
/// parallel made another test's agent look changed mid-call ("caller changed during
/// attestation; retry").
fn agent_links() -> &'static BTreeMap<String, PathBuf> {
    static LINKS: std::sync::OnceLock<BTreeMap<String, PathBuf>> = std::sync::OnceLock::new();
    LINKS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_agent_dirs(&root);
        let dir = root.join(format!("agents-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = canon(&dir);
        AGENTS
            .iter()
            .map(|(file, _)| {
                let to = dir.join(file);
                if std::fs::hard_link(bin(), &to).is_err() {
                    std::fs::copy(bin(), &to).unwrap();
                }
                (file.to_string(), to)
            })
            .collect()
    })
}

/// Removes the agent directories of earlier test processes that have exited (a static has no
/// destructor to remove its own).
fn remove_stale_agent_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("agents-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What goes into the generated config besides sockets, entries and paths.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Cedar policy text, written to `<dir>/policy.cedar`.
    pub policy: String,
    /// `key = value` lines of `[broker]`.
    pub broker: Vec<String>,
    /// Extra TOML tables appended verbatim (e.g. `[audience."…"]`).
    pub extra_toml: String,
}

impl Options {
    pub fn new(policy: &str) -> Self {
        Self {
            policy: policy.to_string(),
            ..Self::default()
        }
    }

    pub fn broker(mut self, line: &str) -> Self {
        self.broker.push(line.to_string());
        self
    }

    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }
}

pub struct Broker {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub admin_socket: PathBuf,
    pub audit: PathBuf,
    pub config: PathBuf,
    pub policy: PathBuf,
    pub log: PathBuf,
    agents: BTreeMap<String, PathBuf>,
    daemon: Daemon,
}

/// A path's canonical form (what `/proc/<pid>/exe` shows).
fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

impl Broker {
    /// Writes the config and starts the daemon; panics (with its log) if it does not come up.
    pub fn start(opts: Options) -> Self {
        let mut b = Self::prepare(opts);
        b.start_again();
        b
    }

    /// Writes everything but does not start the daemon.
    pub fn prepare(opts: Options) -> Self {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&root).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("bk")
            .tempdir_in(&root)
            .unwrap();
        let d = canon(dir.path());
        let agents = agent_links().clone();
        let me = canon(&std::env::current_exe().unwrap());
        let mut config = DaemonConfig::new()
            .binary(bin())
            .trust_domain(TD)
            .admin_socket(true)
            .data_dir(true)
            .shutdown_grace("2s")
            .policy(&opts.policy)
            .audit("audit.log")
            .broker_table()
            .extra_toml(&opts.extra_toml)
            .rust_log("info")
            .no_color(false)
            .append_log(true)
            .ready(Ready {
                log_contains: None,
                admin_socket: true,
            })
            .start_timeout(START_TIMEOUT)
            .stop_timeout(STOP_TIMEOUT);
        for id in [RUNNER, RUNNER2] {
            let sel = format!("unix:path:{}", me.display());
            config = config.entry(Entry::new(id, &[&sel]));
        }
        for (file, id) in AGENTS {
            let sel = format!("unix:path:{}", agents[*file].display());
            config = config.entry(Entry::new(id, &[&sel]));
        }
        for line in &opts.broker {
            config = config.broker(line);
        }
        let daemon = Daemon::prepare_in(dir, d.join("api.sock"), config);
        Self {
            dir: d.clone(),
            socket: d.join("api.sock"),
            admin_socket: d.join("admin.sock"),
            audit: d.join("audit.log"),
            config: daemon.config_path().to_path_buf(),
            policy: d.join("policy.cedar"),
            log: daemon.log_path().to_path_buf(),
            agents,
            daemon,
        }
    }

    /// Starts the daemon and returns without waiting (for start-failure tests).
    pub fn spawn(&mut self) -> &mut Child {
        self.daemon.spawn()
    }

    fn spawn_and_wait(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.daemon.start_again();
    }

    /// Waits for a start that must fail; returns its exit code and log.
    pub fn expect_start_failure(&mut self) -> (Option<i32>, String) {
        let before = self.log_text().len();
        self.spawn();
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.daemon.try_wait() {
                return (status.code(), self.log_text()[before..].to_string());
            }
            if std::time::Instant::now() > deadline {
                self.kill9();
                panic!(
                    "svid-broker was expected to refuse to start:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        assert!(self.daemon.running(), "daemon running");
        self.daemon.pid() as i32
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_raw()
    }

    /// SIGTERM and wait; panics if it needed SIGKILL after the stop timeout.
    pub fn stop(&mut self) {
        if let Some(stopped) = self.daemon.stop() {
            if stopped.killed {
                panic!("svid-broker ignored SIGTERM:\n{}", self.log_text());
            }
        }
    }

    /// SIGKILL now.
    pub fn kill9(&mut self) {
        self.daemon.kill();
    }

    /// Graceful stop, then start on the same data dir and audit log.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Start again after [`Broker::kill9`] or [`Broker::stop`].
    pub fn start_again(&mut self) {
        self.spawn_and_wait();
    }

    pub fn sighup(&self) {
        self.daemon.signal(libc::SIGHUP);
    }

    /// The binary copy that acts as `file` (e.g. "agent-a").
    pub fn agent_bin(&self, file: &str) -> &Path {
        &self.agents[file]
    }

    /// Runs `<agent copy> <args…> --socket <api.sock>`.
    pub fn as_agent(&self, file: &str, args: &[&str]) -> Output {
        Command::new(self.agent_bin(file))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .unwrap()
    }

    /// As [`Broker::as_agent`], panicking with stderr unless it succeeds; returns stdout.
    pub fn agent_ok(&self, file: &str, args: &[&str]) -> String {
        let out = self.as_agent(file, args);
        assert!(
            out.status.success(),
            "{file} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// As [`Broker::as_agent`], expecting failure; returns stderr.
    pub fn agent_err(&self, file: &str, args: &[&str]) -> String {
        let out = self.as_agent(file, args);
        assert!(
            !out.status.success(),
            "{file} {args:?} should have failed, printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs the plain binary with `args` (no socket added): `audit verify`, `admin …`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin()).args(args).output().unwrap()
    }

    /// Runs `svid-broker admin <command>` against this daemon's admin socket.
    pub fn admin_cli(&self, command: &str) -> Output {
        self.cli(&[
            "admin",
            command,
            "--admin-socket",
            self.admin_socket.to_str().unwrap(),
        ])
    }

    /// A TaskBroker client on the public socket, as this test process.
    pub async fn client(&self) -> TaskBrokerClient<HeaderChannel> {
        TaskBrokerClient::new(with_header(connect(self.socket.clone()).await.unwrap()))
    }

    /// A TaskBroker client on the admin socket (the caller is an operator).
    pub async fn admin_broker(&self) -> TaskBrokerClient<HeaderChannel> {
        TaskBrokerClient::new(with_header(
            connect(self.admin_socket.clone()).await.unwrap(),
        ))
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(connect(self.admin_socket.clone()).await.unwrap())
    }

    /// Admin.ListTasks' first page (up to 1,000 tasks: all of any test's).
    pub async fn listed_tasks(&self, include_closed: bool) -> Vec<pb::TaskInfo> {
        self.admin()
            .await
            .list_tasks(pb::ListTasksRequest {
                include_closed,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks
    }

    /// The audit log's records as JSON values.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Replaces the policy file atomically (write then rename).
    pub fn write_policy(&self, text: &str) {
        let tmp = self.dir.join("policy.cedar.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.policy).unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The daemon's own drop prints its log when the test panics.
        if std::thread::panicking() {
            self.kill9();
        } else {
            self.stop();
        }
    }
}

/// The Python of the peers venv: `$SVID_BROKER_VENV/bin/python`, else `<repo>/.venv/bin/python`.
/// A missing venv is a failure, never a skip.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("SVID_BROKER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/install-peers.sh (or set SVID_BROKER_VENV)",
        py.display()
    );
    py
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

/// The decoded header and payload of a compact JWS.
pub fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut it = token.split('.');
    let h = serde_json::from_slice(&unb64(it.next().unwrap())).unwrap();
    let p = serde_json::from_slice(&unb64(it.next().unwrap())).unwrap();
    (h, p)
}

/// A tonic status as "Code: message", for assertion messages.
pub fn show(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Asserts `r` failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("expected {code:?} ({needle}), got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", show(&s));
            assert!(
                s.message().contains(needle),
                "message {:?} should contain {needle:?}",
                s.message()
            );
        }
    }
}

pub use svid_broker::proto::svidbroker::v1 as pb;

pub fn open_req(
    purpose: &str,
    audiences: &[&str],
    scopes: &[&str],
    ttl: u32,
) -> pb::OpenTaskRequest {
    pb::OpenTaskRequest {
        purpose: purpose.to_string(),
        audiences: audiences.iter().map(|s| s.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: ttl,
        ..Default::default()
    }
}

pub fn mint_req(
    task_id: &str,
    audience: &str,
    scopes: &[&str],
    ttl: u32,
    max_uses: u32,
) -> pb::MintTaskTokenRequest {
    pb::MintTaskTokenRequest {
        task_id: task_id.to_string(),
        audience: audience.to_string(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: ttl,
        max_uses,
    }
}

/// IntrospectToken: `(active, claims as JSON)`.
pub async fn introspect(
    client: &mut TaskBrokerClient<HeaderChannel>,
    token: &str,
) -> (bool, serde_json::Value) {
    let r = client
        .introspect_token(pb::IntrospectTokenRequest {
            token: token.to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("introspect: {}", show(&s)))
        .into_inner();
    let claims = r
        .claims
        .as_ref()
        .map(svid_broker::cli::api::struct_to_json)
        .unwrap_or(serde_json::Value::Null);
    (r.active, claims)
}

/// Parses the JSON the `task introspect` CLI prints and returns its `active`.
pub fn cli_active(stdout: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap();
    v["active"].as_bool().unwrap()
}
