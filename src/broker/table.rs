//! The task table: tasks, their delegation tree, issued tokens and use counts. Plain data,
//! no I/O; the broker holds it under a mutex and writes the audit record first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::Value;
use spiffe::SpiffeId;

use super::open_count::Open;
use super::owner_share::OwnerShares;
use super::task_ends::TaskEnds;
use super::token_table::{push_pruned, TokenTable};

/// Scopes granted per audience.
pub type Grants = BTreeMap<String, BTreeSet<String>>;

/// Window for the per-principal issuance rate given to policy.
pub const RATE_WINDOW_SECS: i64 = 60;
/// Issuance timestamps kept per principal (the rate saturates here).
pub const MAX_RATE_SAMPLES: usize = 10_000;

#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    pub owner: SpiffeId,
    pub purpose: String,
    pub grants: Grants,
    pub created_at: i64,
    pub expires_at: i64,
    pub parent: Option<String>,
    pub depth: u32,
    pub children: Vec<String>,
    /// When it was closed (unix seconds); `None` while not closed.
    pub closed_at: Option<i64>,
    pub tokens_issued: u32,
    /// The user this task acts for: `{"iss": …, "sub": …}`.
    pub obo: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Open,
    Closed,
    Expired,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Open => "open",
            TaskState::Closed => "closed",
            TaskState::Expired => "expired",
        }
    }
}

impl Task {
    /// Every scope granted for any audience, sorted, each once: what a listing or the
    /// task's record shows as its scopes.
    pub fn all_scopes(&self) -> Vec<String> {
        self.grants
            .values()
            .flatten()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    pub fn state(&self, now: i64) -> TaskState {
        if self.closed_at.is_some() {
            TaskState::Closed
        } else if now >= self.expires_at {
            TaskState::Expired
        } else {
            TaskState::Open
        }
    }
}

#[derive(Clone, Debug)]
pub struct TokenState {
    pub task_id: String,
    pub exp: i64,
    /// 0: unlimited.
    pub max_uses: u32,
    pub uses: u32,
    /// SHA-256 of the token as it left ([`crate::svid::jwt::digest`]): introspection of
    /// these exact bytes needs no signature check. `None` after a restart (the audit log the
    /// table is rebuilt from never holds tokens), and then the signature is checked.
    pub digest: Option<[u8; 32]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("too many open tasks ({0}); close tasks or raise broker.max_open_tasks")]
    Full(usize),
    #[error(
        "too many live task tokens ({0}); wait for tokens to expire, close tasks, or raise broker.max_live_tokens"
    )]
    TooManyTokens(usize),
    #[error(
        "open tasks hold {held} bytes of the {limit} broker.max_task_bytes allows; close tasks, ask for fewer audiences or scopes, or raise broker.max_task_bytes"
    )]
    TooManyBytes { held: usize, limit: usize },
    #[error(
        "{owner} has {open} open tasks, its share of the table (broker.max_open_tasks_per_owner = {limit}); close some of its tasks or raise broker.max_open_tasks_per_owner"
    )]
    OwnerFull {
        owner: String,
        open: usize,
        limit: usize,
    },
    #[error(
        "{owner}'s open tasks hold {held} bytes, its share of the table (broker.max_task_bytes_per_owner = {limit}); close some of its tasks, ask for fewer audiences or scopes, or raise broker.max_task_bytes_per_owner"
    )]
    OwnerTooManyBytes {
        owner: String,
        held: usize,
        limit: usize,
    },
    #[error(
        "{owner} holds {held} live task tokens, its share of the table (broker.max_live_tokens_per_owner = {limit}); wait for its tokens to expire, close its tasks, or raise broker.max_live_tokens_per_owner"
    )]
    OwnerTooManyTokens {
        owner: String,
        held: usize,
        limit: usize,
    },
}

impl TableError {
    /// The `[broker]` key whose bound refused the call.
    pub fn bound(&self) -> &'static str {
        match self {
            TableError::Full(_) => "max_open_tasks",
            TableError::TooManyTokens(_) => "max_live_tokens",
            TableError::TooManyBytes { .. } => "max_task_bytes",
            TableError::OwnerFull { .. } => "max_open_tasks_per_owner",
            TableError::OwnerTooManyBytes { .. } => "max_task_bytes_per_owner",
            TableError::OwnerTooManyTokens { .. } => "max_live_tokens_per_owner",
        }
    }
}

/// What the table may hold: `[broker] max_open_tasks`, `max_finished_tasks`,
/// `max_live_tokens`, `max_task_bytes`, and each owner's share of it,
/// `max_open_tasks_per_owner`, `max_task_bytes_per_owner` and `max_live_tokens_per_owner`.
#[derive(Clone, Copy, Debug)]
pub struct TableBounds {
    pub open_tasks: usize,
    pub finished_tasks: usize,
    pub live_tokens: usize,
    /// What every task kept may weigh together, as [`Task::kept_bytes`] counts it.
    pub task_bytes: usize,
    /// Open tasks (and OpenTasks in flight) one owner may have.
    pub owner_open_tasks: usize,
    /// What one owner's open tasks may weigh together.
    pub owner_task_bytes: usize,
    /// Live tokens (and mints in flight) of one owner's tasks.
    pub owner_live_tokens: usize,
    /// Ended tasks of one owner past which room for its new tasks is made from its own.
    pub owner_finished_tasks: usize,
}

impl TableBounds {
    /// Tasks held at once, open or ended. Open tasks never pass `open_tasks`, so a table
    /// this full always holds an ended task to forget.
    pub fn tasks(&self) -> usize {
        self.open_tasks.saturating_add(self.finished_tasks)
    }
}

/// Ended tasks one insert forgets at most while their room is full.
pub const FORGET_PER_INSERT: usize = 2;

#[derive(Default)]
pub struct TaskTable {
    tasks: HashMap<String, Task>,
    pub tokens: TokenTable,
    issued: HashMap<SpiffeId, VecDeque<i64>>,
    /// Tasks not closed, by expiry, table-wide and per owner: the open-task limit and each
    /// owner's share are checked without a scan.
    shares: OwnerShares,
    /// When each task ends, table-wide and per owner: the sweep and the bounds find tasks
    /// that have ended without a scan.
    ends: TaskEnds,
    /// Places taken by OpenTasks still deciding or writing their record.
    reserved_open: usize,
    /// [`Task::kept_bytes`] of every task in the table.
    bytes: usize,
}

impl TaskTable {
    /// Inserts a task opened now. While `bounds.finished_tasks` tasks that have ended are
    /// kept, one of them is forgotten to make room (the owner's own first to end once it
    /// holds its share of them, else the first to end of any owner): at most
    /// [`FORGET_PER_INSERT`] per insert, so a mass expiry is worked off by the inserts that
    /// follow it (and the sweep) instead of in one pass under the lock. The table never
    /// holds more than `bounds.tasks()`.
    ///
    /// # Errors
    /// As [`Self::reserve_open`].
    #[cfg(test)]
    pub fn insert(&mut self, task: Task, bounds: &TableBounds, now: i64) -> Result<(), TableError> {
        self.reserve_open(&task.owner, bounds, now)?;
        self.insert_reserved(task, bounds, now);
        Ok(())
    }

    /// Takes a place for a task of `owner` about to be decided and recorded: open tasks and
    /// places taken count against `bounds.open_tasks`, and the owner's against its share
    /// (`bounds.owner_open_tasks`, `bounds.owner_task_bytes`), checked after the table's
    /// own bounds (a full table is the reason to give when both hold). While the table
    /// weighs `bounds.task_bytes` or more, it first forgets tasks that have ended, chosen as
    /// [`Self::insert`] chooses them, for as long as that takes (each task is forgotten once, so this is
    /// amortised over the opens that filled the table).
    ///
    /// The place is taken while the table weighs less than `bounds.task_bytes`, before the
    /// task's size is known: the table may pass the bound by the tasks being opened at that
    /// moment, each no larger than its audit record allows.
    ///
    /// # Errors
    /// `Full` when `bounds.open_tasks` tasks are open or about to be; `TooManyBytes` when
    /// the tasks that have not ended weigh `bounds.task_bytes` or more; `OwnerFull` or
    /// `OwnerTooManyBytes` at the owner's share.
    pub fn reserve_open(
        &mut self,
        owner: &SpiffeId,
        bounds: &TableBounds,
        now: i64,
    ) -> Result<(), TableError> {
        if let Some(e) = self.refuse_open(owner, bounds, now) {
            return Err(e);
        }
        self.shares.reserve(owner, bounds, now)?;
        self.reserved_open += 1;
        Ok(())
    }

    /// Why the table as a whole has no place for one more task, if it has none (see
    /// [`Self::reserve_open`]).
    fn refuse_open(
        &mut self,
        owner: &SpiffeId,
        bounds: &TableBounds,
        now: i64,
    ) -> Option<TableError> {
        let open = self.shares.open_tasks(now) + self.reserved_open;
        if open >= bounds.open_tasks {
            return Some(TableError::Full(open));
        }
        while self.bytes >= bounds.task_bytes && self.forget_to_make_room(owner, bounds, now) {}
        (self.bytes >= bounds.task_bytes).then_some(TableError::TooManyBytes {
            held: self.bytes,
            limit: bounds.task_bytes,
        })
    }

    /// [`Task::kept_bytes`] of every task in the table.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back a place [`Self::reserve_open`] took for `owner` and no task filled.
    pub fn release_open(&mut self, owner: &SpiffeId) {
        self.reserved_open = self.reserved_open.saturating_sub(1);
        self.shares.release(owner);
    }

    /// `owner`'s tasks that have not ended at `now`, and what they weigh.
    #[cfg(test)]
    pub fn owner_open(&mut self, owner: &SpiffeId, now: i64) -> Open {
        self.shares.open(owner, now)
    }

    /// The most open tasks one owner has, and the most one owner's open tasks weigh; see
    /// [`OwnerShares::largest`].
    pub fn largest_owner(&mut self, now: i64) -> Open {
        self.shares.largest(now)
    }

    /// The most tasks that have ended at `now` one owner holds. Walks every owner: for a
    /// scrape, not for a call.
    pub fn largest_owner_ended(&mut self, now: i64) -> usize {
        let mut largest = 0;
        for (owner, tasks) in self.ends.tasks_per_owner() {
            let open = self.shares.open(owner, now).tasks;
            largest = largest.max(tasks.saturating_sub(open));
        }
        largest
    }

    /// Owners with a task that is not closed, or an OpenTask in flight.
    pub fn owner_count(&self) -> usize {
        self.shares.owners()
    }

    /// Inserts a task into the place [`Self::reserve_open`] took; see [`Self::insert`].
    pub fn insert_reserved(&mut self, task: Task, bounds: &TableBounds, now: i64) {
        self.release_open(&task.owner);
        let open = self.shares.open_tasks(now);
        let mut forgotten = 0;
        while forgotten < FORGET_PER_INSERT
            && self.tasks.len().saturating_sub(open) >= bounds.finished_tasks
            && self.forget_to_make_room(&task.owner, bounds, now)
        {
            forgotten += 1;
        }
        while self.tasks.len() >= bounds.tasks()
            && self.forget_to_make_room(&task.owner, bounds, now)
        {}
        self.insert_unchecked(task);
    }

    /// Inserts without the bounds (state rebuild; [`Self::trim`] applies them after).
    ///
    /// A child whose parent is already closed is inserted closed: the parent's close may
    /// have run while the child was being opened (after its parent token was checked), and
    /// a close must take every descendant with it, live and on replay alike.
    pub fn insert_unchecked(&mut self, mut task: Task) {
        if let Some(old) = self.tasks.get(&task.id) {
            let id = old.id.clone();
            self.forget(&id);
        }
        if let Some(parent) = task.parent.as_deref() {
            if let Some(at) = self.tasks.get(parent).and_then(|p| p.closed_at) {
                task.closed_at.get_or_insert(at);
            }
            let child = task.id.clone();
            self.prune_children(parent, |children, known| {
                push_pruned(children, child, known);
            });
        }
        let bytes = task.kept_bytes();
        if task.closed_at.is_none() {
            self.shares.add(&task.owner, task.expires_at, bytes);
        }
        self.ends.add(&task);
        self.bytes += bytes;
        self.tasks.insert(task.id.clone(), task);
    }

    /// Forgets tasks that have ended, the first to end first, until fewer than
    /// `bounds.finished_tasks` remain and the table weighs less than `bounds.task_bytes`
    /// (after a state rebuild, in one pass: nothing is served yet).
    pub fn trim(&mut self, bounds: &TableBounds, now: i64) {
        let open = self.shares.open_tasks(now);
        while (self.tasks.len().saturating_sub(open) >= bounds.finished_tasks
            || self.bytes >= bounds.task_bytes)
            && self.forget_first_finished(now)
        {}
    }

    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks neither closed nor expired at `now`.
    pub fn open_count(&mut self, now: i64) -> usize {
        self.shares.open_tasks(now)
    }

    /// Closes `id` and every task delegated from it, depth first, and forgets their
    /// tokens (a closed task's tokens answer inactive). Returns the ids that were open or
    /// expired before (already closed ones are skipped) and how many of their tokens had
    /// not expired: what the close revoked.
    pub fn close(&mut self, id: &str, now: i64) -> (Vec<String>, u32) {
        let mut closed = Vec::new();
        let mut stack = vec![id.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(next) = stack.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some(t) = self.tasks.get_mut(&next) {
                if t.closed_at.is_none() {
                    t.closed_at = Some(now);
                    let bytes = t.kept_bytes();
                    self.shares.remove(&t.owner, t.expires_at, bytes);
                    self.ends.close(&t.owner, &next, now);
                    closed.push(next.clone());
                }
                stack.extend(t.children.iter().cloned());
            }
        }
        let revoked = self.tokens.live_of(&closed, now);
        for id in &closed {
            self.tokens.forget_task(id);
        }
        (closed, revoked)
    }

    /// Takes a slot for a token of a task of `owner` that a mint is about to sign; see
    /// [`TokenTable::reserve`].
    ///
    /// # Errors
    /// `TooManyTokens` at `bounds.live_tokens`, `OwnerTooManyTokens` at
    /// `bounds.owner_live_tokens`.
    pub fn reserve_token(
        &mut self,
        owner: &SpiffeId,
        bounds: &TableBounds,
        now: i64,
    ) -> Result<(), TableError> {
        self.tokens
            .reserve(owner, bounds.live_tokens, bounds.owner_live_tokens, now)
    }

    /// Gives back a slot [`Self::reserve_token`] took for `owner` and no token filled.
    pub fn release_token(&mut self, owner: &SpiffeId) {
        self.tokens.release(owner);
    }

    /// Adds a minted token of `owner`'s task into the slot [`Self::reserve_token`] took.
    pub fn add_token(&mut self, jti: String, token: TokenState, owner: &SpiffeId) {
        if let Some(t) = self.tasks.get_mut(&token.task_id) {
            t.tokens_issued = t.tokens_issued.saturating_add(1);
        }
        self.tokens.add_reserved(jti, token, owner);
    }

    /// Adds a token from the log (state rebuild): no slot, and only while its task is
    /// remembered and not closed, as a live mint would have left it.
    pub fn restore_token(&mut self, jti: String, token: TokenState) {
        let Some(t) = self.tasks.get_mut(&token.task_id) else {
            return;
        };
        t.tokens_issued = t.tokens_issued.saturating_add(1);
        if t.closed_at.is_none() {
            self.tokens.add(jti, token, &t.owner);
        }
    }

    pub fn token(&self, jti: &str) -> Option<&TokenState> {
        self.tokens.get(jti)
    }

    /// Counts one use; returns the new count.
    pub fn use_token(&mut self, jti: &str) -> Option<u32> {
        let t = self.tokens.get_mut(jti)?;
        t.uses = t.uses.saturating_add(1);
        Some(t.uses)
    }

    /// Sets the use count (state rebuild).
    pub fn set_uses(&mut self, jti: &str, uses: u32) {
        if let Some(t) = self.tokens.get_mut(jti) {
            t.uses = t.uses.max(uses);
        }
    }

    /// Records one issuance to `owner` and returns the count in the last minute, including it.
    pub fn record_issue(&mut self, owner: &SpiffeId, now: i64) -> u32 {
        let q = self.issued.entry(owner.clone()).or_default();
        q.push_back(now);
        while q.front().is_some_and(|&t| t <= now - RATE_WINDOW_SECS) || q.len() > MAX_RATE_SAMPLES
        {
            q.pop_front();
        }
        q.len() as u32
    }

    /// Issuances to `owner` in the last minute.
    pub fn rate(&self, owner: &SpiffeId, now: i64) -> u32 {
        // Timestamps are appended in order, so the window's start is a binary search away.
        self.issued.get(owner).map_or(0, |q| {
            (q.len() - q.partition_point(|&t| t <= now - RATE_WINDOW_SECS)) as u32
        })
    }

    /// Forgets tasks that ended more than `retention` seconds ago (closed then, or expired
    /// then) and expired tokens. Walks only what it forgets.
    pub fn sweep(&mut self, now: i64, retention: i64) {
        self.tokens.expire(now);
        let mut parents = HashSet::new();
        while let Some(id) = self.ends.first_due(now, retention) {
            if let Some(t) = self.forget(&id) {
                parents.extend(t.parent);
            }
        }
        // A task that outlives its children must not keep their ids: a long-lived parent
        // opening short children would grow its list for its whole life. A forgotten child
        // has no open descendants (a child ends no later than its parent, and a close takes
        // every descendant), so nothing a later close must reach is lost.
        for id in &parents {
            self.prune_children(id, |children, known| children.retain(|c| known(c)));
        }
        self.issued
            .retain(|_, q| q.back().is_some_and(|&t| t > now - RATE_WINDOW_SECS));
    }

    /// Forgets the finished task that ended first: the earliest closed, or the earliest
    /// expired if it expired before that close. Times are whole seconds; tasks that ended
    /// in the same second go in the order of their ids. False when no task has finished.
    fn forget_first_finished(&mut self, now: i64) -> bool {
        self.ends
            .first_ended(now)
            .is_some_and(|id| self.forget(&id).is_some())
    }

    /// Forgets a finished task to make room for a task of `owner`: while `owner` holds
    /// `bounds.owner_finished_tasks` tasks that have ended, the first of its own to end;
    /// otherwise (or if it has none) the first to end of any owner. A workload that opens
    /// and closes tasks in a loop so forgets its own history, not other workloads'.
    fn forget_to_make_room(&mut self, owner: &SpiffeId, bounds: &TableBounds, now: i64) -> bool {
        let ended = self
            .ends
            .tasks_of(owner)
            .saturating_sub(self.shares.open(owner, now).tasks);
        let id = if ended >= bounds.owner_finished_tasks {
            self.ends.first_ended_of(owner, now)
        } else {
            None
        };
        id.or_else(|| self.ends.first_ended(now))
            .is_some_and(|id| self.forget(&id).is_some())
    }

    /// Lets `edit` change `parent`'s list of children, told which ids the table still
    /// knows (the list is taken out for the edit: the table cannot be read while one of its
    /// tasks is borrowed). Nothing when `parent` is not in the table.
    fn prune_children(
        &mut self,
        parent: &str,
        edit: impl FnOnce(&mut Vec<String>, &dyn Fn(&str) -> bool),
    ) {
        let Some(mut children) = self
            .tasks
            .get_mut(parent)
            .map(|p| std::mem::take(&mut p.children))
        else {
            return;
        };
        edit(&mut children, &|c: &str| self.tasks.contains_key(c));
        if let Some(p) = self.tasks.get_mut(parent) {
            p.children = children;
        }
    }

    /// Removes a task from the table and every index, with its tokens. Its parent's list
    /// of children keeps the id until pruned: a close skips ids it no longer finds.
    fn forget(&mut self, id: &str) -> Option<Task> {
        let t = self.tasks.remove(id)?;
        let bytes = t.kept_bytes();
        self.bytes -= bytes;
        self.ends.remove(&t);
        if t.closed_at.is_none() {
            self.shares.remove(&t.owner, t.expires_at, bytes);
        }
        self.tokens.forget_task(id);
        Some(t)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
