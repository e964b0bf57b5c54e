//! Whether the log accepts records, published for the daemon (gRPC health, metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

/// The writer's state as last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditHealth {
    /// The last write and fsync succeeded.
    Healthy,
    /// Writes fail (disk full, I/O error): every append is refused until one succeeds again.
    /// `since` is the first failure of this episode, `reason` the latest error.
    Degraded { since: SystemTime, reason: String },
}

impl AuditHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, AuditHealth::Healthy)
    }
}

/// The writer's side: publishes transitions and counts failures and synced batches.
pub(super) struct Monitor {
    tx: watch::Sender<AuditHealth>,
    failures: Arc<AtomicU64>,
    writes: Arc<Writes>,
}

/// Batches written and synced since the log was opened, and the records in them: records per
/// batch is how many appends shared each fsync (group commit).
#[derive(Debug, Default)]
pub(super) struct Writes {
    batches: AtomicU64,
    records: AtomicU64,
}

/// A view of the log's health that does not keep the log open (for a reporting task).
#[derive(Clone, Debug)]
pub struct AuditMonitor {
    pub(super) rx: watch::Receiver<AuditHealth>,
    pub(super) failures: Arc<AtomicU64>,
    pub(super) writes: Arc<Writes>,
}

impl AuditMonitor {
    /// Whether the log accepts records; changes on every failure and on recovery.
    pub fn health(&self) -> watch::Receiver<AuditHealth> {
        self.rx.clone()
    }

    /// Failed disk operations (write, fsync, truncate, rotate) since the log was opened;
    /// only ever grows.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Batches written and synced to disk (one fsync each) since the log was opened.
    pub fn synced_batches(&self) -> u64 {
        self.writes.batches.load(Ordering::Relaxed)
    }

    /// Records written and synced to disk since the log was opened.
    pub fn synced_records(&self) -> u64 {
        self.writes.records.load(Ordering::Relaxed)
    }
}

pub(super) fn channel() -> (Monitor, AuditMonitor) {
    let (tx, rx) = watch::channel(AuditHealth::Healthy);
    let failures = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(Writes::default());
    (
        Monitor {
            tx,
            failures: failures.clone(),
            writes: writes.clone(),
        },
        AuditMonitor {
            rx,
            failures,
            writes,
        },
    )
}

impl Monitor {
    /// A batch of `records` was written and synced.
    pub fn synced(&self, records: usize) {
        self.writes.batches.fetch_add(1, Ordering::Relaxed);
        self.writes
            .records
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    /// A disk operation failed.
    pub fn failed(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.tx.send_modify(|h| match h {
            AuditHealth::Healthy => {
                *h = AuditHealth::Degraded {
                    since: SystemTime::now(),
                    reason: reason.to_string(),
                }
            }
            AuditHealth::Degraded { reason: r, .. } => *r = reason.to_string(),
        });
    }

    /// A write and fsync succeeded.
    pub fn succeeded(&self) {
        self.tx.send_if_modified(|h| {
            if let AuditHealth::Degraded { since, .. } = h {
                let for_secs = since.elapsed().map_or(0, |d| d.as_secs());
                tracing::warn!(
                    degraded_for_secs = for_secs,
                    "audit log writes succeed again"
                );
                *h = AuditHealth::Healthy;
                true
            } else {
                false
            }
        });
    }
}
