//! The single writer: owns the file, extends the chain, and acknowledges appends only after
//! their batch is written and synced (group commit).
//!
//! It runs on its own OS thread because every step (write, fsync) blocks; a tokio worker
//! parked in fsync would stall unrelated requests.

use std::io::{self, Write};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::chain::{encode_line, hash_line};
use super::AuditError;

/// Where records go. The file in production; tests substitute sinks that fail or count.
pub(super) trait Sink: Send + 'static {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
}

impl Sink for std::fs::File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        // Data plus the size change that makes it readable; other metadata is not needed.
        self.sync_data()
    }
}

/// An appender's request: the event's JSON object, and where to send the seq (or error).
pub(super) struct Pending {
    pub event_json: Vec<u8>,
    pub ack: oneshot::Sender<Result<u64, AuditError>>,
}

/// The end of the chain: the next seq and the hash the next record must carry.
pub(super) struct ChainState {
    pub next_seq: u64,
    pub prev: String,
}

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
    max_batch: usize,
) -> io::Result<Handle> {
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || run(sink, state, rx, max_batch))
        .map(|t| Handle(Some(t)))
}

/// Runs until every [`AuditLog`](super::AuditLog) handle is dropped.
fn run(
    mut sink: Box<dyn Sink>,
    mut state: ChainState,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
) {
    // After a failed write or fsync the file's tail and the kernel's page state are unknown
    // (a retried fsync can report success for data that was dropped), so the log refuses
    // everything until it is reopened, which re-verifies and repairs the tail.
    let mut failed: Option<String> = None;
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if let Some(reason) = &failed {
            fail_all(&mut batch, reason);
            continue;
        }
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut seq = state.next_seq;
        let mut prev = state.prev.clone();
        buf.clear();
        for p in &batch {
            let line = encode_line(seq, &ts, &prev, &p.event_json);
            prev = hash_line(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            seq += 1;
        }
        match sink.write_all(&buf).and_then(|()| sink.sync()) {
            Ok(()) => {
                for (i, p) in batch.drain(..).enumerate() {
                    // An appender that gave up waiting still has its record on disk; that is
                    // the safe direction (a record without a token, never the reverse).
                    let _ = p.ack.send(Ok(state.next_seq + i as u64));
                }
                state.next_seq = seq;
                state.prev = prev;
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %e, records = batch.len(), "audit log write failed; refusing all further appends");
                fail_all(&mut batch, &reason);
                failed = Some(reason);
            }
        }
    }
}

fn fail_all(batch: &mut Vec<Pending>, reason: &str) {
    for p in batch.drain(..) {
        let _ = p.ack.send(Err(AuditError::Failed {
            reason: reason.to_string(),
        }));
    }
}
