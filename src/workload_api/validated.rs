//! JWT-SVIDs that ValidateJWTSVID has already verified, so a relying party that validates the
//! same token on every request pays for the ECDSA check once.
//!
//! An entry is keyed by the whole token and remembers the bundle sequence it was verified
//! under. A hit still checks the time and the audience on every call; a changed bundle (a key
//! added or dropped) misses, and the token is verified again in full.

use std::collections::HashMap;
use std::sync::Mutex;

use spiffe::SpiffeId;

use crate::svid::jwt::{VerifiedJwt, LEEWAY};

/// Most tokens remembered; past it the cache starts over.
pub const MAX_VALIDATED_TOKENS: usize = 4096;
/// Longest token remembered (longer ones are verified every time).
pub const MAX_CACHED_TOKEN_BYTES: usize = 4096;

struct Entry {
    bundle_sequence: u64,
    spiffe_id: SpiffeId,
    claims: prost_types::Struct,
    exp: i64,
    nbf: Option<i64>,
    audiences: Vec<String>,
}

#[derive(Default)]
pub struct ValidatedTokens {
    entries: Mutex<HashMap<String, Entry>>,
}

impl ValidatedTokens {
    /// The SPIFFE ID and claims of `token` when it was verified under `bundle_sequence` and is
    /// still valid for `audience` at `now_s` (Unix seconds); `None` means "verify it".
    pub fn get(
        &self,
        token: &str,
        audience: &str,
        bundle_sequence: u64,
        now_s: i64,
    ) -> Option<(SpiffeId, prost_types::Struct)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(token)?;
        let leeway = LEEWAY.as_secs() as i64;
        let fresh = e.bundle_sequence == bundle_sequence
            && e.exp + leeway > now_s
            && e.nbf.is_none_or(|nbf| nbf - leeway <= now_s)
            && e.audiences.iter().any(|a| a == audience);
        fresh.then(|| (e.spiffe_id.clone(), e.claims.clone()))
    }

    /// Remembers a token that `jwt::verify` accepted under `bundle_sequence`.
    pub fn insert(
        &self,
        token: &str,
        bundle_sequence: u64,
        verified: &VerifiedJwt,
        claims: &prost_types::Struct,
    ) {
        if token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let Some(exp) = verified.parsed.numeric("exp") else {
            return;
        };
        let entry = Entry {
            bundle_sequence,
            spiffe_id: verified.spiffe_id.clone(),
            claims: claims.clone(),
            exp,
            nbf: verified.parsed.numeric("nbf"),
            audiences: verified
                .parsed
                .audiences()
                .into_iter()
                .map(str::to_string)
                .collect(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_VALIDATED_TOKENS {
            entries.clear();
        }
        entries.insert(token.to_string(), entry);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use spiffe::TrustDomain;

    use super::*;
    use crate::authority::EmbeddedAuthority;
    use crate::config::AuthorityConfig;
    use crate::svid::jwt;
    use crate::svid::unix_seconds;

    fn verified_token(aud: &str) -> (String, VerifiedJwt, u64) {
        let td = TrustDomain::new("example.org").unwrap();
        let authority =
            Arc::new(EmbeddedAuthority::new(td, AuthorityConfig::default(), None).unwrap());
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let claims = jwt::svid_claims(
            &id,
            &[aud.to_string()],
            SystemTime::now(),
            Duration::from_secs(60),
            "jti-1",
        );
        let token = authority.sign_jwt(&claims).unwrap();
        let bundle = authority.current_bundle();
        let verified =
            jwt::verify(&token, aud, SystemTime::now(), |_| Some(bundle.as_ref())).unwrap();
        (token, verified, bundle.sequence)
    }

    #[test]
    fn a_hit_still_checks_audience_time_and_bundle() {
        let (token, verified, seq) = verified_token("a");
        let cache = ValidatedTokens::default();
        let now = unix_seconds(SystemTime::now());
        assert!(cache.get(&token, "a", seq, now).is_none());
        cache.insert(&token, seq, &verified, &prost_types::Struct::default());
        let (id, _) = cache.get(&token, "a", seq, now).unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/w");
        assert!(cache.get(&token, "b", seq, now).is_none(), "other audience");
        assert!(
            cache.get(&token, "a", seq + 1, now).is_none(),
            "bundle changed"
        );
        assert!(cache.get(&token, "a", seq, now + 3600).is_none(), "expired");
        assert!(
            cache.get(&format!("{token}x"), "a", seq, now).is_none(),
            "other token"
        );
    }

    #[test]
    fn stays_bounded() {
        let (token, verified, seq) = verified_token("a");
        let cache = ValidatedTokens::default();
        for i in 0..MAX_VALIDATED_TOKENS + 10 {
            cache.insert(&format!("{token}{i}"), seq, &verified, &Default::default());
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_VALIDATED_TOKENS);
    }
}
