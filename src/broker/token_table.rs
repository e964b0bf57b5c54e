//! The task tokens the broker remembers until they expire: their use counts, their digests,
//! and which task each belongs to.
//!
//! Bounded in count (`[broker] max_live_tokens`): a mint takes a slot before it signs or
//! writes its record, so a token that left is always remembered, and a mint past the bound
//! is refused instead of growing the daemon. No operation walks the whole table: expired
//! tokens leave by an expiry index, and a task's list of tokens is pruned when it is full.

use std::collections::{BTreeSet, HashMap};

use super::table::{TableError, TokenState};

#[derive(Default)]
pub struct TokenTable {
    tokens: HashMap<String, TokenState>,
    /// `(exp, jti)` of every token in `tokens`.
    by_expiry: BTreeSet<(i64, String)>,
    /// Token ids per task, so a close reaches its tokens without scanning them all. May list
    /// ids already gone; pruned when full (see [`push_pruned`]).
    by_task: HashMap<String, Vec<String>>,
    /// Slots taken by mints still signing or writing their record.
    reserved: usize,
}

impl TokenTable {
    /// Takes a slot for one token, making room first by forgetting tokens that have
    /// expired.
    ///
    /// # Errors
    /// `TooManyTokens` when `limit` unexpired tokens (and mints in flight) fill the table.
    pub fn reserve(&mut self, limit: usize, now: i64) -> Result<(), TableError> {
        // Expire what is due, but only as many as it takes: a mass expiry is cleared a few
        // at a time by the mints that follow it, and in full by the sweep, never in one
        // long pass under the lock.
        self.expire_some(now, EXPIRED_PER_RESERVE);
        while self.tokens.len() + self.reserved >= limit {
            if !self.expire_some(now, 1) {
                return Err(TableError::TooManyTokens(self.tokens.len() + self.reserved));
            }
        }
        self.reserved += 1;
        Ok(())
    }

    /// Gives back a slot [`Self::reserve`] took and no token filled.
    pub fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Adds a token into a slot taken by [`Self::reserve`].
    pub fn add_reserved(&mut self, jti: String, token: TokenState) {
        self.release();
        self.add(jti, token);
    }

    /// Adds a token without a slot (state rebuild: the log holds only what the bound let
    /// through).
    pub fn add(&mut self, jti: String, token: TokenState) {
        if let Some(old) = self.tokens.remove(&jti) {
            self.by_expiry.remove(&(old.exp, jti.clone()));
        }
        push_pruned(
            self.by_task.entry(token.task_id.clone()).or_default(),
            jti.clone(),
            |j| self.tokens.contains_key(j),
        );
        self.by_expiry.insert((token.exp, jti.clone()));
        self.tokens.insert(jti, token);
    }

    pub fn get(&self, jti: &str) -> Option<&TokenState> {
        self.tokens.get(jti)
    }

    pub fn get_mut(&mut self, jti: &str) -> Option<&mut TokenState> {
        self.tokens.get_mut(jti)
    }

    /// Tokens remembered (expired ones the sweep has not reached included).
    pub fn count(&self) -> usize {
        self.tokens.len()
    }

    /// Unexpired tokens of these tasks.
    pub fn live_of(&self, task_ids: &[String], now: i64) -> u32 {
        task_ids
            .iter()
            .filter_map(|id| self.by_task.get(id))
            .flatten()
            .filter(|jti| self.tokens.get(*jti).is_some_and(|t| t.exp > now))
            .count() as u32
    }

    /// Forgets every token of a task: it closed (its tokens answer inactive whether they
    /// are remembered or not) or was itself forgotten.
    pub fn forget_task(&mut self, task_id: &str) {
        for jti in self.by_task.remove(task_id).unwrap_or_default() {
            if let Some(t) = self.tokens.remove(&jti) {
                self.by_expiry.remove(&(t.exp, jti));
            }
        }
    }

    /// Forgets every expired token (the sweep).
    pub fn expire(&mut self, now: i64) {
        while self.expire_some(now, usize::MAX) {}
    }

    /// Forgets up to `most` expired tokens; false when none was due.
    fn expire_some(&mut self, now: i64, most: usize) -> bool {
        let mut any = false;
        for _ in 0..most {
            match self.by_expiry.first() {
                Some((exp, _)) if *exp <= now => {}
                _ => break,
            }
            let Some((_, jti)) = self.by_expiry.pop_first() else {
                break;
            };
            self.tokens.remove(&jti);
            any = true;
        }
        any
    }
}

/// Expired tokens each reservation forgets, beyond what it needs for its own slot.
const EXPIRED_PER_RESERVE: usize = 2;

/// Appends `id`, first dropping the ids `present` no longer knows when the list is full.
///
/// A `Vec` grows by doubling, so pruning only when it would grow costs amortised O(1) per
/// push, and the list never holds more than about twice the ids still present: a task
/// minting for eight hours, or a parent opening short children, does not keep every id.
pub fn push_pruned(list: &mut Vec<String>, id: String, present: impl Fn(&str) -> bool) {
    if list.len() == list.capacity() {
        list.retain(|j| present(j));
    }
    list.push(id);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An unlimited token of `task` expiring at `exp`, as the table's tests mint them.
    pub(in crate::broker) fn token(task: &str, exp: i64) -> TokenState {
        TokenState {
            task_id: task.into(),
            exp,
            max_uses: 0,
            uses: 0,
            digest: None,
        }
    }

    fn mint(t: &mut TokenTable, jti: &str, task: &str, exp: i64, limit: usize, now: i64) {
        t.reserve(limit, now).unwrap();
        t.add_reserved(jti.into(), token(task, exp));
    }

    #[test]
    fn the_live_token_bound_at_its_edge() {
        let mut t = TokenTable::default();
        mint(&mut t, "a", "t", 100, 2, 0);
        t.reserve(2, 0).unwrap();
        // A slot in flight counts: the mint that took it has not added its token yet.
        assert_eq!(t.reserve(2, 0), Err(TableError::TooManyTokens(2)));
        t.add_reserved("b".into(), token("t", 100));
        assert_eq!(t.reserve(2, 99), Err(TableError::TooManyTokens(2)));
        // A released slot and an expired token each make room.
        let mut u = TokenTable::default();
        u.reserve(1, 0).unwrap();
        u.release();
        u.reserve(1, 0).unwrap();
        u.add_reserved("x".into(), token("t", 100));
        assert!(u.reserve(1, 100).is_ok(), "x expired at 100");
        assert!(u.get("x").is_none());
    }

    #[test]
    fn a_mass_expiry_is_cleared_a_few_at_a_time() {
        let mut t = TokenTable::default();
        for i in 0..1_000 {
            mint(&mut t, &format!("j{i}"), "t", 10, 2_000, 0);
        }
        t.reserve(2_000, 10).unwrap();
        t.release();
        assert_eq!(t.count(), 1_000 - EXPIRED_PER_RESERVE);
        t.expire(10);
        assert_eq!(t.count(), 0);
        assert!(t.by_expiry.is_empty());
    }

    #[test]
    fn a_closed_task_forgets_its_tokens_and_no_one_elses() {
        let mut t = TokenTable::default();
        mint(&mut t, "a1", "a", 100, 10, 0);
        mint(&mut t, "a2", "a", 5, 10, 0);
        mint(&mut t, "b1", "b", 100, 10, 0);
        assert_eq!(t.live_of(&["a".into()], 10), 1);
        t.forget_task("a");
        assert!(t.get("a1").is_none() && t.get("a2").is_none());
        assert!(t.get("b1").is_some());
        assert_eq!(t.by_expiry.len(), 1);
        assert!(t.reserve(2, 10).is_ok(), "the slots came back");
    }

    #[test]
    fn a_long_task_keeps_only_about_twice_its_live_token_ids() {
        let mut t = TokenTable::default();
        for i in 0..10_000i64 {
            // Each token lives 10 s; at most 10 are live at once.
            mint(&mut t, &format!("j{i}"), "long", i + 10, 100, i);
        }
        let ids = t.by_task["long"].len();
        assert!(ids <= 64, "{ids} ids kept for 10 live tokens");
        assert_eq!(t.live_of(&["long".into()], 10_000), 9);
    }

    #[test]
    fn pruning_keeps_every_present_id() {
        let mut list = Vec::new();
        for i in 0..1_000 {
            push_pruned(&mut list, i.to_string(), |j| {
                j.parse::<u32>().unwrap() % 3 == 0
            });
        }
        let kept: Vec<u32> = list.iter().map(|j| j.parse().unwrap()).collect();
        for i in (0..1_000).filter(|i| i % 3 == 0) {
            assert!(kept.contains(&i), "{i} was dropped");
        }
        assert!(list.len() < 1_000);
    }
}
