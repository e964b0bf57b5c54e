//! A real SPIRE server and agent on a temp dir and loopback.
//!
//! The binaries come from `scripts/install-go-peers.sh` (SPIRE pinned in `tests/peers/go/spire`),
//! found in `$SVID_BROKER_PEERS_DIR/bin`, else `<workspace>/target/peers/bin`. For tests, a
//! missing peer is a failure, never a silent pass: [`peer_bins`] panics saying how to build
//! them. `SVID_BROKER_SKIP_GO=1` is the one documented opt-out: [`spire_available`] then returns
//! `false` after printing why, and the test returns early.
//!
//! ```ignore
//! use svid_broker_test_support::spire::{spire_available, Spire, SpireConfig};
//!
//! #[tokio::test]
//! async fn under_spire() {
//!     if !spire_available() { return; }
//!     let spire = Spire::start(SpireConfig::default()).await;
//!     let uid = svid_broker_test_support::euid();
//!     spire.create_entry("spiffe://example.org/w", &spire.node_id(), &[&format!("unix:uid:{uid}")]).await;
//!     // point a client at spire.workload_endpoint() …
//! }
//! ```
//!
//! [`Spire::start`] and the other plain methods panic on failure (for tests); the `try_`
//! forms return errors instead (for the benchmark, which reports that SPIRE did not run and goes
//! on). Everything started is killed when the [`Spire`] value drops; the temp dir goes with it
//! unless `SVID_BROKER_KEEP_SPIRE=1`. When the thread is panicking, the tails of the server and
//! agent logs are printed. Waits use real time (not tokio's clock), so do not use this from a
//! `start_paused` test.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

const POLL: Duration = Duration::from_millis(150);

/// `spire-server` and `spire-agent`.
#[derive(Debug, Clone)]
pub struct SpireBins {
    pub server: PathBuf,
    pub agent: PathBuf,
}

impl SpireBins {
    /// The two binaries in `dir`, if both are there.
    pub fn in_dir(dir: &Path) -> Option<Self> {
        let bins = Self {
            server: dir.join("spire-server"),
            agent: dir.join("spire-agent"),
        };
        (bins.server.is_file() && bins.agent.is_file()).then_some(bins)
    }
}

/// Paths of all the Go-side peer binaries the tests use.
#[derive(Debug, Clone)]
pub struct PeerBins {
    pub spire_server: PathBuf,
    pub spire_agent: PathBuf,
    /// Our go-spiffe v2 client (`tests/peers/go/spiffeclient`).
    pub spiffeclient: PathBuf,
    /// Reference Delegated Identity API client (`tests/peers/go/spire/delegatedclient`).
    pub delegatedclient: PathBuf,
}

impl PeerBins {
    pub fn spire(&self) -> SpireBins {
        SpireBins {
            server: self.spire_server.clone(),
            agent: self.spire_agent.clone(),
        }
    }
}

/// The directory the peers are installed in: `$SVID_BROKER_PEERS_DIR/bin`, else
/// `<workspace>/target/peers/bin`.
pub fn peers_bin_dir() -> PathBuf {
    match std::env::var_os("SVID_BROKER_PEERS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("bin"),
        _ => crate::workspace_root().join("target/peers/bin"),
    }
}

/// `true` when the tests should skip SPIRE and go-spiffe: `SVID_BROKER_SKIP_GO=1`.
pub fn skip_go() -> bool {
    std::env::var("SVID_BROKER_SKIP_GO").is_ok_and(|v| v == "1")
}

/// Call first in every test that needs SPIRE or spiffeclient. Returns `false` (after printing a
/// skip message) only when `SVID_BROKER_SKIP_GO=1`; otherwise returns `true`, or panics when the
/// binaries are missing.
pub fn spire_available() -> bool {
    if skip_go() {
        eprintln!(
            "SKIPPED: SVID_BROKER_SKIP_GO=1, so this test does not run against SPIRE / go-spiffe \
             (unset it and run scripts/install-go-peers.sh to run it)"
        );
        return false;
    }
    peer_bins();
    true
}

/// The peer binaries. Panics with install instructions when any is missing.
pub fn peer_bins() -> PeerBins {
    let dir = peers_bin_dir();
    let bins = PeerBins {
        spire_server: dir.join("spire-server"),
        spire_agent: dir.join("spire-agent"),
        spiffeclient: dir.join("spiffeclient"),
        delegatedclient: dir.join("delegatedclient"),
    };
    let all = [
        &bins.spire_server,
        &bins.spire_agent,
        &bins.spiffeclient,
        &bins.delegatedclient,
    ];
    let missing: Vec<String> = all
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "missing Go test peers: {}.\nrun scripts/install-go-peers.sh (needs Go), or set \
         SVID_BROKER_SKIP_GO=1 to skip the SPIRE and go-spiffe tests explicitly",
        missing.join(", ")
    );
    bins
}

/// What to start. `Default` gives trust domain `example.org`, the broker's ID as the one
/// authorized delegate, short sync intervals so new entries reach the agent within a few seconds.
#[derive(Debug, Clone)]
pub struct SpireConfig {
    pub trust_domain: String,
    /// SPIFFE IDs allowed to call the agent's Delegated Identity API (agent `authorized_delegates`).
    /// Each must be in `trust_domain`, and the caller needs a registration entry with that ID.
    pub authorized_delegates: Vec<String>,
    /// Path of the ID the join token gives the node (an alias; entries use it as parent).
    pub node_path: String,
    /// Server `default_x509_svid_ttl`, e.g. "1h"; short values make SPIRE rotate often.
    pub x509_svid_ttl: String,
    /// Server `default_jwt_svid_ttl`.
    pub jwt_svid_ttl: String,
    /// Server `ca_ttl`.
    pub ca_ttl: String,
    /// Agent `experimental.sync_interval` and server `experimental.cache_reload_interval`.
    pub sync_interval: String,
    /// Server key manager: `false` = "memory", `true` = "disk" (keys survive a server restart).
    pub disk_key_manager: bool,
    /// Agent key manager: `true` = "disk" under the agent's data dir (its SVID survives an
    /// agent restart), `false` = "memory".
    pub agent_disk_key_manager: bool,
    /// Serve the agent's admin socket (Delegated Identity API).
    pub admin_socket: bool,
    /// Unix workload attestor `discover_workload_path`: emit `unix:path` selectors.
    pub discover_workload_path: bool,
    /// Unix workload attestor `workload_size_limit`: -1 = no `unix:sha256` selector, 0 = hash
    /// any size, N = hash binaries up to N bytes; `None` leaves it out.
    pub workload_size_limit: Option<i64>,
    pub log_level: String,
    /// How long to wait for the server and the agent to pass their healthchecks.
    pub ready_timeout: Duration,
    /// Name of the temp dir (a prefix); keep it short, socket paths must stay under 108 bytes.
    pub dir_prefix: String,
}

impl Default for SpireConfig {
    fn default() -> Self {
        Self {
            trust_domain: "example.org".into(),
            authorized_delegates: vec!["spiffe://example.org/svid-broker".into()],
            node_path: "/node".into(),
            x509_svid_ttl: "1h".into(),
            jwt_svid_ttl: "5m".into(),
            ca_ttl: "24h".into(),
            sync_interval: "1s".into(),
            disk_key_manager: false,
            agent_disk_key_manager: true,
            admin_socket: true,
            discover_workload_path: true,
            workload_size_limit: Some(-1),
            log_level: "DEBUG".into(),
            ready_timeout: Duration::from_secs(30),
            dir_prefix: "spire-".into(),
        }
    }
}

/// A running SPIRE server and agent. Drop kills both.
pub struct Spire {
    cfg: SpireConfig,
    bins: SpireBins,
    /// All the Go peers, when started by [`Spire::start`].
    peers: Option<PeerBins>,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    server_port: u16,
    join_token: String,
    server: Option<Child>,
    agent: Option<Child>,
}

impl Spire {
    /// [`Spire::try_start`] with the peers of [`peer_bins`].
    ///
    /// # Panics
    /// When the binaries are missing or SPIRE does not come up (the logs are in the message).
    pub async fn start(cfg: SpireConfig) -> Spire {
        let peers = peer_bins();
        match Self::try_start(cfg, &peers.spire()).await {
            Ok(mut spire) => {
                spire.peers = Some(peers);
                spire
            }
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Starts a server on 127.0.0.1:<free port> with a sqlite datastore, generates a join token
    /// for [`node_id`](Self::node_id), fetches the trust bundle with `spire-server bundle show`,
    /// starts an agent bootstrapped from it, and returns once both pass their healthchecks.
    ///
    /// # Errors
    /// A binary fails or SPIRE does not come up in time (the log tails are in the error).
    pub async fn try_start(cfg: SpireConfig, bins: &SpireBins) -> anyhow::Result<Spire> {
        let dir = tempfile::Builder::new()
            .prefix(&cfg.dir_prefix)
            .tempdir()
            .context("create temp dir for SPIRE")?;
        let root = dir.path().to_path_buf();
        for sub in ["server/data", "agent/data", "agent/public", "agent/admin"] {
            std::fs::create_dir_all(root.join(sub)).context("create SPIRE dirs")?;
        }
        let mut spire = Spire {
            cfg,
            bins: bins.clone(),
            peers: None,
            dir: Some(dir),
            root,
            server_port: free_port()?,
            join_token: String::new(),
            server: None,
            agent: None,
        };
        anyhow::ensure!(
            spire.workload_socket().as_os_str().len() < 100,
            "temp dir path too long for a unix socket: {}",
            spire.workload_socket().display()
        );
        spire.write_server_config()?;
        spire.try_start_server().await?;

        let out = spire
            .try_server_cli(&[
                "token",
                "generate",
                "-spiffeID",
                &spire.node_id(),
                "-ttl",
                "600",
            ])
            .await?;
        spire.join_token = out
            .lines()
            .find_map(|l| l.strip_prefix("Token:"))
            .map(|t| t.trim().to_string())
            .with_context(|| format!("no token in `spire-server token generate` output: {out}"))?;

        let bundle = spire
            .try_server_cli(&["bundle", "show", "-format", "pem"])
            .await?;
        std::fs::write(spire.root.join("agent/bootstrap.pem"), bundle)
            .context("write bootstrap bundle")?;
        spire.write_agent_config()?;
        spire.try_start_agent().await?;
        Ok(spire)
    }

    pub fn config(&self) -> &SpireConfig {
        &self.cfg
    }

    /// All the Go peers.
    ///
    /// # Panics
    /// Not started by [`Spire::start`].
    pub fn bins(&self) -> &PeerBins {
        self.peers
            .as_ref()
            .expect("the Go peers are known when started by Spire::start")
    }

    /// The server and agent binaries this SPIRE runs.
    pub fn spire_bins(&self) -> &SpireBins {
        &self.bins
    }

    /// `spire-server --version`.
    pub async fn version(&self) -> String {
        match run(&self.bins.server, &["--version"]).await {
            Ok(o) if o.status.success() => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
            .trim()
            .to_string(),
            _ => "(version unknown)".to_string(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.cfg.trust_domain
    }

    /// `spiffe://<td><node_path>`: the node alias the join token maps to. Use as parent of
    /// workload entries served by this agent.
    pub fn node_id(&self) -> String {
        format!("spiffe://{}{}", self.cfg.trust_domain, self.cfg.node_path)
    }

    /// The agent's own SPIFFE ID, `spiffe://<td>/spire/agent/join_token/<token>`.
    pub fn agent_id(&self) -> String {
        format!(
            "spiffe://{}/spire/agent/join_token/{}",
            self.cfg.trust_domain, self.join_token
        )
    }

    /// The agent's Workload API socket.
    pub fn workload_socket(&self) -> PathBuf {
        self.root.join("agent/public/api.sock")
    }

    /// `unix://<workload socket>`, the `SPIFFE_ENDPOINT_SOCKET` form.
    pub fn workload_endpoint(&self) -> String {
        format!("unix://{}", self.workload_socket().display())
    }

    /// The agent's admin socket (Delegated Identity API and debug API).
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("agent/admin/admin.sock")
    }

    /// `unix://<admin socket>`.
    pub fn admin_endpoint(&self) -> String {
        format!("unix://{}", self.admin_socket().display())
    }

    /// The server's local API socket (what `spire-server … -socketPath` talks to).
    pub fn server_socket(&self) -> PathBuf {
        self.root.join("server/api.sock")
    }

    /// `127.0.0.1:<port>` the server listens on for agents.
    pub fn server_addr(&self) -> String {
        format!("127.0.0.1:{}", self.server_port)
    }

    /// The temp dir holding configs, data and logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The server's and the agent's PIDs.
    pub fn pids(&self) -> Vec<i32> {
        [&self.server, &self.agent]
            .into_iter()
            .flatten()
            .filter_map(|c| i32::try_from(c.id()).ok())
            .collect()
    }

    /// The trust bundle as PEM, from `spire-server bundle show`.
    pub async fn bundle_pem(&self) -> String {
        self.server_cli(&["bundle", "show", "-format", "pem"]).await
    }

    /// Registers an entry with `spire-server entry create` and returns its entry ID.
    /// `selectors` are `type:value` strings such as `unix:uid:1000` or `k8s:ns:default`.
    pub async fn create_entry(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[&str],
    ) -> String {
        self.create_entry_with(spiffe_id, parent_id, selectors, &[])
            .await
    }

    /// [`create_entry`](Self::create_entry) with extra `spire-server entry create` flags, e.g.
    /// `&["-x509SVIDTTL", "60", "-hint", "db"]`.
    pub async fn create_entry_with(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        self.try_create_entry_with(spiffe_id, parent_id, selectors, extra)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`create_entry_with`](Self::create_entry_with), returning failures.
    ///
    /// # Errors
    /// `spire-server entry create` fails or prints no entry ID.
    pub async fn try_create_entry_with(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "entry",
            "create",
            "-spiffeID",
            spiffe_id,
            "-parentID",
            parent_id,
        ];
        for s in selectors {
            args.extend(["-selector", s]);
        }
        args.extend_from_slice(extra);
        let out = self.try_server_cli(&args).await?;
        out.lines()
            .find_map(|l| l.strip_prefix("Entry ID"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, id)| id.trim().to_string())
            .with_context(|| format!("no entry ID in `spire-server entry create` output: {out}"))
    }

    /// Deletes an entry by ID (`spire-server entry delete`).
    pub async fn delete_entry(&self, entry_id: &str) {
        self.server_cli(&["entry", "delete", "-entryID", entry_id])
            .await;
    }

    /// Runs `spire-server <args> -socketPath <server socket>`; panics unless it exits 0.
    /// Returns stdout.
    pub async fn server_cli(&self, args: &[&str]) -> String {
        let out = self.server_cli_output(args).await;
        expect_success("spire-server", args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`server_cli`](Self::server_cli), returning failures.
    ///
    /// # Errors
    /// It cannot run or exits non-zero.
    pub async fn try_server_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.try_server_cli_output(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            failure("spire-server", args, &out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `spire-server <args> -socketPath <server socket>` and returns the raw output.
    pub async fn server_cli_output(&self, args: &[&str]) -> Output {
        self.try_server_cli_output(args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn try_server_cli_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        let socket = self.server_socket();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-socketPath", socket.to_str().context("utf-8 temp path")?]);
        run(&self.bins.server, &full).await
    }

    /// Runs `spire-agent <args>` as is (add `-socketPath` yourself, e.g. for `api fetch x509`
    /// against another socket) and returns the raw output.
    pub async fn agent_cli_output(&self, args: &[&str]) -> Output {
        run(&self.bins.agent, args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `spiffeclient <args>` (our go-spiffe client) and returns the raw output.
    pub async fn spiffeclient_output(&self, args: &[&str]) -> Output {
        run(&self.bins().spiffeclient, args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `delegatedclient -socket <admin endpoint> <args>` (the reference Delegated Identity API
    /// client; pass `-selectors t:v,…` or `-pid N`, optionally `-audience A`) and returns the raw
    /// output. The caller's own identity is `delegatedclient`'s: register
    /// `unix:path:<bins().delegatedclient>` under an ID listed in `authorized_delegates`.
    pub async fn delegatedclient_output(&self, args: &[&str]) -> Output {
        let endpoint = self.admin_endpoint();
        let mut full = vec!["-socket", endpoint.as_str()];
        full.extend_from_slice(args);
        run(&self.bins().delegatedclient, &full)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Repeats `spire-agent api fetch x509 -socketPath <socket>` until it succeeds (an entry takes
    /// a few seconds to reach the agent) and returns its stdout; panics after `timeout`.
    pub async fn wait_for_x509(&self, socket: &Path, timeout: Duration) -> String {
        let socket = socket.to_str().expect("utf-8 socket path").to_string();
        let args = ["api", "fetch", "x509", "-socketPath", &socket];
        let out = retry(timeout, || self.agent_cli_output(&args)).await;
        expect_success("spire-agent", &args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the agent (SIGKILL, like a crash) and waits for it to exit. The Workload API and
    /// admin sockets stop answering. No-op when already stopped.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent (again) with the same config and data dir — it reuses its stored SVID, so
    /// the one-time join token is not needed twice — and waits for its healthcheck.
    ///
    /// # Panics
    /// When the agent is already running or does not become healthy.
    pub async fn start_agent(&mut self) {
        if let Err(e) = self.try_start_agent().await {
            panic!("{e:#}");
        }
    }

    async fn try_start_agent(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.agent.is_none(), "SPIRE agent already running");
        let config = self.root.join("agent/agent.conf");
        let log = self.root.join("agent/agent.log");
        let mut args = vec!["run", "-config", config.to_str().context("utf-8")?];
        // The join token is single-use: pass it only on first start, before the agent has an SVID.
        let first_start = !self.root.join("agent/data/agent_svid.der").exists();
        if first_start {
            args.extend(["-joinToken", &self.join_token]);
        }
        self.agent = Some(spawn_logged(&self.bins.agent, &args, &log)?);
        let socket = self.workload_socket();
        let socket = socket.to_str().context("utf-8")?.to_string();
        self.wait_healthy("agent", &["healthcheck", "-socketPath", &socket], true)
            .await
    }

    pub fn agent_running(&self) -> bool {
        self.agent.is_some()
    }

    /// The last `lines` lines of the server and agent logs, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for (name, path) in [
            ("server", "server/server.log"),
            ("agent", "agent/agent.log"),
        ] {
            let text = std::fs::read_to_string(self.root.join(path)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            let _ = writeln!(
                s,
                "---- SPIRE {name} log ({}) ----",
                self.root.join(path).display()
            );
            for l in tail {
                let _ = writeln!(s, "{l}");
            }
        }
        s
    }

    async fn try_start_server(&mut self) -> anyhow::Result<()> {
        let config = self.root.join("server/server.conf");
        let log = self.root.join("server/server.log");
        let args = ["run", "-config", config.to_str().context("utf-8")?];
        self.server = Some(spawn_logged(&self.bins.server, &args, &log)?);
        let socket = self.server_socket();
        let socket = socket.to_str().context("utf-8")?.to_string();
        self.wait_healthy("server", &["healthcheck", "-socketPath", &socket], false)
            .await
    }

    async fn wait_healthy(&mut self, what: &str, args: &[&str], agent: bool) -> anyhow::Result<()> {
        let bin = if agent {
            self.bins.agent.clone()
        } else {
            self.bins.server.clone()
        };
        let timeout = self.cfg.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let child = if agent {
                self.agent.as_mut()
            } else {
                self.server.as_mut()
            };
            if let Some(status) = child.and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!(
                    "SPIRE {what} exited during startup ({status})\n{}",
                    self.log_tails(40)
                );
            }
            let out = run(&bin, args).await?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "SPIRE {what} not healthy after {timeout:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_tails(40)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn write_server_config(&self) -> anyhow::Result<()> {
        let c = &self.cfg;
        let r = self.root.display();
        let key_manager = if c.disk_key_manager {
            format!("KeyManager \"disk\" {{\n        plugin_data {{ keys_path = \"{r}/server/data/keys.json\" }}\n    }}")
        } else {
            "KeyManager \"memory\" {\n        plugin_data {}\n    }".to_string()
        };
        let conf = format!(
            r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{r}/server/api.sock"
    trust_domain = "{td}"
    data_dir = "{r}/server/data"
    log_level = "{log}"
    ca_ttl = "{ca_ttl}"
    default_x509_svid_ttl = "{x509}"
    default_jwt_svid_ttl = "{jwt}"
    experimental {{
        cache_reload_interval = "{sync}"
    }}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{r}/server/data/datastore.sqlite3"
        }}
    }}
    {key_manager}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#,
            port = self.server_port,
            td = c.trust_domain,
            log = c.log_level,
            ca_ttl = c.ca_ttl,
            x509 = c.x509_svid_ttl,
            jwt = c.jwt_svid_ttl,
            sync = c.sync_interval,
        );
        std::fs::write(self.root.join("server/server.conf"), conf).context("write server.conf")
    }

    fn write_agent_config(&self) -> anyhow::Result<()> {
        let c = &self.cfg;
        let r = self.root.display();
        let admin = if c.admin_socket {
            let delegates: Vec<String> = c
                .authorized_delegates
                .iter()
                .map(|d| format!("\"{d}\""))
                .collect();
            format!(
                "    admin_socket_path = \"{r}/agent/admin/admin.sock\"\n    authorized_delegates = [{}]\n",
                delegates.join(", ")
            )
        } else {
            String::new()
        };
        let key_manager = if c.agent_disk_key_manager {
            format!("KeyManager \"disk\" {{\n        plugin_data {{\n            directory = \"{r}/agent/data\"\n        }}\n    }}")
        } else {
            "KeyManager \"memory\" {\n        plugin_data {}\n    }".to_string()
        };
        let size_limit = c
            .workload_size_limit
            .map(|n| format!("\n            workload_size_limit = {n}"))
            .unwrap_or_default();
        let conf = format!(
            r#"agent {{
    data_dir = "{r}/agent/data"
    log_level = "{log}"
    server_address = "127.0.0.1"
    server_port = "{port}"
    socket_path = "{r}/agent/public/api.sock"
{admin}    trust_bundle_path = "{r}/agent/bootstrap.pem"
    trust_domain = "{td}"
    experimental {{
        sync_interval = "{sync}"
    }}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    {key_manager}
    WorkloadAttestor "unix" {{
        plugin_data {{
            discover_workload_path = {discover}{size_limit}
        }}
    }}
}}
"#,
            log = c.log_level,
            port = self.server_port,
            td = c.trust_domain,
            sync = c.sync_interval,
            discover = c.discover_workload_path,
        );
        std::fs::write(self.root.join("agent/agent.conf"), conf).context("write agent.conf")
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(60));
        }
        if std::env::var("SVID_BROKER_KEEP_SPIRE").is_ok_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("SVID_BROKER_KEEP_SPIRE=1: keeping {}", dir.keep().display());
            }
        }
    }
}

/// Repeats `f` until its output has exit status 0 or `timeout` passes; returns the last output.
pub async fn retry<F, Fut>(timeout: Duration, mut f: F) -> Output
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Output>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let out = f().await;
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(POLL * 2).await;
    }
}

/// Panics with the command, status, stdout and stderr unless `out` succeeded.
pub fn expect_success(program: &str, args: &[&str], out: &Output) {
    assert!(out.status.success(), "{}", failure(program, args, out));
}

fn failure(program: &str, args: &[&str], out: &Output) -> String {
    format!(
        "`{program} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

async fn run(program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", program.display()))
}

fn spawn_logged(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .context("open SPIRE log file")?;
    let err = file.try_clone().context("clone log file handle")?;
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))
}

fn free_port() -> anyhow::Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("find a free loopback port")
}
