//! Append-only, hash-chained JSON-lines audit log.
//!
//! Every record names the SHA-256 of the line before it ([`chain`] has the format). An
//! [`AuditLog::append`] returns only once its record is written and fsync'd, so the broker can
//! hand out a token knowing its record survives a crash. Appends are group-committed: one
//! writer drains whatever is queued, writes it in one go and syncs once.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

mod chain;
mod event;
#[cfg(test)]
mod tests;
mod writer;

pub use chain::{verify_file, BreakReason, VerifyError, VerifyReport, GENESIS_PREV};
pub use event::{looks_like_secret, AuditEvent, SvidKind};

/// Appends waiting for the writer. When full, `append` waits: backpressure instead of
/// unbounded memory when the disk is slow.
pub const QUEUE_CAPACITY: usize = 1024;

/// Most records written per fsync.
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

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Most records per write + fsync, clamped to `1..=MAX_BATCH_RECORDS`. 1 means one fsync
    /// per record (only useful for comparison).
    pub max_batch: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_batch: MAX_BATCH_RECORDS,
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
}

/// A handle to the log; clone it freely. When the last handle is dropped the writer finishes,
/// closes the file and releases its lock before the drop returns.
#[derive(Clone, Debug)]
pub struct AuditLog {
    // Declared before `_writer` so it drops first: the writer sees the channel close, then is
    // joined.
    tx: mpsc::Sender<writer::Pending>,
    _writer: Arc<writer::Handle>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600, in a 0700 directory if that is missing) the log at
    /// `path`, verifies it, and returns its records for state rebuild.
    ///
    /// A final line without a newline — a write torn by a crash, never acknowledged — is
    /// truncated with a warning.
    ///
    /// # Errors
    /// [`AuditError::Io`] if the file cannot be created or read; [`AuditError::Locked`] if
    /// another writer has it; [`AuditError::Broken`] naming the first untrustworthy record if
    /// the chain does not verify.
    pub async fn open(
        path: &Path,
        opts: AuditOptions,
    ) -> Result<(AuditLog, Vec<AuditRecord>), AuditError> {
        let path = path.to_path_buf();
        let (file, records, state) = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|_| AuditError::Closed)??;
        let log = Self::start(Box::new(file), state, &opts)?;
        Ok((log, records))
    }

    fn start(
        sink: Box<dyn writer::Sink>,
        state: writer::ChainState,
        opts: &AuditOptions,
    ) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let max_batch = opts.max_batch.clamp(1, MAX_BATCH_RECORDS);
        let writer = writer::spawn(sink, state, rx, max_batch).map_err(|e| AuditError::Failed {
            reason: format!("starting the writer thread: {e}"),
        })?;
        Ok(Self {
            tx,
            _writer: Arc::new(writer),
        })
    }

    /// Appends `event`; returns its seq once it is written and fsync'd.
    ///
    /// # Errors
    /// A bound or the no-secrets rule is violated (nothing is written), or
    /// [`AuditError::Failed`] / [`AuditError::Closed`]: the record is not known to be on disk.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        event::check(&event)?;
        let event_json =
            serde_json::to_vec(&event).map_err(|e| AuditError::Encode(e.to_string()))?;
        if event_json.len() > MAX_EVENT_BYTES {
            return Err(AuditError::RecordTooLarge {
                len: event_json.len(),
            });
        }
        let (ack, done) = oneshot::channel();
        self.tx
            .send(writer::Pending { event_json, ack })
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Appends several events in this order and returns once all are on disk. Queued
    /// together, they usually share one fsync: a token's decision and issuance records cost
    /// one disk wait, not two.
    ///
    /// # Errors
    /// As [`AuditLog::append`]; an event refused up front means none of them was queued.
    pub async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        let mut encoded = Vec::with_capacity(events.len());
        for event in &events {
            event::check(event)?;
            let event_json =
                serde_json::to_vec(event).map_err(|e| AuditError::Encode(e.to_string()))?;
            if event_json.len() > MAX_EVENT_BYTES {
                return Err(AuditError::RecordTooLarge {
                    len: event_json.len(),
                });
            }
            encoded.push(event_json);
        }
        let mut acks = Vec::with_capacity(encoded.len());
        for event_json in encoded {
            let (ack, done) = oneshot::channel();
            self.tx
                .send(writer::Pending { event_json, ack })
                .await
                .map_err(|_| AuditError::Closed)?;
            acks.push(done);
        }
        for done in acks {
            done.await.map_err(|_| AuditError::Closed)??;
        }
        Ok(())
    }
}

type Opened = (File, Vec<AuditRecord>, writer::ChainState);

fn open_blocking(path: &Path) -> Result<Opened, AuditError> {
    let io_err = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|d| !d.exists()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
    }
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    lock(&file, path)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "audit log is readable by others; expected 0600");
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err)?;

    let scan = chain::scan(&bytes)?;
    let mut records = Vec::with_capacity(scan.lines.len());
    for (i, line) in scan.lines.iter().enumerate() {
        let record: AuditRecord = serde_json::from_slice(line).map_err(|e| {
            chain::broken(i, Some(i as u64 + 1), BreakReason::BadEvent(e.to_string()))
        })?;
        records.push(record);
    }
    if scan.report.torn_tail_bytes > 0 {
        tracing::warn!(
            path = %path.display(),
            bytes = scan.report.torn_tail_bytes,
            "audit log ends in a torn record (crash during write); truncating it"
        );
        file.set_len(scan.complete_len as u64).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
    }
    if !existed {
        // Make the new file's directory entry durable too, not just its contents.
        if let Some(dir) = parent {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
    }
    let state = writer::ChainState {
        next_seq: scan.report.records + 1,
        prev: scan.report.last_hash,
    };
    Ok((file, records, state))
}

/// Takes an exclusive advisory lock for the life of the file handle (released on close, and by
/// the kernel if the process dies), so a second daemon on the same data_dir fails at start.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    // SAFETY: flock on a descriptor we own for the duration of the call; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(AuditError::Locked {
            path: path.to_path_buf(),
        })
    } else {
        Err(AuditError::Io {
            path: path.to_path_buf(),
            source: err,
        })
    }
}
