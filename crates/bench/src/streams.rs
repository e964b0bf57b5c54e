//! Many concurrent FetchX509SVID streams: the daemon's memory with all of them open, and how
//! long a CA rotation takes to reach every one.
//!
//! All streams belong to the same identity, so they all hold the same SVID. When the new CA
//! starts signing, the daemon renews that SVID and every stream gets a message with a different
//! leaf certificate; the spread between the first and the last stream receiving it is the time
//! for the rotation to reach all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tonic::Status;

use super::calls::connect;
use super::daemon::Daemon;
use super::procfs;
use svid_broker::client::with_header;
use svid_broker::proto::workload as pb;
use svid_broker::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// How long opening all `n` streams may take: 120 s, or 2 ms a stream if that is longer.
fn open_timeout(n: usize) -> Duration {
    Duration::from_secs(120).max(Duration::from_millis(2) * n as u32)
}
/// Streams waiting for their first SVID at once. The daemon counts every request whose body
/// has not arrived against `[limits] max_pending_request_bytes_per_uid` (32 MiB by default),
/// a FetchX509SVID request at 1 KiB (it has no fields): 1,024 opening at once count 1 MiB,
/// and the daemon keeps its default limits.
pub const OPENING_AT_ONCE: usize = 1024;
/// How long after the scheduled rotation the last stream may take before we stop waiting.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long before the scheduled activation the CPU counters are read.
const CPU_LEAD: Duration = Duration::from_millis(200);
/// Pause after the last stream opened before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default)]
pub struct StreamsResult {
    pub wanted: usize,
    pub connections: usize,
    pub opened: usize,
    /// From the first open to the last stream's first message.
    pub open_time: Option<Duration>,
    pub rss_before_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    /// RSS with the first `wanted` streams open, at each stage (the last one is all of them).
    pub checkpoints: Vec<Checkpoint>,
    pub rotation: Option<RotationResult>,
    pub first_error: Option<String>,
    pub note: Option<String>,
    /// The `[limits]` the bench gave the stream daemon (`None`: its defaults).
    pub limits: Option<String>,
}

/// The daemon's RSS once the first `wanted` streams were open.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub wanted: usize,
    pub opened: usize,
    /// From the first open to the last of these streams' first message.
    pub open_time: Duration,
    pub rss_kib: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct RotationResult {
    /// Streams that received the SVID signed by the new CA.
    pub reached: usize,
    /// First to last arrival of that SVID.
    pub spread: Duration,
    /// Scheduled activation of the new CA to the last arrival.
    pub last_after_schedule: Duration,
    pub cpu: CpuWindow,
}

/// CPU time (user + system) of the daemon and of the bench over `wall`: from just before the
/// scheduled activation to the last arrival.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    pub wall: Duration,
    pub daemon: Option<Duration>,
    pub bench: Option<Duration>,
}

impl StreamsResult {
    fn add_note(&mut self, n: String) {
        self.note = Some(match self.note.take() {
            Some(old) => format!("{old}; {n}"),
            None => n,
        });
    }
}

enum Event {
    Opened,
    Failed(Status),
    Rotated(Instant),
}

/// Opens `n` streams over `connections` connections, reads the daemon's RSS, then (when
/// `rotation_at` is known) waits for the new CA's SVID on every stream.
///
/// The streams open in stages: first up to each of `checkpoints` (those below `n`), where
/// the daemon's RSS is read once they are all open, then up to `n`. Stream `i` always goes to
/// connection `i % connections`, so a checkpoint reads what a run of that many streams would.
pub async fn run(
    daemon: &Daemon,
    n: usize,
    connections: usize,
    rotation_at: Option<Instant>,
    checkpoints: &[usize],
) -> StreamsResult {
    let connections = connections.clamp(1, n.max(1));
    let mut out = StreamsResult {
        wanted: n,
        connections,
        rss_before_kib: procfs::rss_kib(daemon.pid),
        ..Default::default()
    };
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        match connect(&daemon.socket).await {
            Ok(c) => channels.push(c),
            Err(e) => {
                out.first_error = Some(format!("connect: {e}"));
                return out;
            }
        }
    }

    let mut stages: Vec<usize> = checkpoints.iter().copied().filter(|&c| c < n).collect();
    stages.sort_unstable();
    stages.dedup();
    stages.push(n);

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let started = Instant::now();
    let open_deadline = started + open_timeout(n);
    let mut tasks = Vec::with_capacity(n);
    let mut opened = 0usize;
    let mut failed = 0usize;
    let mut arrivals: Vec<Instant> = Vec::new();
    for &stage in &stages {
        for i in tasks.len()..stage {
            let client =
                SpiffeWorkloadApiClient::new(with_header(channels[i % connections].clone()));
            tasks.push(tokio::spawn(one_stream(
                client,
                opening.clone(),
                events_tx.clone(),
                stop_rx.clone(),
            )));
        }
        while opened + failed < stage {
            match tokio::time::timeout_at(open_deadline.into(), events.recv()).await {
                Ok(Some(Event::Opened)) => opened += 1,
                Ok(Some(Event::Failed(s))) => {
                    failed += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                }
                Ok(Some(Event::Rotated(t))) => arrivals.push(t),
                Ok(None) | Err(_) => break,
            }
        }
        let open_time = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        out.checkpoints.push(Checkpoint {
            wanted: stage,
            opened,
            open_time,
            rss_kib: procfs::rss_kib(daemon.pid),
        });
        if opened + failed < stage {
            // Timed out: the later stages would only wait again.
            break;
        }
    }
    drop(events_tx);
    if let Some(last) = out.checkpoints.last() {
        out.opened = last.opened;
        out.open_time = Some(last.open_time);
        out.rss_kib = last.rss_kib;
    }
    if opened + failed < n {
        out.add_note(format!(
            "{} streams still waiting for their first SVID after {:.0} s",
            n - opened - failed,
            open_timeout(n).as_secs_f64()
        ));
    }

    match rotation_at {
        None => {
            out.add_note("rotation not measured (the CA lifetime is unknown)".into());
        }
        Some(at) if at <= Instant::now() => {
            out.add_note(
                "rotation not measured: the new CA was scheduled before all streams were open (a longer --rotation-ca-ttl leaves more time)"
                    .into(),
            );
        }
        Some(at) => {
            // CPU both sides spend from just before the activation to the last arrival: with
            // the bench on the same cores, it tells whether the cores were the limit.
            tokio::time::sleep_until(at.checked_sub(CPU_LEAD).unwrap_or(at).into()).await;
            let me = std::process::id() as i32;
            let before = (
                Instant::now(),
                procfs::cpu_time(daemon.pid),
                procfs::cpu_time(me),
            );
            let deadline = at + ROTATION_TIMEOUT;
            while arrivals.len() < opened {
                match tokio::time::timeout_at(deadline.into(), events.recv()).await {
                    Ok(Some(Event::Rotated(t))) => arrivals.push(t),
                    Ok(Some(Event::Failed(s))) => {
                        out.first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                    Ok(Some(Event::Opened)) => out.opened += 1,
                    Ok(None) | Err(_) => break,
                }
            }
            let diff = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
            let cpu = CpuWindow {
                wall: before.0.elapsed(),
                daemon: diff(before.1, procfs::cpu_time(daemon.pid)),
                bench: diff(before.2, procfs::cpu_time(me)),
            };
            if let (Some(first), Some(last)) = (arrivals.iter().min(), arrivals.iter().max()) {
                out.rotation = Some(RotationResult {
                    reached: arrivals.len(),
                    spread: *last - *first,
                    last_after_schedule: last.saturating_duration_since(at),
                    cpu,
                });
            } else {
                out.add_note("no stream received an SVID from a new CA".into());
            }
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    out
}

async fn one_stream(
    mut client: SpiffeWorkloadApiClient<svid_broker::client::HeaderChannel>,
    opening: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let first = async {
        // Held until the first SVID arrives (dropped with this block).
        let _opening = opening
            .acquire()
            .await
            .map_err(|_| Status::cancelled("measurement over"))?;
        let mut stream = client
            .fetch_x509svid(pb::X509svidRequest {})
            .await?
            .into_inner();
        let msg = stream
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("stream ended before the first SVID"))?;
        Ok::<_, Status>((stream, leaf(&msg)))
    };
    let (mut stream, initial) = match first.await {
        Ok(v) => v,
        Err(s) => {
            let _ = events.send(Event::Failed(s));
            return;
        }
    };
    let _ = events.send(Event::Opened);
    let initial: Arc<[u8]> = initial.into();
    loop {
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(msg)) => {
                    if leaf(&msg) != *initial {
                        let _ = events.send(Event::Rotated(Instant::now()));
                        break;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    let _ = events.send(Event::Failed(s));
                    return;
                }
            },
            _ = stop.changed() => return,
        }
    }
    // Keep the stream open until the measurement ends, so the daemon's load stays the same.
    let _ = stop.changed().await;
}

/// The first SVID's certificate chain (leaf first): it changes when a new CA signs.
fn leaf(msg: &pb::X509svidResponse) -> Vec<u8> {
    msg.svids
        .first()
        .map(|s| s.x509_svid.clone())
        .unwrap_or_default()
}
