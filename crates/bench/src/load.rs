//! Closed-loop load: N clients, each on its own connection, each calling again as soon as its
//! last call returned, for a duration or a call budget. Latencies go into HDR histograms.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::{Code, Status};

use super::calls::{Client, OAuthTarget, Workload, OAUTH_WARMUP_CALLS, SAME_AUDIENCE};
use super::daemon::Daemon;
use super::{metrics, procfs};

/// Most measured calls of a row that spends a pre-fetched client assertion per call, per
/// client count (the assertions are fetched before the row, so the row is bounded by them).
pub const OAUTH_CALL_CAP: u64 = 20_000;

/// How long and how much one row runs.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub duration: Duration,
    /// Stop after this many measured calls in total (all clients), whichever comes first.
    pub max_calls: Option<u64>,
    /// Unmeasured calls per client before the clock starts.
    pub warmup: Duration,
}

/// What one row at one client count measured.
pub struct RowResult {
    pub workload: Workload,
    pub clients: usize,
    pub calls: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in nanoseconds of every successful measured call.
    pub latency: Histogram<u64>,
    /// Server CPU (user + system) over the measured interval.
    pub server_cpu: Option<Duration>,
    /// This process's CPU over the same interval: what the clients spent on the calls.
    pub client_cpu: Option<Duration>,
    /// Why the row has no numbers, or the first error seen.
    pub status: RowStatus,
    /// Throughput of each round this row ran in (see [`RowResult::absorb`]), in order; `None`
    /// for a round that made no successful call, so the n-th entries of two rows stay the
    /// same round.
    pub round_throughputs: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowStatus {
    Ok,
    /// The server does not implement the service (yet).
    Unavailable,
    /// Some or all calls failed; the first failure.
    Failed {
        code: Code,
        message: String,
    },
}

impl RowResult {
    pub fn throughput(&self) -> Option<f64> {
        let ok = self.calls.saturating_sub(self.errors);
        (ok > 0 && !self.elapsed.is_zero()).then(|| ok as f64 / self.elapsed.as_secs_f64())
    }

    /// Quantile `q` of the latency in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q) as f64 / 1_000.0)
    }

    pub fn cpu_per_call_us(&self) -> Option<f64> {
        self.per_call_us(self.server_cpu?)
    }

    /// The load generator's CPU per successful call.
    pub fn client_cpu_per_call_us(&self) -> Option<f64> {
        self.per_call_us(self.client_cpu?)
    }

    fn per_call_us(&self, cpu: Duration) -> Option<f64> {
        let ok = self.calls.saturating_sub(self.errors);
        (ok > 0).then(|| cpu.as_secs_f64() * 1e6 / ok as f64)
    }

    pub fn summary(&self) -> String {
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        format!(
            "{} x{}: {} calls, {} errors, {}/s, p50 {} µs, p99 {} µs{}",
            self.workload.name(),
            self.clients,
            self.calls,
            self.errors,
            fmt(self.throughput()),
            fmt(self.quantile_us(0.5)),
            fmt(self.quantile_us(0.99)),
            match &self.status {
                RowStatus::Ok => String::new(),
                RowStatus::Unavailable => " (unavailable)".into(),
                RowStatus::Failed { code, message } =>
                    format!(" (first error: {code:?}: {message})"),
            }
        )
    }

    /// Adds a later round of the same row and client count: calls, errors, time and CPU are
    /// summed and the latencies merged, so the row's throughput, CPU per call and percentiles
    /// are over all its rounds together. The first failure stays the row's status.
    pub fn absorb(&mut self, round: RowResult) {
        debug_assert!(self.workload == round.workload && self.clients == round.clients);
        self.calls += round.calls;
        self.errors += round.errors;
        self.elapsed += round.elapsed;
        let _ = self.latency.add(&round.latency);
        let sum = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        self.server_cpu = sum(self.server_cpu, round.server_cpu);
        self.client_cpu = sum(self.client_cpu, round.client_cpu);
        if self.status == RowStatus::Ok {
            self.status = round.status;
        }
        self.round_throughputs.extend(round.round_throughputs);
    }

    /// The slowest and fastest round's throughput, when the row ran in more than one.
    pub fn round_range(&self) -> Option<(f64, f64)> {
        let measured: Vec<f64> = self.round_throughputs.iter().flatten().copied().collect();
        (measured.len() > 1).then(|| {
            measured
                .iter()
                .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &t| {
                    (lo.min(t), hi.max(t))
                })
        })
    }

    /// Records this result's own throughput as its one round.
    pub fn seal_round(&mut self) {
        self.round_throughputs = vec![self.throughput()];
    }

    fn empty(workload: Workload, clients: usize, status: RowStatus) -> Self {
        Self {
            workload,
            clients,
            calls: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: new_histogram(),
            server_cpu: None,
            client_cpu: None,
            status,
            // A row that could not start is still one round, with no throughput.
            round_throughputs: vec![None],
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

fn failed(s: &Status) -> RowStatus {
    if s.code() == Code::Unimplemented {
        RowStatus::Unavailable
    } else {
        RowStatus::Failed {
            code: s.code(),
            message: s.message().chars().take(160).collect(),
        }
    }
}

struct ClientOutcome {
    latency: Histogram<u64>,
    calls: u64,
    errors: u64,
    first_error: Option<Status>,
}

/// Client assertions each client of `workload` fetches before the row: its share of the
/// measured calls (at most [`OAUTH_CALL_CAP`] or the plan's budget), its warm-up and the probe.
pub fn assertions_per_client(workload: Workload, clients: usize, plan: &LoadPlan) -> usize {
    if !workload.needs_assertions() {
        return 0;
    }
    let cap = plan
        .max_calls
        .map_or(OAUTH_CALL_CAP, |m| m.min(OAUTH_CALL_CAP)) as usize;
    cap.div_ceil(clients.max(1)) + OAUTH_WARMUP_CALLS + 1
}

/// Runs `workload` with `clients` concurrent clients against `socket` (and `oauth`, for the
/// OAuth rows); `server_pids` are the processes whose CPU time is charged to the calls.
pub async fn run_row(
    workload: Workload,
    socket: &Path,
    oauth: Option<&OAuthTarget>,
    clients: usize,
    plan: &LoadPlan,
    server_pids: &[i32],
) -> RowResult {
    // Connect and prepare every client first (concurrently: the OAuth rows fetch their
    // assertions here, untimed); a row whose service is missing ends here.
    let per_client = assertions_per_client(workload, clients, plan);
    let mut prepared = Vec::with_capacity(clients);
    let ready = futures::future::join_all(
        (0..clients).map(|_| Client::with_oauth(workload, socket, oauth, per_client)),
    )
    .await;
    for c in ready {
        match c {
            Ok(c) => prepared.push(c),
            Err(s) => return RowResult::empty(workload, clients, failed(&s)),
        }
    }
    // The OAuth rows connect only now that every client is prepared (see `open_http`).
    for c in futures::future::join_all(prepared.iter_mut().map(Client::open_http)).await {
        if let Err(s) = c {
            return RowResult::empty(workload, clients, failed(&s));
        }
    }
    // One probe call: Unimplemented makes the row "unavailable", not a wall of errors.
    if let Some(first) = prepared.first_mut() {
        if let Err(s) = first.call().await {
            if s.code() == Code::Unimplemented {
                return RowResult::empty(workload, clients, RowStatus::Unavailable);
            }
        }
    }

    let budget = plan.max_calls.map(|m| Arc::new(AtomicU64::new(m)));
    let start_gate = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for mut client in prepared {
        let gate = start_gate.clone();
        let budget = budget.clone();
        let warmup = plan.warmup;
        let duration = plan.duration;
        tasks.push(tokio::spawn(async move {
            let warm_until = Instant::now() + warmup;
            let mut warm_calls = client.warmup_limit();
            while Instant::now() < warm_until && warm_calls != Some(0) {
                let _ = client.call().await;
                warm_calls = warm_calls.map(|n| n - 1);
            }
            gate.wait().await;
            let stop_at = Instant::now() + duration;
            let mut out = ClientOutcome {
                latency: new_histogram(),
                calls: 0,
                errors: 0,
                first_error: None,
            };
            loop {
                if client.exhausted() {
                    break;
                }
                if let Some(b) = &budget {
                    if b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                    {
                        break;
                    }
                }
                let t = Instant::now();
                let r = client.call().await;
                let done = Instant::now();
                out.calls += 1;
                match r {
                    Ok(()) => {
                        let _ = out.latency.record((done - t).as_nanos().max(1) as u64);
                    }
                    Err(s) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(s);
                    }
                }
                if done >= stop_at {
                    break;
                }
            }
            (out, client)
        }));
    }
    start_gate.wait().await;
    let cpu_before = procfs::cpu_time_all(server_pids);
    let own_before = procfs::cpu_time(std::process::id() as i32);
    let started = Instant::now();
    let mut row = RowResult::empty(workload, clients, RowStatus::Ok);
    let mut first_error = None;
    let mut finished = Vec::with_capacity(clients);
    for t in tasks {
        match t.await {
            Ok((o, client)) => {
                finished.push(client);
                row.calls += o.calls;
                row.errors += o.errors;
                let _ = row.latency.add(&o.latency);
                if first_error.is_none() {
                    first_error = o.first_error;
                }
            }
            Err(e) => {
                first_error.get_or_insert(Status::internal(format!("client task: {e}")));
            }
        }
    }
    row.elapsed = started.elapsed();
    let cpu_after = procfs::cpu_time_all(server_pids);
    let own_after = procfs::cpu_time(std::process::id() as i32);
    row.server_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    row.client_cpu = match (own_before, own_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    if let Some(e) = first_error {
        row.status = failed(&e);
    }
    row.seal_round();
    if workload.is_task_broker() || workload.is_oauth() {
        futures::future::join_all(finished.iter_mut().map(Client::clean_up)).await;
    }
    row
}

/// First call on a new connection (full attestation) against later calls on it (the cheap
/// re-check), with FetchJWTSVID for a cached audience so signing is out of the picture.
#[derive(Debug, Clone, Default)]
pub struct AttestationProbe {
    pub connections: usize,
    /// Median client-side latency of the first call on a connection, µs.
    pub first_call_p50_us: Option<f64>,
    /// Its 99th percentile, µs.
    pub first_call_p99_us: Option<f64>,
    /// Median client-side latency of the following calls, µs.
    pub later_call_p50_us: Option<f64>,
    /// Its 99th percentile, µs.
    pub later_call_p99_us: Option<f64>,
    /// Mean full attestation as the daemon timed it (`svid_broker_attestation_seconds`), µs.
    pub server_attestation_mean_us: Option<f64>,
    pub error: Option<String>,
}

pub async fn attestation_probe(daemon: &Daemon, connections: usize) -> AttestationProbe {
    let mut out = AttestationProbe {
        connections,
        ..Default::default()
    };
    let before = metrics::scrape(daemon.metrics_addr).await;
    let mut first = new_histogram();
    let mut later = new_histogram();
    for _ in 0..connections {
        let mut client = match Client::new(Workload::JwtSameAudience, &daemon.socket).await {
            Ok(c) => c,
            Err(e) => {
                out.error = Some(e.to_string());
                return out;
            }
        };
        for i in 0..4 {
            let t = Instant::now();
            if let Err(e) = client.fetch_jwt(SAME_AUDIENCE.to_string()).await {
                out.error = Some(e.to_string());
                return out;
            }
            let ns = t.elapsed().as_nanos().max(1) as u64;
            let h = if i == 0 { &mut first } else { &mut later };
            let _ = h.record(ns);
        }
    }
    let after = metrics::scrape(daemon.metrics_addr).await;
    let us =
        |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e3);
    out.first_call_p50_us = us(&first, 0.5);
    out.first_call_p99_us = us(&first, 0.99);
    out.later_call_p50_us = us(&later, 0.5);
    out.later_call_p99_us = us(&later, 0.99);
    out.server_attestation_mean_us = metrics::attestation_mean(&before, &after);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(calls: u64, errors: u64, secs: u64, cpu_ms: u64, latency_us: u64) -> RowResult {
        let mut r = RowResult::empty(Workload::MintTaskToken, 64, RowStatus::Ok);
        r.calls = calls;
        r.errors = errors;
        r.elapsed = Duration::from_secs(secs);
        r.server_cpu = Some(Duration::from_millis(cpu_ms));
        r.client_cpu = Some(Duration::from_millis(cpu_ms / 2));
        for _ in 0..calls - errors {
            r.latency.record(latency_us * 1_000).unwrap();
        }
        r.seal_round();
        r
    }

    #[test]
    fn rounds_add_up_to_one_row() {
        let mut row = round(2_000, 0, 2, 100, 100);
        row.absorb(round(1_000, 0, 2, 100, 300));
        assert_eq!(row.calls, 3_000);
        assert_eq!(row.elapsed, Duration::from_secs(4));
        // 3,000 calls in 4 s, not the mean of 1,000/s and 500/s weighted by round.
        assert_eq!(row.throughput(), Some(750.0));
        // 200 ms of daemon CPU over 3,000 calls.
        let cpu = row.cpu_per_call_us().unwrap();
        assert!((cpu - 66.667).abs() < 0.01, "{cpu}");
        assert_eq!(row.round_range(), Some((500.0, 1_000.0)));
        // Two thirds of the calls took 100 µs: the median is theirs, the p99 the slow round's.
        assert!((row.quantile_us(0.5).unwrap() - 100.0).abs() < 0.1);
        assert!((row.quantile_us(0.99).unwrap() - 300.0).abs() < 0.5);
    }

    #[test]
    fn a_round_that_could_not_start_keeps_its_place_among_the_rounds() {
        let mut row = round(2_000, 0, 2, 100, 100);
        row.absorb(RowResult::empty(
            Workload::MintTaskToken,
            64,
            RowStatus::Unavailable,
        ));
        row.absorb(round(1_000, 0, 2, 100, 300));
        // The third round stays third, so it is compared with the baseline's third round.
        assert_eq!(
            row.round_throughputs,
            vec![Some(1_000.0), None, Some(500.0)]
        );
        assert_eq!(row.round_range(), Some((500.0, 1_000.0)));
    }

    #[test]
    fn a_round_without_a_cpu_reading_leaves_the_row_without_one() {
        let mut row = round(100, 0, 1, 10, 50);
        let mut blind = round(100, 0, 1, 10, 50);
        blind.server_cpu = None;
        row.absorb(blind);
        assert_eq!(
            row.cpu_per_call_us(),
            None,
            "a partial sum would understate the CPU"
        );
        assert!(row.client_cpu_per_call_us().is_some());
    }

    #[test]
    fn the_first_failure_stays_the_rows_status() {
        let mut row = round(100, 0, 1, 10, 50);
        assert_eq!(row.round_range(), None, "one round: no range");
        let mut bad = round(100, 3, 1, 10, 50);
        bad.status = RowStatus::Failed {
            code: Code::Unavailable,
            message: "first".into(),
        };
        row.absorb(bad);
        let mut worse = round(100, 1, 1, 10, 50);
        worse.status = RowStatus::Failed {
            code: Code::Internal,
            message: "second".into(),
        };
        row.absorb(worse);
        assert_eq!(row.errors, 4);
        assert!(
            matches!(&row.status, RowStatus::Failed { message, .. } if message == "first"),
            "{:?}",
            row.status
        );
    }
}
