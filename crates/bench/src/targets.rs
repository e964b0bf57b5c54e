//! The performance targets the report checks, in one table: each bound is a named constant,
//! and [`TARGETS`] says which measurement it applies to. Change a number here and the report's
//! "Targets" section follows.
//!
//! Throughput ratios are against the no-op row (gRPC health `Check`) at the same client count
//! in the same run, so a loaded or slow machine moves both sides.

use std::fmt::Write as _;
use std::time::Duration;

use super::calls::Workload;
use super::disk::FsyncProbe;
use super::load::{RowResult, RowStatus};
use super::report::{mb, thousands, Report};
use super::streams::StreamsResult;

/// A row is judged when at most one call in this many failed (else "not measured").
const ONE_ERROR_IN: u64 = 1000;

/// The client count of the "many clients" targets.
pub const MANY_CLIENTS: usize = 64;

/// MintTaskToken throughput at [`MANY_CLIENTS`], as a fraction of the no-op's.
pub const MINT_VS_NOOP: f64 = 0.5;
/// Daemon CPU (user + system) per MintTaskToken call at [`MANY_CLIENTS`], µs.
pub const MINT_CPU_PER_CALL_US: f64 = 60.0;
/// MintTaskToken p99 at 1 client may exceed the no-op's p99 by at most this, µs.
pub const MINT_P99_OVER_NOOP_US: f64 = 100.0;
/// OpenTask throughput at [`MANY_CLIENTS`], as a fraction of the no-op's.
pub const OPEN_TASK_VS_NOOP: f64 = 0.4;
/// IntrospectToken throughput at [`MANY_CLIENTS`], as a fraction of the no-op's.
pub const INTROSPECT_VS_NOOP: f64 = 0.4;
/// OpenTask+MintTaskToken+CloseTask throughput at [`MANY_CLIENTS`], as a fraction of the
/// no-op's.
pub const TASK_CYCLE_VS_NOOP: f64 = 0.2;
/// OpenTask throughput at [`MANY_CLIENTS`] with the table full of expired, unswept tasks, as
/// a fraction of OpenTask's on an empty table: the open-task bound must not cost a walk over
/// the table.
pub const FULL_TABLE_OPEN_VS_OPEN: f64 = 0.8;
/// FetchJWTSVID (fresh audience) throughput at [`MANY_CLIENTS`], as a fraction of the no-op's.
pub const JWT_FRESH_VS_NOOP: f64 = 0.5;
/// FetchJWTSVID (fresh audience) throughput at [`MANY_CLIENTS`], as a multiple of the SPIRE
/// agent's on the same workload.
pub const JWT_FRESH_VS_SPIRE: f64 = 50.0;
/// Daemon-timed re-check of a known caller on every call, µs (mean).
pub const RECHECK_MAX_US: f64 = 3.0;
/// Open X.509-SVID streams the stream-memory target is stated for.
pub const STREAMS_FOR_RSS: usize = 10_000;
/// Daemon RSS with [`STREAMS_FOR_RSS`] streams open, MB (10^6 bytes).
pub const STREAMS_RSS_MAX_MB: f64 = 50.0;
/// Daemon RSS right after start-up, MB (10^6 bytes).
pub const IDLE_RSS_MAX_MB: f64 = 12.0;
/// p99 of the first X.509-SVID on a new connection (connect included), µs.
pub const FIRST_SVID_P99_MAX_US: f64 = 500.0;
/// A CA rotation reaches every open stream within this (first to last stream).
pub const ROTATION_MAX: Duration = Duration::from_secs(2);

/// A ratio bound as the report states it: "50" for a multiple, "0.80" for a fraction.
fn ratio_text(min: f64) -> String {
    if min.fract() == 0.0 {
        format!("{min:.0}")
    } else {
        format!("{min:.2}")
    }
}

/// What one target checks.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// Throughput of `row` at `clients` ≥ `min` × the no-op's at the same client count.
    VsNoop {
        row: Workload,
        clients: usize,
        min: f64,
    },
    /// Daemon CPU per successful call of `row` at `clients` ≤ `max_us`.
    CpuPerCall {
        row: Workload,
        clients: usize,
        max_us: f64,
    },
    /// p99 of `row` at `clients` ≤ the no-op's p99 at the same client count + `max_extra_us`.
    /// Shown next to the p99 of one append + fdatasync in the audit log's directory: the
    /// audit contract makes every token wait for one, so a slow disk puts this out of reach.
    P99OverNoop {
        row: Workload,
        clients: usize,
        max_extra_us: f64,
    },
    /// Throughput of `row` ≥ `min` × that of `other` at the same client count.
    VsRow {
        row: Workload,
        other: Workload,
        clients: usize,
        min: f64,
    },
    /// Mean daemon-timed re-check of a known caller ≤ `max_us`.
    Recheck { max_us: f64 },
    /// Daemon RSS with `streams` X.509 streams open ≤ `max_mb`.
    StreamsRss { streams: usize, max_mb: f64 },
    /// Daemon RSS after start-up ≤ `max_mb`.
    IdleRss { max_mb: f64 },
    /// p99 of the first X.509-SVID on a new connection ≤ `max_us`.
    FirstSvidP99 { max_us: f64 },
    /// A CA rotation reaches every open stream within `max`.
    Rotation { max: Duration },
}

/// Every target, in report order.
pub const TARGETS: &[Check] = &[
    Check::VsNoop {
        row: Workload::MintTaskToken,
        clients: MANY_CLIENTS,
        min: MINT_VS_NOOP,
    },
    Check::CpuPerCall {
        row: Workload::MintTaskToken,
        clients: MANY_CLIENTS,
        max_us: MINT_CPU_PER_CALL_US,
    },
    Check::P99OverNoop {
        row: Workload::MintTaskToken,
        clients: 1,
        max_extra_us: MINT_P99_OVER_NOOP_US,
    },
    Check::VsNoop {
        row: Workload::OpenTask,
        clients: MANY_CLIENTS,
        min: OPEN_TASK_VS_NOOP,
    },
    Check::VsNoop {
        row: Workload::IntrospectToken,
        clients: MANY_CLIENTS,
        min: INTROSPECT_VS_NOOP,
    },
    Check::VsNoop {
        row: Workload::TaskCycle,
        clients: MANY_CLIENTS,
        min: TASK_CYCLE_VS_NOOP,
    },
    Check::VsRow {
        row: Workload::OpenTaskFullTable,
        other: Workload::OpenTask,
        clients: MANY_CLIENTS,
        min: FULL_TABLE_OPEN_VS_OPEN,
    },
    Check::VsNoop {
        row: Workload::JwtFreshAudience,
        clients: MANY_CLIENTS,
        min: JWT_FRESH_VS_NOOP,
    },
    Check::VsRow {
        row: Workload::JwtFreshAudience,
        other: Workload::SpireJwtFreshAudience,
        clients: MANY_CLIENTS,
        min: JWT_FRESH_VS_SPIRE,
    },
    Check::Recheck {
        max_us: RECHECK_MAX_US,
    },
    Check::StreamsRss {
        streams: STREAMS_FOR_RSS,
        max_mb: STREAMS_RSS_MAX_MB,
    },
    Check::IdleRss {
        max_mb: IDLE_RSS_MAX_MB,
    },
    Check::FirstSvidP99 {
        max_us: FIRST_SVID_P99_MAX_US,
    },
    Check::Rotation { max: ROTATION_MAX },
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// Why there is no number (the row was filtered out, the daemon is not ours, ...).
    NotMeasured(String),
}

impl Verdict {
    fn of(pass: bool) -> Self {
        if pass {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotMeasured(_) => "not measured",
        }
    }
}

/// One target checked against one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What is measured, e.g. "MintTaskToken, 64 clients: throughput".
    pub what: String,
    /// The bound, e.g. "≥ 0.50× no-op".
    pub goal: String,
    /// The measured value (with what it is compared to), or why there is none.
    pub measured: String,
    pub verdict: Verdict,
}

impl Check {
    /// What is measured and the bound, as the report states them.
    pub fn describe(&self) -> (String, String) {
        match *self {
            Check::VsNoop { row, clients, min } => (
                format!("{}, {}: throughput", row.name(), clients_label(clients)),
                format!("≥ {min:.2}× no-op"),
            ),
            Check::CpuPerCall {
                row,
                clients,
                max_us,
            } => (
                format!(
                    "{}, {}: daemon CPU per call",
                    row.name(),
                    clients_label(clients)
                ),
                format!("≤ {max_us:.0} µs"),
            ),
            Check::P99OverNoop {
                row,
                clients,
                max_extra_us,
            } => (
                format!("{}, {}: p99", row.name(), clients_label(clients)),
                format!("≤ no-op p99 + {max_extra_us:.0} µs"),
            ),
            Check::VsRow {
                row,
                other,
                clients,
                min,
            } => (
                format!("{}, {}: throughput", row.name(), clients_label(clients)),
                format!("≥ {}× {other}", ratio_text(min), other = other.name()),
            ),
            Check::Recheck { max_us } => (
                "per-call re-check of a known caller (daemon-timed mean)".into(),
                format!("≤ {max_us:.0} µs"),
            ),
            Check::StreamsRss { streams, max_mb } => (
                format!("{} X.509 streams open: daemon RSS", thousands(streams)),
                format!("≤ {max_mb:.0} MB"),
            ),
            Check::IdleRss { max_mb } => ("idle RSS".into(), format!("≤ {max_mb:.0} MB")),
            Check::FirstSvidP99 { max_us } => (
                "first X.509-SVID on a new connection: p99".into(),
                format!("≤ {:.1} ms", max_us / 1e3),
            ),
            Check::Rotation { max } => (
                "CA rotation reaches every stream".into(),
                format!("≤ {:.0} s", max.as_secs_f64()),
            ),
        }
    }

    /// Checks this target against `report`.
    pub fn evaluate(&self, report: &Report) -> Outcome {
        let (what, goal) = self.describe();
        let (measured, verdict) = match self.measure(report) {
            Ok((measured, pass)) => (measured, Verdict::of(pass)),
            Err(why) => ("—".to_string(), Verdict::NotMeasured(why)),
        };
        Outcome {
            what,
            goal,
            measured,
            verdict,
        }
    }

    /// The measured value and whether it meets the bound, or why it was not measured.
    fn measure(&self, r: &Report) -> Result<(String, bool), String> {
        match *self {
            Check::VsNoop { row, clients, min } => {
                let ours = rate(r, row, clients)?;
                let base = rate(r, row.baseline(), clients)?;
                let ratio = ours / base;
                let mut text = vs_noop_text(ratio, ours, base);
                text.push_str(&rounds_text(round_ratios(r, row, row.baseline(), clients)));
                let res = measured_row(r, row, clients)?;
                if let (Some(daemon), Some(bench)) =
                    (res.cpu_per_call_us(), res.client_cpu_per_call_us())
                {
                    let budget = Budget::at(cores(), min * base, bench);
                    let _ = write!(text, "; {}, it spends {daemon:.1} µs", budget.text());
                    if let Some(floor) = floor(r, row, clients) {
                        let _ = write!(text, "; {}", floor.text(budget.daemon_us));
                    }
                }
                Ok((text, ratio >= min))
            }
            Check::CpuPerCall {
                row,
                clients,
                max_us,
            } => {
                let res = measured_row(r, row, clients)?;
                let cpu = res
                    .cpu_per_call_us()
                    .ok_or("the daemon's CPU time was not readable")?;
                Ok((format!("{cpu:.1} µs"), cpu <= max_us))
            }
            Check::P99OverNoop {
                row,
                clients,
                max_extra_us,
            } => {
                let ours = p99(r, row, clients)?;
                let base = p99(r, row.baseline(), clients)?;
                let extra = ours - base;
                let mut m = format!(
                    "{} {} p99 − no-op p99 = {extra:.0} µs ({ours:.0} − {base:.0})",
                    row.name(),
                    clients_label(clients)
                );
                // The call's p99 is at least its fsync's: out of reach when that alone is
                // above the no-op's p99 plus the allowance.
                m.push_str(&disk_wait_text(r.facts.disk.as_ref(), base + max_extra_us));
                Ok((m, extra <= max_extra_us))
            }
            Check::VsRow {
                row,
                other,
                clients,
                min,
            } => {
                let ours = rate(r, row, clients)?;
                let theirs = match rate(r, other, clients) {
                    Ok(t) => t,
                    Err(why) => {
                        return Err(r
                            .facts
                            .spire_note
                            .clone()
                            .filter(|_| other == Workload::SpireJwtFreshAudience)
                            .filter(|_| r.row(other, clients).is_none())
                            .unwrap_or(why))
                    }
                };
                let ratio = ours / theirs;
                Ok((
                    format!(
                        "{ratio:.2}× ({ours:.0}/s vs {theirs:.0}/s){}",
                        rounds_text(round_ratios(r, row, other, clients))
                    ),
                    ratio >= min,
                ))
            }
            Check::Recheck { max_us } => match r.facts.recheck {
                Some(us) => Ok((format!("{us:.2} µs"), us <= max_us)),
                None => Err(match measured_row(r, Workload::JwtSameAudience, 1) {
                    Err(why) => format!(
                        "measured during the FetchJWTSVID same audience 1-client row: {why}"
                    ),
                    Ok(_) => "the daemon exposes no svid_broker_caller_recheck_seconds".into(),
                }),
            },
            Check::StreamsRss { streams, max_mb } => {
                let st = streams_result(r)?;
                let cp = st
                    .checkpoints
                    .iter()
                    .find(|c| c.wanted == streams)
                    .ok_or_else(|| {
                        format!(
                            "this run opened {} streams (--streams), not {}",
                            thousands(st.wanted),
                            thousands(streams)
                        )
                    })?;
                if cp.opened < streams {
                    return Err(format!(
                        "only {} of {} streams opened{}",
                        thousands(cp.opened),
                        thousands(streams),
                        st.first_error
                            .as_ref()
                            .map_or(String::new(), |e| format!(" (first error: {e})"))
                    ));
                }
                let k = cp.rss_kib.ok_or("the daemon's RSS was not readable")?;
                Ok((format!("{:.1} MB", mb(k)), mb(k) <= max_mb))
            }
            Check::IdleRss { max_mb } => {
                let rss = r.facts.idle_rss.ok_or(
                    "the daemon was already running (--socket): its start-up was not seen",
                )?;
                let met = mb(rss.total_kib) <= max_mb;
                Ok((idle_rss_text(&rss, met), met))
            }
            Check::FirstSvidP99 { max_us } => {
                let ours = p99(r, Workload::X509FirstMessage, 1)?;
                let mut m = format!(
                    "{:.2} ms ({} row, 1 client)",
                    ours / 1e3,
                    Workload::X509FirstMessage.name()
                );
                // The attestation and SVID records go to disk before the first SVID leaves.
                m.push_str(&disk_wait_text(r.facts.disk.as_ref(), max_us));
                Ok((m, ours <= max_us))
            }
            Check::Rotation { max } => {
                let st = streams_result(r)?;
                let rot = st
                    .rotation
                    .as_ref()
                    .ok_or_else(|| st.note.clone().unwrap_or_else(|| "no rotation seen".into()))?;
                Ok((
                    format!(
                        "{:.0} ms first → last stream, {} of {} streams (last {:.0} ms after the scheduled activation)",
                        rot.spread.as_secs_f64() * 1e3,
                        thousands(rot.reached),
                        thousands(st.opened),
                        rot.last_after_schedule.as_secs_f64() * 1e3
                    ),
                    rot.reached == st.opened && rot.spread <= max,
                ))
            }
        }
    }
}

/// Every target of [`TARGETS`] checked against `report`.
pub fn evaluate(report: &Report) -> Vec<Outcome> {
    TARGETS.iter().map(|t| t.evaluate(report)).collect()
}

/// The "Targets" section: the run's load average, then one line per target.
pub fn section(report: &Report) -> String {
    let mut s = String::from("## Targets\n\n");
    let _ = writeln!(
        s,
        "Load average (1/5/15 min) at start: {}; at end: {}. Informational: the exit code stays 0.\n",
        report.facts.load_average.0.as_deref().unwrap_or("?"),
        report.facts.load_average.1.as_deref().unwrap_or("?")
    );
    s.push_str("| Target | Measured | Goal | Verdict |\n|---|---|---|---|\n");
    for o in evaluate(report) {
        let verdict = match &o.verdict {
            Verdict::NotMeasured(why) => format!("not measured: {}", why.replace('|', "/")),
            v => v.as_str().to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            o.what,
            o.measured.replace('|', "/"),
            o.goal,
            verdict
        );
    }
    s
}

fn clients_label(n: usize) -> String {
    if n == 1 {
        "1 client".into()
    } else {
        format!("{n} clients")
    }
}

/// The stream measurement, or why it did not run.
fn streams_result(r: &Report) -> Result<&StreamsResult, String> {
    r.facts.streams.as_ref().ok_or_else(|| {
        r.facts
            .streams_skipped
            .clone()
            .unwrap_or_else(|| "streams not run".into())
    })
}

/// The row of `w` at `clients` with at least one successful call, or why there is none.
fn measured_row(r: &Report, w: Workload, clients: usize) -> Result<&RowResult, String> {
    let Some(row) = r.row(w, clients) else {
        return Err(if !r.settings.selected(w) {
            format!("row {:?} filtered out by --only", w.name())
        } else if !r.settings.clients.contains(&clients) {
            format!(
                "no {} run (--clients {})",
                clients_label(clients),
                r.settings
                    .clients
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            format!(
                "row {:?} at {} did not run",
                w.name(),
                clients_label(clients)
            )
        });
    };
    // A row whose calls failed in numbers measures the failures, not the service.
    if row.calls > row.errors && row.errors * ONE_ERROR_IN <= row.calls {
        return Ok(row);
    }
    Err(match &row.status {
        RowStatus::Unavailable => format!("{} is unavailable (Unimplemented)", w.name()),
        RowStatus::Failed { code, message } => {
            format!(
                "{} at {}: {} of {} calls failed; first: {code:?}: {message}",
                w.name(),
                clients_label(clients),
                row.errors,
                row.calls
            )
        }
        RowStatus::Ok => format!("{} made no call", w.name()),
    })
}

fn rate(r: &Report, w: Workload, clients: usize) -> Result<f64, String> {
    measured_row(r, w, clients)?
        .throughput()
        .ok_or_else(|| format!("{} has no throughput", w.name()))
}

/// The ratio of `row` to `other` in each round where both made calls (their n-th runs went
/// one after the other), empty when either ran in one round only.
fn round_ratios(r: &Report, row: Workload, other: Workload, clients: usize) -> Vec<f64> {
    match (r.row(row, clients), r.row(other, clients)) {
        (Some(a), Some(b)) if a.round_throughputs.len() > 1 => a
            .round_throughputs
            .iter()
            .zip(&b.round_throughputs)
            .filter_map(|(a, b)| Some((*a)? / (*b)?))
            .collect(),
        _ => Vec::new(),
    }
}

/// "; rounds 0.361–0.423×": how far the rounds' own ratios spread around the run's, so a
/// verdict within that spread reads as the coin toss it is.
fn rounds_text(ratios: Vec<f64>) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let digits = if hi >= 10.0 { 1 } else { 3 };
    format!("; rounds {lo:.digits$}–{hi:.digits$}×")
}

fn p99(r: &Report, w: Workload, clients: usize) -> Result<f64, String> {
    measured_row(r, w, clients)?
        .quantile_us(0.99)
        .ok_or_else(|| format!("{} has no latency", w.name()))
}

/// A ratio to the no-op, with one decimal more than the goals have, so that a miss never
/// prints as its goal (0.4987 reads "0.499×", not "0.50×").
/// The cores the daemon and the load generator share.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What a throughput goal leaves the daemon when the cores are the limit (as with many
/// clients, where the daemon and the load generator keep them busy): at `goal_rate` calls a
/// second the cores give each call `cores / goal_rate` of CPU, of which the load generator
/// spends `bench_us`.
struct Budget {
    cores: usize,
    goal_rate: f64,
    per_call_us: f64,
    bench_us: f64,
    daemon_us: f64,
}

impl Budget {
    fn at(cores: usize, goal_rate: f64, bench_us: f64) -> Self {
        let per_call_us = cores as f64 * 1e6 / goal_rate;
        Self {
            cores,
            goal_rate,
            per_call_us,
            bench_us,
            daemon_us: per_call_us - bench_us,
        }
    }

    fn text(&self) -> String {
        format!(
            "at the goal the daemon may spend {:.1} µs CPU per call ({} cores ÷ {:.0}/s = {:.1} µs, less the bench's {:.1} µs)",
            self.daemon_us, self.cores, self.goal_rate, self.per_call_us, self.bench_us
        )
    }
}

/// Daemon CPU no implementation of a row can go below: its RPCs at the no-op's daemon CPU
/// (same client count, same run) and its signatures at the bench's timing of the daemon's
/// signer.
struct Floor {
    rpcs: u32,
    noop_us: f64,
    signatures: u32,
    sign_us: f64,
}

impl Floor {
    fn us(&self) -> f64 {
        f64::from(self.rpcs) * self.noop_us + f64::from(self.signatures) * self.sign_us
    }

    /// The floor, and whether it already exceeds `budget_us`.
    fn text(&self, budget_us: f64) -> String {
        let mut s = format!(
            "floor {:.1} µs ({} × the no-op's {:.1} µs",
            self.us(),
            self.rpcs,
            self.noop_us
        );
        if self.signatures > 0 {
            let _ = write!(
                s,
                " + {} × one signature's {:.1} µs",
                self.signatures, self.sign_us
            );
        }
        s.push(')');
        if self.us() > budget_us {
            s.push_str(": above the budget, so out of reach on this machine");
        }
        s
    }
}

/// The floor of `row` at `clients`, when the no-op's CPU and (for a row that signs) the
/// signature were measured.
fn floor(r: &Report, row: Workload, clients: usize) -> Option<Floor> {
    let noop_us = r.row(row.baseline(), clients)?.cpu_per_call_us()?;
    let signatures = row.signatures_per_call();
    let sign_us = match (&r.facts.sign_us, signatures) {
        (_, 0) => 0.0,
        (Some(Ok(us)), _) => *us,
        _ => return None,
    };
    Some(Floor {
        rpcs: row.rpcs_per_call(),
        noop_us,
        signatures,
        sign_us,
    })
}

/// The p99 of one durable audit append (measured before any load, in the audit log's
/// directory) next to a latency bound of a call that waits for one by contract.
///
/// A call's latency is its wait for the disk plus other non-negative parts, so its p99 is at
/// least the wait's p99: a disk whose fdatasync p99 is above `bound_us` alone puts the bound
/// out of reach on this machine.
fn disk_wait_text(disk: Option<&FsyncProbe>, bound_us: f64) -> String {
    match disk {
        Some(FsyncProbe {
            p99_us: Some(y), ..
        }) => {
            let mut s = format!("; one fdatasync p99 = {y:.0} µs");
            if *y > bound_us {
                let _ = write!(
                    s,
                    ", above the {bound_us:.0} µs the bound allows: every such call waits for one, so out of reach on this machine"
                );
            }
            s
        }
        Some(d) => format!(
            "; one fdatasync: not measured ({})",
            d.error.as_deref().unwrap_or("no samples")
        ),
        None => "; one fdatasync: not measured".into(),
    }
}

fn vs_noop_text(ratio: f64, ours: f64, base: f64) -> String {
    format!("{ratio:.3}× ({ours:.0}/s vs {base:.0}/s)")
}

/// Idle RSS, and for a miss what most likely grew. The anonymous part is a few MB and moves
/// little; the part mapped from files is the code start-up touched, which grows when the link
/// order (`link/svid-broker.order`) no longer names the start-up functions: the code changed
/// since it was written, or the daemon was built without it.
fn idle_rss_text(rss: &crate::procfs::Rss, met: bool) -> String {
    let mut text = format!(
        "{:.1} MB ({:.1} MB mapped from files)",
        mb(rss.total_kib),
        mb(rss.file_kib)
    );
    if !met && rss.file_kib > rss.anon_kib {
        text.push_str(
            "; most of it is code start-up touched: if that part grew, the link order may be \
             stale (bash scripts/text-order.sh rewrites it)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_bound_reads_as_a_multiple_or_a_fraction() {
        assert_eq!(ratio_text(JWT_FRESH_VS_SPIRE), "50");
        assert_eq!(ratio_text(FULL_TABLE_OPEN_VS_OPEN), "0.80");
    }

    #[test]
    fn the_rounds_spread_is_shown_only_for_more_than_one_round() {
        assert_eq!(rounds_text(vec![]), "");
        assert_eq!(rounds_text(vec![0.4]), "");
        assert_eq!(
            rounds_text(vec![0.42, 0.361, 0.39]),
            "; rounds 0.361–0.420×"
        );
        assert_eq!(rounds_text(vec![44.0, 38.52]), "; rounds 38.5–44.0×");
    }

    #[test]
    fn the_budget_is_the_cores_share_per_call_less_the_load_generators() {
        // 2 cores at 40,000 calls/s: 50 µs a call, 15 of them the bench's.
        let b = Budget::at(2, 40_000.0, 15.0);
        assert!((b.daemon_us - 35.0).abs() < 1e-9);
        assert!(
            b.text()
                .starts_with("at the goal the daemon may spend 35.0 µs"),
            "{}",
            b.text()
        );
    }

    #[test]
    fn a_floor_above_the_budget_says_so_and_one_below_does_not() {
        let f = Floor {
            rpcs: 1,
            noop_us: 12.0,
            signatures: 1,
            sign_us: 17.0,
        };
        assert!((f.us() - 29.0).abs() < 1e-9);
        assert!(f.text(25.0).ends_with("out of reach on this machine"));
        assert!(!f.text(30.0).contains("out of reach"), "{}", f.text(30.0));
        let three_calls = Floor {
            rpcs: 3,
            noop_us: 10.0,
            signatures: 0,
            sign_us: 0.0,
        };
        assert_eq!(
            three_calls.text(100.0),
            "floor 30.0 µs (3 × the no-op's 10.0 µs)"
        );
    }

    #[test]
    fn a_disk_slower_than_the_bound_says_out_of_reach_and_a_faster_one_does_not() {
        let disk = |p99| FsyncProbe {
            p99_us: p99,
            ..Default::default()
        };
        let slow = disk_wait_text(Some(&disk(Some(600.0))), 500.0);
        assert!(
            slow.starts_with("; one fdatasync p99 = 600 µs, above the 500 µs"),
            "{slow}"
        );
        assert!(slow.ends_with("out of reach on this machine"), "{slow}");
        let fast = disk_wait_text(Some(&disk(Some(400.0))), 500.0);
        assert_eq!(fast, "; one fdatasync p99 = 400 µs");
        // At the bound exactly, the bound is still within reach.
        assert!(!disk_wait_text(Some(&disk(Some(500.0))), 500.0).contains("out of reach"));
        assert!(disk_wait_text(Some(&disk(None)), 500.0).contains("not measured (no samples)"));
        assert_eq!(disk_wait_text(None, 500.0), "; one fdatasync: not measured");
    }

    #[test]
    fn a_missed_idle_rss_points_at_the_link_order_only_when_code_is_most_of_it() {
        let rss = |file_kib, anon_kib| crate::procfs::Rss {
            total_kib: file_kib + anon_kib,
            file_kib,
            anon_kib,
        };
        assert_eq!(
            idle_rss_text(&rss(7_324, 2_441), true),
            "10.0 MB (7.5 MB mapped from files)"
        );
        let stale = idle_rss_text(&rss(10_240, 2_560), false);
        assert!(
            stale.ends_with("(bash scripts/text-order.sh rewrites it)"),
            "{stale}"
        );
        let heap = idle_rss_text(&rss(2_048, 12_288), false);
        assert!(!heap.contains("link order"), "{heap}");
    }

    #[test]
    fn a_ratio_just_under_its_goal_does_not_print_as_the_goal() {
        let text = vs_noop_text(0.4987, 4987.0, 10000.0);
        assert!(text.starts_with("0.499×"), "{text}");
        assert!(!text.starts_with(&format!("{:.2}×", 0.5)), "{text}");
    }

    #[test]
    fn every_target_describes_its_bound() {
        for t in TARGETS {
            let (what, goal) = t.describe();
            assert!(!what.is_empty());
            assert!(goal.starts_with('≥') || goal.starts_with('≤'), "{goal}");
        }
    }
}
