//! The daemon's metrics, kept in a `prometheus-client` registry. Values that depend on the
//! time of the scrape (time left before expiry) or that another part owns (the connection
//! gate's counts) are read by collectors when the registry is encoded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::task_table::{self, TaskTableCollector, TaskTableStats};
use crate::svid::unix_seconds;

/// Upper bounds (seconds) of the attestation latency histogram.
const ATTESTATION_BUCKETS: [f64; 8] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0];
/// Upper bounds (seconds) of the per-call re-check histogram: microseconds, not milliseconds.
const RECHECK_BUCKETS: [f64; 8] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.001,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: &'static str,
    code: &'static str,
}

/// The `[broker]` key a refused call hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BoundLabels {
    bound: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    table_refusals: Family<BoundLabels, Counter>,
    attestation: Histogram,
    recheck: Histogram,
    x509_svids_issued: Counter,
    jwt_svids_issued: Counter,
    task_tokens_issued: Counter,
    audit_write_failures: Counter,
    audit_degraded: Gauge,
    expiry: Arc<Expiry>,
    /// The audit log's synced batches, once there is a log to count them.
    audit_writes: Arc<OnceLock<Arc<dyn AuditWrites>>>,
    /// The TaskBroker's table, once there is a broker to read it from.
    task_table: task_table::Slot,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Metrics {
    /// Metrics that also export `gate`'s open connections and refusals.
    pub fn with_gate(gate: Arc<dyn ConnectionStats>) -> Self {
        Self::new(Some(gate))
    }

    fn new(gate: Option<Arc<dyn ConnectionStats>>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "svid_broker_requests",
            "Workload API and broker calls by RPC and gRPC status",
            requests.clone(),
        );
        let table_refusals = Family::<BoundLabels, Counter>::default();
        registry.register(
            "svid_broker_task_table_refused",
            "OpenTask and MintTaskToken calls refused at a bound of the task table, by the [broker] key that refused them",
            table_refusals.clone(),
        );
        let attestation = Histogram::new(ATTESTATION_BUCKETS);
        registry.register(
            "svid_broker_attestation_seconds",
            "Time to attest a new caller",
            attestation.clone(),
        );
        let recheck = Histogram::new(RECHECK_BUCKETS);
        registry.register(
            "svid_broker_caller_recheck_seconds",
            "Time to re-check, on each call, a caller already attested on its connection",
            recheck.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let x509_svids_issued = counter(
            &mut registry,
            "svid_broker_x509_svids_issued",
            "X.509-SVIDs issued",
        );
        let jwt_svids_issued = counter(
            &mut registry,
            "svid_broker_jwt_svids_issued",
            "JWT-SVIDs issued",
        );
        let task_tokens_issued = counter(
            &mut registry,
            "svid_broker_task_tokens_issued",
            "Per-task tokens issued by the broker",
        );
        let audit_write_failures = counter(
            &mut registry,
            "svid_broker_audit_write_failures",
            "Failed disk operations of the audit log",
        );
        let audit_degraded = Gauge::default();
        registry.register(
            "svid_broker_audit_degraded",
            "1 while the audit log refuses records (and the calls that need one), else 0",
            audit_degraded.clone(),
        );
        let expiry = Arc::new(Expiry::default());
        registry.register_collector(Box::new(expiry.clone()));
        if let Some(gate) = gate {
            registry.register_collector(Box::new(GateCollector(gate)));
        }
        let audit_writes = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(AuditWritesCollector(audit_writes.clone())));
        let task_table = task_table::Slot::default();
        registry.register_collector(Box::new(TaskTableCollector(task_table.clone())));
        Self {
            registry,
            requests,
            table_refusals,
            attestation,
            recheck,
            x509_svids_issued,
            jwt_svids_issued,
            task_tokens_issued,
            audit_write_failures,
            audit_degraded,
            expiry,
            audit_writes,
            task_table,
        }
    }

    pub fn observe_request(&self, rpc: &'static str, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                rpc,
                code: code_name(code),
            })
            .inc();
    }

    /// An OpenTask or MintTaskToken refused at the task table's `bound` (a `[broker]` key):
    /// a workload at its share shows here before anyone reads its errors.
    pub fn task_table_refused(&self, bound: &'static str) {
        self.table_refusals
            .get_or_create(&BoundLabels { bound })
            .inc();
    }

    pub fn observe_attestation(&self, elapsed: Duration) {
        self.attestation.observe(elapsed.as_secs_f64());
    }

    /// The per-call re-check of a caller already attested on its connection.
    pub fn observe_recheck(&self, elapsed: Duration) {
        self.recheck.observe(elapsed.as_secs_f64());
    }

    pub fn x509_issued(&self, not_after: SystemTime) {
        self.x509_svids_issued.inc();
        self.expiry.svid_issued(not_after);
    }

    pub fn jwt_issued(&self) {
        self.jwt_svids_issued.inc();
    }

    pub fn task_token_issued(&self) {
        self.task_tokens_issued.inc();
    }

    pub fn set_ca_not_after(&self, t: SystemTime) {
        self.expiry
            .ca_not_after
            .store(unix_seconds(t) as u64, Ordering::Relaxed);
    }

    /// The audit log's failed disk operations so far, and whether it refuses records now.
    pub fn set_audit_health(&self, degraded: bool, failures: u64) {
        self.audit_degraded.set(i64::from(degraded));
        // The monitor counts from the start; the counter only ever moves up to its count.
        self.audit_write_failures
            .inner()
            .fetch_max(failures, Ordering::Relaxed);
    }

    /// Exports the audit log's synced batches and records from now on (once; later calls are
    /// ignored, as a daemon has one log).
    pub fn export_audit_writes(&self, writes: Arc<dyn AuditWrites>) {
        let _ = self.audit_writes.set(writes);
    }

    /// Exports how full the task table is (once; later calls are ignored, as a daemon has one
    /// broker). Weak: the broker holds these metrics.
    pub fn export_task_table(&self, table: std::sync::Weak<dyn TaskTableStats>) {
        let _ = self.task_table.set(table);
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String fails only if a collector does, and ours do not.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "metrics did not encode");
        }
        out
    }
}

/// Content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// When the CA and the soonest-expiring SVID expire (Unix seconds, 0 = not known yet),
/// exported as seconds left at the time of the scrape.
#[derive(Debug, Default)]
struct Expiry {
    ca_not_after: AtomicU64,
    svid_not_after_min: AtomicU64,
}

impl Expiry {
    /// Keeps the earliest expiry among SVIDs still valid: one already expired gives way.
    fn svid_issued(&self, not_after: SystemTime) {
        let t = unix_seconds(not_after) as u64;
        let cur = self.svid_not_after_min.load(Ordering::Relaxed);
        if cur == 0 || t < cur || cur < unix_seconds(SystemTime::now()) as u64 {
            self.svid_not_after_min.store(t, Ordering::Relaxed);
        }
    }
}

impl Collector for Expiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = unix_seconds(SystemTime::now());
        let gauges = [
            (
                "svid_broker_ca_expiry_seconds",
                "Seconds until the signing CA expires (0 when not known)",
                &self.ca_not_after,
            ),
            (
                "svid_broker_svid_expiry_seconds",
                "Seconds until the soonest-expiring X.509-SVID issued expires (0 when none)",
                &self.svid_not_after_min,
            ),
        ];
        for (name, help, at) in gauges {
            let t = at.load(Ordering::Relaxed) as i64;
            let left = if t == 0 { 0 } else { t - now };
            let gauge = ConstGauge::new(left);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// What the connection layer reports about admission. Defined here, implemented by the
/// connection gate, so metrics sit below the transport instead of importing it.
pub trait ConnectionStats: Send + Sync {
    /// Connections open now.
    fn open_connections(&self) -> usize;
    /// The ceiling on open connections.
    fn max_connections(&self) -> usize;
    /// Refusals so far, by the limit that refused.
    fn refusals(&self) -> Vec<(&'static str, u64)>;
}

/// Encodes each `(name, help, count)` as a gauge read now (a count past `i64::MAX` reads as
/// `i64::MAX`).
pub(super) fn encode_count_gauges(
    encoder: &mut DescriptorEncoder,
    gauges: &[(&str, &str, usize)],
) -> Result<(), std::fmt::Error> {
    for &(name, help, n) in gauges {
        let gauge = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
    }
    Ok(())
}

/// The connection gate's open connections, its ceiling, and its refusals by limit.
struct GateCollector(Arc<dyn ConnectionStats>);

impl std::fmt::Debug for GateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateCollector").finish_non_exhaustive()
    }
}

impl Collector for GateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gate = &self.0;
        let gauges = [
            (
                "svid_broker_connections_open",
                "Workload API connections open now",
                gate.open_connections(),
            ),
            (
                "svid_broker_connections_max",
                "Most Workload API connections held open at once",
                gate.max_connections(),
            ),
        ];
        encode_count_gauges(&mut encoder, &gauges)?;
        let mut refused = encoder.encode_descriptor(
            "svid_broker_refused",
            "Connections and requests refused, by the limit they hit",
            None,
            MetricType::Counter,
        )?;
        for (limit, n) in gate.refusals() {
            ConstCounter::new(n).encode(refused.encode_family(&[("limit", limit)])?)?;
        }
        Ok(())
    }
}

/// What the audit log has written and synced so far; read at each scrape.
pub trait AuditWrites: Send + Sync {
    /// Batches written and synced, one fsync each.
    fn synced_batches(&self) -> u64;
    /// Records in those batches.
    fn synced_records(&self) -> u64;
}

/// Nothing until a log is exported: a daemon without an audit log has no such counters.
struct AuditWritesCollector(Arc<OnceLock<Arc<dyn AuditWrites>>>);

impl std::fmt::Debug for AuditWritesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWritesCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for AuditWritesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(writes) = self.0.get() else {
            return Ok(());
        };
        let counters = [
            (
                "svid_broker_audit_syncs",
                "Batches of audit records written and synced to disk, one fsync each; records per sync is how many appends shared one (group commit)",
                writes.synced_batches(),
            ),
            (
                "svid_broker_audit_records",
                "Audit records written and synced to disk",
                writes.synced_records(),
            ),
        ];
        for (name, help, n) in counters {
            let counter = ConstCounter::new(n);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
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
        assert!(
            text.contains("svid_broker_caller_recheck_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("svid_broker_caller_recheck_seconds_sum 0.000004\n"),
            "{text}"
        );
        assert!(text.contains("svid_broker_requests_total{rpc=\"FetchJWTSVID\",code=\"OK\"} 2\n"));
        assert!(text.contains("svid_broker_attestation_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("svid_broker_attestation_seconds_bucket{le=\"0.0001\"} 0\n"));
        assert!(text.contains("svid_broker_attestation_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("# TYPE svid_broker_requests_total counter\n"));
        assert!(text.contains("svid_broker_x509_svids_issued_total 0\n"));
        assert!(text.contains("svid_broker_ca_expiry_seconds 0\n"));
        assert!(
            !text.contains("svid_broker_connections_open"),
            "no gate, no gate metrics"
        );
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

    #[test]
    fn audit_writes_appear_once_a_log_is_exported_and_are_read_at_each_scrape() {
        struct Writes(AtomicU64);
        impl AuditWrites for Writes {
            fn synced_batches(&self) -> u64 {
                self.0.load(Ordering::Relaxed)
            }
            fn synced_records(&self) -> u64 {
                3 * self.0.load(Ordering::Relaxed)
            }
        }
        let m = Metrics::default();
        assert!(
            !m.render().contains("svid_broker_audit_syncs"),
            "no log, no counters"
        );
        let writes = Arc::new(Writes(AtomicU64::new(2)));
        m.export_audit_writes(writes.clone());
        let text = m.render();
        assert!(
            text.contains("# TYPE svid_broker_audit_syncs_total counter\n"),
            "{text}"
        );
        assert!(text.contains("svid_broker_audit_syncs_total 2\n"), "{text}");
        assert!(
            text.contains("svid_broker_audit_records_total 6\n"),
            "{text}"
        );
        writes.0.store(5, Ordering::Relaxed);
        assert!(m.render().contains("svid_broker_audit_records_total 15\n"));
    }

    #[test]
    fn the_task_table_is_exported_while_its_broker_lives() {
        struct Table;
        impl TaskTableStats for Table {
            fn table_fill(&self) -> super::super::TableFill {
                super::super::TableFill {
                    open_tasks: 3,
                    max_open_tasks: 10,
                    task_bytes: 4096,
                    max_task_bytes: 1 << 20,
                    owners: 2,
                    largest_owner_open_tasks: 2,
                    max_owner_open_tasks: 3,
                    largest_owner_ended_tasks: 4,
                    max_owner_ended_tasks: 5,
                    ..Default::default()
                }
            }
        }
        let m = Metrics::default();
        assert!(
            !m.render().contains("svid_broker_task_table"),
            "no broker, no gauges"
        );
        let table: Arc<dyn TaskTableStats> = Arc::new(Table);
        m.export_task_table(Arc::downgrade(&table));
        let text = m.render();
        for line in [
            "# TYPE svid_broker_task_table_open_tasks gauge\n",
            "svid_broker_task_table_open_tasks 3\n",
            "svid_broker_task_table_open_tasks_max 10\n",
            "svid_broker_task_table_ended_tasks 0\n",
            "svid_broker_task_table_bytes 4096\n",
            "svid_broker_task_table_bytes_max 1048576\n",
            "svid_broker_task_table_owners 2\n",
            "svid_broker_task_table_largest_owner_open_tasks 2\n",
            "svid_broker_task_table_owner_open_tasks_max 3\n",
            "svid_broker_task_table_largest_owner_bytes 0\n",
            "svid_broker_task_table_owner_live_tokens_max 0\n",
            "svid_broker_task_table_largest_owner_ended_tasks 4\n",
            "svid_broker_task_table_owner_ended_tasks_max 5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        drop(table);
        assert!(
            !m.render().contains("svid_broker_task_table"),
            "a broker gone is not read"
        );
    }

    #[test]
    fn expiry_is_time_left_at_the_scrape() {
        let m = Metrics::default();
        let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
        m.set_ca_not_after(in_an_hour);
        m.x509_issued(in_an_hour);
        m.x509_issued(in_an_hour + Duration::from_secs(60));
        let text = m.render();
        let value = |name: &str| -> i64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing: {text}"));
            line.rsplit_once(' ').unwrap().1.parse().unwrap()
        };
        for name in [
            "svid_broker_ca_expiry_seconds",
            "svid_broker_svid_expiry_seconds",
        ] {
            assert!((3590..=3600).contains(&value(name)), "{name}: {text}");
        }
        assert!(text.contains("svid_broker_x509_svids_issued_total 2\n"));
    }

    #[test]
    fn exports_the_gate_it_was_built_with() {
        let limits = crate::server::limits::ConnectionLimits::default();
        let gate = crate::server::gate::Gate::new(&limits, 1);
        let m = Metrics::with_gate(gate.clone());
        let _held = gate.admit(1).unwrap();
        assert!(gate.admit(2).is_err());
        let text = m.render();
        assert!(text.contains("svid_broker_connections_open 1\n"), "{text}");
        assert!(text.contains("svid_broker_connections_max 1\n"), "{text}");
        assert!(
            text.contains("# TYPE svid_broker_refused_total counter\n"),
            "{text}"
        );
        assert!(text.contains("svid_broker_refused_total{limit=\"max_connections\"} 1\n"));
        assert!(text.contains("svid_broker_refused_total{limit=\"max_connections_per_uid\"} 0\n"));
    }
}
