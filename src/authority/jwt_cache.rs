//! JWT-SVIDs kept per SPIFFE ID and audience set, for both issuers: the embedded one reuses
//! a token until its half-life (as SPIRE's agent does), the SPIRE one serves an unexpired
//! token while the agent is unreachable. One bound and one eviction rule for both.

use std::collections::HashMap;
use std::sync::Mutex;

use spiffe::SpiffeId;

/// Most cached JWT-SVIDs (per SPIFFE ID and audience set), per issuer.
pub const MAX_CACHED_JWT_SVIDS: usize = 10_000;

/// A SPIFFE ID and its audiences, sorted and deduplicated: the same set in any order is the
/// same entry.
pub type JwtKey = (SpiffeId, Vec<String>);

/// The key of `id`'s token for `audiences`.
pub fn key(id: &SpiffeId, audiences: &[String]) -> JwtKey {
    let mut audiences = audiences.to_vec();
    audiences.sort();
    audiences.dedup();
    (id.clone(), audiences)
}

/// The cache; `V` is what an issuer keeps per token, with whatever says it is still good.
pub struct JwtCache<V> {
    map: Mutex<HashMap<JwtKey, V>>,
}

impl<V> Default for JwtCache<V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> JwtCache<V> {
    /// The entry for `key` if `good` holds for it.
    pub fn get(&self, key: &JwtKey, good: impl FnOnce(&V) -> bool) -> Option<V> {
        self.lock().get(key).filter(|v| good(v)).cloned()
    }

    /// Keeps `value` under `key`. At [`MAX_CACHED_JWT_SVIDS`] entries the ones `good` no
    /// longer holds for go first, and if that frees nothing, all of them: the bound holds
    /// whatever the callers ask for, and a cleared entry only costs a signature.
    pub fn insert(&self, key: JwtKey, value: V, good: impl Fn(&V) -> bool) {
        let mut map = self.lock();
        if map.len() >= MAX_CACHED_JWT_SVIDS && !map.contains_key(&key) {
            map.retain(|_, v| good(v));
            if map.len() >= MAX_CACHED_JWT_SVIDS {
                map.clear();
            }
        }
        map.insert(key, value);
    }

    /// Drops the entries `good` no longer holds for.
    pub fn retain(&self, good: impl Fn(&V) -> bool) {
        self.lock().retain(|_, v| good(v));
    }

    /// Drops every entry (a new signing key makes them all stale).
    pub fn clear(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JwtKey, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        crate::spiffe_id::parse("spiffe://example.org/a").unwrap()
    }

    #[test]
    fn the_same_audiences_in_any_order_are_one_key() {
        let a = key(&id(), &["b".into(), "a".into(), "b".into()]);
        assert_eq!(a, key(&id(), &["a".into(), "b".into()]));
        assert_ne!(a, key(&id(), &["a".into()]));
    }

    #[test]
    fn at_the_bound_stale_entries_go_first_then_all() {
        let cache = JwtCache::<u32>::default();
        // One below the bound: nothing is dropped. Even values are "still good".
        for n in 0..MAX_CACHED_JWT_SVIDS as u32 {
            cache.insert(key(&id(), &[n.to_string()]), n, |v| v % 2 == 0);
        }
        assert_eq!(cache.len(), MAX_CACHED_JWT_SVIDS);
        // Replacing an entry at the bound drops nothing.
        cache.insert(key(&id(), &["0".into()]), 0, |v| v % 2 == 0);
        assert_eq!(cache.len(), MAX_CACHED_JWT_SVIDS);
        // A new one at the bound: the stale half goes.
        cache.insert(key(&id(), &["new".into()]), 2, |v| v % 2 == 0);
        assert_eq!(cache.len(), MAX_CACHED_JWT_SVIDS / 2 + 1);
        assert!(cache.get(&key(&id(), &["1".into()]), |_| true).is_none());
        assert_eq!(cache.get(&key(&id(), &["4".into()]), |_| true), Some(4));
        assert_eq!(cache.get(&key(&id(), &["4".into()]), |_| false), None);

        // Everything still good at the bound: all go, and the new entry stays.
        let full = JwtCache::<u32>::default();
        for n in 0..MAX_CACHED_JWT_SVIDS as u32 {
            full.insert(key(&id(), &[n.to_string()]), n, |_| true);
        }
        full.insert(key(&id(), &["new".into()]), 7, |_| true);
        assert_eq!(full.len(), 1);
        assert_eq!(full.get(&key(&id(), &["new".into()]), |_| true), Some(7));
    }
}
