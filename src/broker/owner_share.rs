//! Each owner's share of the task table: `[broker] max_open_tasks_per_owner` and
//! `max_task_bytes_per_owner`.
//!
//! The table's own bounds are node-wide. Without a share, one workload (one SPIFFE ID) could
//! open tasks until the table was full and have every other workload on the node refused;
//! with one, it is refused at its share while the others still open theirs. A share counts
//! the owner's tasks that have not ended, and OpenTasks of that owner still deciding: what
//! it holds now, not what it held. (An owner's share of the live tokens,
//! `max_live_tokens_per_owner`, is kept with the tokens, in `broker::token_table`.)

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

/// Open tasks per owner. An owner is kept only while it has an unclosed task or an OpenTask
/// in flight, so the map is bounded by the table's own bounds.
#[derive(Default)]
pub struct OwnerShares {
    owners: HashMap<SpiffeId, Share>,
}

impl OwnerShares {
    /// An unclosed task of `owner`, counted for `bytes`, joins the table.
    pub fn add(&mut self, owner: &SpiffeId, expires_at: i64, bytes: usize) {
        self.with_share(owner, |share| share.open.add(expires_at, bytes));
    }

    /// A task counted by [`Self::add`] closes or leaves the table.
    pub fn remove(&mut self, owner: &SpiffeId, expires_at: i64, bytes: usize) {
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
        let open = self.open(owner, now);
        let tasks = open.tasks + self.owners.get(owner).map_or(0, |s| s.reserved);
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
        self.with_share(owner, |share| share.reserved += 1);
        Ok(())
    }

    /// Gives back a place [`Self::reserve`] took for `owner`.
    pub fn release(&mut self, owner: &SpiffeId) {
        if let Some(share) = self.owners.get_mut(owner) {
            share.reserved = share.reserved.saturating_sub(1);
            self.drop_if_idle(owner);
        }
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

    /// Runs `edit` on `owner`'s share, new if the owner had none. Looked up before inserting:
    /// the common case, an owner already known, clones no id.
    fn with_share(&mut self, owner: &SpiffeId, edit: impl FnOnce(&mut Share)) {
        match self.owners.get_mut(owner) {
            Some(share) => edit(share),
            None => {
                let mut share = Share::default();
                edit(&mut share);
                self.owners.insert(owner.clone(), share);
            }
        }
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
