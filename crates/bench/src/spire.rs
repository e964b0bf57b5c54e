//! A SPIRE server and agent on a temp dir, for the side-by-side FetchJWTSVID row: started by the
//! integration tests' launcher, configured for the benchmark (logging at WARN, no admin socket).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use svid_broker_test_support::spire::SpireConfig;
pub use svid_broker_test_support::spire::{Spire, SpireBins};

use super::calls::{Client, Workload};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const TRUST_DOMAIN: &str = "bench.test";

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
    if let Some(bins) = candidates.iter().find_map(|d| SpireBins::in_dir(d)) {
        return Ok(bins);
    }
    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "SPIRE not found (looked in {}): run scripts/install-go-peers.sh (needs Go) to build spire-server and spire-agent into target/peers/bin, or pass --spire-bin DIR",
        looked.join(", ")
    ))
}

/// Starts SPIRE (the shared launcher, `svid_broker_test_support::spire`), registers this uid,
/// and waits until the agent serves it a JWT-SVID.
///
/// # Errors
/// A binary fails or SPIRE does not become ready in time (the log tails are included).
pub async fn start(bins: &SpireBins) -> anyhow::Result<Spire> {
    let config = SpireConfig {
        trust_domain: TRUST_DOMAIN.into(),
        authorized_delegates: Vec::new(),
        admin_socket: false,
        agent_disk_key_manager: false,
        discover_workload_path: false,
        workload_size_limit: None,
        // SPIRE is not charged for debug logs.
        log_level: "WARN".into(),
        ready_timeout: READY_TIMEOUT,
        dir_prefix: "svb-spire-".into(),
        ..SpireConfig::default()
    };
    let spire = Spire::try_start(config, bins).await?;
    let node_id = spire.node_id();
    let uid = svid_broker_test_support::euid();
    spire
        .try_create_entry_with(
            &format!("spiffe://{TRUST_DOMAIN}/bench"),
            &node_id,
            &[&format!("unix:uid:{uid}")],
            &[],
        )
        .await?;
    // The entry reaches the agent at its next sync.
    let agent_socket = spire.workload_socket();
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
                spire.log_tails(20)
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(spire)
}
