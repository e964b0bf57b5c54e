//! Each owner's share of the task table: `[broker] max_open_tasks_per_owner` and
//! `max_task_bytes_per_owner`.
//!
//! The table's own bounds are node-wide. Without a share, one workload (one SPIFFE ID) could
//! open tasks until the table was full and have every other workload on the node refused;
//! with one, it is refused at its share while the others still open theirs. A share counts
//! the owner's tasks that have not ended, and OpenTasks of that owner still deciding: what
//! it holds now, not what it held. (An owner's share of the live tokens,
//! `max_live_tokens_per_owner`, is kept with the tokens, in `broker::token_table`.)
//!
//! The table-wide count of unclosed tasks is kept here too, updated by the same calls, so
//! that no task can be counted in one and not in the other.

use std::collections::HashMap;

use spiffe::SpiffeId;

use super::open_count::{Open, OpenCount};
use super::table::{TableBounds, TableError};

#[derive(Default)]
struct Share {
    open: OpenCount,
    /// OpenTasks of this owner between their reservation and their insert.
    reserved: usize,
}

/// Open tasks, table-wide and per owner. An owner is kept only while it has an unclosed task
/// or an OpenTask in flight, so the map is bounded by the table's own bounds.
#[derive(Default)]
pub struct OwnerShares {
    /// Every owner's unclosed tasks. (It sums their bytes too, which nothing reads: one
    /// addition per update, against a second kind of count to keep.)
    all: OpenCount,
    owners: HashMap<SpiffeId, Share>,
}

impl OwnerShares {
    /// An unclosed task of `owner`, counted for `bytes`, joins the table.
    pub fn add(&mut self, owner: &SpiffeId, expires_at: i64, bytes: usize) {
        self.all.add(expires_at, bytes);
        match self.owners.get_mut(owner) {
            Some(share) => share.open.add(expires_at, bytes),
            // Looked up before inserting: the common case, an owner already known, clones
            // no id.
            None => {
                let mut share = Share::default();
                share.open.add(expires_at, bytes);
                self.owners.insert(owner.clone(), share);
            }
        }
    }

    /// Tasks of any owner neither closed nor expired at `now`.
    pub fn open_tasks(&mut self, now: i64) -> usize {
        self.all.open(now).tasks
    }

    /// A task counted by [`Self::add`] closes or leaves the table.
    pub fn remove(&mut self, owner: &SpiffeId, expires_at: i64, bytes: usize) {
        self.all.remove(expires_at, bytes);
        let Some(share) = self.owners.get_mut(owner) else {
            debug_assert!(false, "removed a task of an owner never added");
            return;
        };
        share.open.remove(expires_at, bytes);
        self.drop_if_idle(owner);
    }

    /// Takes a place in `owner`'s share for a task about to be decided.
    ///
    /// # Errors
    /// `OwnerFull` when the owner's open tasks and OpenTasks in flight reach
    /// `bounds.owner_open_tasks`; `OwnerTooManyBytes` when its open tasks weigh
    /// `bounds.owner_task_bytes` or more.
    pub fn reserve(
        &mut self,
        owner: &SpiffeId,
        bounds: &TableBounds,
        now: i64,
    ) -> Result<(), TableError> {
        // One lookup for an owner already known, the common case.
        if let Some(share) = self.owners.get_mut(owner) {
            refuse(owner, share.open.open(now), share.reserved, bounds)?;
            share.reserved += 1;
            return Ok(());
        }
        refuse(owner, Open::default(), 0, bounds)?;
        let share = Share {
            reserved: 1,
            ..Share::default()
        };
        self.owners.insert(owner.clone(), share);
        Ok(())
    }

    /// Gives back a place [`Self::reserve`] took for `owner`.
    pub fn release(&mut self, owner: &SpiffeId) {
        if let Some(share) = self.owners.get_mut(owner) {
            share.reserved = share.reserved.saturating_sub(1);
            self.drop_if_idle(owner);
        }
    }

    /// Tasks of any owner not closed, expired or not.
    #[cfg(test)]
    pub fn unclosed(&self) -> usize {
        self.all.unclosed()
    }

    /// `owner`'s tasks that have not ended at `now`, and what they weigh.
    pub fn open(&mut self, owner: &SpiffeId, now: i64) -> Open {
        self.owners
            .get_mut(owner)
            .map_or_else(Open::default, |s| s.open.open(now))
    }

    /// The most open tasks any one owner has at `now`, and the most any one owner's open
    /// tasks weigh (not necessarily the same owner's). Walks every owner: for a scrape, not
    /// for a call.
    pub fn largest(&mut self, now: i64) -> Open {
        let mut largest = Open::default();
        for share in self.owners.values_mut() {
            let open = share.open.open(now);
            largest.tasks = largest.tasks.max(open.tasks);
            largest.bytes = largest.bytes.max(open.bytes);
        }
        largest
    }

    /// Owners with an unclosed task or an OpenTask in flight.
    pub fn owners(&self) -> usize {
        self.owners.len()
    }

    fn drop_if_idle(&mut self, owner: &SpiffeId) {
        if self
            .owners
            .get(owner)
            .is_some_and(|s| s.reserved == 0 && s.open.is_empty())
        {
            self.owners.remove(owner);
        }
    }
}

/// Why `owner`, with `open` tasks and `reserved` OpenTasks in flight, has no place for one
/// more task, if it has none (see [`OwnerShares::reserve`]).
fn refuse(
    owner: &SpiffeId,
    open: Open,
    reserved: usize,
    bounds: &TableBounds,
) -> Result<(), TableError> {
    let tasks = open.tasks + reserved;
    if tasks >= bounds.owner_open_tasks {
        return Err(TableError::OwnerFull {
            owner: owner.to_string(),
            open: tasks,
            limit: bounds.owner_open_tasks,
        });
    }
    if open.bytes >= bounds.owner_task_bytes {
        return Err(TableError::OwnerTooManyBytes {
            owner: owner.to_string(),
            held: open.bytes,
            limit: bounds.owner_task_bytes,
        });
    }
    Ok(())
}
