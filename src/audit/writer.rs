//! The single writer: owns the file, extends the chain, and acknowledges appends only after
//! their batch is written and synced (group commit).
//!
//! An append is one call's records. They are written together, in order and next to each
//! other, with one sync however many there are (a CloseTask of a wide tree writes thousands):
//! the batch bound decides which further appends share that sync, never splits one. Only a
//! rotation falling among them puts a call's records in two files, each synced before the
//! call is acknowledged.
//!
//! It runs on its own OS thread because every step (write, fsync) blocks; a tokio worker
//! parked in fsync would stall unrelated requests.
//!
//! A failed write or fsync refuses its batch and degrades the log: appends are refused (fail
//! closed) until a retry, at most every backoff interval, writes and syncs again. Before a
//! retry the file is cut back to the end of the last acknowledged record, so a torn line or a
//! batch whose fsync failed (the kernel may have dropped those pages and would not say so a
//! second time) never stays under a new record.

use std::io;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::chain::{encode_line, hash_line};
use super::health::Monitor;
use super::AuditError;

/// Longest wait between retries while the disk keeps failing.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Where records go. The file in production; tests substitute sinks that fail or count.
pub(super) trait Sink: Send + 'static {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Moves the active file aside as the rotated file whose first record is `first_seq` and
    /// starts an empty one.
    fn rotate(&mut self, _first_seq: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this sink does not rotate",
        ))
    }
}

/// An appender's request: one call's events as JSON objects (at least one, in order), and
/// where to send the first one's seq (or the error) once all are on disk.
pub(super) struct Pending {
    events: Vec<Vec<u8>>,
    /// How many of `events` are on disk already (the rest wait for a rotation).
    written: usize,
    /// Seq of `events[0]`: meaningful once `written > 0`, set when it is written.
    first_seq: u64,
    ack: oneshot::Sender<Result<u64, AuditError>>,
}

impl Pending {
    /// `None` for no events: there is nothing to write or to wait for.
    pub fn new(
        events: Vec<Vec<u8>>,
        ack: oneshot::Sender<Result<u64, AuditError>>,
    ) -> Option<Self> {
        (!events.is_empty()).then_some(Self {
            events,
            written: 0,
            first_seq: 0,
            ack,
        })
    }

    fn unwritten(&self) -> &[Vec<u8>] {
        &self.events[self.written..]
    }
}

/// The end of the chain: the next seq and the hash the next record must carry, and where the
/// active file stands.
pub(super) struct ChainState {
    pub next_seq: u64,
    pub prev: String,
    /// Seq of the active file's first record (`next_seq` while it is empty).
    pub file_first_seq: u64,
    /// Bytes of the active file up to the end of the last acknowledged record.
    pub file_len: u64,
}

/// How the writer behaves.
pub(super) struct Config {
    /// Further appends join a batch while it holds fewer records than this.
    pub max_batch: usize,
    /// Rotate before the active file would grow past this; `None`: never.
    pub max_file_bytes: Option<u64>,
    /// First wait after a failure; doubles per failure in a row up to [`MAX_RETRY_BACKOFF`].
    pub retry_backoff: Duration,
}

/// Builds the events to write when the log closes (pending summaries), as event JSON.
pub(super) type OnClose = Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>;

/// The writer thread; dropping it waits for the thread to finish. Only the last
/// [`AuditLog`](super::AuditLog) drops it, after its sender is gone, so the thread is already
/// on its way out (at most finishing a batch an abandoned append queued).
#[derive(Debug)]
pub(super) struct Handle(Option<std::thread::JoinHandle<()>>);

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            if thread.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }
}

pub(super) fn spawn(
    sink: Box<dyn Sink>,
    state: ChainState,
    rx: mpsc::Receiver<Pending>,
    config: Config,
    monitor: Monitor,
    on_close: OnClose,
) -> io::Result<Handle> {
    let writer = Writer {
        sink,
        state,
        config,
        monitor,
        failing: None,
    };
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(rx, on_close))
        .map(|t| Handle(Some(t)))
}

/// A failure episode: the latest error, how many in a row, and when to try again.
struct Failing {
    reason: String,
    in_a_row: u32,
    retry_at: Instant,
}

struct Writer {
    sink: Box<dyn Sink>,
    state: ChainState,
    config: Config,
    monitor: Monitor,
    failing: Option<Failing>,
}

impl Writer {
    /// Runs until every [`AuditLog`](super::AuditLog) handle is dropped.
    fn run(mut self, mut rx: mpsc::Receiver<Pending>, on_close: OnClose) {
        let mut batch: Vec<Pending> = Vec::with_capacity(self.config.max_batch);
        loop {
            if batch.is_empty() {
                match rx.blocking_recv() {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            let mut records: usize = batch.iter().map(|p| p.unwritten().len()).sum();
            while records < self.config.max_batch {
                match rx.try_recv() {
                    Ok(p) => {
                        records += p.unwritten().len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            self.write_some(&mut batch);
        }
        let last: Vec<Pending> = on_close()
            .into_iter()
            .filter_map(|event_json| Pending::new(vec![event_json], oneshot::channel().0))
            .collect();
        if !last.is_empty() {
            // Closing: try the disk once more whatever the backoff says.
            if let Some(f) = &mut self.failing {
                f.retry_at = Instant::now();
            }
            let mut last = last;
            while !last.is_empty() && self.failing.is_none() {
                self.write_some(&mut last);
            }
            if !last.is_empty() || self.failing.is_some() {
                tracing::error!(
                    records = last.len(),
                    "audit log closing: final summary records could not be written"
                );
            }
        }
    }

    /// Writes the records of `batch` that fit in the active file (rotating first when none
    /// does) and acknowledges them; on failure refuses the whole batch. Leaves the records
    /// that did not fit in `batch`.
    fn write_some(&mut self, batch: &mut Vec<Pending>) {
        if let Some(f) = &self.failing {
            if Instant::now() < f.retry_at {
                let reason = format!(
                    "{} (refusing records until a write succeeds again)",
                    f.reason
                );
                return fail_all(batch, &reason);
            }
            // Recovering: drop whatever follows the last acknowledged record.
            let len = self.state.file_len;
            if let Err(e) = self.sink.truncate(len).and_then(|()| self.sink.sync()) {
                return self.failed(batch, &format!("cutting back a torn tail: {e}"));
            }
        }
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let (mut buf, mut taken, mut prev) = self.encode(batch, &ts);
        if taken == 0 {
            if let Err(e) = self.sink.rotate(self.state.file_first_seq) {
                return self.failed(batch, &format!("rotating the log: {e}"));
            }
            tracing::info!(
                first_seq = self.state.file_first_seq,
                "audit log rotated; the chain continues in a new file"
            );
            self.state.file_first_seq = self.state.next_seq;
            self.state.file_len = 0;
            (buf, taken, prev) = self.encode(batch, &ts);
        }
        if let Err(e) = self.sink.write_all(&buf).and_then(|()| self.sink.sync()) {
            return self.failed(batch, &e.to_string());
        }
        // Published before the acks, so whoever sees an ack sees the recovery too.
        if self.failing.take().is_some() {
            self.monitor.succeeded();
        }
        self.monitor.synced(taken);
        let mut seq = self.state.next_seq;
        self.state.next_seq += taken as u64;
        self.state.prev = prev;
        self.state.file_len += buf.len() as u64;
        // The written records are the batch's leading ones, so the appends they complete are
        // its leading ones too; a call cut by a rotation stays first, partly written.
        let (mut left, mut complete) = (taken, 0);
        for p in batch.iter_mut() {
            if left == 0 {
                break;
            }
            let n = p.unwritten().len().min(left);
            if p.written == 0 {
                p.first_seq = seq;
            }
            p.written += n;
            seq += n as u64;
            left -= n;
            if p.unwritten().is_empty() {
                complete += 1;
            }
        }
        for p in batch.drain(..complete) {
            // An appender that gave up waiting still has its records on disk; that is the safe
            // direction (a record without a token, never the reverse).
            let _ = p.ack.send(Ok(p.first_seq));
        }
    }

    /// The lines for the leading unwritten records of `batch` that fit in the active file: at
    /// least one when the file is empty, none when the file must rotate first.
    fn encode(&self, batch: &[Pending], ts: &str) -> (Vec<u8>, usize, String) {
        let limit = self.config.max_file_bytes.unwrap_or(u64::MAX);
        let mut prev = self.state.prev.clone();
        let mut buf = Vec::new();
        let mut taken = 0;
        let records = batch.iter().flat_map(Pending::unwritten);
        for (seq, event_json) in (self.state.next_seq..).zip(records) {
            let line = encode_line(seq, ts, &prev, event_json);
            let after = self.state.file_len + (buf.len() + line.len() + 1) as u64;
            if after > limit && self.state.file_len + buf.len() as u64 > 0 {
                break;
            }
            prev = hash_line(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            taken += 1;
        }
        (buf, taken, prev)
    }

    fn failed(&mut self, batch: &mut Vec<Pending>, reason: &str) {
        let in_a_row = self.failing.as_ref().map_or(1, |f| f.in_a_row + 1);
        let wait = backoff(self.config.retry_backoff, in_a_row);
        tracing::error!(
            error = reason,
            records = batch.len(),
            retry_in_ms = wait.as_millis() as u64,
            "audit log write failed; refusing records until a retry succeeds"
        );
        self.monitor.failed(reason);
        self.failing = Some(Failing {
            reason: reason.to_string(),
            in_a_row,
            retry_at: Instant::now() + wait,
        });
        fail_all(batch, reason);
    }
}

/// The wait before retry after `in_a_row` failures: `first`, doubling, at most
/// [`MAX_RETRY_BACKOFF`].
fn backoff(first: Duration, in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(MAX_RETRY_BACKOFF)
}

fn fail_all(batch: &mut Vec<Pending>, reason: &str) {
    for p in batch.drain(..) {
        let _ = p.ack.send(Err(AuditError::Failed {
            reason: reason.to_string(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let first = Duration::from_millis(100);
        assert_eq!(backoff(first, 1), first);
        assert_eq!(backoff(first, 2), first * 2);
        assert_eq!(backoff(first, 4), first * 8);
        assert_eq!(backoff(first, 10), MAX_RETRY_BACKOFF);
        assert_eq!(backoff(first, u32::MAX), MAX_RETRY_BACKOFF);
        assert_eq!(backoff(Duration::ZERO, 7), Duration::ZERO);
    }
}
