//! Logs (text or JSON) and Prometheus metrics, served as plain text at `/metrics` on the
//! optional `telemetry.metrics_addr`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::LogFormat;

/// Largest HTTP request head read by the metrics endpoint.
pub const MAX_METRICS_REQUEST_BYTES: usize = 8 * 1024;
/// Upper bounds (seconds) of the attestation latency histogram.
const LATENCY_BUCKETS: [f64; 8] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0];

/// Starts logging. `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    attest_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    attest_count: AtomicU64,
    attest_sum_micros: AtomicU64,
    recheck_count: AtomicU64,
    recheck_sum_nanos: AtomicU64,
    x509_svids_issued: AtomicU64,
    jwt_svids_issued: AtomicU64,
    task_tokens_issued: AtomicU64,
    ca_not_after: AtomicU64,
    svid_not_after_min: AtomicU64,
    /// The connection gate whose open connections and refusals are exported, when serving.
    gate: Option<std::sync::Arc<crate::server::gate::Gate>>,
    audit_write_failures: AtomicU64,
    audit_degraded: AtomicU64,
}

/// Most metrics scrapes served at once; further connections wait in the backlog.
pub const MAX_METRICS_CONNECTIONS: usize = 16;

impl Metrics {
    /// Metrics that also export `gate`'s open connections and refusals.
    pub fn with_gate(gate: std::sync::Arc<crate::server::gate::Gate>) -> Self {
        Self {
            gate: Some(gate),
            ..Self::default()
        }
    }

    pub fn observe_request(&self, rpc: &'static str, code: tonic::Code) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((rpc, code_name(code))).or_default() += 1;
    }

    pub fn observe_attestation(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (i, upper) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *upper {
                self.attest_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.attest_count.fetch_add(1, Ordering::Relaxed);
        self.attest_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The per-call re-check of a caller already attested on its connection.
    pub fn observe_recheck(&self, elapsed: Duration) {
        self.recheck_count.fetch_add(1, Ordering::Relaxed);
        self.recheck_sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn x509_issued(&self, not_after: SystemTime) {
        self.x509_svids_issued.fetch_add(1, Ordering::Relaxed);
        let t = crate::svid::unix_seconds(not_after) as u64;
        let cur = self.svid_not_after_min.load(Ordering::Relaxed);
        if cur == 0 || t < cur || cur < crate::svid::unix_seconds(SystemTime::now()) as u64 {
            self.svid_not_after_min.store(t, Ordering::Relaxed);
        }
    }

    pub fn jwt_issued(&self) {
        self.jwt_svids_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn task_token_issued(&self) {
        self.task_tokens_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_ca_not_after(&self, t: SystemTime) {
        self.ca_not_after
            .store(crate::svid::unix_seconds(t) as u64, Ordering::Relaxed);
    }

    /// The audit log's failed disk operations so far, and whether it refuses records now.
    pub fn set_audit_health(&self, degraded: bool, failures: u64) {
        self.audit_degraded
            .store(u64::from(degraded), Ordering::Relaxed);
        self.audit_write_failures
            .fetch_max(failures, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE svid_broker_requests_total counter\n");
        for ((rpc, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "svid_broker_requests_total{{rpc=\"{rpc}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# TYPE svid_broker_attestation_seconds histogram\n");
        for (i, upper) in LATENCY_BUCKETS.iter().enumerate() {
            let n = self.attest_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "svid_broker_attestation_seconds_bucket{{le=\"{upper}\"}} {n}"
            );
        }
        let count = self.attest_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "svid_broker_attestation_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.attest_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "svid_broker_attestation_seconds_sum {sum}");
        let _ = writeln!(out, "svid_broker_attestation_seconds_count {count}");
        out.push_str("# TYPE svid_broker_caller_recheck_seconds summary\n");
        let sum = self.recheck_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = self.recheck_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "svid_broker_caller_recheck_seconds_sum {sum}");
        let _ = writeln!(out, "svid_broker_caller_recheck_seconds_count {count}");
        let counters = [
            (
                "svid_broker_x509_svids_issued_total",
                &self.x509_svids_issued,
            ),
            ("svid_broker_jwt_svids_issued_total", &self.jwt_svids_issued),
            (
                "svid_broker_task_tokens_issued_total",
                &self.task_tokens_issued,
            ),
            (
                "svid_broker_audit_write_failures_total",
                &self.audit_write_failures,
            ),
        ];
        for (name, v) in counters {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE svid_broker_audit_degraded gauge\nsvid_broker_audit_degraded {}",
            self.audit_degraded.load(Ordering::Relaxed)
        );
        let now = crate::svid::unix_seconds(SystemTime::now());
        let gauges = [
            ("svid_broker_ca_expiry_seconds", &self.ca_not_after),
            ("svid_broker_svid_expiry_seconds", &self.svid_not_after_min),
        ];
        for (name, v) in gauges {
            let t = v.load(Ordering::Relaxed) as i64;
            let left = if t == 0 { 0 } else { t - now };
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {left}");
        }
        if let Some(gate) = &self.gate {
            let _ = writeln!(
                out,
                "# TYPE svid_broker_connections_open gauge\nsvid_broker_connections_open {}",
                gate.open_connections()
            );
            let _ = writeln!(
                out,
                "# TYPE svid_broker_connections_max gauge\nsvid_broker_connections_max {}",
                gate.max_connections()
            );
            out.push_str("# TYPE svid_broker_refused_total counter\n");
            for (limit, n) in gate.refusals() {
                let _ = writeln!(out, "svid_broker_refused_total{{limit=\"{limit}\"}} {n}");
            }
        }
        out
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Serves `GET /metrics` until the listener is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: accepting again at once would spin.
                tracing::debug!(error = %e, "metrics listener cannot accept; pausing");
                tokio::time::sleep(crate::server::limits::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = vec![0u8; MAX_METRICS_REQUEST_BYTES];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "only GET /metrics is served\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.observe_request("FetchJWTSVID", tonic::Code::Ok);
        m.observe_request("FetchJWTSVID", tonic::Code::Ok);
        m.observe_attestation(Duration::from_micros(300));
        m.observe_recheck(Duration::from_micros(4));
        let text = m.render();
        assert!(text.contains("svid_broker_caller_recheck_seconds_count 1"));
        assert!(text.contains("svid_broker_requests_total{rpc=\"FetchJWTSVID\",code=\"OK\"} 2"));
        assert!(text.contains("svid_broker_attestation_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("svid_broker_attestation_seconds_bucket{le=\"0.0001\"} 0"));
    }

    #[test]
    fn renders_audit_health() {
        let m = Metrics::default();
        let text = m.render();
        assert!(text.contains("svid_broker_audit_degraded 0\n"), "{text}");
        assert!(text.contains("svid_broker_audit_write_failures_total 0\n"));
        m.set_audit_health(true, 3);
        let text = m.render();
        assert!(text.contains("svid_broker_audit_degraded 1\n"));
        assert!(text.contains("svid_broker_audit_write_failures_total 3\n"));
        m.set_audit_health(false, 3);
        assert!(m.render().contains("svid_broker_audit_degraded 0\n"));
    }
}
