//! Serving: which services each socket offers, health reporting, policy reload on SIGHUP and
//! socket cleanup.

use super::*;

/// What server reflection lists on the public socket: exactly what it serves.
pub(super) const PUBLIC_SERVICES: &[&str] = &[
    "SpiffeWorkloadAPI",
    "svidbroker.v1.TaskBroker",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What server reflection lists on the admin socket.
pub(super) const ADMIN_SERVICES: &[&str] = &[
    "svidbroker.v1.Admin",
    "svidbroker.v1.TaskBroker",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

type Reflection<T> = tonic_reflection::server::v1::ServerReflectionServer<T>;
type ReflectionAlpha<T> = tonic_reflection::server::v1alpha::ServerReflectionServer<T>;

/// Reflection (v1 and v1alpha) listing `services` and itself, and nothing else.
pub(super) fn reflection_for(
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
pub(super) fn bounded_server(
    lim: &ConnectionLimits,
) -> Server<tower::layer::util::Stack<CallLayer, tower::layer::util::Identity>> {
    Server::builder()
        .max_concurrent_streams(Some(lim.max_streams_per_connection))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .http2_keepalive_interval(Some(lim.keepalive_interval))
        .http2_keepalive_timeout(Some(lim.keepalive_timeout))
        .layer(CallLayer::new(lim.request_timeout))
}

/// Says once at start how callers will be pinned (the kernel decides: `SO_PEERPIDFD` needs
/// Linux 6.5).
pub(super) fn log_pin_method() {
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

pub(super) fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// The Workload API is NOT_SERVING while the audit log refuses records (every SVID would be
/// refused), SERVING again once it recovers; the metrics follow too.
pub(super) async fn report_audit_health(
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

/// The metrics read the log's synced batches through its monitor, which does not keep the
/// log open.
impl crate::telemetry::AuditWrites for AuditMonitor {
    fn synced_batches(&self) -> u64 {
        AuditMonitor::synced_batches(self)
    }

    fn synced_records(&self) -> u64 {
        AuditMonitor::synced_records(self)
    }
}

pub(super) async fn reload_on_sighup(broker: Arc<Broker>) {
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

/// Mirrors an issuer's health signal into gRPC health: overall (`""`) and `name` are
/// `SERVING` while healthy and `NOT_SERVING` while not (the Workload API itself stays
/// `SERVING`: it serves cached SVIDs until they expire).
pub(super) async fn report_issuer_health(
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
