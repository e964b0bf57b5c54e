//! Where the broker's records go: the [`AuditLog`] in the daemon, a recording fake with error
//! injection in unit tests. Both promise the same thing: `append_all` returns once every
//! record is durable, or fails and nothing may be handed out.

use super::{AuditError, AuditEvent, AuditLog};

#[async_trait::async_trait]
pub trait AuditSink: Send + Sync {
    /// Writes `events` in order and returns once all are on disk.
    ///
    /// # Errors
    /// The records may not be on disk: refuse what they describe.
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError>;
}

#[async_trait::async_trait]
impl AuditSink for AuditLog {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        AuditLog::append_all(self, events).await
    }
}

/// A sink that keeps records in memory and fails on demand. It refuses what the real log
/// refuses before writing (a record too large, a field too long, a secret-like value), so the
/// broker's unit tests see those refusals too.
#[cfg(test)]
#[derive(Default)]
pub struct RecordingSink {
    records: std::sync::Mutex<Vec<AuditEvent>>,
    fail: std::sync::atomic::AtomicBool,
    appends: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl RecordingSink {
    pub fn records(&self) -> Vec<AuditEvent> {
        self.records.lock().unwrap().clone()
    }

    /// Appends that succeeded: each is one write and one wait for the disk in the real log.
    pub fn appends(&self) -> usize {
        self.appends.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, every append fails (as a full disk would).
    pub fn fail_from_now(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
#[async_trait::async_trait]
impl AuditSink for RecordingSink {
    async fn append_all(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditError::Failed {
                reason: "injected: disk full".into(),
            });
        }
        for e in &events {
            super::encode(e)?;
        }
        self.records.lock().unwrap().extend(events);
        self.appends
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
