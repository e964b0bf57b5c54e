//! The task table: tasks, their delegation tree, issued tokens and use counts. Plain data,
//! no I/O; the broker holds it under a mutex and writes the audit record first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::Value;
use spiffe::SpiffeId;

use super::open_count::OpenCount;

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
    pub closed: bool,
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
        if self.closed {
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
}

#[derive(Default)]
pub struct TaskTable {
    tasks: HashMap<String, Task>,
    tokens: HashMap<String, TokenState>,
    issued: HashMap<SpiffeId, VecDeque<i64>>,
    /// Tasks not closed, by expiry: the open-task limit is checked without a scan.
    open: OpenCount,
    /// Token ids per task, so a close counts its tokens without scanning them all.
    task_tokens: HashMap<String, Vec<String>>,
}

impl TaskTable {
    /// # Errors
    /// `Full` when `limit` tasks are open already.
    pub fn insert(&mut self, task: Task, limit: usize, now: i64) -> Result<(), TableError> {
        let open = self.open.open(now);
        if open >= limit {
            return Err(TableError::Full(open));
        }
        self.insert_unchecked(task);
        Ok(())
    }

    /// Inserts without the open-task bound (state rebuild).
    ///
    /// A child whose parent is already closed is inserted closed: the parent's close may
    /// have run while the child was being opened (after its parent token was checked), and
    /// a close must take every descendant with it, live and on replay alike.
    pub fn insert_unchecked(&mut self, mut task: Task) {
        if let Some(parent) = task.parent.as_ref().and_then(|p| self.tasks.get_mut(p)) {
            if parent.closed {
                task.closed = true;
            }
            parent.children.push(task.id.clone());
        }
        if !task.closed {
            self.open.add(task.expires_at);
        }
        if let Some(old) = self.tasks.insert(task.id.clone(), task) {
            if !old.closed {
                self.open.remove(old.expires_at);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// Closes `id` and every task delegated from it, depth first. Returns the ids that
    /// were open or expired before (already closed ones are skipped).
    pub fn close(&mut self, id: &str) -> Vec<String> {
        let mut closed = Vec::new();
        let mut stack = vec![id.to_string()];
        let mut seen = BTreeSet::new();
        while let Some(next) = stack.pop() {
            if !seen.insert(next.clone()) {
                continue;
            }
            if let Some(t) = self.tasks.get_mut(&next) {
                if !t.closed {
                    t.closed = true;
                    self.open.remove(t.expires_at);
                    closed.push(next.clone());
                }
                stack.extend(t.children.iter().cloned());
            }
        }
        closed
    }

    /// Tokens of these tasks that have not expired: what a close revokes.
    pub fn live_tokens_of(&self, task_ids: &[String], now: i64) -> u32 {
        task_ids
            .iter()
            .filter_map(|id| self.task_tokens.get(id))
            .flatten()
            .filter(|jti| self.tokens.get(*jti).is_some_and(|t| t.exp > now))
            .count() as u32
    }

    pub fn add_token(&mut self, jti: String, token: TokenState) {
        if let Some(t) = self.tasks.get_mut(&token.task_id) {
            t.tokens_issued = t.tokens_issued.saturating_add(1);
        }
        self.task_tokens
            .entry(token.task_id.clone())
            .or_default()
            .push(jti.clone());
        self.tokens.insert(jti, token);
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

    /// Forgets tasks finished more than `retention` seconds ago and expired tokens.
    pub fn sweep(&mut self, now: i64, retention: i64) {
        self.tokens.retain(|_, t| t.exp > now);
        let gone: HashSet<String> = self
            .tasks
            .values()
            .filter(|t| t.state(now) != TaskState::Open && t.expires_at + retention <= now)
            .map(|t| t.id.clone())
            .collect();
        let mut parents = HashSet::new();
        for id in &gone {
            if let Some(t) = self.tasks.remove(id) {
                if !t.closed {
                    self.open.remove(t.expires_at);
                }
                parents.extend(t.parent);
            }
        }
        // A task that outlives its children must not keep their ids: a long-lived parent
        // opening short children would grow its list for its whole life. A forgotten child
        // has no open descendants (a child ends no later than its parent, and a close takes
        // every descendant), so nothing a later close must reach is lost.
        for id in &parents {
            if let Some(parent) = self.tasks.get_mut(id) {
                parent.children.retain(|c| !gone.contains(c));
            }
        }
        let tokens = &self.tokens;
        self.task_tokens.retain(|_, jtis| {
            jtis.retain(|j| tokens.contains_key(j));
            !jtis.is_empty()
        });
        self.issued
            .retain(|_, q| q.back().is_some_and(|&t| t > now - RATE_WINDOW_SECS));
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, parent: Option<&str>, exp: i64) -> Task {
        Task {
            id: id.into(),
            owner: SpiffeId::new("spiffe://example.org/a").unwrap(),
            purpose: "p".into(),
            grants: Grants::new(),
            created_at: 0,
            expires_at: exp,
            parent: parent.map(Into::into),
            depth: 0,
            children: vec![],
            closed: false,
            tokens_issued: 0,
            obo: None,
        }
    }

    #[test]
    fn all_scopes_are_every_audiences_scopes_sorted_once() {
        let mut t = task("a", None, 100);
        let set = |s: &[&str]| s.iter().map(ToString::to_string).collect::<BTreeSet<_>>();
        t.grants
            .insert("https://one".into(), set(&["write", "read"]));
        t.grants
            .insert("https://two".into(), set(&["read", "admin"]));
        assert_eq!(t.all_scopes(), ["admin", "read", "write"]);
        assert!(task("b", None, 100).all_scopes().is_empty());
    }

    #[test]
    fn closing_a_task_closes_its_descendants() {
        let mut t = TaskTable::default();
        t.insert(task("a", None, 100), 10, 0).unwrap();
        t.insert(task("b", Some("a"), 100), 10, 0).unwrap();
        t.insert(task("c", Some("b"), 100), 10, 0).unwrap();
        t.insert(task("x", None, 100), 10, 0).unwrap();
        t.add_token(
            "j1".into(),
            TokenState {
                task_id: "c".into(),
                exp: 50,
                max_uses: 0,
                uses: 0,
                digest: None,
            },
        );
        let mut closed = t.close("a");
        closed.sort();
        assert_eq!(closed, ["a", "b", "c"]);
        assert_eq!(t.live_tokens_of(&closed, 10), 1);
        assert_eq!(t.get("c").unwrap().state(10), TaskState::Closed);
        assert_eq!(t.get("x").unwrap().state(10), TaskState::Open);
        assert!(t.close("a").is_empty(), "closing twice closes nothing new");
    }

    #[test]
    fn child_of_a_closed_task_is_born_closed() {
        let mut t = TaskTable::default();
        t.insert(task("a", None, 100), 10, 0).unwrap();
        assert_eq!(t.close("a"), ["a"]);
        t.insert(task("b", Some("a"), 100), 10, 0).unwrap();
        assert_eq!(t.get("b").unwrap().state(10), TaskState::Closed);
    }

    #[test]
    fn open_task_limit_at_its_edge() {
        let mut t = TaskTable::default();
        t.insert(task("a", None, 100), 2, 0).unwrap();
        t.insert(task("b", None, 100), 2, 0).unwrap();
        assert_eq!(
            t.insert(task("c", None, 100), 2, 0),
            Err(TableError::Full(2))
        );
        // Expired tasks do not count.
        assert!(t.insert(task("c", None, 100), 2, 100).is_ok());
        // Closed ones neither, and the counter follows closes and sweeps.
        let mut t = TaskTable::default();
        t.insert(task("a", None, 100), 2, 0).unwrap();
        t.insert(task("b", None, 100), 2, 0).unwrap();
        t.close("a");
        assert!(t.insert(task("c", None, 100), 2, 0).is_ok());
        assert_eq!(
            t.insert(task("d", None, 100), 2, 0),
            Err(TableError::Full(2))
        );
        t.sweep(1000, 0);
        assert!(t.insert(task("d", None, 2000), 2, 1000).is_ok());
        assert_eq!(t.open.unclosed(), 1);
    }

    #[test]
    fn rate_counts_the_last_minute() {
        let mut t = TaskTable::default();
        let id = SpiffeId::new("spiffe://example.org/a").unwrap();
        assert_eq!(t.record_issue(&id, 0), 1);
        assert_eq!(t.record_issue(&id, 30), 2);
        assert_eq!(t.record_issue(&id, 61), 2);
        assert_eq!(t.rate(&id, 200), 0);
    }

    #[test]
    fn a_parent_forgets_the_children_the_sweep_forgets() {
        let mut t = TaskTable::default();
        t.insert(task("parent", None, 1000), 10, 0).unwrap();
        t.insert(task("short", Some("parent"), 10), 10, 0).unwrap();
        t.insert(task("closed", Some("parent"), 40), 10, 0).unwrap();
        t.insert(task("live", Some("parent"), 900), 10, 0).unwrap();
        t.close("closed");
        t.sweep(100, 50);
        assert_eq!(t.get("parent").unwrap().children, ["live"]);
        // Closing the parent still reaches the child it kept.
        t.close("parent");
        assert!(t.get("live").unwrap().closed);
    }

    #[test]
    fn sweep_keeps_open_tasks() {
        let mut t = TaskTable::default();
        t.insert(task("old", None, 10), 10, 0).unwrap();
        t.insert(task("live", None, 1000), 10, 0).unwrap();
        t.sweep(100, 50);
        assert!(t.get("old").is_none());
        assert!(t.get("live").is_some());
    }
}
