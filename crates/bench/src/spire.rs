//! A SPIRE server and agent on a temp dir, for the side-by-side FetchJWTSVID row: the same
//! approach as the integration tests' helper (`tests/support/spire.rs`), trimmed to what the
//! benchmark needs, with logging at WARN so SPIRE is not charged for debug logs.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::calls::{Client, Workload};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const TRUST_DOMAIN: &str = "bench.test";

pub struct SpireBins {
    pub server: PathBuf,
    pub agent: PathBuf,
}

/// Where SPIRE is: `--spire-bin`, else `$SVID_BROKER_PEERS_DIR/bin`, else `target/peers/bin`
/// beside this binary's target directory, else `target/peers/bin` under the current directory.
///
/// # Errors
/// Not found: the message says how to build it.
pub fn find_binaries(flag: Option<&Path>) -> Result<SpireBins, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(f) = flag {
        candidates.push(f.to_path_buf());
    } else {
        if let Some(d) = std::env::var_os("SVID_BROKER_PEERS_DIR").filter(|d| !d.is_empty()) {
            candidates.push(PathBuf::from(d).join("bin"));
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(target) = exe.parent().and_then(Path::parent) {
                candidates.push(target.join("peers/bin"));
            }
        }
        candidates.push(PathBuf::from("target/peers/bin"));
    }
    for dir in &candidates {
        let bins = SpireBins {
            server: dir.join("spire-server"),
            agent: dir.join("spire-agent"),
        };
        if bins.server.is_file() && bins.agent.is_file() {
            return Ok(bins);
        }
    }
    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "SPIRE not found (looked in {}): run scripts/install-go-peers.sh (needs Go) to build spire-server and spire-agent into target/peers/bin, or pass --spire-bin DIR",
        looked.join(", ")
    ))
}

/// A running SPIRE server and agent with one entry for this process's uid. Drop kills both.
pub struct Spire {
    pub version: String,
    root: tempfile::TempDir,
    server: Option<tokio::process::Child>,
    agent: Option<tokio::process::Child>,
}

impl Spire {
    /// Starts server and agent, registers this uid, and waits until the agent serves it a
    /// JWT-SVID.
    ///
    /// # Errors
    /// A binary fails or SPIRE does not become ready in time (the log tails are included).
    pub async fn start(bins: &SpireBins) -> anyhow::Result<Spire> {
        let root = tempfile::Builder::new()
            .prefix("svb-spire-")
            .tempdir()
            .context("create temp dir")?;
        for sub in ["server/data", "agent/data", "agent/public"] {
            std::fs::create_dir_all(root.path().join(sub))?;
        }
        let version = output(&bins.server, &["--version"]).await.map_or_else(
            |_| "(version unknown)".to_string(),
            |o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.trim().to_string()
            },
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut spire = Spire {
            version,
            root,
            server: None,
            agent: None,
        };
        let r = spire.root.path().to_path_buf();
        std::fs::write(r.join("server/server.conf"), server_conf(&r, port))?;
        spire.server = Some(spawn_logged(
            &bins.server,
            &["run", "-config", &path_str(&r.join("server/server.conf"))],
            &r.join("server/server.log"),
        )?);
        let server_socket = path_str(&r.join("server/api.sock"));
        spire
            .wait_ok(
                &bins.server,
                &["healthcheck", "-socketPath", &server_socket],
            )
            .await?;

        let node_id = format!("spiffe://{TRUST_DOMAIN}/node");
        let token = output(
            &bins.server,
            &[
                "token",
                "generate",
                "-spiffeID",
                &node_id,
                "-ttl",
                "600",
                "-socketPath",
                &server_socket,
            ],
        )
        .await?;
        let token = String::from_utf8_lossy(&token.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .map(|t| t.trim().to_string())
            .context("no token in `spire-server token generate` output")?;
        let bundle = output(
            &bins.server,
            &[
                "bundle",
                "show",
                "-format",
                "pem",
                "-socketPath",
                &server_socket,
            ],
        )
        .await?;
        std::fs::write(r.join("agent/bootstrap.pem"), &bundle.stdout)?;
        std::fs::write(r.join("agent/agent.conf"), agent_conf(&r, port))?;
        spire.agent = Some(spawn_logged(
            &bins.agent,
            &[
                "run",
                "-config",
                &path_str(&r.join("agent/agent.conf")),
                "-joinToken",
                &token,
            ],
            &r.join("agent/agent.log"),
        )?);
        let agent_socket = spire.workload_socket();
        spire
            .wait_ok(
                &bins.agent,
                &["healthcheck", "-socketPath", &path_str(&agent_socket)],
            )
            .await?;

        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        output(
            &bins.server,
            &[
                "entry",
                "create",
                "-spiffeID",
                &format!("spiffe://{TRUST_DOMAIN}/bench"),
                "-parentID",
                &node_id,
                "-selector",
                &format!("unix:uid:{uid}"),
                "-socketPath",
                &server_socket,
            ],
        )
        .await?;
        // The entry reaches the agent at its next sync.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match Client::new(Workload::SpireJwtFreshAudience, &agent_socket).await {
                Ok(mut c) => match c.fetch_jwt("spiffe://bench.test/ready".into()).await {
                    Ok(_) => break,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                anyhow::bail!(
                    "SPIRE agent never issued a JWT-SVID: {last}\n{}",
                    spire.log_tails()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(spire)
    }

    pub fn workload_socket(&self) -> PathBuf {
        self.root.path().join("agent/public/api.sock")
    }

    /// The server's and the agent's PIDs: both work for every fresh-audience JWT-SVID.
    pub fn pids(&self) -> Vec<i32> {
        [&self.server, &self.agent]
            .into_iter()
            .flatten()
            .filter_map(|c| c.id().map(|p| p as i32))
            .collect()
    }

    async fn wait_ok(&mut self, bin: &Path, args: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut exited = None;
            for (name, child) in [("server", &mut self.server), ("agent", &mut self.agent)] {
                if let Some(c) = child {
                    if let Some(status) = c.try_wait()? {
                        exited = Some((name, status));
                    }
                }
            }
            if let Some((name, status)) = exited {
                anyhow::bail!(
                    "SPIRE {name} exited during start-up ({status})\n{}",
                    self.log_tails()
                );
            }
            if output(bin, args).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "`{} {}` did not succeed in {READY_TIMEOUT:?}\n{}",
                    bin.display(),
                    args.join(" "),
                    self.log_tails()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for name in ["server/server.log", "agent/agent.log"] {
            let text = std::fs::read_to_string(self.root.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("---- {name} ----\n"));
            for l in &lines[lines.len().saturating_sub(20)..] {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.start_kill();
        }
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Runs a command to completion; an error unless it exits 0.
async fn output(bin: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "`{} {}` failed ({}): {}",
        bin.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn spawn_logged(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<tokio::process::Child> {
    let file = std::fs::File::create(log)?;
    tokio::process::Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))
}

fn server_conf(r: &Path, port: u16) -> String {
    let r = r.display();
    format!(
        r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{r}/server/api.sock"
    trust_domain = "{TRUST_DOMAIN}"
    data_dir = "{r}/server/data"
    log_level = "WARN"
    ca_ttl = "24h"
    default_x509_svid_ttl = "1h"
    default_jwt_svid_ttl = "5m"
    experimental {{
        cache_reload_interval = "1s"
    }}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{r}/server/data/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#
    )
}

fn agent_conf(r: &Path, port: u16) -> String {
    let r = r.display();
    format!(
        r#"agent {{
    data_dir = "{r}/agent/data"
    log_level = "WARN"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{r}/agent/public/api.sock"
    trust_bundle_path = "{r}/agent/bootstrap.pem"
    trust_domain = "{TRUST_DOMAIN}"
    experimental {{
        sync_interval = "1s"
    }}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = false
        }}
    }}
}}
"#
    )
}
