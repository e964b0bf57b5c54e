//! Which peer SPIFFE IDs may talk to us, decided after the peer's chain has verified.

use std::fmt;
use std::sync::Arc;

use spiffe::{SpiffeId, TrustDomain};

use super::PeerError;

type Predicate = dyn Fn(&SpiffeId) -> bool + Send + Sync;

/// A predicate over the peer's SPIFFE ID with a description of what it expects, so a refusal
/// says what was wanted.
#[derive(Clone)]
pub struct Authorize {
    check: Arc<Predicate>,
    expected: String,
}

impl Authorize {
    /// Exactly this ID.
    pub fn expect_id(id: SpiffeId) -> Self {
        let expected = id.to_string();
        Self::predicate(expected, move |peer| *peer == id)
    }

    /// Any of these IDs.
    pub fn one_of(ids: Vec<SpiffeId>) -> Self {
        let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
        Self::predicate(format!("one of {}", list.join(", ")), move |peer| {
            ids.contains(peer)
        })
    }

    /// Any ID in this trust domain.
    pub fn any_in_trust_domain(trust_domain: TrustDomain) -> Self {
        let expected = format!("any ID in {}", trust_domain.id_string());
        Self::predicate(expected, move |peer| peer.is_member_of(&trust_domain))
    }

    /// A caller's own rule; `expected` describes it in refusals.
    pub fn predicate(
        expected: impl Into<String>,
        check: impl Fn(&SpiffeId) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            check: Arc::new(check),
            expected: expected.into(),
        }
    }

    /// What this rule expects, in words.
    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// # Errors
    /// [`PeerError::Unauthorized`] naming the peer and what was expected.
    pub fn check(&self, peer: &SpiffeId) -> Result<(), PeerError> {
        if (self.check)(peer) {
            Ok(())
        } else {
            Err(PeerError::Unauthorized {
                peer: peer.clone(),
                expected: self.expected.clone(),
            })
        }
    }
}

impl fmt::Debug for Authorize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorize")
            .field("expected", &self.expected)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn rules_accept_and_refuse_with_a_clear_message() {
        let a = id("spiffe://example.org/stage/a");
        let b = id("spiffe://example.org/stage/b");
        let other_td = id("spiffe://other.org/stage/a");
        let td = TrustDomain::new("example.org").unwrap();
        let cases: Vec<(Authorize, &SpiffeId, bool)> = vec![
            (Authorize::expect_id(a.clone()), &a, true),
            (Authorize::expect_id(a.clone()), &b, false),
            (Authorize::one_of(vec![a.clone(), b.clone()]), &b, true),
            (Authorize::one_of(vec![a.clone()]), &other_td, false),
            (Authorize::any_in_trust_domain(td.clone()), &b, true),
            (Authorize::any_in_trust_domain(td), &other_td, false),
            (
                Authorize::predicate("a stage", |p| p.path().starts_with("/stage/")),
                &other_td,
                true,
            ),
        ];
        for (rule, peer, ok) in cases {
            assert_eq!(rule.check(peer).is_ok(), ok, "{rule:?} on {peer}");
        }
        let err = Authorize::expect_id(a).check(&b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer SPIFFE ID spiffe://example.org/stage/b is not authorized (expected spiffe://example.org/stage/a)"
        );
    }
}
