//! When each task in the table ends, table-wide and per owner: the order in which tasks that
//! have ended are forgotten.
//!
//! The table keeps `[broker] max_finished_tasks` tasks that have ended, for listing and
//! introspection answers. When that room is full an OpenTask forgets one to make room. Were
//! the one forgotten always the first to end node-wide, a workload opening and closing tasks
//! in a loop would push every other workload's history out of the table. So each owner also
//! has a share of the room (`max_finished_tasks_per_owner`): an owner holding its share of
//! ended tasks makes room from its own, the first of them to end first.

use std::collections::{BTreeSet, HashMap};

use spiffe::SpiffeId;

use super::table::Task;

/// `(second, task id)`: the order tasks ended in, ids breaking ties.
type ByTime = BTreeSet<(i64, String)>;

/// Ends of some set of tasks.
#[derive(Default)]
struct Ends {
    /// Every task, closed or not, by `expires_at`.
    by_expiry: ByTime,
    /// Closed tasks, by `closed_at`.
    by_close: ByTime,
}

impl Ends {
    fn add(&mut self, task: &Task) {
        self.by_expiry.insert((task.expires_at, task.id.clone()));
        if let Some(at) = task.closed_at {
            self.by_close.insert((at, task.id.clone()));
        }
    }

    fn remove(&mut self, task: &Task) {
        self.by_expiry.remove(&(task.expires_at, task.id.clone()));
        if let Some(at) = task.closed_at {
            self.by_close.remove(&(at, task.id.clone()));
        }
    }

    /// The task that ended first by `now`: the earliest closed, or the earliest expired if
    /// it expired before that close.
    fn first_ended(&self, now: i64) -> Option<&str> {
        let expired = self.by_expiry.first().filter(|(at, _)| *at <= now);
        let first = match (self.by_close.first(), expired) {
            (Some(c), Some(e)) => c.min(e),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => return None,
        };
        Some(&first.1)
    }

    fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }
}

/// Ends of every task in the table, and of each owner's.
#[derive(Default)]
pub struct TaskEnds {
    all: Ends,
    /// An owner is kept while it has a task in the table.
    owners: HashMap<SpiffeId, Ends>,
}

impl TaskEnds {
    /// A task joins the table (closed or not).
    pub fn add(&mut self, task: &Task) {
        self.all.add(task);
        match self.owners.get_mut(&task.owner) {
            Some(ends) => ends.add(task),
            None => {
                let mut ends = Ends::default();
                ends.add(task);
                self.owners.insert(task.owner.clone(), ends);
            }
        }
    }

    /// A task in the table, not closed before, closes at `at`.
    pub fn close(&mut self, owner: &SpiffeId, id: &str, at: i64) {
        self.all.by_close.insert((at, id.to_string()));
        if let Some(ends) = self.owners.get_mut(owner) {
            ends.by_close.insert((at, id.to_string()));
        }
    }

    /// A task added by [`Self::add`] (and closed by [`Self::close`], if it was) leaves.
    pub fn remove(&mut self, task: &Task) {
        self.all.remove(task);
        if let Some(ends) = self.owners.get_mut(&task.owner) {
            ends.remove(task);
            if ends.is_empty() {
                self.owners.remove(&task.owner);
            }
        }
    }

    /// The task that ended first by `now`, of any owner.
    pub fn first_ended(&self, now: i64) -> Option<String> {
        self.all.first_ended(now).map(str::to_string)
    }

    /// The task of `owner` that ended first by `now`.
    pub fn first_ended_of(&self, owner: &SpiffeId, now: i64) -> Option<String> {
        self.owners.get(owner)?.first_ended(now).map(str::to_string)
    }

    /// A task that ended `retention` seconds or more before `now`: expired then, or closed
    /// then. The sweep forgets these.
    pub fn first_due(&self, now: i64, retention: i64) -> Option<String> {
        let due = |at: Option<&(i64, String)>| {
            at.filter(|(at, _)| at.saturating_add(retention) <= now)
                .map(|(_, id)| id.clone())
        };
        due(self.all.by_expiry.first()).or_else(|| due(self.all.by_close.first()))
    }

    /// Tasks of `owner` in the table, open or ended.
    pub fn tasks_of(&self, owner: &SpiffeId) -> usize {
        self.owners.get(owner).map_or(0, |e| e.by_expiry.len())
    }

    /// Each owner with a task in the table, and how many it has, open or ended.
    pub fn tasks_per_owner(&self) -> impl Iterator<Item = (&SpiffeId, usize)> {
        self.owners.iter().map(|(o, e)| (o, e.by_expiry.len()))
    }

    /// Tasks in the table, and closed tasks in the table.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        (self.all.by_expiry.len(), self.all.by_close.len())
    }

    /// Per owner: its tasks in the table, and its closed tasks in the table.
    #[cfg(test)]
    pub fn per_owner(&self) -> impl Iterator<Item = (&SpiffeId, usize, usize)> {
        self.owners
            .iter()
            .map(|(o, e)| (o, e.by_expiry.len(), e.by_close.len()))
    }

    /// Every task's `(expires_at, id)`.
    #[cfg(test)]
    pub fn expiries(&self) -> impl Iterator<Item = &(i64, String)> {
        self.all.by_expiry.iter()
    }
}
