//! The daemon under test: started from a generated config in a temp dir, or an already running
//! one found by its socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::calls;
use super::procfs;

/// The SPIFFE ID the bench process is registered under.
pub const BENCH_SPIFFE_ID: &str = "spiffe://bench.test/bench";
/// The audience of the bench's tasks.
pub const TASK_AUDIENCE: &str = "spiffe://bench.test/tool";
/// The scope the bench's tasks ask for.
pub const TASK_SCOPE: &str = "bench:read";
/// `[broker] max_open_tasks`: the OpenTask row opens tasks faster than it can close them.
const MAX_OPEN_TASKS: usize = 100_000;
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
    pub extra_config: Option<String>,
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
    pub idle_rss_kib: Option<u64>,
    /// When the process was spawned (its CA is issued moments later).
    pub started_at: Option<Instant>,
    /// Anything the reader should know about how the daemon was configured.
    pub note: Option<String>,
    child: Option<tokio::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

/// `svid-broker` next to the running binary.
///
/// # Errors
/// The binary is not there.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locate this binary")?;
    let daemon = me.with_file_name("svid-broker");
    anyhow::ensure!(
        daemon.is_file(),
        "no svid-broker next to {} (build it with `cargo build --release --bin svid-broker`, or pass --daemon PATH or --socket PATH)",
        me.display()
    );
    Ok(daemon)
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
                    idle_rss_kib: None,
                    started_at: None,
                    note: Some(
                        "running daemon: start-up, idle RSS and rotation not measured".into(),
                    ),
                    child: None,
                    _dir: None,
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
        // Unix socket paths must stay under 108 bytes: keep the temp dir short.
        let dir = tempfile::Builder::new()
            .prefix("svb-bench-")
            .tempdir()
            .context("create temp dir")?;
        let socket = dir.path().join("api.sock");
        let metrics_addr = free_loopback_addr()?;
        let config = config_text(
            dir.path(),
            &socket,
            metrics_addr,
            opts.ca_ttl,
            broker_sections,
            opts.extra_config.as_deref(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        std::fs::write(dir.path().join("policy.cedar"), BENCH_POLICY)?;
        let log_path = dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path)?;

        let started_at = Instant::now();
        let mut child = tokio::process::Command::new(&opts.binary)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", opts.binary.display()))?;
        let pid = child.id().context("daemon pid")? as i32;

        let deadline = started_at + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                anyhow::bail!("daemon exited during start-up ({status}): {}", log.trim());
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
        let idle_rss_kib = procfs::rss_kib(pid);
        Ok(Self {
            pid,
            socket,
            metrics_addr: Some(metrics_addr),
            startup: Some(startup),
            idle_rss_kib,
            started_at: Some(started_at),
            note: None,
            child: Some(child),
            _dir: Some(dir),
        })
    }

    /// Stops a daemon we started (SIGTERM, then SIGKILL after the grace period).
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

fn free_loopback_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free loopback port")?;
    Ok(l.local_addr()?)
}

/// The generated daemon config: the bench's uid gets [`BENCH_SPIFFE_ID`].
pub fn config_text(
    dir: &Path,
    socket: &Path,
    metrics_addr: std::net::SocketAddr,
    ca_ttl: Option<Duration>,
    broker_sections: bool,
    extra: Option<&str>,
) -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut s = format!(
        "trust_domain = \"bench.test\"\nsocket_path = \"{}\"\n",
        socket.display()
    );
    if let Some(ttl) = ca_ttl {
        s.push_str(&format!(
            "\n[authority]\nca_ttl = \"{}s\"\n",
            ttl.as_secs().max(10)
        ));
    }
    s.push_str(&format!(
        "\n[telemetry]\nmetrics_addr = \"{metrics_addr}\"\n"
    ));
    if broker_sections {
        s.push_str(&format!(
            "\n[broker]\nmax_open_tasks = {MAX_OPEN_TASKS}\n\n[policy]\nfile = \"{}\"\n\n[audit]\npath = \"{}\"\n",
            dir.join("policy.cedar").display(),
            dir.join("audit.jsonl").display()
        ));
    }
    if let Some(extra) = extra {
        s.push('\n');
        s.push_str(extra);
        s.push('\n');
    }
    s.push_str(&format!(
        "\n[[entry]]\nspiffe_id = \"{BENCH_SPIFFE_ID}\"\nselectors = [\"unix:uid:{uid}\"]\nhint = \"bench\"\n"
    ));
    s
}
