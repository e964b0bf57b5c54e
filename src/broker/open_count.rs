//! How many tasks are open (neither closed nor expired) at a given second, without a scan.
//!
//! The open-task bound is checked on every OpenTask, under the lock every TaskBroker call
//! takes. Counting by a walk over the table made each OpenTask cost O(tasks) once the table
//! held `max_open_tasks` unclosed tasks, some of them expired: expired tasks stay for
//! [`super::settings::CLOSED_TASK_RETENTION`] before the sweep forgets them, so for up to an
//! hour every OpenTask walked 100,000 tasks. Here the count is kept per expiry second and a
//! query moves a cursor over the seconds that passed since the last one: amortised O(1) while
//! time goes forward, and still exact when the wall clock steps back.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

#[derive(Debug)]
pub struct OpenCount {
    /// Unclosed tasks per `expires_at`.
    by_expiry: BTreeMap<i64, usize>,
    unclosed: usize,
    /// The second of the last query: `lapsed` counts the unclosed tasks with
    /// `expires_at <= at`.
    at: i64,
    lapsed: usize,
}

impl Default for OpenCount {
    fn default() -> Self {
        Self {
            by_expiry: BTreeMap::new(),
            unclosed: 0,
            at: i64::MIN,
            lapsed: 0,
        }
    }
}

impl OpenCount {
    /// A task that is not closed joins the table.
    pub fn add(&mut self, expires_at: i64) {
        *self.by_expiry.entry(expires_at).or_default() += 1;
        self.unclosed += 1;
        if expires_at <= self.at {
            self.lapsed += 1;
        }
    }

    /// A task counted by [`Self::add`] closes or leaves the table.
    pub fn remove(&mut self, expires_at: i64) {
        let Some(n) = self.by_expiry.get_mut(&expires_at) else {
            debug_assert!(false, "removed a task that was never added");
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.by_expiry.remove(&expires_at);
        }
        self.unclosed -= 1;
        if expires_at <= self.at {
            self.lapsed -= 1;
        }
    }

    /// Tasks neither closed nor expired: those with `expires_at > now`.
    pub fn open(&mut self, now: i64) -> usize {
        let sum = |range| -> usize { self.by_expiry.range(range).map(|(_, n)| n).sum() };
        if now > self.at {
            self.lapsed += sum((Excluded(self.at), Included(now)));
        } else if now < self.at {
            self.lapsed -= sum((Excluded(now), Included(self.at)));
        }
        self.at = now;
        self.unclosed - self.lapsed
    }

    /// Tasks not closed, expired or not.
    #[cfg(test)]
    pub fn unclosed(&self) -> usize {
        self.unclosed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_exclusive_and_closes_count_down() {
        let mut c = OpenCount::default();
        c.add(10);
        c.add(20);
        assert_eq!(c.open(9), 2);
        assert_eq!(c.open(10), 1, "a task expires at its expires_at second");
        assert_eq!(c.open(20), 0);
        c.remove(10);
        assert_eq!((c.open(20), c.unclosed()), (0, 1));
        assert_eq!(c.open(0), 1, "the wall clock stepped back");
        c.remove(20);
        assert_eq!((c.open(0), c.unclosed()), (0, 0));
    }

    #[test]
    fn a_task_born_expired_is_not_open() {
        let mut c = OpenCount::default();
        assert_eq!(c.open(100), 0);
        c.add(50);
        assert_eq!(c.open(100), 0);
        assert_eq!(c.unclosed(), 1);
        c.remove(50);
        assert_eq!(c.open(100), 0);
    }

    /// Any sequence of adds, removes and queries, with time going back as well as forward,
    /// agrees with counting the live tasks one by one.
    #[test]
    fn agrees_with_a_scan_whatever_the_order() {
        let mut c = OpenCount::default();
        let mut live: Vec<i64> = Vec::new();
        // A fixed linear congruential generator: the same walk on every run.
        let mut state: u64 = 0x5eed;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut now = 1_000;
        for _ in 0..20_000 {
            match next(4) {
                0 | 1 => {
                    let exp = now - 20 + next(120) as i64;
                    c.add(exp);
                    live.push(exp);
                }
                2 if !live.is_empty() => {
                    let exp = live.swap_remove(next(live.len() as u64) as usize);
                    c.remove(exp);
                }
                _ => now += next(7) as i64 - 2,
            }
            let scanned = live.iter().filter(|&&e| e > now).count();
            assert_eq!(c.open(now), scanned, "at {now}");
            assert_eq!(c.unclosed(), live.len());
        }
    }
}
