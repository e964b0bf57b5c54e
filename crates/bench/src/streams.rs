//! Many concurrent FetchX509SVID streams: the daemon's memory with all of them open, and how
//! long a CA rotation takes to reach every one.
//!
//! All streams belong to the same identity, so they all hold the same SVID. When the new CA
//! starts signing, the daemon renews that SVID and every stream gets a message with a different
//! leaf certificate; the spread between the first and the last stream receiving it is the time
//! for the rotation to reach all of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::calls::connect;
use super::daemon::Daemon;
use super::procfs;
use svid_broker::client::with_header;
use svid_broker::proto::workload as pb;
use svid_broker::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// How long opening all streams may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the scheduled rotation the last stream may take before we stop waiting.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(30);
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
    pub rotation: Option<RotationResult>,
    pub first_error: Option<String>,
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RotationResult {
    /// Streams that received the SVID signed by the new CA.
    pub reached: usize,
    /// First to last arrival of that SVID.
    pub spread: Duration,
    /// Scheduled activation of the new CA to the last arrival.
    pub last_after_schedule: Duration,
}

enum Event {
    Opened,
    Failed(Status),
    Rotated(Instant),
}

/// Opens `n` streams over `connections` connections, reads the daemon's RSS, then (when
/// `rotation_at` is known) waits for the new CA's SVID on every stream.
pub async fn run(
    daemon: &Daemon,
    n: usize,
    connections: usize,
    rotation_at: Option<Instant>,
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

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let client = SpiffeWorkloadApiClient::new(with_header(channels[i % connections].clone()));
        tasks.push(tokio::spawn(one_stream(
            client,
            events_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(events_tx);

    let mut opened = 0usize;
    let mut failed = 0usize;
    let mut arrivals: Vec<Instant> = Vec::new();
    let open_deadline = started + OPEN_TIMEOUT;
    while opened + failed < n {
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
    out.opened = opened;
    out.open_time = Some(started.elapsed());
    tokio::time::sleep(SETTLE).await;
    out.rss_kib = procfs::rss_kib(daemon.pid);

    match rotation_at {
        None => {
            out.note = Some("rotation not measured (the CA lifetime is unknown)".into());
        }
        Some(at) if at <= Instant::now() => {
            out.note = Some(
                "rotation not measured: the new CA was scheduled before all streams were open"
                    .into(),
            );
        }
        Some(at) => {
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
            if let (Some(first), Some(last)) = (arrivals.iter().min(), arrivals.iter().max()) {
                out.rotation = Some(RotationResult {
                    reached: arrivals.len(),
                    spread: *last - *first,
                    last_after_schedule: last.saturating_duration_since(at),
                });
            } else {
                out.note = Some("no stream received an SVID from a new CA".into());
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
    events: mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let first = async {
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
