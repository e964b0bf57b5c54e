//! The task tokens the broker remembers until they expire: their use counts, their digests,
//! and which task each belongs to.
//!
//! Bounded in count (`[broker] max_live_tokens`): a mint takes a slot before it signs or
//! writes its record, so a token that left is always remembered, and a mint past the bound
//! is refused instead of growing the daemon. Each owner (the SPIFFE ID its task belongs to)
//! has a share of the slots (`max_live_tokens_per_owner`), so one workload minting as fast as
//! it can does not have every other workload's mints refused. No operation walks the whole
//! table: expired tokens leave by an expiry index, and a task's list of tokens is pruned when
//! it is full.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use spiffe::SpiffeId;

use super::table::{TableError, TokenState};

/// A remembered token and the owner its slot is counted against (shared with the owner's
/// entry in `held`: 8 bytes a token, not a copy of the ID).
struct Entry {
    state: TokenState,
    owner: Arc<SpiffeId>,
}

#[derive(Default)]
pub struct TokenTable {
    tokens: HashMap<String, Entry>,
    /// Per owner: its tokens remembered and its slots in flight. An owner is kept only while
    /// this is above zero.
    held: HashMap<Arc<SpiffeId>, usize>,
    /// `(exp, jti)` of every token in `tokens`.
    by_expiry: BTreeSet<(i64, String)>,
    /// Token ids per task, so a close reaches its tokens without scanning them all. May list
    /// ids already gone; pruned when full (see [`push_pruned`]).
    by_task: HashMap<String, Vec<String>>,
    /// Slots taken by mints still signing or writing their record.
    reserved: usize,
}

impl TokenTable {
    /// Takes a slot for one token of `owner`, making room first by forgetting tokens that
    /// have expired.
    ///
    /// # Errors
    /// `TooManyTokens` when `limit` unexpired tokens (and mints in flight) fill the table;
    /// `OwnerTooManyTokens` when `owner_limit` of them are the owner's.
    pub fn reserve(
        &mut self,
        owner: &SpiffeId,
        limit: usize,
        owner_limit: usize,
        now: i64,
    ) -> Result<(), TableError> {
        // Expire what is due, but only as many as it takes: a mass expiry is cleared a few
        // at a time by the mints that follow it, and in full by the sweep, never in one
        // long pass under the lock.
        self.expire_some(now, EXPIRED_PER_RESERVE);
        while self.tokens.len() + self.reserved >= limit {
            if !self.expire_some(now, 1) {
                return Err(TableError::TooManyTokens(self.tokens.len() + self.reserved));
            }
        }
        // The owner's expired tokens may not be the first to expire: forget in expiry order
        // until the owner is below its share or nothing more has expired (each token is
        // forgotten once, so this is amortised over the mints that filled the share).
        while self.held_by(owner) >= owner_limit {
            if !self.expire_some(now, 1) {
                return Err(TableError::OwnerTooManyTokens {
                    owner: owner.to_string(),
                    held: self.held_by(owner),
                    limit: owner_limit,
                });
            }
        }
        self.reserved += 1;
        self.charge(owner);
        Ok(())
    }

    /// Gives back a slot [`Self::reserve`] took for `owner` and no token filled.
    pub fn release(&mut self, owner: &SpiffeId) {
        self.reserved = self.reserved.saturating_sub(1);
        self.uncharge(owner);
    }

    /// Adds a token of `owner` into a slot taken by [`Self::reserve`]: the slot's count
    /// becomes the token's.
    pub fn add_reserved(&mut self, jti: String, token: TokenState, owner: &SpiffeId) {
        self.reserved = self.reserved.saturating_sub(1);
        self.remove(&jti);
        let owner = match self.held.get_key_value(owner) {
            Some((id, _)) => id.clone(),
            None => {
                debug_assert!(false, "a token added into a slot never taken");
                self.charge(owner)
            }
        };
        self.insert(jti, token, owner);
    }

    /// Adds a token of `owner` without a slot (state rebuild: the log holds only what the
    /// bound let through).
    pub fn add(&mut self, jti: String, token: TokenState, owner: &SpiffeId) {
        self.remove(&jti);
        let owner = self.charge(owner);
        self.insert(jti, token, owner);
    }

    /// Indexes a token already counted against `owner`.
    fn insert(&mut self, jti: String, token: TokenState, owner: Arc<SpiffeId>) {
        push_pruned(
            self.by_task.entry(token.task_id.clone()).or_default(),
            jti.clone(),
            |j| self.tokens.contains_key(j),
        );
        self.by_expiry.insert((token.exp, jti.clone()));
        self.tokens.insert(
            jti,
            Entry {
                state: token,
                owner,
            },
        );
    }

    pub fn get(&self, jti: &str) -> Option<&TokenState> {
        self.tokens.get(jti).map(|e| &e.state)
    }

    pub fn get_mut(&mut self, jti: &str) -> Option<&mut TokenState> {
        self.tokens.get_mut(jti).map(|e| &mut e.state)
    }

    /// `owner`'s tokens remembered and slots in flight.
    pub fn held_by(&self, owner: &SpiffeId) -> usize {
        self.held.get(owner).copied().unwrap_or(0)
    }

    /// The most tokens and slots any one owner holds. Walks every owner: for a scrape, not
    /// for a call.
    pub fn largest_owner(&self) -> usize {
        self.held.values().copied().max().unwrap_or(0)
    }

    /// Every token remembered, with the owner it is counted against.
    #[cfg(test)]
    pub fn entries(&self) -> impl Iterator<Item = (&TokenState, &SpiffeId)> {
        self.tokens.values().map(|e| (&e.state, &*e.owner))
    }

    /// Counts one more token or slot against `owner`; returns the owner's shared ID.
    fn charge(&mut self, owner: &SpiffeId) -> Arc<SpiffeId> {
        if let Some(n) = self.held.get_mut(owner) {
            *n += 1;
        } else {
            self.held.insert(Arc::new(owner.clone()), 1);
        }
        match self.held.get_key_value(owner) {
            Some((id, _)) => id.clone(),
            None => Arc::new(owner.clone()),
        }
    }

    /// Counts one token or slot fewer against `owner`, forgetting an owner left with none.
    fn uncharge(&mut self, owner: &SpiffeId) {
        match self.held.get_mut(owner) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.held.remove(owner);
            }
            None => debug_assert!(false, "uncharged an owner holding nothing"),
        }
    }

    /// Forgets one token by id, with its expiry entry and its owner's count (its task's list
    /// keeps the id until pruned).
    fn remove(&mut self, jti: &str) -> Option<TokenState> {
        let e = self.tokens.remove(jti)?;
        self.by_expiry.remove(&(e.state.exp, jti.to_string()));
        self.uncharge(&e.owner);
        Some(e.state)
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
            .filter(|jti| self.get(jti).is_some_and(|t| t.exp > now))
            .count() as u32
    }

    /// Forgets every token of a task: it closed (its tokens answer inactive whether they
    /// are remembered or not) or was itself forgotten.
    pub fn forget_task(&mut self, task_id: &str) {
        for jti in self.by_task.remove(task_id).unwrap_or_default() {
            self.remove(&jti);
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
            if let Some(e) = self.tokens.remove(&jti) {
                self.uncharge(&e.owner);
            }
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

    fn owner(name: &str) -> SpiffeId {
        SpiffeId::new(format!("spiffe://example.org/{name}")).unwrap()
    }

    fn mint(t: &mut TokenTable, jti: &str, task: &str, exp: i64, limit: usize, now: i64) {
        let o = owner("a");
        t.reserve(&o, limit, usize::MAX, now).unwrap();
        t.add_reserved(jti.into(), token(task, exp), &o);
    }

    #[test]
    fn the_live_token_bound_at_its_edge() {
        let mut t = TokenTable::default();
        let a = owner("a");
        mint(&mut t, "a", "t", 100, 2, 0);
        t.reserve(&a, 2, 9, 0).unwrap();
        // A slot in flight counts: the mint that took it has not added its token yet.
        assert_eq!(t.reserve(&a, 2, 9, 0), Err(TableError::TooManyTokens(2)));
        t.add_reserved("b".into(), token("t", 100), &a);
        assert_eq!(t.reserve(&a, 2, 9, 99), Err(TableError::TooManyTokens(2)));
        // A released slot and an expired token each make room.
        let mut u = TokenTable::default();
        u.reserve(&a, 1, 9, 0).unwrap();
        u.release(&a);
        assert_eq!(u.held_by(&a), 0);
        u.reserve(&a, 1, 9, 0).unwrap();
        u.add_reserved("x".into(), token("t", 100), &a);
        assert_eq!(u.held_by(&a), 1, "the slot's count became the token's");
        assert!(u.reserve(&a, 1, 9, 100).is_ok(), "x expired at 100");
        assert!(u.get("x").is_none());
        assert_eq!(u.held_by(&a), 1, "only the new slot");
    }

    #[test]
    fn a_mass_expiry_is_cleared_a_few_at_a_time() {
        let mut t = TokenTable::default();
        for i in 0..1_000 {
            mint(&mut t, &format!("j{i}"), "t", 10, 2_000, 0);
        }
        t.reserve(&owner("a"), 2_000, usize::MAX, 10).unwrap();
        t.release(&owner("a"));
        assert_eq!(t.count(), 1_000 - EXPIRED_PER_RESERVE);
        t.expire(10);
        assert_eq!(t.count(), 0);
        assert!(t.by_expiry.is_empty());
        assert!(t.held.is_empty(), "no owner kept without tokens");
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
        assert!(
            t.reserve(&owner("a"), 2, usize::MAX, 10).is_ok(),
            "the slots came back"
        );
    }

    /// `max_live_tokens_per_owner` at its edge: an owner at its share is refused, naming
    /// the key, while another owner mints; the owner's own expired tokens make room even
    /// when another owner's expire first, and a released slot gives its place back.
    #[test]
    fn an_owner_is_refused_at_its_token_share_while_others_mint() {
        let (a, b) = (owner("a"), owner("b"));
        let mut t = TokenTable::default();
        let mint_as = |t: &mut TokenTable, o: &SpiffeId, jti: &str, exp: i64, now: i64| {
            t.reserve(o, 100, 2, now)?;
            t.add_reserved(jti.into(), token("t", exp), o);
            Ok::<(), TableError>(())
        };
        mint_as(&mut t, &b, "b1", 20, 0).unwrap();
        mint_as(&mut t, &a, "a1", 50, 0).unwrap();
        mint_as(&mut t, &a, "a2", 100, 0).unwrap();
        let err = mint_as(&mut t, &a, "a3", 100, 0).unwrap_err();
        assert_eq!(
            err,
            TableError::OwnerTooManyTokens {
                owner: a.to_string(),
                held: 2,
                limit: 2
            }
        );
        assert!(
            err.to_string().contains("broker.max_live_tokens_per_owner"),
            "{err}"
        );
        mint_as(&mut t, &b, "b2", 100, 0).unwrap();
        // At 50, b1 (20) and a1 (50) have expired: b1 is forgotten first, then a1.
        mint_as(&mut t, &a, "a3", 100, 50).unwrap();
        assert!(t.get("a1").is_none() && t.get("b1").is_none());
        assert_eq!((t.held_by(&a), t.held_by(&b)), (2, 1));
        t.forget_task("t");
        assert_eq!((t.held_by(&a), t.held_by(&b)), (0, 0));
        assert!(t.held.is_empty());
        t.reserve(&a, 100, 1, 50).unwrap();
        assert!(
            t.reserve(&a, 100, 1, 50).is_err(),
            "a slot in flight counts"
        );
        t.release(&a);
        assert!(t.reserve(&a, 100, 1, 50).is_ok());
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
