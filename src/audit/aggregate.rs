//! Attestations of callers that hold no identity, aggregated per uid.
//!
//! Every connection is attested and every attestation is a synced record. A caller that holds
//! no identity gets nothing from the broker, yet a loop of connections from one uid would
//! write a record each (2,000 connections: 2,000 fsyncs and lines). So per window: the first
//! such attestation per uid is written as usual; later ones are counted, and when the window
//! ends (or the log closes) one `attestation_summary` per uid says how many were suppressed,
//! with a few of the selector sets seen. Callers that hold an identity are never aggregated.
//!
//! Pure bookkeeping: the caller passes the time in, so tests need no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::{looks_like_secret, AuditEvent, MAX_FIELD_BYTES, MAX_LIST_LEN};

/// Length of an aggregation window.
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(60);

/// Most uids tracked in one window; attestations of further uids are counted in one overflow
/// bucket (and not written one by one: their number is the attacker's to choose).
pub const MAX_TRACKED_UIDS: usize = 4096;

/// Most distinct selector sets kept as a sample per uid.
pub const MAX_SELECTOR_SAMPLES: usize = 4;

/// Most bytes of selector strings sampled per uid, so a summary stays well inside
/// [`MAX_EVENT_BYTES`](super::MAX_EVENT_BYTES).
pub const MAX_SAMPLE_BYTES: usize = 16 * 1024;

/// What to do with one attestation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it as a record.
    Write,
    /// Counted into the window's summary.
    Counted,
}

#[derive(Debug, Default)]
struct Bucket {
    suppressed: u64,
    samples: Vec<Vec<String>>,
    sample_bytes: usize,
}

impl Bucket {
    fn count(&mut self, selectors: &[String]) {
        self.suppressed += 1;
        let bytes: usize = selectors.iter().map(String::len).sum();
        let usable = selectors.len() <= MAX_LIST_LEN
            && selectors
                .iter()
                .all(|s| s.len() <= MAX_FIELD_BYTES && !looks_like_secret(s));
        if usable
            && self.samples.len() < MAX_SELECTOR_SAMPLES
            && self.sample_bytes + bytes <= MAX_SAMPLE_BYTES
            && !self.samples.iter().any(|s| s == selectors)
        {
            self.samples.push(selectors.to_vec());
            self.sample_bytes += bytes;
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    start_wall: SystemTime,
    /// Uids whose first attestation this window was written, with what was counted since.
    uids: HashMap<u32, Bucket>,
    overflow: Bucket,
}

/// Aggregates no-identity attestations; see the module documentation.
#[derive(Debug)]
pub struct Aggregator {
    window: Duration,
    open: Option<Window>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new(SUMMARY_WINDOW)
    }
}

impl Aggregator {
    pub fn new(window: Duration) -> Self {
        Self { window, open: None }
    }

    /// An attestation of `uid` that matched no identity, at `now` (`wall` the same moment on
    /// the wall clock). Returns whether to write it, and the summaries of a window that had
    /// ended, to be written first.
    pub fn observe(
        &mut self,
        uid: u32,
        selectors: &[String],
        now: Instant,
        wall: SystemTime,
    ) -> (Verdict, Vec<AuditEvent>) {
        let ended = self.flush_due(now);
        let window = self.open.get_or_insert_with(|| Window {
            start: now,
            start_wall: wall,
            uids: HashMap::new(),
            overflow: Bucket::default(),
        });
        let verdict = if let Some(bucket) = window.uids.get_mut(&uid) {
            bucket.count(selectors);
            Verdict::Counted
        } else if window.uids.len() >= MAX_TRACKED_UIDS {
            window.overflow.count(selectors);
            Verdict::Counted
        } else {
            window.uids.insert(uid, Bucket::default());
            Verdict::Write
        };
        (verdict, ended)
    }

    /// The summaries of the open window if it has ended by `now`.
    pub fn flush_due(&mut self, now: Instant) -> Vec<AuditEvent> {
        match &self.open {
            Some(w) if now.duration_since(w.start) >= self.window => {
                let end = w.start_wall + self.window;
                self.close(end)
            }
            _ => Vec::new(),
        }
    }

    /// The summaries of the open window, ended now (`wall`): the log is closing.
    pub fn drain(&mut self, wall: SystemTime) -> Vec<AuditEvent> {
        let end = match &self.open {
            Some(w) => wall.clamp(w.start_wall, w.start_wall + self.window),
            None => return Vec::new(),
        };
        self.close(end)
    }

    fn close(&mut self, end: SystemTime) -> Vec<AuditEvent> {
        let Some(w) = self.open.take() else {
            return Vec::new();
        };
        let (start, end) = (unix(w.start_wall), unix(end));
        let summary = |uid: Option<u32>, b: Bucket| AuditEvent::AttestationSummary {
            uid,
            overflow: uid.is_none(),
            suppressed: b.suppressed,
            window_start: start,
            window_end: end,
            selector_samples: b.samples,
        };
        let mut uids: Vec<(u32, Bucket)> = w
            .uids
            .into_iter()
            .filter(|(_, b)| b.suppressed > 0)
            .collect();
        uids.sort_by_key(|(uid, _)| *uid);
        let mut out: Vec<AuditEvent> = uids.into_iter().map(|(u, b)| summary(Some(u), b)).collect();
        if w.overflow.suppressed > 0 {
            out.push(summary(None, w.overflow));
        }
        out
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(uid: u32, extra: &str) -> Vec<String> {
        vec![format!("unix:uid:{uid}"), extra.to_string()]
    }

    fn suppressed(e: &AuditEvent) -> (Option<u32>, u64, usize) {
        match e {
            AuditEvent::AttestationSummary {
                uid,
                suppressed,
                selector_samples,
                ..
            } => (*uid, *suppressed, selector_samples.len()),
            other => panic!("not a summary: {other:?}"),
        }
    }

    #[test]
    fn first_per_uid_is_written_the_rest_summarised_at_window_end() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut agg = Aggregator::default();
        let at = |s: u64| (t0 + Duration::from_secs(s), wall + Duration::from_secs(s));

        let (t, w) = at(0);
        assert_eq!(
            agg.observe(1000, &sel(1000, "a"), t, w),
            (Verdict::Write, vec![])
        );
        assert_eq!(agg.observe(1001, &sel(1001, "a"), t, w).0, Verdict::Write);
        for i in 0..1999 {
            let (t, w) = at(i % 59);
            let extra = if i % 2 == 0 { "a" } else { "b" };
            assert_eq!(
                agg.observe(1000, &sel(1000, extra), t, w).0,
                Verdict::Counted
            );
        }
        assert!(agg.flush_due(at(59).0).is_empty());

        // The next attestation after the window: the old window's summary comes first, and
        // the uid's first record of the new window is written again.
        let (t, w) = at(61);
        let (verdict, ended) = agg.observe(1000, &sel(1000, "a"), t, w);
        assert_eq!(verdict, Verdict::Write);
        assert_eq!(ended.len(), 1, "uid 1001 had nothing suppressed: {ended:?}");
        assert_eq!(suppressed(&ended[0]), (Some(1000), 1999, 2));
        match &ended[0] {
            AuditEvent::AttestationSummary {
                window_start,
                window_end,
                overflow,
                ..
            } => {
                assert_eq!(*window_start, 1_800_000_000);
                assert_eq!(*window_end, 1_800_000_060);
                assert!(!overflow);
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_quiet_window_is_flushed_by_time_and_on_close() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut agg = Aggregator::new(Duration::from_secs(10));
        agg.observe(7, &sel(7, "x"), t0, wall);
        agg.observe(7, &sel(7, "x"), t0, wall);
        assert!(agg.flush_due(t0 + Duration::from_secs(9)).is_empty());
        let due = agg.flush_due(t0 + Duration::from_secs(10));
        assert_eq!(
            due.iter().map(suppressed).collect::<Vec<_>>(),
            vec![(Some(7), 1, 1)]
        );
        assert!(agg.flush_due(t0 + Duration::from_secs(100)).is_empty());

        agg.observe(7, &sel(7, "x"), t0, wall);
        agg.observe(7, &sel(7, "y"), t0, wall);
        let closing = agg.drain(wall + Duration::from_secs(3));
        assert_eq!(closing.len(), 1);
        match &closing[0] {
            AuditEvent::AttestationSummary { window_end, .. } => assert_eq!(*window_end, 1_003),
            _ => unreachable!(),
        }
        assert!(agg.drain(wall).is_empty());
    }

    #[test]
    fn uids_beyond_the_bound_share_the_overflow_bucket() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut agg = Aggregator::default();
        for uid in 0..MAX_TRACKED_UIDS as u32 {
            assert_eq!(agg.observe(uid, &sel(uid, "a"), t0, wall).0, Verdict::Write);
        }
        for uid in MAX_TRACKED_UIDS as u32..MAX_TRACKED_UIDS as u32 + 100 {
            assert_eq!(
                agg.observe(uid, &sel(uid, "a"), t0, wall).0,
                Verdict::Counted
            );
        }
        let out = agg.drain(wall);
        assert_eq!(out.len(), 1);
        assert_eq!(suppressed(&out[0]), (None, 100, MAX_SELECTOR_SAMPLES));
        assert!(matches!(
            &out[0],
            AuditEvent::AttestationSummary { overflow: true, .. }
        ));
    }

    #[test]
    fn samples_are_bounded_and_checked() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH;
        let mut agg = Aggregator::default();
        agg.observe(1, &sel(1, "first"), t0, wall);
        agg.observe(1, &["x".repeat(MAX_FIELD_BYTES + 1)], t0, wall);
        agg.observe(
            1,
            &["eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln".into()],
            t0,
            wall,
        );
        for i in 0..10 {
            let set = ["y".repeat(3000), "z".repeat(2400), i.to_string()];
            agg.observe(1, &set, t0, wall);
        }
        let out = agg.drain(wall);
        let (_, n, samples) = suppressed(&out[0]);
        assert_eq!(n, 12);
        // Only the three sets that fit the byte bound; the oversized and secret-like ones
        // are counted but not sampled.
        assert_eq!(samples, 3);
        let json = serde_json::to_vec(&out[0]).unwrap();
        assert!(json.len() < super::super::MAX_EVENT_BYTES);
        super::super::screen::check(&out[0]).unwrap();
    }
}
