//! `svid-broker run`.

use std::path::PathBuf;

use crate::app::App;
use crate::config::{Config, DEFAULT_TRUST_DOMAIN};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Config file; without it the embedded development default runs.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Trust domain of the embedded default (ignored with --config).
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Override the socket path.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

/// # Errors
/// Invalid config, keys or sockets.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::development(&args.trust_domain)?,
    };
    if let Some(socket) = args.socket {
        config.socket_path = socket;
    }
    crate::telemetry::init_logging(config.telemetry.log_format);
    if config.development_profile {
        tracing::warn!(
            "DEVELOPMENT PROFILE: no config file given. Every local user gets spiffe://{}/uid/<uid> from an in-memory CA. Write a config with [[entry]] registrations for real use.",
            config.trust_domain
        );
    }
    let app = App::build(config).await?;
    app.run(shutdown_signal()).await
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
