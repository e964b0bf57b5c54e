//! The daemon under test: started by the shared launcher (`svid_broker_test_support::daemon`)
//! from a generated config in a temp dir, or an already running one found by its socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use svid_broker_test_support::daemon::{self as launcher, DaemonConfig, Entry, Ready};

use super::calls::{self, OAuthTarget};
use super::procfs;

/// The SPIFFE ID the bench process is registered under.
pub const BENCH_SPIFFE_ID: &str = "spiffe://bench.test/bench";
/// The audience of the bench's tasks.
pub const TASK_AUDIENCE: &str = "spiffe://bench.test/tool";
/// The scope the bench's tasks ask for.
pub const TASK_SCOPE: &str = "bench:read";
/// `[broker] max_open_tasks`: the OpenTask row opens tasks faster than it can close them.
pub const MAX_OPEN_TASKS: usize = 100_000;
/// `[broker] max_live_tokens`: the MintTaskToken and IntrospectToken rows mint faster than
/// their tokens expire (the daemon's default, 100,000, would refuse mints within a row).
pub const MAX_LIVE_TOKENS: usize = 1_000_000;
/// `[broker] max_task_bytes`: the OpenTask rows keep up to 35,000 tasks of about 2.8 KiB
/// (counted) open, more than the default 64 MiB.
pub const MAX_TASK_BYTES: usize = 1 << 30;
/// How long the daemon may take to answer its first health check.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after serving starts before idle RSS is read.
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// Lets the bench identity do everything: the numbers measure the engine, not a denial.
const BENCH_POLICY: &str = r#"@id("bench-permit-all")
permit (
  principal == SvidBroker::Workload::"spiffe://bench.test/bench",
  action,
  resource
);
"#;

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub binary: PathBuf,
    /// `[authority] ca_ttl`; `None` keeps the default.
    pub ca_ttl: Option<Duration>,
    /// Body of a `[limits]` table (the stream daemon's raised connection and stream limits).
    pub limits: Option<String>,
    pub extra_config: Option<String>,
    /// Cedar policy text in place of [`BENCH_POLICY`].
    pub policy: Option<String>,
    /// Leave `[broker] max_task_bytes` at the daemon's default instead of [`MAX_TASK_BYTES`]
    /// (the table of the largest tasks measures that default).
    pub default_task_bytes: bool,
}

#[derive(Debug, Clone)]
pub enum Target {
    Start(DaemonOptions),
    Running(PathBuf),
}

pub struct Daemon {
    pub pid: i32,
    pub socket: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// From spawn to the first answered health check.
    pub startup: Option<Duration>,
    pub idle_rss: Option<procfs::Rss>,
    /// When the process was spawned (its CA is issued moments later).
    pub started_at: Option<Instant>,
    /// Anything the reader should know about how the daemon was configured.
    pub note: Option<String>,
    /// The `[oauth]` listener (only on a daemon the bench starts with the broker sections).
    pub oauth: Option<OAuthTarget>,
    /// The daemon's temp dir (config, socket, audit log), on a daemon the bench starts.
    pub dir: Option<PathBuf>,
    launched: Option<launcher::Daemon>,
}

/// `svid-broker` next to the running binary.
///
/// # Errors
/// The binary is not there.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    launcher::default_binary().context(
        "build it with `cargo build --release -p svid-broker`, or pass --daemon PATH or --socket PATH",
    )
}

impl Daemon {
    /// Starts (or finds) the daemon and waits until it answers a health check.
    ///
    /// # Errors
    /// The daemon exits, never serves, or the running one cannot be reached.
    pub async fn start(target: &Target) -> anyhow::Result<Self> {
        match target {
            Target::Running(socket) => {
                let pid = procfs::socket_server_pid(socket)
                    .with_context(|| format!("connect to {}", socket.display()))?;
                Ok(Self {
                    pid,
                    socket: socket.clone(),
                    metrics_addr: None,
                    startup: None,
                    idle_rss: None,
                    started_at: None,
                    note: Some(
                        "running daemon: start-up, idle RSS and rotation not measured".into(),
                    ),
                    oauth: None,
                    dir: None,
                    launched: None,
                })
            }
            Target::Start(opts) => {
                match Self::spawn(opts, true).await {
                    Ok(d) => Ok(d),
                    // A daemon without the TaskBroker does not know [broker] / [policy] / [audit].
                    Err(e) if format!("{e:#}").contains("unknown field") => {
                        let mut d = Self::spawn(opts, false).await?;
                        d.note = Some(
                            "the daemon does not accept [broker]/[policy]/[audit] (no TaskBroker); started without them"
                                .into(),
                        );
                        Ok(d)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn spawn(opts: &DaemonOptions, broker_sections: bool) -> anyhow::Result<Self> {
        let metrics_addr = free_loopback_addr()?;
        let oauth = broker_sections
            .then(free_loopback_addr)
            .transpose()?
            .map(|addr| OAuthTarget {
                addr,
                issuer: format!("http://{addr}"),
            });
        let mut d = config(opts, metrics_addr, oauth.as_ref(), broker_sections).prepare();
        let socket = d.socket_path().to_path_buf();
        d.try_spawn()?;
        let started_at = d.started_at().unwrap_or_else(Instant::now);
        let pid = d.pid() as i32;

        // Ready when it answers a health check: that is what start-up time measures.
        let deadline = started_at + START_TIMEOUT;
        loop {
            if let Some(status) = d.try_wait() {
                anyhow::bail!(
                    "daemon exited during start-up ({status}): {}",
                    d.log().trim()
                );
            }
            if calls::health_once(&socket).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("daemon not serving after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let startup = started_at.elapsed();
        tokio::time::sleep(IDLE_SETTLE).await;
        let idle_rss = procfs::rss(pid);
        Ok(Self {
            pid,
            socket,
            metrics_addr: Some(metrics_addr),
            startup: Some(startup),
            idle_rss,
            started_at: Some(started_at),
            note: (broker_sections && opts.policy.is_some())
                .then(|| "the daemon enforces the policy given with --policy".to_string()),
            oauth,
            dir: Some(d.dir().to_path_buf()),
            launched: Some(d),
        })
    }

    /// Stops a daemon we started (SIGTERM, then SIGKILL after the grace period).
    pub async fn stop(mut self) {
        if let Some(mut d) = self.launched.take() {
            // Waiting for the exit blocks: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || d.stop()).await;
        }
    }
}

fn free_loopback_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// The launcher's config for the bench daemon: the bench's uid gets [`BENCH_SPIFFE_ID`]; with
/// `broker_sections`, the TaskBroker opens up to [`MAX_OPEN_TASKS`] tasks (and keeps up to
/// [`MAX_LIVE_TOKENS`] tokens and [`MAX_TASK_BYTES`] of tasks) under a permit-all
/// policy and writes its audit log to the temp dir; with `oauth`, the OAuth face listens there
/// in plain HTTP.
pub fn config(
    opts: &DaemonOptions,
    metrics_addr: std::net::SocketAddr,
    oauth: Option<&OAuthTarget>,
    broker_sections: bool,
) -> DaemonConfig {
    let uid = svid_broker_test_support::euid();
    let mut c = DaemonConfig::new()
        .binary(&opts.binary)
        .trust_domain("bench.test")
        .metrics_addr(metrics_addr)
        .entry(Entry::new(BENCH_SPIFFE_ID, &[&format!("unix:uid:{uid}")]).hint("bench"))
        .rust_log("info")
        .no_color(false)
        // Unix socket paths must stay under 108 bytes: keep the temp dir short.
        .dir_prefix("svb-bench-")
        .ready(Ready::default())
        .stop_timeout(Duration::from_secs(5));
    if let Some(ttl) = opts.ca_ttl {
        c = c.ca_ttl(&format!("{}s", ttl.as_secs().max(10)));
    }
    if broker_sections {
        c = c
            .broker(&format!("max_open_tasks = {MAX_OPEN_TASKS}"))
            .broker(&format!("max_live_tokens = {MAX_LIVE_TOKENS}"))
            .policy(opts.policy.as_deref().unwrap_or(BENCH_POLICY))
            .audit("audit.jsonl");
        // Every row runs as one identity, so its share of the table is the whole table:
        // the rows measure the engine, and the largest-tasks table the node-wide byte bound
        // (what several workloads at their shares reach together).
        c = c
            .broker(&format!("max_open_tasks_per_owner = {MAX_OPEN_TASKS}"))
            .broker(&format!("max_live_tokens_per_owner = {MAX_LIVE_TOKENS}"));
        let task_bytes = if opts.default_task_bytes {
            svid_broker::broker::settings::DEFAULT_MAX_TASK_BYTES
        } else {
            c = c.broker(&format!("max_task_bytes = {MAX_TASK_BYTES}"));
            MAX_TASK_BYTES
        };
        c = c.broker(&format!("max_task_bytes_per_owner = {task_bytes}"));
        if let Some(o) = oauth {
            c = c.extra_toml(&format!(
                "[oauth]\nlisten = \"{}\"\nissuer = \"{}\"\n",
                o.addr, o.issuer
            ));
        }
    }
    if let Some(limits) = &opts.limits {
        c = c.extra_toml(&format!("[limits]\n{limits}"));
    }
    if let Some(extra) = &opts.extra_config {
        c = c.extra_toml(extra);
    }
    c
}
