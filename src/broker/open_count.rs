//! How many tasks are open (neither closed nor expired) at a given second, and what they
//! weigh, without a scan.
//!
//! The open-task bound is checked on every OpenTask, under the lock every TaskBroker call
//! takes. Counting by a walk over the table made each OpenTask cost O(tasks) once the table
//! held `max_open_tasks` unclosed tasks, some of them expired: expired tasks stay for
//! [`super::settings::CLOSED_TASK_RETENTION`] before the sweep forgets them, so for up to an
//! hour every OpenTask walked 100,000 tasks. Here the count is kept per expiry second and a
//! query moves a cursor over the seconds that passed since the last one: amortised O(1) while
//! time goes forward, and still exact when the wall clock steps back. The same count, kept
//! per owner, bounds each workload's share (see [`super::owner_share`]).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};
use std::ops::{AddAssign, SubAssign};

/// Tasks and the bytes they are counted for ([`super::table::Task::kept_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Open {
    pub tasks: usize,
    pub bytes: usize,
}

impl AddAssign for Open {
    fn add_assign(&mut self, o: Self) {
        self.tasks += o.tasks;
        self.bytes += o.bytes;
    }
}

impl SubAssign for Open {
    fn sub_assign(&mut self, o: Self) {
        self.tasks -= o.tasks;
        self.bytes -= o.bytes;
    }
}

impl Open {
    fn task(bytes: usize) -> Self {
        Self { tasks: 1, bytes }
    }
}

#[derive(Debug)]
pub struct OpenCount {
    /// Unclosed tasks per `expires_at`.
    by_expiry: BTreeMap<i64, Open>,
    unclosed: Open,
    /// The second of the last query: `lapsed` counts the unclosed tasks with
    /// `expires_at <= at`.
    at: i64,
    lapsed: Open,
}

impl Default for OpenCount {
    fn default() -> Self {
        Self {
            by_expiry: BTreeMap::new(),
            unclosed: Open::default(),
            at: i64::MIN,
            lapsed: Open::default(),
        }
    }
}

impl OpenCount {
    /// A task that is not closed, counted for `bytes`, joins the table.
    pub fn add(&mut self, expires_at: i64, bytes: usize) {
        let task = Open::task(bytes);
        *self.by_expiry.entry(expires_at).or_default() += task;
        self.unclosed += task;
        if expires_at <= self.at {
            self.lapsed += task;
        }
    }

    /// A task counted by [`Self::add`], with the same bytes, closes or leaves the table.
    pub fn remove(&mut self, expires_at: i64, bytes: usize) {
        let task = Open::task(bytes);
        let Some(n) = self.by_expiry.get_mut(&expires_at) else {
            debug_assert!(false, "removed a task that was never added");
            return;
        };
        *n -= task;
        if n.tasks == 0 {
            self.by_expiry.remove(&expires_at);
        }
        self.unclosed -= task;
        if expires_at <= self.at {
            self.lapsed -= task;
        }
    }

    /// Tasks neither closed nor expired (those with `expires_at > now`) and their bytes.
    pub fn open(&mut self, now: i64) -> Open {
        let sum = |range| -> Open {
            let mut total = Open::default();
            for (_, n) in self.by_expiry.range(range) {
                total += *n;
            }
            total
        };
        if now > self.at {
            self.lapsed += sum((Excluded(self.at), Included(now)));
        } else if now < self.at {
            self.lapsed -= sum((Excluded(now), Included(self.at)));
        }
        self.at = now;
        let mut open = self.unclosed;
        open -= self.lapsed;
        open
    }

    /// True when no unclosed task is counted.
    pub fn is_empty(&self) -> bool {
        self.unclosed.tasks == 0
    }

    /// Tasks not closed, expired or not.
    #[cfg(test)]
    pub fn unclosed(&self) -> usize {
        self.unclosed.tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(tasks: usize, bytes: usize) -> Open {
        Open { tasks, bytes }
    }

    #[test]
    fn expiry_is_exclusive_and_closes_count_down() {
        let mut c = OpenCount::default();
        c.add(10, 100);
        c.add(20, 7);
        assert_eq!(c.open(9), open(2, 107));
        assert_eq!(
            c.open(10),
            open(1, 7),
            "a task expires at its expires_at second"
        );
        assert_eq!(c.open(20), open(0, 0));
        c.remove(10, 100);
        assert_eq!((c.open(20), c.unclosed()), (open(0, 0), 1));
        assert_eq!(c.open(0), open(1, 7), "the wall clock stepped back");
        c.remove(20, 7);
        assert_eq!((c.open(0), c.unclosed()), (open(0, 0), 0));
        assert!(c.is_empty());
    }

    #[test]
    fn a_task_born_expired_is_not_open() {
        let mut c = OpenCount::default();
        assert_eq!(c.open(100), open(0, 0));
        c.add(50, 9);
        assert_eq!(c.open(100), open(0, 0));
        assert_eq!(c.unclosed(), 1);
        assert!(!c.is_empty());
        c.remove(50, 9);
        assert_eq!(c.open(100), open(0, 0));
    }

    /// Any sequence of adds, removes and queries, with time going back as well as forward,
    /// agrees with counting the live tasks one by one.
    #[test]
    fn agrees_with_a_scan_whatever_the_order() {
        let mut c = OpenCount::default();
        let mut live: Vec<(i64, usize)> = Vec::new();
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
                    let bytes = next(5_000) as usize;
                    c.add(exp, bytes);
                    live.push((exp, bytes));
                }
                2 if !live.is_empty() => {
                    let (exp, bytes) = live.swap_remove(next(live.len() as u64) as usize);
                    c.remove(exp, bytes);
                }
                _ => now += next(7) as i64 - 2,
            }
            let mut scanned = Open::default();
            for &(_, bytes) in live.iter().filter(|(e, _)| *e > now) {
                scanned += Open::task(bytes);
            }
            assert_eq!(c.open(now), scanned, "at {now}");
            assert_eq!(c.unclosed(), live.len());
        }
    }
}
