//! Lifecycle: build (keys, attestors, bound sockets) → run → shutdown signal → drain with a
//! deadline → remove the sockets.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::transport::Server;

use crate::attest::unix::UnixAttestor;
use crate::attest::{Attestors, WorkloadAttestor};
use crate::authority::EmbeddedAuthority;
use crate::config::{AuthorityKind, Config};
use crate::identity::IdentityManager;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::server::caller::CallerResolver;
use crate::server::conn::PeerConn;
use crate::server::header::require_security_header;
use crate::server::socket;
use crate::telemetry::Metrics;
use crate::workload_api::WorkloadApi;

/// Largest gRPC request message decoded.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Most concurrent HTTP/2 streams on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Everything built from the config, before serving.
pub struct App {
    pub config: Config,
    pub identities: Arc<IdentityManager>,
    pub resolver: Arc<CallerResolver>,
    pub metrics: Arc<Metrics>,
    listener: tokio::net::UnixListener,
    metrics_listener: Option<tokio::net::TcpListener>,
}

impl App {
    /// Loads keys and binds the sockets. Nothing is served until [`App::run`].
    ///
    /// # Errors
    /// Key material, socket or metrics address problems, with the reason.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.authority.kind == AuthorityKind::Spire {
            anyhow::bail!(
                "authority kind \"spire\" is not available in this build; use \"embedded\""
            );
        }
        let authority = Arc::new(EmbeddedAuthority::new(
            config.trust_domain.clone(),
            config.authority.clone(),
            config.data_dir.as_deref(),
        )?);
        let metrics = Arc::new(Metrics::default());
        metrics.set_ca_not_after(authority.active_ca_not_after());
        let identities = IdentityManager::new(authority);
        let registry = Arc::new(config.registry.clone());
        let attestors = build_attestors(&config)?;
        let resolver = Arc::new(CallerResolver::new(attestors, registry, metrics.clone()));
        let listener = socket::bind(&config.socket_path, 0o777)?;
        let metrics_listener = match config.telemetry.metrics_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("metrics address {addr}: {e}"))?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            identities,
            resolver,
            metrics,
            listener,
            metrics_listener,
        })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.config.socket_path.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, gives in-flight calls
    /// `shutdown_grace` to finish, ends open streams, and removes the socket.
    ///
    /// # Errors
    /// The server failed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let rotation = tokio::spawn(self.identities.clone().run(stop_rx.clone()));
        let metrics_task = self
            .metrics_listener
            .map(|l| tokio::spawn(crate::telemetry::serve_metrics(l, self.metrics.clone())));

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<SpiffeWorkloadApiServer<WorkloadApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let workload = WorkloadApi::new(
            self.resolver.clone(),
            self.identities.clone(),
            self.metrics.clone(),
            stop_rx.clone(),
            None,
        );
        let workload =
            SpiffeWorkloadApiServer::new(workload).max_decoding_message_size(MAX_REQUEST_BYTES);
        let workload =
            tonic::service::interceptor::InterceptedService::new(workload, require_security_header);

        let incoming = tokio_stream::wrappers::UnixListenerStream::new(self.listener)
            .map(|conn| conn.map(PeerConn::accept));

        let socket_path = self.config.socket_path.clone();
        let grace = self.config.shutdown_grace;
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(workload)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = drain_rx.await;
            });
        let mut server = tokio::spawn(server);

        tracing::info!(socket = %socket_path.display(), trust_domain = %self.config.trust_domain, "svid-broker serving");
        tokio::select! {
            _ = shutdown => {}
            r = &mut server => {
                let _ = std::fs::remove_file(&socket_path);
                return Err(anyhow::anyhow!("server stopped: {r:?}"));
            }
        }
        tracing::info!(grace = ?grace, "shutting down: no new connections, draining calls");
        let _ = stop_tx.send(true);
        let _ = drain_tx.send(());
        match tokio::time::timeout(grace, &mut server).await {
            Ok(_) => tracing::info!("drained"),
            Err(_) => {
                tracing::warn!("calls still open after the grace period; closing them");
                server.abort();
            }
        }
        rotation.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
        let _ = std::fs::remove_file(&socket_path);
        Ok(())
    }
}

/// The attestors a config asks for.
///
/// # Errors
/// An attestor cannot be built from its config.
pub fn build_attestors(config: &Config) -> anyhow::Result<Attestors> {
    let unix: Arc<dyn WorkloadAttestor> = Arc::new(UnixAttestor::new(
        config.attestor.unix.clone(),
        config.registry.wants_sha256(),
    ));
    let mut attestors = vec![unix];
    if let Some(k8s) = &config.attestor.k8s {
        let k8s = crate::attest::k8s::K8sAttestor::new(k8s.clone())
            .map_err(|e| anyhow::anyhow!("[attestor.k8s]: {e}"))?;
        attestors.push(Arc::new(k8s));
    }
    Ok(Attestors::new(attestors))
}
