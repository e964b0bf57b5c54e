//! Append-only, hash-chained JSON-lines audit log.
//!
//! Every record names the SHA-256 of the line before it ([`chain`] has the format). An
//! [`AuditLog::append`] returns only once its record is written and fsync'd, so the broker can
//! hand out a token knowing its record survives a crash. Appends are group-committed: one
//! writer drains whatever is queued, writes it in one go and syncs once.
//!
//! The log rotates by size into a set of files the chain runs through ([`set`]); a failing
//! disk degrades it (appends refused, [`AuditLog::health`]) until writes succeed again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

mod aggregate;
mod chain;
mod event;
mod file;
mod health;
mod open;
mod screen;
mod set;
mod sink;
#[cfg(test)]
mod tests;
mod writer;

pub use aggregate::{
    Aggregator, Verdict, MAX_SAMPLE_BYTES, MAX_SELECTOR_SAMPLES, MAX_TRACKED_UIDS, SUMMARY_WINDOW,
};
pub use chain::{verify_file, BreakReason, VerifyError, VerifyReport, GENESIS_PREV};
pub use event::{AuditEvent, SvidKind};
pub use health::{AuditHealth, AuditMonitor};
pub use screen::looks_like_secret;
pub use set::{
    rotated_files, rotated_name, rotated_seq, verify_rotated, verify_set, ROTATED_SEQ_DIGITS,
};
pub use sink::AuditSink;
#[cfg(test)]
pub use sink::RecordingSink;
pub use writer::MAX_RETRY_BACKOFF;

/// Appends waiting for the writer. When full, `append` waits: backpressure instead of
/// unbounded memory when the disk is slow.
pub const QUEUE_CAPACITY: usize = 1024;

/// Further appends share a write and fsync while it holds fewer records than this. One
/// append's records are never split by it (see `writer`).
pub const MAX_BATCH_RECORDS: usize = 256;

/// Longest record line, header included.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Longest serialized event (its JSON object), so that with the header the line stays within
/// [`MAX_RECORD_BYTES`].
pub const MAX_EVENT_BYTES: usize = MAX_RECORD_BYTES - chain::MAX_HEADER_BYTES;

/// Longest string in an event (a purpose, a selector, an error message).
pub const MAX_FIELD_BYTES: usize = 4096;

/// Most items in any list in an event (selectors, scopes, policy ids).
pub const MAX_LIST_LEN: usize = 256;

/// Size at which the active file rotates unless configured otherwise.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest rotation size: sixteen records of the largest size, so rotation never churns.
pub const MIN_MAX_FILE_BYTES: u64 = 16 * MAX_RECORD_BYTES as u64;

/// Largest rotation size accepted from configuration.
pub const MAX_MAX_FILE_BYTES: u64 = 1 << 40;

/// First wait before the writer retries a failing disk (doubling up to
/// [`MAX_RETRY_BACKOFF`]).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How often pending attestation summaries are checked for a window that ended.
const SUMMARY_FLUSH_EVERY: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Appends join a write + fsync while it holds fewer records than this, clamped to
    /// `1..=MAX_BATCH_RECORDS`. 1 means one fsync per append (only useful for comparison).
    pub max_batch: usize,
    /// Rotate the active file before it would grow past this many bytes; `None` never
    /// rotates. Raised to [`MIN_MAX_FILE_BYTES`] if smaller.
    pub max_file_bytes: Option<u64>,
    /// First wait before retrying a failing disk; appends in between are refused at once.
    pub retry_backoff: Duration,
    /// Window over which attestations of callers without identity are summarised.
    pub summary_window: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_batch: MAX_BATCH_RECORDS,
            max_file_bytes: Some(DEFAULT_MAX_FILE_BYTES),
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            summary_window: SUMMARY_WINDOW,
        }
    }
}

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub ts: String,
    pub prev: String,
    #[serde(flatten)]
    pub event: AuditEvent,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The existing log does not verify; an operator must look before the daemon writes more.
    #[error("audit log chain is broken: {0}")]
    Broken(#[from] VerifyError),
    #[error("audit field {field:?} is {len} bytes; the limit is {MAX_FIELD_BYTES}")]
    FieldTooLong { field: String, len: usize },
    #[error("audit field {field:?} has {len} items; the limit is {MAX_LIST_LEN}")]
    ListTooLong { field: String, len: usize },
    #[error("audit event is {len} bytes; the limit is {MAX_EVENT_BYTES}")]
    RecordTooLarge { len: usize },
    #[error("audit field {field:?} looks like a token or private key; refusing to log it")]
    SecretLike { field: String },
    #[error("encoding audit event: {0}")]
    Encode(String),
    /// A write or fsync failed (for this record or an earlier one). The record may not be on
    /// disk: the caller must not act as if it were (refuse the token).
    #[error("audit log write failed: {reason}")]
    Failed { reason: String },
    #[error("audit log writer has stopped")]
    Closed,
    /// Another process (or another `AuditLog` in this one) has the file open for writing; two
    /// writers would fork the chain.
    #[error("audit log {path} is in use by another writer")]
    Locked { path: PathBuf },
    #[error("audit log {path} is a symbolic link; refusing to follow it (point [audit] path at the file itself)")]
    Symlink { path: PathBuf },
    #[error("audit log {path} is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("audit log {path} is owned by uid {owner} (mode {mode:04o}), not by this process (uid {euid}); fix: chown {euid} {path}")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        mode: u32,
        euid: u32,
    },
    #[error("audit log {path} (owner uid {owner}, mode {mode:04o}) is writable by group or others; fix: chmod 600 {path}")]
    Writable {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
}

impl AuditError {
    /// The record itself cannot be written (too large, a field too long, something that looks
    /// like a secret), whatever state the log is in: the fault is in what the request carried,
    /// and the same request will fail the same way against a healthy log.
    pub fn is_about_the_record(&self) -> bool {
        matches!(
            self,
            AuditError::FieldTooLong { .. }
                | AuditError::ListTooLong { .. }
                | AuditError::RecordTooLarge { .. }
                | AuditError::SecretLike { .. }
        )
    }
}

/// A handle to the log; clone it freely. When the last handle is dropped the writer writes
/// the pending attestation summaries, closes the file and releases its lock before the drop
/// returns.
#[derive(Clone, Debug)]
pub struct AuditLog {
    // Declared before `_writer` so it drops first: the writer sees the channel close, then is
    // joined.
    tx: mpsc::Sender<writer::Pending>,
    health: AuditMonitor,
    no_identity: Arc<Mutex<Aggregator>>,
    _writer: Arc<writer::Handle>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600, in a 0700 directory if that is missing) the log at
    /// `path`, reads and verifies it with its rotated files (oldest first, the chain running
    /// through them), and returns all their records for state rebuild.
    ///
    /// A final line without a newline — a write torn by a crash, never acknowledged — is
    /// truncated with a warning.
    ///
    /// # Errors
    /// [`AuditError::Io`] if a file cannot be created or read; [`AuditError::Symlink`],
    /// [`AuditError::NotRegular`], [`AuditError::WrongOwner`], [`AuditError::Writable`] if a
    /// file is not one the daemon can trust; [`AuditError::Locked`] if another writer has it;
    /// [`AuditError::Broken`] naming the file and first untrustworthy record if the chain does
    /// not verify.
    pub async fn open(
        path: &Path,
        opts: AuditOptions,
    ) -> Result<(AuditLog, Vec<AuditRecord>), AuditError> {
        let owned = path.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || open::open_blocking(&owned))
            .await
            .map_err(|_| AuditError::Closed)??;
        let sink = file::FileSink::new(opened.file, path.to_path_buf());
        let log = Self::start(Box::new(sink), opened.state, &opts)?;
        Ok((log, opened.records))
    }

    fn start(
        sink: Box<dyn writer::Sink>,
        state: writer::ChainState,
        opts: &AuditOptions,
    ) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let config = writer::Config {
            max_batch: opts.max_batch.clamp(1, MAX_BATCH_RECORDS),
            max_file_bytes: opts.max_file_bytes.map(|n| n.max(MIN_MAX_FILE_BYTES)),
            retry_backoff: opts.retry_backoff,
        };
        let no_identity = Arc::new(Mutex::new(Aggregator::new(opts.summary_window)));
        let on_close: writer::OnClose = {
            let agg = no_identity.clone();
            Box::new(move || {
                let events = lock(&agg).drain(SystemTime::now());
                events.iter().filter_map(|e| encode(e).ok()).collect()
            })
        };
        let (monitor, health) = health::channel();
        let writer = writer::spawn(sink, state, rx, config, monitor, on_close).map_err(|e| {
            AuditError::Failed {
                reason: format!("starting the writer thread: {e}"),
            }
        })?;
        spawn_summary_flusher(tx.downgrade(), no_identity.clone());
        Ok(Self {
            tx,
            health,
            no_identity,
            _writer: Arc::new(writer),
        })
    }

    /// Whether the log accepts records; changes on every failure and on recovery.
    pub fn health(&self) -> watch::Receiver<AuditHealth> {
        self.health.health()
    }

    /// Failed disk operations (write, fsync, truncate, rotate) since the log was opened;
    /// only ever grows. For a metric.
    pub fn failures(&self) -> u64 {
        self.health.failures()
    }

    /// Health and failure count, without keeping the log open.
    pub fn monitor(&self) -> AuditMonitor {
        self.health.clone()
    }

    /// Appends `event`; returns its seq once it is written and fsync'd.
    ///
    /// # Errors
    /// A bound or the no-secrets rule is violated (nothing is written), or
    /// [`AuditError::Failed`] / [`AuditError::Closed`]: the record is not known to be on disk.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let event_json = encode(&event)?;
        self.write(vec![event_json]).await
    }

    /// Appends several events in this order, next to each other, and returns once all are on
    /// disk. They share one write and one fsync however many there are: a token's decision
    /// and issuance records cost one disk wait, not two, and a CloseTask's thousand
    /// revocations one, not four.
    ///
    /// # Errors
    /// As [`AuditLog::append`]; an event refused up front means none of them was queued.
    pub async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        let encoded = events.iter().map(encode).collect::<Result<Vec<_>, _>>()?;
        if encoded.is_empty() {
            return Ok(());
        }
        self.write(encoded).await.map(|_| ())
    }

    /// Queues one call's encoded events and waits until they are on disk; the first one's seq.
    async fn write(&self, events: Vec<Vec<u8>>) -> Result<u64, AuditError> {
        let done = send(&self.tx, events).await?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends the attestation of a caller running as `uid`. One that matched no identity is
    /// aggregated ([`aggregate`]): written if it is the uid's first this window, otherwise
    /// only counted (`Ok(None)`). Others are appended as by [`AuditLog::append`].
    ///
    /// # Errors
    /// As [`AuditLog::append`], also for a summary of an ended window written first.
    pub async fn append_attestation(
        &self,
        uid: u32,
        event: AuditEvent,
    ) -> Result<Option<u64>, AuditError> {
        let selectors = match &event {
            AuditEvent::Attestation {
                selectors,
                spiffe_ids,
                ..
            } if spiffe_ids.is_empty() => selectors,
            _ => return self.append(event).await.map(Some),
        };
        let (verdict, ended) =
            lock(&self.no_identity).observe(uid, selectors, Instant::now(), SystemTime::now());
        if !ended.is_empty() {
            self.append_all(ended).await?;
        }
        match verdict {
            Verdict::Write => self.append(event).await.map(Some),
            Verdict::Counted => Ok(None),
        }
    }
}

/// Checks and serializes an event.
fn encode(event: &AuditEvent) -> Result<Vec<u8>, AuditError> {
    screen::check(event)?;
    let event_json = serde_json::to_vec(event).map_err(|e| AuditError::Encode(e.to_string()))?;
    if event_json.len() > MAX_EVENT_BYTES {
        return Err(AuditError::RecordTooLarge {
            len: event_json.len(),
        });
    }
    Ok(event_json)
}

async fn send(
    tx: &mpsc::Sender<writer::Pending>,
    events: Vec<Vec<u8>>,
) -> Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError> {
    let (ack, done) = oneshot::channel();
    let pending = writer::Pending::new(events, ack)
        .ok_or_else(|| AuditError::Encode("an append with no records".into()))?;
    tx.send(pending).await.map_err(|_| AuditError::Closed)?;
    Ok(done)
}

fn lock(agg: &Mutex<Aggregator>) -> std::sync::MutexGuard<'_, Aggregator> {
    agg.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the summaries of an ended window even when no attestation comes to trigger it.
/// Holds only a weak sender, so it never keeps the writer alive; it stops when the log closes.
fn spawn_summary_flusher(tx: mpsc::WeakSender<writer::Pending>, agg: Arc<Mutex<Aggregator>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SUMMARY_FLUSH_EVERY);
        loop {
            tick.tick().await;
            let Some(tx) = tx.upgrade() else { return };
            let due = lock(&agg).flush_due(Instant::now());
            for event in &due {
                // The writer logs a failed write; a lost summary loses counts, not records.
                if let Ok(json) = encode(event) {
                    let _ = send(&tx, vec![json]).await;
                }
            }
        }
    });
}
