//! Lifecycle: build (keys, policy, audit replay, attestors, bound sockets) → run → shutdown
//! signal → drain with a deadline → remove the sockets.

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
use crate::workload_api::{AudienceGate, WorkloadApi};

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
        let issuer = build_issuer(&config, &clock).await?;
        if let Some(t) = issuer.ca_not_after() {
            metrics.set_ca_not_after(t);
        }
        let registry = Arc::new(config.registry.clone());
        let attestors = build_attestors(&config)?;
        let resolver = Arc::new(CallerResolver::new(
            attestors,
            registry,
            metrics.clone(),
            issuer.clone(),
            audit.clone(),
        ));
        let parts = BrokerParts {
            config: config.broker.clone(),
            issuer: issuer.clone(),
            policy: build_policy(&config)?,
            audit: audit
                .clone()
                .map(|log| Arc::new(log) as Arc<dyn crate::audit::AuditSink>),
            oidc: OidcIssuers::load(&config.oidc_issuers)?,
            metrics: metrics.clone(),
            clock,
        };
        let broker = Arc::new(Broker::new(parts));
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

        if let Some(o) = self.oauth {
            background.push(tokio::spawn(o.serve()));
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
        let workload = SpiffeWorkloadApiServer::new(workload)
            .max_decoding_message_size(MAX_WORKLOAD_REQUEST_BYTES);
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
        let all = futures::future::join_all(servers.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("calls still open after the grace period; closing them");
        }
        servers.iter().for_each(|s| s.abort());
        background.iter().for_each(|t| t.abort());
        remove_sockets(&sockets);
        tracing::info!("stopped");
        Ok(())
    }
}

/// What server reflection lists on the public socket: exactly what it serves.
const PUBLIC_SERVICES: &[&str] = &[
    "SpiffeWorkloadAPI",
    "svidbroker.v1.TaskBroker",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
/// What server reflection lists on the admin socket.
const ADMIN_SERVICES: &[&str] = &[
    "svidbroker.v1.Admin",
    "svidbroker.v1.TaskBroker",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

type Reflection<T> = tonic_reflection::server::v1::ServerReflectionServer<T>;
type ReflectionAlpha<T> = tonic_reflection::server::v1alpha::ServerReflectionServer<T>;

/// Reflection (v1 and v1alpha) listing `services` and itself, and nothing else.
fn reflection_for(
    services: &[&str],
) -> anyhow::Result<(
    Reflection<impl tonic_reflection::server::v1::ServerReflection>,
    ReflectionAlpha<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    Ok((
        builder()
            .build_v1()?
            .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
        builder()
            .build_v1alpha()?
            .max_decoding_message_size(MAX_SMALL_REQUEST_BYTES),
    ))
}

/// A tonic server with the `[limits]` every socket shares.
fn bounded_server(
    lim: &ConnectionLimits,
) -> Server<tower::layer::util::Stack<CallLayer, tower::layer::util::Identity>> {
    Server::builder()
        .max_concurrent_streams(Some(lim.max_streams_per_connection))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(lim.keepalive_interval))
        .http2_keepalive_timeout(Some(lim.keepalive_timeout))
        .layer(CallLayer::new(lim.request_timeout))
}

/// The connection gate, its cap lowered to what the file-descriptor limit allows (raised to
/// the hard limit first).
fn build_gate(lim: &ConnectionLimits) -> Arc<Gate> {
    let max = match limits::raise_fd_limit() {
        Ok(fds) => {
            let by_fds = limits::connections_for_fds(fds);
            let max = lim.max_connections.min(by_fds).max(1);
            tracing::info!(
                fd_limit = fds,
                max_connections = max,
                max_connections_per_uid = lim.max_connections_per_uid.min(max),
                "connection capacity"
            );
            if by_fds < lim.max_connections {
                tracing::warn!(
                    configured = lim.max_connections,
                    "limits.max_connections lowered to what the fd limit allows; raise LimitNOFILE / ulimit -n to hold more"
                );
            }
            max
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the fd limit; keeping limits.max_connections");
            lim.max_connections
        }
    };
    Gate::new(lim, max)
}

/// Says once at start how callers will be pinned (the kernel decides: `SO_PEERPIDFD` needs
/// Linux 6.5).
fn log_pin_method() {
    use std::os::fd::AsRawFd;
    let probe = std::os::unix::net::UnixStream::pair()
        .and_then(|(a, _b)| crate::attest::peer::PinnedProcess::from_socket(a.as_raw_fd()));
    match probe {
        Ok(p) => tracing::info!(method = p.method().as_str(), "callers are pinned by pidfd"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot pin callers by pidfd on this kernel; every call will be refused")
        }
    }
}

fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// The Workload API is NOT_SERVING while the audit log refuses records (every SVID would be
/// refused), SERVING again once it recovers; the metrics follow too.
async fn report_audit_health(
    monitor: AuditMonitor,
    reporter: tonic_health::server::HealthReporter,
    metrics: Arc<Metrics>,
) {
    let mut health = monitor.health();
    loop {
        let healthy = health.borrow_and_update().is_healthy();
        metrics.set_audit_health(!healthy, monitor.failures());
        if healthy {
            reporter
                .set_serving::<SpiffeWorkloadApiServer<WorkloadApi>>()
                .await;
        } else {
            reporter
                .set_not_serving::<SpiffeWorkloadApiServer<WorkloadApi>>()
                .await;
        }
        if health.changed().await.is_err() {
            return;
        }
    }
}

async fn reload_on_sighup(broker: Arc<Broker>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload policy with Admin.ReloadPolicy");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading policy");
        let _ = broker.reload_policy().await;
    }
}

fn build_policy(config: &Config) -> anyhow::Result<Option<Arc<PolicyEngine>>> {
    let policy = match (&config.policy, config.development_profile) {
        (Some(p), _) => Some(Arc::new(
            PolicyEngine::load(&p.file, config.audiences.clone())
                .map_err(|e| anyhow::anyhow!("[policy] file {}: {e}", p.file.display()))?,
        )),
        (None, true) => Some(Arc::new(PolicyEngine::from_text(
            DEVELOPMENT_POLICY,
            config.audiences.clone(),
        )?)),
        (None, false) => {
            tracing::warn!("no [policy] configured: the TaskBroker denies every request");
            None
        }
    };
    Ok(policy)
}

/// Opens the audit log and reads back its records (to rebuild the task table).
async fn open_audit(
    config: &Config,
) -> anyhow::Result<(Option<AuditLog>, Vec<crate::audit::AuditRecord>)> {
    Ok(match &config.audit {
        Some(a) => {
            let dir = a.path.parent().filter(|d| !d.as_os_str().is_empty());
            crate::fs_trust::FsTrust::current().ensure_dir(
                "[audit] path's directory",
                dir.unwrap_or(std::path::Path::new(".")),
                0o700,
            )?;
            let opts = AuditOptions {
                max_file_bytes: a.rotate_at(),
                ..AuditOptions::default()
            };
            let (log, records) = AuditLog::open(&a.path, opts)
                .await
                .map_err(|e| anyhow::anyhow!("[audit] path {}: {e}", a.path.display()))?;
            (Some(log), records)
        }
        None => {
            tracing::warn!("no [audit] path configured: decisions and tokens are not recorded, and a restart forgets tasks");
            (None, Vec::new())
        }
    })
}

/// The issuer `[authority] kind` names.
async fn build_issuer(config: &Config, clock: &Arc<dyn Clock>) -> anyhow::Result<Arc<dyn Issuer>> {
    crate::authority::build(
        &config.trust_domain,
        &config.authority,
        config.data_dir.as_deref(),
        clock.clone(),
    )
    .await
}

/// Mirrors an issuer's health signal into gRPC health: overall (`""`) and `name` are
/// `SERVING` while healthy and `NOT_SERVING` while not (the Workload API itself stays
/// `SERVING`: it serves cached SVIDs until they expire).
async fn report_issuer_health(
    name: &'static str,
    mut healthy: watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
) {
    use tonic_health::ServingStatus;
    loop {
        let status = if *healthy.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(name, status).await;
        if healthy.changed().await.is_err() {
            return;
        }
    }
}

/// Policy on the Workload API's JWT-SVID audiences.
struct PolicyGate(Arc<PolicyEngine>);

impl AudienceGate for PolicyGate {
    fn check(
        &self,
        caller: &Caller,
        spiffe_id: &spiffe::SpiffeId,
        audience: &str,
    ) -> Result<(), tonic::Status> {
        let id = spiffe_id.to_string();
        let selectors = caller.selector_strings();
        let d = self.0.decide(&PolicyRequest {
            principal: Principal {
                spiffe_id: &id,
                trust_domain: spiffe_id.trust_domain_name(),
                selectors: &selectors,
            },
            action: Action::FetchJwtSvid,
            audience,
            purpose: "",
            scopes: &[],
            ttl_seconds: 0,
            delegation_depth: 0,
            issuance_rate: 0,
            on_behalf_of: "",
        });
        if d.allowed {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "JWT-SVID for audience {audience:?} {}",
                crate::broker::grant::why(&d)
            )))
        }
    }
}

/// The attestors a config asks for.
///
/// # Errors
/// An attestor cannot be built from its config.
pub fn build_attestors(config: &Config) -> anyhow::Result<Attestors> {
    let unix: Arc<dyn WorkloadAttestor> = Arc::new(UnixAttestor::new(
        config.attestor.unix.clone(),
        // When the issuer keeps the entries, they are not known here: offer unix:sha256 in
        // case one uses it.
        config.registry.wants_sha256() || !config.authority.entries_are_local(),
    ));
    let mut attestors = vec![unix];
    if let Some(k8s) = &config.attestor.k8s {
        let k8s = crate::attest::k8s::K8sAttestor::new(k8s.clone())
            .map_err(|e| anyhow::anyhow!("[attestor.k8s]: {e}"))?;
        attestors.push(Arc::new(k8s));
    }
    Ok(Attestors::new(attestors))
}
