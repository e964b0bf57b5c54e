//! `svid-broker debug selectors`: runs the configured attestors in-process (the daemon need
//! not be up) and explains which entries match and, for the others, what is missing.

use anyhow::Context;
use std::path::PathBuf;

use crate::attest::peer::PinnedProcess;
use crate::config::{Config, DEFAULT_TRUST_DOMAIN};

#[derive(clap::Subcommand, Debug)]
pub enum DebugCommand {
    /// Show a process's selectors and which entries they match.
    Selectors {
        #[arg(long)]
        pid: i32,
        /// Config whose attestors and entries to use (default: the development profile).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// # Errors
/// Bad config or a process that cannot be attested.
pub async fn run(cmd: DebugCommand) -> anyhow::Result<()> {
    let DebugCommand::Selectors { pid, config } = cmd;
    let config = match &config {
        Some(p) => Config::load(p)?,
        None => Config::development(DEFAULT_TRUST_DOMAIN)?,
    };
    let attestors = crate::app::build_attestors(&config)?;
    let attestation = match PinnedProcess::from_pid(pid) {
        Ok(process) => attestors.attest(&process).await,
        Err(e) => {
            // A fake proc root (tests, post-mortems) has no live process to pin.
            println!("(pid {pid} not pinned: {e}; attesting from the configured proc roots)");
            attestors.attest_pid(pid).await
        }
    }
    .with_context(|| format!("attesting process {pid}"))?;
    println!(
        "Selectors of pid {pid} ({} found):",
        attestation.selectors.len()
    );
    for s in &attestation.selectors {
        println!("  {s}");
    }
    for f in &attestation.failures {
        println!("  (attestor failure: {f})");
    }
    let identities = config.registry.identities(&attestation.selectors);
    println!("\nIdentities issued ({}):", identities.len());
    for (i, id) in identities.iter().enumerate() {
        let default = if i == 0 { " (default)" } else { "" };
        println!("  {}{default}", id.spiffe_id);
    }
    println!("\nEntries not matched:");
    let mut any = false;
    for ex in config.registry.explain(&attestation.selectors) {
        if !ex.missing.is_empty() {
            any = true;
            println!("  {}  missing: {}", ex.spiffe_id, ex.missing.join(", "));
        }
    }
    if !any {
        println!("  (none)");
    }
    Ok(())
}
