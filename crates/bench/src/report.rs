//! The Markdown report: the latency table (with a ratio to the no-op baseline), the
//! single-value measurements, and (last, so a terminal shows it at the end of the run) the
//! targets of [`crate::targets`] marked PASS or MISS.

use std::fmt::Write as _;
use std::time::Duration;

use super::calls::Workload;
use super::disk::FsyncProbe;
use super::load::{AttestationProbe, RowResult, RowStatus};
use super::streams::StreamsResult;
use super::targets;
use super::Settings;

pub const FACT_START: &str = "start to serving";
pub const FACT_IDLE_RSS: &str = "idle RSS";
pub const FACT_BROKER_RSS: &str = "daemon RSS after the TaskBroker rows";
pub const FACT_RECHECK: &str = "attestation re-check per call, known connection";
pub const FACT_FIRST_CALL: &str = "first call on a new connection (full attestation)";
pub const FACT_LATER_CALL: &str = "later calls on that connection";
pub const FACT_FULL_ATTEST: &str = "full attestation, daemon-timed";
pub const FACT_STREAMS_RSS: &str = "X.509 streams open: daemon RSS";
pub const FACT_ROTATION: &str = "CA rotation reaches all streams";
pub const FACT_FSYNC: &str = "append + fdatasync in the audit log's directory";
pub const FACT_SIGN: &str = "one ES256 JWT signature (the daemon's signer, in the bench)";
pub const FACT_RECORDS_PER_SYNC: &str = "audit records per fsync, MintTaskToken at 64 clients";

pub const FACT_NAMES: &[&str] = &[
    FACT_START,
    FACT_IDLE_RSS,
    FACT_BROKER_RSS,
    FACT_RECHECK,
    FACT_FIRST_CALL,
    FACT_LATER_CALL,
    FACT_FULL_ATTEST,
    FACT_STREAMS_RSS,
    FACT_ROTATION,
    FACT_FSYNC,
    FACT_SIGN,
    FACT_RECORDS_PER_SYNC,
];

/// Measurements that are one number each.
#[derive(Debug, Default)]
pub struct Facts {
    pub startup: Option<Duration>,
    pub idle_rss: Option<crate::procfs::Rss>,
    /// After every TaskBroker row but the full-table one: what the tasks and tokens they
    /// left behind hold (the table's bounds, `[broker] max_*`, cap it).
    pub broker_rss: Option<crate::procfs::Rss>,
    pub broker_config_note: Option<String>,
    /// The `[limits]` the bench gave its daemons.
    pub limits_note: Option<String>,
    /// Mean daemon-timed re-check of a known caller, µs.
    pub recheck: Option<f64>,
    /// Audit records per fsync during the many-client MintTaskToken row.
    pub records_per_sync: Option<f64>,
    pub attestation: Option<AttestationProbe>,
    pub streams: Option<StreamsResult>,
    /// Why the streams were not measured.
    pub streams_skipped: Option<String>,
    /// One small append + fdatasync beside the audit log.
    pub disk: Option<FsyncProbe>,
    /// Mean µs of one ES256 JWT signature ([`super::floor`]), or why not measured.
    pub sign_us: Option<Result<f64, String>>,
    pub spire_note: Option<String>,
    /// How the OAuth rows with client assertions were bounded.
    pub oauth_note: Option<String>,
    /// How the table was filled for the full-table row, or why that row did not run.
    pub full_table_note: Option<String>,
    /// What the table of the largest tasks held ([`crate::heavy_tasks`]), or why not measured.
    pub heavy_note: Option<String>,
    /// `/proc/loadavg` when the run started and when it ended: other work on the machine
    /// shows in the tail latencies.
    pub load_average: (Option<String>, Option<String>),
}

pub struct Report {
    pub settings: Settings,
    pub rows: Vec<RowResult>,
    pub facts: Facts,
}

/// KiB to MB (10^6 bytes), the unit the report and the targets use.
pub fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.decimals$}"))
}

impl Report {
    pub fn row(&self, w: Workload, clients: usize) -> Option<&RowResult> {
        self.rows
            .iter()
            .find(|r| r.workload == w && r.clients == clients)
    }

    fn noop_rate(&self, baseline: Workload, clients: usize) -> Option<f64> {
        self.row(baseline, clients)?.throughput()
    }

    /// Throughput against the no-op on the same listener (gRPC or OAuth HTTP) and client count.
    pub fn ratio(&self, r: &RowResult) -> Option<f64> {
        Some(r.throughput()? / self.noop_rate(r.workload.baseline(), r.clients)?)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# svid-broker benchmark\n");
        let _ = writeln!(
            s,
            "{} Load average (1/5/15 min) at start: {}; at end: {}.\n",
            machine_line(),
            self.facts.load_average.0.as_deref().unwrap_or("?"),
            self.facts.load_average.1.as_deref().unwrap_or("?")
        );
        let plan = &self.settings.plan;
        let _ = writeln!(
            s,
            "Mode: {}; per row and client count: {:.1} s{}, after {} ms warm-up{}. Each client has its own connection and calls in a closed loop. Latency is client-side; server CPU is the daemon's user+system time (`/proc/<pid>/stat`) over the row divided by its successful calls.\n",
            if self.settings.quick { "quick (CI smoke run: numbers are not meaningful)" } else { "full" },
            plan.duration.as_secs_f64(),
            plan.max_calls.map_or(String::new(), |m| format!(" or {m} calls")),
            plan.warmup.as_millis(),
            match self.settings.rounds {
                1 => String::new(),
                n => format!(", in each of {n} rounds over all rows; a row's numbers are its rounds together (calls, time and CPU summed, latencies merged), and the Note gives its slowest and fastest round"),
            }
        );
        s.push_str(&self.latency_table());
        s.push('\n');
        s.push_str(&self.facts_table());
        let mut notes = Vec::new();
        if let Some(n) = &self.facts.broker_config_note {
            notes.push(n.clone());
        }
        if let Some(n) = &self.facts.limits_note {
            notes.push(n.clone());
        }
        if let Some(n) = &self.facts.spire_note {
            notes.push(n.clone());
        }
        if let Some(n) = &self.facts.oauth_note {
            notes.push(n.clone());
        }
        if let Some(n) = &self.facts.full_table_note {
            notes.push(n.clone());
        }
        if let Some(n) = &self.facts.heavy_note {
            notes.push(n.clone());
        }
        if let Some(st) = &self.facts.streams {
            if let Some(e) = &st.first_error {
                notes.push(format!("streams: first error: {e}"));
            }
            if let Some(n) = &st.note {
                notes.push(format!("streams: {n}"));
            }
        }
        if let Some(e) = self
            .facts
            .attestation
            .as_ref()
            .and_then(|a| a.error.as_ref())
        {
            notes.push(format!("attestation probe failed: {e}"));
        }
        if !notes.is_empty() {
            s.push_str("\nNotes:\n\n");
            for n in notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s.push_str("\nChart (`chart.png`): one group of bars per row of the latency table, in table order; left bar 1 client, right bar 64 clients (blue: svid-broker, orange: SPIRE); bar height = throughput relative to the no-op baseline at the same client count (grey line = 1.0, i.e. as fast as the no-op).\n\n");
        s.push_str(&targets::section(self));
        s
    }

    fn latency_table(&self) -> String {
        let mut s = String::new();
        s.push_str("| Row | Clients | Calls | Errors | Throughput (/s) | vs no-op | p50 (µs) | p99 (µs) | p99.9 (µs) | Server CPU/call (µs) | Bench CPU/call (µs) | Note |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            let note = match &r.status {
                RowStatus::Ok => r.round_range().map_or(String::new(), |(lo, hi)| {
                    format!(
                        "rounds {}–{}/s",
                        thousands(lo.round() as usize),
                        thousands(hi.round() as usize)
                    )
                }),
                RowStatus::Unavailable => "unavailable (server answers Unimplemented)".to_string(),
                RowStatus::Failed { code, message } => {
                    format!("error {code:?}: {}", message.replace('|', "/"))
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.workload.name(),
                r.clients,
                r.calls,
                r.errors,
                opt(r.throughput(), 0),
                self.ratio(r).map_or("—".into(), |v| format!("{v:.2}×")),
                opt(r.quantile_us(0.5), 0),
                opt(r.quantile_us(0.99), 0),
                opt(r.quantile_us(0.999), 0),
                opt(r.cpu_per_call_us(), 1),
                opt(r.client_cpu_per_call_us(), 1),
                note
            );
        }
        s
    }

    fn facts_table(&self) -> String {
        let f = &self.facts;
        let mut s = String::new();
        s.push_str("| Measurement | Value |\n|---|---|\n");
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        line(
            FACT_START,
            f.startup
                .map_or("—".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3)),
        );
        line(
            FACT_IDLE_RSS,
            f.idle_rss.map_or("—".into(), |r| {
                format!(
                    "{:.1} MB ({:.1} MB mapped from files, {:.1} MB anonymous)",
                    mb(r.total_kib),
                    mb(r.file_kib),
                    mb(r.anon_kib)
                )
            }),
        );
        line(
            FACT_BROKER_RSS,
            f.broker_rss
                .map_or("— (no TaskBroker row ran)".into(), |r| {
                    format!(
                        "{:.1} MB ({:.1} MB anonymous)",
                        mb(r.total_kib),
                        mb(r.anon_kib)
                    )
                }),
        );
        line(
            FACT_RECHECK,
            f.recheck.map_or_else(
                || {
                    if self.row(Workload::JwtSameAudience, 1).is_some() {
                        "— (daemon exposes no svid_broker_caller_recheck_seconds)".into()
                    } else {
                        "— (read during the FetchJWTSVID same audience 1-client row, which did not run)".into()
                    }
                },
                |v| format!("{v:.2} µs mean (svid_broker_caller_recheck_seconds)"),
            ),
        );
        let a = f.attestation.clone().unwrap_or_default();
        line(
            FACT_FIRST_CALL,
            format!(
                "{} µs p50, {} µs p99 over {} connections (FetchJWTSVID, cached audience; connect not included)",
                opt(a.first_call_p50_us, 0),
                opt(a.first_call_p99_us, 0),
                a.connections
            ),
        );
        line(
            FACT_LATER_CALL,
            format!(
                "{} µs p50, {} µs p99",
                opt(a.later_call_p50_us, 0),
                opt(a.later_call_p99_us, 0)
            ),
        );
        line(
            FACT_FULL_ATTEST,
            format!(
                "{} µs mean (svid_broker_attestation_seconds)",
                opt(a.server_attestation_mean_us, 0)
            ),
        );
        let st = f.streams.clone().unwrap_or_default();
        line(
            FACT_STREAMS_RSS,
            streams_line(&st, f.streams_skipped.as_deref()),
        );
        line(
            FACT_ROTATION,
            st.rotation.as_ref().map_or_else(
                || {
                    format!(
                        "— ({})",
                        st.note
                            .clone()
                            .or_else(|| f.streams_skipped.clone())
                            .unwrap_or_else(|| "not measured".into())
                    )
                },
                |r| {
                    format!(
                        "{:.0} ms first→last, {} of {} streams; last arrival {:.0} ms after the scheduled activation (CA ttl {} s); CPU from 0.2 s before the activation to the last arrival ({:.2} s): daemon {} s, bench {} s, of {} cores",
                        r.spread.as_secs_f64() * 1e3,
                        thousands(r.reached),
                        thousands(st.opened),
                        r.last_after_schedule.as_secs_f64() * 1e3,
                        self.settings.rotation_ca_ttl.as_secs(),
                        r.cpu.wall.as_secs_f64(),
                        r.cpu.daemon.map_or("?".into(), |d| format!("{:.2}", d.as_secs_f64())),
                        r.cpu.bench.map_or("?".into(), |d| format!("{:.2}", d.as_secs_f64())),
                        std::thread::available_parallelism().map_or(0, usize::from)
                    )
                },
            ),
        );
        line(
            FACT_FSYNC,
            f.disk.as_ref().map_or_else(
                || "— (not measured: the daemon was already running, its directory unknown)".into(),
                |d| match (d.p50_us, d.p99_us, d.max_us) {
                    (Some(p50), Some(p99), Some(max)) => format!(
                        "{p50:.0} µs p50, {p99:.0} µs p99, {max:.0} µs max over {} appends of {} bytes, each followed by fdatasync ({}; the audit log holds every token until its record is synced)",
                        d.records,
                        d.record_bytes,
                        d.dir.display()
                    ),
                    _ => format!(
                        "— ({})",
                        d.error.as_deref().unwrap_or("no samples")
                    ),
                },
            ),
        );
        line(
            FACT_SIGN,
            match &f.sign_us {
                Some(Ok(us)) => format!(
                    "{us:.1} µs mean over {} signatures of task-token claims, one core: a floor under the daemon CPU of every call that signs (MintTaskToken, FetchJWTSVID for a new audience)",
                    thousands(super::floor::SIGNATURES as usize)
                ),
                Some(Err(e)) => format!("— ({e})"),
                None => "— (not measured)".into(),
            },
        );
        line(
            FACT_RECORDS_PER_SYNC,
            f.records_per_sync.map_or_else(
                || "— (the row did not run, or the daemon exposes no svid_broker_audit_syncs_total)".into(),
                |v| format!("{v:.1} mean (svid_broker_audit_records_total ÷ svid_broker_audit_syncs_total over the row; each call writes two records, its decision and its token)"),
            ),
        );
        s
    }
}

/// The streams measurement: RSS at every checkpoint, how the streams were spread, and the
/// `[limits]` the daemon was given for them.
fn streams_line(st: &StreamsResult, skipped: Option<&str>) -> String {
    if let Some(why) = skipped {
        return format!("— (not measured: {why})");
    }
    let mut parts: Vec<String> = st
        .checkpoints
        .iter()
        .map(|c| {
            format!(
                "{} MB with {} of {} streams (open in {:.2} s)",
                c.rss_kib.map_or("—".into(), |k| format!("{:.1}", mb(k))),
                thousands(c.opened),
                thousands(c.wanted),
                c.open_time.as_secs_f64()
            )
        })
        .collect();
    if parts.is_empty() {
        parts.push(format!("— with 0 of {} streams", thousands(st.wanted)));
    }
    format!(
        "{}; on {} connections; before: {} MB{}",
        parts.join("; "),
        st.connections,
        st.rss_before_kib
            .map_or("—".into(), |k| format!("{:.1}", mb(k))),
        st.limits.as_ref().map_or(String::new(), |l| format!(
            "; stream daemon [limits]: {}",
            l.trim().replace('\n', ", ")
        ))
    )
}

/// `100000` → `100,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first three fields of `/proc/loadavg`.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// CPU model, core count and kernel, for the report header.
fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("Machine: {cpu}, {cores} cores available, Linux {kernel}. Load generator and daemon share these cores.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
