//! Lifecycle: build (keys, policy, audit replay, attestors, bound sockets) → run → shutdown
//! signal → drain with a deadline → remove the sockets.

mod build;
mod serve;

pub use build::build_attestors;
use build::*;
use serve::*;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tonic::transport::Server;

use crate::attest::unix::UnixAttestor;
use crate::attest::{Attestors, WorkloadAttestor};
use crate::audit::{AuditLog, AuditMonitor, AuditOptions};
use crate::authority::Issuer;
use crate::broker::oidc::OidcIssuers;
use crate::broker::service::{AdminService, TaskBrokerService};
use crate::broker::{replay, Broker, BrokerParts};
use crate::clock::Clock;
use crate::config::Config;
use crate::policy::{Action, PolicyEngine, PolicyRequest, Principal};
use crate::proto::svidbroker::v1::admin_server::AdminServer;
use crate::proto::svidbroker::v1::task_broker_server::TaskBrokerServer;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::server::caller::{Caller, CallerResolver};
use crate::server::calls::CallLayer;
use crate::server::conn::ConnTimeouts;
use crate::server::gate::Gate;
use crate::server::header::require_security_header;
use crate::server::limits::{
    self, ConnectionLimits, MAX_BROKER_REQUEST_BYTES, MAX_HEADER_LIST_BYTES,
    MAX_SMALL_REQUEST_BYTES, MAX_WORKLOAD_REQUEST_BYTES,
};
use crate::server::{listener, socket};
use crate::telemetry::Metrics;
use crate::workload_api::{AudienceGate, WorkloadApi, WorkloadApiService};

pub use crate::policy::DEVELOPMENT_POLICY;

/// Everything built from the config, before serving.
pub struct App {
    pub config: Config,
    pub issuer: Arc<dyn Issuer>,
    /// The audit log, when configured; shared by everyone who records.
    pub audit: Option<AuditLog>,
    pub resolver: Arc<CallerResolver>,
    pub metrics: Arc<Metrics>,
    pub broker: Arc<Broker>,
    /// Connection admission shared by the public and admin sockets.
    pub gate: Arc<Gate>,
    listener: UnixListener,
    admin_listener: Option<UnixListener>,
    metrics_listener: Option<tokio::net::TcpListener>,
    oauth: Option<crate::oauth::OAuthListener>,
}

impl App {
    /// Loads keys, policy and the audit log, and binds the sockets. Nothing is served until
    /// [`App::run`].
    ///
    /// # Errors
    /// Key material, policy, audit log, socket or metrics address problems, with the reason.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        log_pin_method();
        let gate = build_gate(&config.limits);
        let metrics = Arc::new(Metrics::with_gate(gate.clone()));
        let clock = crate::clock::system();
        // The audit log first: everyone who records takes it at construction.
        let (audit, records) = open_audit(&config).await?;
        if let Some(log) = &audit {
            metrics.export_audit_writes(Arc::new(log.monitor()));
        }
        let issuer = build_issuer(&config, &clock).await?;
        if let Some(t) = issuer.ca_not_after() {
            metrics.set_ca_not_after(t);
        }
        let registry = Arc::new(config.registry.clone());
        let attestors = build_attestors(&config)?;
        let policy = build_policy(&config)?;
        let resolver = Arc::new(
            CallerResolver::new(
                attestors,
                registry,
                metrics.clone(),
                issuer.clone(),
                audit.clone(),
            )
            .with_policy(policy.clone()),
        );
        let parts = BrokerParts {
            config: config.broker.clone(),
            issuer: issuer.clone(),
            policy,
            audit: audit
                .clone()
                .map(|log| Arc::new(log) as Arc<dyn crate::audit::AuditSink>),
            oidc: OidcIssuers::load(&config.oidc_issuers)?,
            metrics: metrics.clone(),
            clock,
        };
        let broker = Arc::new(Broker::new(parts));
        let stats: Arc<dyn crate::telemetry::TaskTableStats> = broker.clone();
        metrics.export_task_table(Arc::downgrade(&stats));
        if !records.is_empty() {
            broker.restore(replay::rebuild(&records));
            tracing::info!(
                records = records.len(),
                "task state rebuilt from the audit log"
            );
        }
        let listener = socket::bind(&config.socket_path, &socket::PUBLIC)?;
        let admin_listener = config
            .admin_socket_path
            .as_deref()
            .map(|p| socket::bind(p, &socket::ADMIN))
            .transpose()
            .inspect_err(|_| remove_sockets(std::slice::from_ref(&config.socket_path)))?;
        let metrics_listener = match config.telemetry.metrics_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("metrics address {addr}: {e}"))?,
            ),
            None => None,
        };
        let oauth = match &config.oauth {
            Some(o) => Some(
                crate::oauth::OAuthListener::bind(
                    &config.authority,
                    o,
                    broker.clone(),
                    issuer.clone(),
                    resolver.registry().clone(),
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self {
            config,
            issuer,
            audit,
            resolver,
            metrics,
            broker,
            gate,
            listener,
            admin_listener,
            metrics_listener,
            oauth,
        })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.config.socket_path.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, gives in-flight calls
    /// `shutdown_grace` to finish, ends open streams, and removes the sockets.
    ///
    /// # Errors
    /// The server failed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut background = vec![
            tokio::spawn(self.issuer.clone().run(stop_rx.clone())),
            tokio::spawn(self.broker.clone().sweep_forever()),
            tokio::spawn(reload_on_sighup(self.broker.clone())),
        ];
        if let Some(l) = self.metrics_listener {
            background.push(tokio::spawn(crate::telemetry::serve_metrics(
                l,
                self.metrics.clone(),
            )));
        }

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<SpiffeWorkloadApiServer<WorkloadApi>>()
            .await;
        if let Some(log) = &self.audit {
            background.push(tokio::spawn(report_audit_health(
                log.monitor(),
                health_reporter.clone(),
                self.metrics.clone(),
            )));
        }
        if let Some((name, healthy)) = self.issuer.health() {
            background.push(tokio::spawn(report_issuer_health(
                name,
                healthy,
                health_reporter.clone(),
            )));
        }
        let health_service = health_service.max_decoding_message_size(MAX_SMALL_REQUEST_BYTES);
        let (reflection, reflection_alpha) = reflection_for(PUBLIC_SERVICES)?;

        let gate: Option<Arc<dyn AudienceGate>> = match (&self.config.policy, self.broker.policy())
        {
            (Some(p), Some(engine)) if p.workload_api_jwt => {
                Some(Arc::new(PolicyGate(engine.clone())))
            }
            _ => None,
        };
        let workload = WorkloadApi::new(
            self.resolver.clone(),
            self.issuer.clone(),
            self.audit.clone(),
            self.metrics.clone(),
            stop_rx.clone(),
            gate,
        );
        let workload = WorkloadApiService::new(workload, |s| {
            s.max_decoding_message_size(MAX_WORKLOAD_REQUEST_BYTES)
        });
        let task_broker = TaskBrokerServer::new(TaskBrokerService::new(
            self.broker.clone(),
            self.resolver.clone(),
            self.metrics.clone(),
            false,
        ))
        .max_decoding_message_size(MAX_BROKER_REQUEST_BYTES);
        use tonic::service::interceptor::InterceptedService;
        let lim = &self.config.limits;
        let timeouts = ConnTimeouts {
            handshake: lim.handshake_timeout,
            idle: lim.idle_timeout,
        };
        let incoming = listener::incoming(self.listener, self.gate.clone(), timeouts);

        let (drain_tx, drain_rx) = watch::channel(false);
        let drained = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|d| *d).await;
        };
        let public = bounded_server(lim)
            .add_service(health_service.clone())
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(InterceptedService::new(workload, require_security_header))
            .add_service(InterceptedService::new(
                task_broker,
                require_security_header,
            ))
            .serve_with_incoming_shutdown(incoming, drained(drain_rx.clone()));
        let mut servers = vec![tokio::spawn(public)];
        // The OAuth listener drains with the gRPC servers, within the same shutdown_grace.
        let mut oauth = self.oauth.map(|o| tokio::spawn(o.serve(drain_rx.clone())));
        if let Some(admin) = self.admin_listener {
            let incoming = listener::incoming(admin, self.gate.clone(), timeouts);
            let admin_broker = TaskBrokerServer::new(TaskBrokerService::new(
                self.broker.clone(),
                self.resolver.clone(),
                self.metrics.clone(),
                true,
            ))
            .max_decoding_message_size(MAX_BROKER_REQUEST_BYTES);
            let admin_service = AdminServer::new(AdminService::new(self.broker.clone()))
                .max_decoding_message_size(MAX_BROKER_REQUEST_BYTES);
            let (reflection, reflection_alpha) = reflection_for(ADMIN_SERVICES)?;
            let server = bounded_server(lim)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_service(admin_service)
                .add_service(admin_broker)
                .serve_with_incoming_shutdown(incoming, drained(drain_rx.clone()));
            servers.push(tokio::spawn(server));
        }

        let mut sockets = vec![self.config.socket_path.clone()];
        sockets.extend(self.config.admin_socket_path.clone());
        // An OAuth task aborted past the grace period drops its socket file only when the
        // runtime next polls it, which may be after the process exits: remove it here too.
        sockets.extend(
            self.config
                .oauth
                .as_ref()
                .and_then(|o| o.socket_path.clone()),
        );
        let grace = self.config.shutdown_grace;
        tracing::info!(
            socket = %self.config.socket_path.display(),
            admin_socket = ?self.config.admin_socket_path,
            trust_domain = %self.config.trust_domain,
            "svid-broker serving"
        );
        tokio::select! {
            (r, _, _) = futures::future::select_all(servers.iter_mut()) => {
                remove_sockets(&sockets);
                return Err(anyhow::anyhow!("server stopped unexpectedly: {r:?}"));
            }
            _ = shutdown => {}
        }
        tracing::info!(grace = ?grace, "shutting down: no new connections, draining calls");
        let _ = stop_tx.send(true);
        let _ = drain_tx.send(true);
        let all = futures::future::join(futures::future::join_all(servers.iter_mut()), async {
            if let Some(o) = oauth.as_mut() {
                let _ = o.await;
            }
        });
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("calls still open after the grace period; closing them");
        }
        servers.iter().for_each(|s| s.abort());
        oauth.iter().for_each(|o| o.abort());
        background.iter().for_each(|t| t.abort());
        remove_sockets(&sockets);
        tracing::info!("stopped");
        Ok(())
    }
}
