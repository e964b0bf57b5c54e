//! Admission before attestation: how many connections, and how many bytes of unfinished
//! requests, each uid may hold. The uid comes from `SO_PEERCRED` at accept, which the kernel
//! fills in: it costs nothing the caller controls.
//!
//! Slots and reservations are RAII guards, so a connection or a request that ends in any way
//! (closed, reset, timed out, dropped by a panic) gives its share back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::limits::{ConnectionLimits, REFUSAL_LOG_INTERVAL};

/// Why a connection or a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The daemon holds `max_connections` already.
    TooManyConnections,
    /// This uid holds `max_connections_per_uid` already.
    TooManyConnectionsForUid,
    /// This uid's unfinished request bodies would exceed `max_pending_request_bytes_per_uid`.
    TooManyPendingBytesForUid,
    /// This uid opens connections faster than `new_connections_per_uid_per_second`.
    ConnectingTooFast,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "max_connections",
            Refusal::TooManyConnectionsForUid => "max_connections_per_uid",
            Refusal::TooManyPendingBytesForUid => "max_pending_request_bytes_per_uid",
            Refusal::ConnectingTooFast => "new_connections_per_uid_per_second",
        }
    }

    const ALL: [Refusal; 4] = [
        Refusal::TooManyConnections,
        Refusal::TooManyConnectionsForUid,
        Refusal::TooManyPendingBytesForUid,
        Refusal::ConnectingTooFast,
    ];
}

struct UidUsage {
    connections: usize,
    pending_bytes: usize,
    last_refusal_log: Option<Instant>,
    /// Token bucket of new connections: tokens left as of `refilled`.
    tokens: f64,
    refilled: Instant,
}

impl UidUsage {
    fn new(burst: f64, now: Instant) -> Self {
        Self {
            connections: 0,
            pending_bytes: 0,
            last_refusal_log: None,
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let secs = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + secs * rate).min(burst);
        self.refilled = now;
    }

    /// Holds nothing and would be rebuilt identical: safe to forget.
    fn forgettable(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.connections == 0
            && self.pending_bytes == 0
            && self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate >= burst
    }
}

#[derive(Default)]
struct Usage {
    connections: usize,
    /// Uids holding something, or whose connection rate bucket is not yet full again;
    /// pruned of the rest as it grows ([`PRUNE_SLACK`]).
    per_uid: HashMap<u32, UidUsage>,
}

/// Entries beyond the open connections before forgettable uids are pruned.
const PRUNE_SLACK: usize = 1024;

/// Shared by every listener of the daemon.
pub struct Gate {
    max_connections: usize,
    max_per_uid: usize,
    max_pending_per_uid: usize,
    /// New connections per uid per second, and the burst allowed above that rate.
    rate: f64,
    burst: f64,
    usage: Mutex<Usage>,
    refused: [AtomicU64; 4],
}

impl Gate {
    /// `max_connections` is the effective cap (config, lowered to what the fd limit allows).
    pub fn new(limits: &ConnectionLimits, max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            max_connections,
            max_per_uid: limits.max_connections_per_uid.min(max_connections),
            max_pending_per_uid: limits.max_pending_request_bytes_per_uid,
            rate: f64::from(limits.new_connections_per_uid_per_second),
            burst: f64::from(limits.new_connections_per_uid_burst),
            usage: Mutex::new(Usage::default()),
            refused: Default::default(),
        })
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A slot for a new connection from `uid`, or why not.
    ///
    /// # Errors
    /// The total or the uid's cap is reached.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<ConnSlot, Refusal> {
        let now = Instant::now();
        let mut usage = self.lock();
        if usage.per_uid.len() > usage.connections + PRUNE_SLACK {
            let (rate, burst) = (self.rate, self.burst);
            usage
                .per_uid
                .retain(|_, u| !u.forgettable(rate, burst, now));
        }
        let full = usage.connections >= self.max_connections;
        let entry = usage
            .per_uid
            .entry(uid)
            .or_insert_with(|| UidUsage::new(self.burst, now));
        entry.refill(self.rate, self.burst, now);
        let refusal = if full {
            Some(Refusal::TooManyConnections)
        } else if entry.connections >= self.max_per_uid {
            Some(Refusal::TooManyConnectionsForUid)
        } else if entry.tokens < 1.0 {
            Some(Refusal::ConnectingTooFast)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.note_refusal(&mut usage, uid, r);
            return Err(r);
        }
        entry.tokens -= 1.0;
        entry.connections += 1;
        usage.connections += 1;
        Ok(ConnSlot {
            gate: self.clone(),
            uid,
        })
    }

    /// Reserves `bytes` of unfinished request body for `uid`.
    ///
    /// # Errors
    /// The uid's pending bytes would exceed the cap.
    pub fn reserve(self: &Arc<Self>, uid: u32, bytes: usize) -> Result<Reservation, Refusal> {
        let burst = self.burst;
        let mut usage = self.lock();
        let entry = usage
            .per_uid
            .entry(uid)
            .or_insert_with(|| UidUsage::new(burst, Instant::now()));
        if entry.pending_bytes + bytes > self.max_pending_per_uid {
            let r = Refusal::TooManyPendingBytesForUid;
            self.note_refusal(&mut usage, uid, r);
            return Err(r);
        }
        entry.pending_bytes += bytes;
        Ok(Reservation {
            gate: self.clone(),
            uid,
            bytes,
        })
    }

    /// Open connections in all.
    pub fn open_connections(&self) -> usize {
        self.lock().connections
    }

    /// Refusals so far, by reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_refusal(&self, usage: &mut Usage, uid: u32, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
        let Some(entry) = usage.per_uid.get_mut(&uid) else {
            tracing::warn!(uid, limit = r.as_str(), "refused a caller over its limit");
            return;
        };
        let now = Instant::now();
        if entry
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL)
        {
            entry.last_refusal_log = Some(now);
            tracing::warn!(
                uid,
                limit = r.as_str(),
                connections = entry.connections,
                pending_bytes = entry.pending_bytes,
                "refused a caller over its limit (further refusals for this uid are counted, \
                 logged at most every {:?})",
                REFUSAL_LOG_INTERVAL
            );
        }
    }

    fn release(&self, uid: u32, connections: usize, bytes: usize) {
        let mut usage = self.lock();
        usage.connections -= connections;
        if let Some(u) = usage.per_uid.get_mut(&uid) {
            u.connections -= connections;
            u.pending_bytes -= bytes;
            if u.forgettable(self.rate, self.burst, Instant::now()) {
                usage.per_uid.remove(&uid);
            }
        }
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct ConnSlot {
    gate: Arc<Gate>,
    uid: u32,
}

impl ConnSlot {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gate.release(self.uid, 1, 0);
    }
}

/// Bytes of one unfinished request body; dropping it gives them back.
pub struct Reservation {
    gate: Arc<Gate>,
    uid: u32,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gate.release(self.uid, 0, self.bytes);
    }
}

impl crate::telemetry::ConnectionStats for Gate {
    fn open_connections(&self) -> usize {
        Gate::open_connections(self)
    }

    fn max_connections(&self) -> usize {
        Gate::max_connections(self)
    }

    fn refusals(&self) -> Vec<(&'static str, u64)> {
        Gate::refusals(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_uid: usize, pending: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections_per_uid: per_uid,
            max_pending_request_bytes_per_uid: pending,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn new_connections_are_rate_limited_per_uid() {
        let mut l = limits(10_000, 1000);
        l.new_connections_per_uid_per_second = 10;
        l.new_connections_per_uid_burst = 20;
        let gate = Gate::new(&l, 10_000);
        // The burst, opened and closed at once, then the next is refused...
        for _ in 0..20 {
            drop(gate.admit(5).unwrap());
        }
        assert_eq!(gate.admit(5).err(), Some(Refusal::ConnectingTooFast));
        // ...while another uid is not affected, and the bucket refills with time.
        drop(gate.admit(6).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(150));
        drop(gate.admit(5).unwrap());
    }

    #[test]
    fn caps_hold_at_their_edge_and_slots_come_back() {
        let gate = Gate::new(&limits(2, 1000), 3);
        let a = gate.admit(1).unwrap();
        let _b = gate.admit(1).unwrap();
        assert_eq!(gate.admit(1).err(), Some(Refusal::TooManyConnectionsForUid));
        let _c = gate.admit(2).unwrap();
        assert_eq!(gate.admit(3).err(), Some(Refusal::TooManyConnections));
        drop(a);
        let _d = gate.admit(1).unwrap();
        assert_eq!(gate.open_connections(), 3);
        let refused: u64 = gate.refusals().iter().map(|(_, n)| n).sum();
        assert_eq!(refused, 2);
    }

    #[test]
    fn pending_bytes_are_bounded_per_uid() {
        let gate = Gate::new(&limits(10, 1000), 10);
        let r1 = gate.reserve(7, 600).unwrap();
        let _r2 = gate.reserve(7, 400).unwrap();
        assert_eq!(
            gate.reserve(7, 1).err(),
            Some(Refusal::TooManyPendingBytesForUid)
        );
        // Another uid is not affected.
        let _r3 = gate.reserve(8, 1000).unwrap();
        drop(r1);
        let _r4 = gate.reserve(7, 600).unwrap();
    }

    #[test]
    fn released_uids_leave_no_entry() {
        let gate = Gate::new(&limits(10, 1000), 10);
        for uid in 0..100 {
            drop(gate.reserve(uid, 10).unwrap());
        }
        assert!(gate.lock().per_uid.is_empty());
        // Uids that connected keep their rate bucket for a while, but never more than the
        // prune slack beyond the open connections.
        for uid in 0..(PRUNE_SLACK as u32 * 3) {
            drop(gate.admit(uid).unwrap());
        }
        assert!(gate.lock().per_uid.len() <= PRUNE_SLACK + 1);
        assert_eq!(gate.open_connections(), 0);
    }
}
