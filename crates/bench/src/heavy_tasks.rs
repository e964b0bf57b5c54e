//! What the task table holds when a workload opens the largest tasks the request limits and
//! one audit record allow, for as long as the daemon takes them. The count bounds alone let
//! each task weigh tens of KiB; `[broker] max_task_bytes` bounds what they weigh together.
//! The bench opens such tasks on a daemon of its own until OpenTask is refused (or until
//! [`HEAVY_TASK_CAP`], for a daemon without the byte bound) and reads the daemon's RSS.

use std::path::Path;
use std::time::{Duration, Instant};

use super::daemon::{Daemon, DaemonOptions, Target, TASK_SCOPE};
use super::full_table::{open_until_refused, FILL_CLIENTS};
use svid_broker::proto::svidbroker::v1 as broker;

/// Audiences per task: with their bytes, as many as one `task_open` record holds (it lists
/// each audience twice, in `audiences` and in `grants`, within 64 KiB).
pub const AUDIENCES: usize = 14;
/// Bytes per audience (the limit is 2,048).
pub const AUDIENCE_BYTES: usize = 2_000;
/// Bytes of each task's purpose (the limit is 1,024).
pub const PURPOSE_BYTES: usize = 1_000;
/// Most tasks opened: the default `max_open_tasks + max_finished_tasks`, what a daemon
/// without the byte bound would keep at its default counts.
pub const HEAVY_TASK_CAP: usize = 20_000;
/// Most tasks a `--quick` run opens.
pub const QUICK_HEAVY_TASKS: usize = 200;
/// Lifetime of each task: longer than the fill, so none ends and makes room.
const TASK_TTL_SECS: u32 = 3_600;

/// What the fill found.
#[derive(Clone, Debug)]
pub struct Heavy {
    pub opened: usize,
    /// Whether OpenTask was refused (`RESOURCE_EXHAUSTED`) before the cap.
    pub refused: Option<String>,
    pub took: Duration,
    pub idle_kib: u64,
    pub full_kib: u64,
    /// The daemon's `svid_broker_task_table_bytes` and `_bytes_max` after the fill.
    pub counted: Option<(f64, f64)>,
}

impl Heavy {
    pub fn note(&self) -> String {
        let mb = |kib: u64| kib as f64 / 1024.0;
        let per_task =
            (self.full_kib.saturating_sub(self.idle_kib)) as f64 / self.opened.max(1) as f64;
        let stop = match &self.refused {
            Some(why) => format!("until OpenTask was refused ({why})"),
            None => format!(
                "up to the bench's cap of {}",
                crate::report::thousands(self.opened)
            ),
        };
        let counted = self.counted.map_or_else(
            || "the daemon exports no svid_broker_task_table_bytes".to_string(),
            |(held, max)| {
                format!(
                    "svid_broker_task_table_bytes {:.1} MiB of {:.1} MiB",
                    held / 1048576.0,
                    max / 1048576.0
                )
            },
        );
        format!(
            "table of the largest tasks: on a daemon of its own at its default [broker] bounds (but with one workload's share of the table raised to the whole table, so one identity reaches max_task_bytes), the bench opened {} tasks of {AUDIENCES} audiences of {AUDIENCE_BYTES} bytes and a {PURPOSE_BYTES}-byte purpose ({FILL_CLIENTS} connections, {:.1} s) {stop}; daemon RSS {:.1} MB after, {:.1} MB idle before: {:.1} KiB a task ({counted})",
            crate::report::thousands(self.opened),
            self.took.as_secs_f64(),
            mb(self.full_kib),
            mb(self.idle_kib),
            per_task,
        )
    }
}

/// Starts a daemon like `target` and fills its table with the largest tasks.
///
/// # Errors
/// The daemon does not start, a connection fails, or an OpenTask fails other than with
/// `RESOURCE_EXHAUSTED`.
pub async fn run(target: &Target, cap: usize) -> anyhow::Result<Heavy> {
    let target = match target {
        Target::Start(o) => Target::Start(DaemonOptions {
            default_task_bytes: true,
            ..o.clone()
        }),
        Target::Running(s) => Target::Running(s.clone()),
    };
    let daemon = Daemon::start(&target).await?;
    let idle_kib = crate::procfs::rss_kib(daemon.pid).unwrap_or(0);
    let started = Instant::now();
    let filled = fill(&daemon.socket, cap).await;
    let took = started.elapsed();
    let full_kib = crate::procfs::rss_kib(daemon.pid).unwrap_or(0);
    let counted = crate::metrics::scrape(daemon.metrics_addr)
        .await
        .and_then(|m| {
            Some((
                *m.get("svid_broker_task_table_bytes")?,
                *m.get("svid_broker_task_table_bytes_max")?,
            ))
        });
    daemon.stop().await;
    let (opened, refused) = filled.map_err(anyhow::Error::msg)?;
    Ok(Heavy {
        opened,
        refused,
        took,
        idle_kib,
        full_kib,
        counted,
    })
}

/// Opens up to `cap` of the largest tasks; returns how many opened and the refusal that
/// stopped them, if one did.
async fn fill(socket: &Path, cap: usize) -> Result<(usize, Option<String>), String> {
    let request = broker::OpenTaskRequest {
        purpose: "p".repeat(PURPOSE_BYTES),
        audiences: (0..AUDIENCES)
            .map(|i| {
                let head = format!("spiffe://bench.test/tool/{i}/");
                format!("{head}{}", "a".repeat(AUDIENCE_BYTES - head.len()))
            })
            .collect(),
        scopes: vec![TASK_SCOPE.into()],
        ttl_seconds: TASK_TTL_SECS,
        ..Default::default()
    };
    open_until_refused(socket, &request, cap).await
}
