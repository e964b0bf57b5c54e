//! The load generator behind `svid-broker-bench`: starts the daemon (or targets a running
//! one), drives the Workload API and the TaskBroker over the Unix socket, and writes a Markdown
//! report and a PNG chart.
//!
//! Every latency row is a closed loop: each client owns one connection and calls again as soon
//! as the previous call returns. The no-op row (gRPC health `Check` on the same server and
//! socket) is the baseline every other row is compared to.

pub mod calls;
pub mod chart;
pub mod daemon;
pub mod disk;
pub mod floor;
pub mod full_table;
pub mod heavy_tasks;
pub mod load;
pub mod metrics;
pub mod procfs;
pub mod report;
pub mod spire;
pub mod streams;
pub mod targets;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use self::calls::Workload;
use self::daemon::{Daemon, DaemonOptions, Target};
use self::load::{LoadPlan, RowResult};
use self::report::{Facts, Report};

/// The rows of the latency table, in order. The smoke test checks that each one is reported.
pub const ROW_NAMES: &[&str] = &[
    Workload::Noop.name(),
    Workload::JwtSameAudience.name(),
    Workload::JwtFreshAudience.name(),
    Workload::X509FirstMessage.name(),
    Workload::ValidateJwt.name(),
    Workload::OpenTask.name(),
    Workload::DelegatedOpenTask.name(),
    Workload::MintTaskToken.name(),
    Workload::IntrospectToken.name(),
    Workload::TaskCycle.name(),
    Workload::OpenTaskFullTable.name(),
    Workload::SpireJwtFreshAudience.name(),
    Workload::OAuthNoop.name(),
    Workload::OAuthToken.name(),
    Workload::OAuthIntrospect.name(),
];

/// The SPIRE comparison row: present only when SPIRE ran (the report says why otherwise).
pub const SPIRE_ROW: &str = Workload::SpireJwtFreshAudience.name();

/// The single-value measurements, in order; also checked by the smoke test.
pub const FACT_NAMES: &[&str] = report::FACT_NAMES;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "svid-broker-bench",
    version,
    about = "Benchmark svid-broker over its Unix socket (and a SPIRE agent side by side)"
)]
pub struct BenchArgs {
    /// Short run for CI: a few hundred calls per row, 1,000 streams, short rotation.
    #[arg(long)]
    pub quick: bool,
    /// The daemon binary to start (default: `svid-broker` next to this binary).
    #[arg(long, conflicts_with = "socket")]
    pub daemon: Option<PathBuf>,
    /// Target an already running daemon on this socket instead of starting one
    /// (start-up time, idle RSS and the CA rotation are then not measured).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Seconds of measurement per row and client count (default 4; `--quick`: count-bound).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Most calls per row and client count (default unbounded; `--quick`: 300).
    #[arg(long)]
    pub max_calls: Option<u64>,
    /// Rounds over the latency rows (default 3; `--quick`: 1). Each round runs every row once,
    /// in table order; a row's numbers are its rounds together, so the no-op baseline and the
    /// rows compared with it are sampled over the same minutes, not seconds apart on a machine
    /// whose speed drifts.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Client counts, each client on its own connection.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub clients: Vec<usize>,
    /// Concurrent FetchX509SVID streams (default 10,000; `--quick`: 1,000). Above 10,000 the
    /// daemon's RSS is also read once the first 10,000 are open (the memory target's count).
    #[arg(long)]
    pub streams: Option<usize>,
    /// Connections the streams are spread over. The stream daemon's `[limits]` are raised to
    /// hold them (`max_streams_per_connection` tops out at 10,000).
    #[arg(long, default_value_t = 100)]
    pub stream_connections: usize,
    /// CA lifetime (seconds) of the stream daemon: its successor signs at three quarters of
    /// it, which must come after every stream is open (default 40, `--quick` 16, longer
    /// above 10,000 streams).
    #[arg(long)]
    pub rotation_ca_ttl: Option<u64>,
    /// Where report.md and chart.png go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Directory holding spire-server and spire-agent (default: `$SVID_BROKER_PEERS_DIR/bin`,
    /// else `target/peers/bin` beside this binary's target directory).
    #[arg(long)]
    pub spire_bin: Option<PathBuf>,
    /// Do not run the SPIRE comparison even when SPIRE is found.
    #[arg(long)]
    pub no_spire: bool,
    /// Run only the latency rows whose name contains one of these (case-insensitive), e.g.
    /// `--only validate,no-op`; for iterating on one path.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip the stream and CA rotation measurement.
    #[arg(long)]
    pub no_streams: bool,
    /// Skip the full-table OpenTask row (its fill opens `max_open_tasks` tasks first).
    #[arg(long)]
    pub no_full_table: bool,
    /// Skip filling a daemon of its own with the largest tasks (up to 20,000 of them).
    #[arg(long)]
    pub no_heavy_tasks: bool,
    /// TOML appended to the generated daemon config (e.g. `[broker]` settings).
    #[arg(long)]
    pub extra_config: Option<PathBuf>,
    /// A Cedar policy file the daemon enforces instead of the bench's own (which permits the
    /// bench identity and reads no selectors), e.g. one that reads `principal.selectors` to
    /// measure what that costs a caller with supplementary groups.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

/// The text of a file named on the command line, if one was.
fn read_if_given(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    path.map(|p| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display())))
        .transpose()
}

/// Resolved run settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub plan: LoadPlan,
    pub clients: Vec<usize>,
    /// Rounds over the latency rows (see [`BenchArgs::rounds`]).
    pub rounds: usize,
    pub streams: usize,
    pub stream_connections: usize,
    /// CA lifetime of the rotation daemon; a new CA signs at three quarters of it.
    pub rotation_ca_ttl: Duration,
    /// `--only`: the latency rows run are those whose name contains one of these.
    pub only: Vec<String>,
}

impl Settings {
    pub fn from_args(a: &BenchArgs) -> Self {
        let streams = a.streams.unwrap_or(if a.quick { 1_000 } else { 10_000 });
        let (duration, max_calls) = if a.quick {
            (a.duration.unwrap_or(2.0), a.max_calls.or(Some(300)))
        } else {
            (a.duration.unwrap_or(4.0), a.max_calls)
        };
        Self {
            quick: a.quick,
            plan: LoadPlan {
                duration: Duration::from_secs_f64(duration.max(0.1)),
                max_calls,
                warmup: if a.quick {
                    Duration::from_millis(50)
                } else {
                    Duration::from_millis(500)
                },
            },
            clients: a.clients.iter().copied().filter(|&c| c > 0).collect(),
            rounds: a
                .rounds
                .unwrap_or(if a.quick { 1 } else { DEFAULT_ROUNDS })
                .max(1),
            streams,
            stream_connections: a.stream_connections.max(1),
            rotation_ca_ttl: match a.rotation_ca_ttl {
                Some(s) => Duration::from_secs(s),
                None => default_rotation_ca_ttl(a.quick, streams),
            },
            only: a.only.clone(),
        }
    }

    /// Whether `--only` lets row `w` run.
    pub fn selected(&self, w: Workload) -> bool {
        let name = w.name().to_lowercase();
        self.only.is_empty() || self.only.iter().any(|o| name.contains(&o.to_lowercase()))
    }
}

/// Rounds of a full run. On the 2-core machine the targets were set on, one 2-second window of
/// the no-op at 64 clients read anywhere from 67,000 to 98,000 calls a second within one run,
/// so a ratio of two single windows moved by a third; three rounds spread over the run cut that
/// spread and cost two more passes over the rows.
pub const DEFAULT_ROUNDS: usize = 3;

/// Streams the bench opens per second, at least, on a 2-core machine shared with the daemon
/// (about twice that is usual): what the default CA lifetime of the stream daemon allows for.
const STREAM_OPEN_RATE_FLOOR: f64 = 2_000.0;

/// The stream daemon's CA lifetime: 40 s (`--quick`: 16 s), or long enough that three
/// quarters of it cover opening `streams` at [`STREAM_OPEN_RATE_FLOOR`] plus a settle per stage
/// and 10 s to spare.
fn default_rotation_ca_ttl(quick: bool, streams: usize) -> Duration {
    let base: f64 = if quick { 16.0 } else { 40.0 };
    let open = streams as f64 / STREAM_OPEN_RATE_FLOOR + 12.0;
    Duration::from_secs(base.max(open * 4.0 / 3.0).ceil() as u64)
}

/// The daemon's ceiling of `[limits] max_streams_per_connection`.
const MAX_STREAMS_PER_CONNECTION_CEILING: usize = 10_000;
/// The daemon's default `[limits] max_streams_per_connection`.
const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 128;

/// Why the streams cannot all open with these settings, if they cannot.
fn streams_unreachable(s: &Settings) -> Option<String> {
    let per_connection = s.streams.div_ceil(s.stream_connections);
    (per_connection > MAX_STREAMS_PER_CONNECTION_CEILING).then(|| {
        format!(
            "{} streams on {} connections is {per_connection} a connection, above the daemon's ceiling of [limits] max_streams_per_connection ({MAX_STREAMS_PER_CONNECTION_CEILING}): pass --stream-connections {} or more",
            s.streams,
            s.stream_connections,
            s.streams.div_ceil(MAX_STREAMS_PER_CONNECTION_CEILING)
        )
    })
}

/// The daemon's default `[limits] max_connections_per_uid` and `max_connections`.
const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 512;
const DEFAULT_MAX_CONNECTIONS: usize = 8192;

/// `[limits] new_connections_per_uid_per_second` and `_burst` of the bench's daemons: the
/// ceiling. The first-SVID row opens a new connection for every call, thousands a second, and
/// the default 200 a second (burst 400) closed all but 200 of them at once, failing that row
/// and the rows after it while the bucket refilled.
const CONNECTION_RATE: u32 = 1_000_000;

/// The `[limits]` table of a daemon the bench starts: the connection rate at
/// [`CONNECTION_RATE`]; for the stream daemon (`streams`), also enough concurrent streams per
/// connection and connections for the bench's uid when the defaults cannot hold the streams.
/// (The bench opens at most [`streams::OPENING_AT_ONCE`] streams at a time, so the
/// pending-request budget per uid is not in the way.) `None` when `--extra-config` has its own
/// `[limits]`.
fn daemon_limits(s: &Settings, streams: bool, extra_config: Option<&str>) -> Option<String> {
    if extra_config.is_some_and(|c| c.contains("[limits]")) {
        return None;
    }
    let mut t = format!(
        "new_connections_per_uid_per_second = {CONNECTION_RATE}\nnew_connections_per_uid_burst = {CONNECTION_RATE}\n"
    );
    if !streams {
        return Some(t);
    }
    let per_connection = s.streams.div_ceil(s.stream_connections);
    if per_connection > DEFAULT_MAX_STREAMS_PER_CONNECTION {
        t.push_str(&format!(
            "max_streams_per_connection = {}\n",
            per_connection.min(MAX_STREAMS_PER_CONNECTION_CEILING)
        ));
    }
    // The latency rows' clients are gone by then; a few connections to spare.
    let connections = s.stream_connections + 64;
    if connections > DEFAULT_MAX_CONNECTIONS_PER_UID {
        t.push_str(&format!("max_connections_per_uid = {connections}\n"));
    }
    if connections > DEFAULT_MAX_CONNECTIONS {
        t.push_str(&format!("max_connections = {connections}\n"));
    }
    Some(t)
}

/// Adds one round of a row to the rows: the first round of a (row, clients) pair takes its
/// place in table order, later rounds are absorbed into it.
/// The row on a full table: fills the table of a daemon the bench started (never an
/// operator's running one), then runs the row's rounds. Returns the report's note and the
/// rounds.
async fn full_table_rows(
    settings: &Settings,
    target: &Target,
    daemon: &Daemon,
) -> (String, Vec<RowResult>) {
    let name = Workload::OpenTaskFullTable.name();
    if let Target::Running(_) = target {
        return (
            format!("{name}: not measured: it fills the task table, so it runs only on a daemon the bench starts"),
            Vec::new(),
        );
    }
    let tasks = if settings.quick {
        full_table::QUICK_FILL_TASKS
    } else {
        daemon::MAX_OPEN_TASKS
    };
    let filled = match full_table::fill(&daemon.socket, tasks).await {
        Ok(f) => f,
        Err(e) => {
            return (
                format!("{name}: not measured: filling the table failed: {e}"),
                Vec::new(),
            )
        }
    };
    let rounds = row_rounds(
        Workload::OpenTaskFullTable,
        &daemon.socket,
        settings,
        &[daemon.pid],
    )
    .await;
    (filled.note(), rounds)
}

/// Every round of one row at each client count, on its own (not interleaved with other rows).
async fn row_rounds(
    workload: Workload,
    socket: &std::path::Path,
    settings: &Settings,
    server_pids: &[i32],
) -> Vec<RowResult> {
    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        for &clients in &settings.clients {
            let row =
                load::run_row(workload, socket, None, clients, &settings.plan, server_pids).await;
            eprintln!("bench: round {}: {}", round + 1, row.summary());
            rounds.push(row);
        }
    }
    rounds
}

fn merge_round(rows: &mut Vec<RowResult>, round: RowResult) {
    match rows
        .iter_mut()
        .find(|r| r.workload == round.workload && r.clients == round.clients)
    {
        Some(row) => row.absorb(round),
        None => rows.push(round),
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Runs the whole benchmark, writes the report and returns it (Markdown).
///
/// # Errors
/// The daemon cannot be started or reached, or the report cannot be written. Failing rows
/// are reported as such, not as errors.
pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let settings = Settings::from_args(&args);
    // Every connection (the streams' and a row's clients) costs the daemon three descriptors
    // (socket, pidfd, /proc/<pid>) and the bench one; the daemon inherits this limit.
    procfs::raise_nofile_limit(
        ((settings.stream_connections + settings.clients.iter().sum::<usize>()) * 3 + 1024) as u64,
    );
    let extra_config = read_if_given(args.extra_config.as_deref())?;
    let policy = read_if_given(args.policy.as_deref())?;
    let target = match &args.socket {
        Some(s) => Target::Running(s.clone()),
        None => Target::Start(DaemonOptions {
            binary: match &args.daemon {
                Some(p) => p.clone(),
                None => daemon::default_binary()?,
            },
            ca_ttl: None,
            limits: daemon_limits(&settings, false, extra_config.as_deref()),
            extra_config: extra_config.clone(),
            policy,
            default_task_bytes: false,
        }),
    };

    let mut facts = Facts {
        load_average: (report::load_average(), None),
        ..Facts::default()
    };
    let mut rows: Vec<RowResult> = Vec::new();

    // Latency rows, start-up time and idle RSS on a daemon with default key lifetimes.
    {
        let daemon = Daemon::start(&target).await?;
        eprintln!(
            "bench: daemon pid {} on {}",
            daemon.pid,
            daemon.socket.display()
        );
        facts.startup = daemon.startup;
        facts.idle_rss = daemon.idle_rss;
        facts.broker_config_note = daemon.note.clone();
        if let Target::Start(DaemonOptions {
            limits: Some(l), ..
        }) = &target
        {
            facts.limits_note = Some(format!(
                "the bench's daemons run with [limits] {}: the first-SVID row opens a new connection for every call, above the default rate of 200 a second (burst 400)",
                l.trim().replace('\n', ", ")
            ));
        }
        // Before any load: what one signature costs on this CPU.
        facts.sign_us = Some(
            tokio::task::spawn_blocking(|| floor::es256_sign_us(floor::SIGNATURES))
                .await
                .unwrap_or_else(|e| Err(format!("the timing thread failed: {e}"))),
        );
        // Before any load: what one durable audit record costs on this disk.
        facts.disk = match &daemon.dir {
            Some(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    disk::probe(&dir, disk::RECORDS, disk::RECORD_BYTES)
                })
                .await
                .ok()
            }
            None => None,
        };
        // Per-round readings of the daemon's own metrics, averaged over the rounds below.
        let (mut rechecks, mut per_sync) = (Vec::new(), Vec::new());
        for round in 0..settings.rounds {
            for workload in Workload::BROKER_ROWS {
                // Its fill would stay in the table for the later rounds: it runs after them.
                if !settings.selected(*workload) || *workload == Workload::OpenTaskFullTable {
                    continue;
                }
                for &clients in &settings.clients {
                    let before = metrics::scrape(daemon.metrics_addr).await;
                    let row = load::run_row(
                        *workload,
                        &daemon.socket,
                        daemon.oauth.as_ref(),
                        clients,
                        &settings.plan,
                        &[daemon.pid],
                    )
                    .await;
                    if *workload == Workload::JwtSameAudience && clients == 1 {
                        let after = metrics::scrape(daemon.metrics_addr).await;
                        rechecks.extend(metrics::recheck_mean(&before, &after));
                    }
                    if *workload == Workload::MintTaskToken && clients == targets::MANY_CLIENTS {
                        let after = metrics::scrape(daemon.metrics_addr).await;
                        per_sync.extend(metrics::records_per_sync(&before, &after));
                    }
                    eprintln!("bench: round {}: {}", round + 1, row.summary());
                    merge_round(&mut rows, row);
                }
            }
        }
        if Workload::BROKER_ROWS
            .iter()
            .any(|w| *w != Workload::OpenTaskFullTable && settings.selected(*w))
        {
            facts.broker_rss = procfs::rss(daemon.pid);
        }
        if args.no_full_table {
            facts.full_table_note = Some(format!(
                "{}: skipped (--no-full-table)",
                Workload::OpenTaskFullTable.name()
            ));
        } else if settings.selected(Workload::OpenTaskFullTable) {
            let (note, rounds) = full_table_rows(&settings, &target, &daemon).await;
            facts.full_table_note = Some(note);
            for row in rounds {
                merge_round(&mut rows, row);
            }
        }
        facts.recheck = mean(&rechecks);
        facts.records_per_sync = mean(&per_sync);
        if Workload::BROKER_ROWS
            .iter()
            .any(|w| w.needs_assertions() && settings.selected(*w))
        {
            facts.oauth_note = Some(format!(
                "oauth token / oauth introspect: each call spends one single-use client assertion (a JWT-SVID for the issuer and a unique second audience), fetched over the Workload API before the row and not timed; so these rows stop after at most {} measured calls per client count (or the duration, whichever comes first), plus {} warm-up calls per client",
                settings
                    .plan
                    .max_calls
                    .map_or(load::OAUTH_CALL_CAP, |m| m.min(load::OAUTH_CALL_CAP)),
                calls::OAUTH_WARMUP_CALLS
            ));
        }
        let probes = if settings.quick { 20 } else { 200 };
        facts.attestation = Some(load::attestation_probe(&daemon, probes).await);
        daemon.stop().await;
    }

    // The largest tasks, on a daemon of their own, until the table's byte bound refuses one.
    if settings.selected(Workload::OpenTask) {
        facts.heavy_note = Some(if args.no_heavy_tasks {
            "table of the largest tasks: skipped (--no-heavy-tasks)".into()
        } else if let Target::Running(_) = target {
            "table of the largest tasks: not measured: it fills the task table, so it runs only on a daemon the bench starts".into()
        } else {
            let cap = if settings.quick {
                heavy_tasks::QUICK_HEAVY_TASKS
            } else {
                heavy_tasks::HEAVY_TASK_CAP
            };
            match heavy_tasks::run(&target, cap).await {
                Ok(h) => h.note(),
                Err(e) => format!("table of the largest tasks: not measured: {e:#}"),
            }
        });
    }

    // 10,000 streams and a CA rotation, on a daemon whose CA lives `rotation_ca_ttl` and
    // whose `[limits]` let the streams in.
    if args.no_streams {
        facts.streams_skipped = Some("--no-streams".into());
    } else if let Some(why) = streams_unreachable(&settings) {
        facts.streams_skipped = Some(why);
    } else {
        let rotation_target = match &target {
            Target::Start(o) => Target::Start(DaemonOptions {
                ca_ttl: Some(settings.rotation_ca_ttl),
                limits: daemon_limits(&settings, true, o.extra_config.as_deref()),
                ..o.clone()
            }),
            Target::Running(s) => Target::Running(s.clone()),
        };
        let daemon = Daemon::start(&rotation_target).await?;
        let rotation_at = daemon
            .started_at
            .map(|t| t + settings.rotation_ca_ttl * 3 / 4);
        let mut st = streams::run(
            &daemon,
            settings.streams,
            settings.stream_connections,
            rotation_at,
            &[targets::STREAMS_FOR_RSS],
        )
        .await;
        st.limits = match &rotation_target {
            Target::Start(o) => o.limits.clone(),
            Target::Running(_) => None,
        };
        facts.streams = Some(st);
        daemon.stop().await;
    }

    // The same fresh-audience FetchJWTSVID workload against a SPIRE agent.
    if args.no_spire {
        facts.spire_note = Some("SPIRE comparison skipped (--no-spire)".into());
    } else if !settings.selected(Workload::SpireJwtFreshAudience) {
        facts.spire_note = Some("SPIRE comparison skipped (filtered out by --only)".into());
    } else {
        match spire::find_binaries(args.spire_bin.as_deref()) {
            Ok(bins) => match spire::start(&bins).await {
                Ok(spire) => {
                    let rounds = row_rounds(
                        Workload::SpireJwtFreshAudience,
                        &spire.workload_socket(),
                        &settings,
                        &spire.pids(),
                    )
                    .await;
                    for row in rounds {
                        merge_round(&mut rows, row);
                    }
                    facts.spire_note = Some(format!(
                        "SPIRE {} (server + agent on this machine; CPU column is both)",
                        spire.version().await
                    ));
                }
                Err(e) => facts.spire_note = Some(format!("SPIRE did not start: {e:#}")),
            },
            Err(why) => facts.spire_note = Some(why),
        }
    }

    facts.load_average.1 = report::load_average();
    let report = Report {
        settings: settings.clone(),
        rows,
        facts,
    };
    let markdown = report.markdown();
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let md_path = args.out.join("report.md");
    std::fs::write(&md_path, &markdown).with_context(|| format!("write {}", md_path.display()))?;
    let png_path = args.out.join("chart.png");
    chart::draw(&report, &png_path).with_context(|| format!("draw {}", png_path.display()))?;
    eprintln!(
        "bench: wrote {} and {}",
        md_path.display(),
        png_path.display()
    );
    Ok(markdown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::RowStatus;

    fn one_round(workload: Workload, clients: usize, calls: u64) -> RowResult {
        let mut r = RowResult {
            workload,
            clients,
            calls,
            errors: 0,
            elapsed: Duration::from_secs(1),
            latency: hdrhistogram::Histogram::new(3).unwrap(),
            server_cpu: None,
            client_cpu: None,
            status: RowStatus::Ok,
            round_throughputs: Vec::new(),
        };
        r.seal_round();
        r
    }

    #[test]
    fn later_rounds_join_their_row_and_the_table_keeps_its_order() {
        let mut rows = Vec::new();
        for calls in [100, 300] {
            merge_round(&mut rows, one_round(Workload::Noop, 1, calls));
            merge_round(&mut rows, one_round(Workload::Noop, 64, calls * 10));
            merge_round(&mut rows, one_round(Workload::MintTaskToken, 64, calls));
        }
        let shape: Vec<_> = rows
            .iter()
            .map(|r| (r.workload, r.clients, r.calls))
            .collect();
        assert_eq!(
            shape,
            [
                (Workload::Noop, 1, 400),
                (Workload::Noop, 64, 4_000),
                (Workload::MintTaskToken, 64, 400)
            ]
        );
        assert_eq!(rows[2].round_range(), Some((100.0, 300.0)));
    }

    #[test]
    fn rounds_default_to_three_and_one_for_a_quick_run() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            Settings::from_args(&BenchArgs::parse_from(
                std::iter::once("svid-broker-bench").chain(args.iter().copied()),
            ))
        };
        assert_eq!(parse(&[]).rounds, DEFAULT_ROUNDS);
        assert_eq!(parse(&["--quick"]).rounds, 1);
        assert_eq!(parse(&["--rounds", "5"]).rounds, 5);
        assert_eq!(parse(&["--rounds", "0"]).rounds, 1, "at least one round");
    }
}
