//! Client authentication on the OAuth listener: `private_key_jwt` (RFC 7523 §2.2) where the
//! assertion is the client's own JWT-SVID, fetched from the Workload API after attestation,
//! with `aud` = the issuer (or the token endpoint URL).
//!
//! TCP carries no peer credentials, so the JWT-SVID is the proof: it was signed by this
//! trust domain's authority for a workload that was attested as its `sub`. Each assertion is
//! accepted once within its lifetime (`jti` remembered until `exp`), so a copied assertion
//! cannot be replayed. The caller handed to the broker carries the identity and selectors of
//! the registration entry that names that SPIFFE ID.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use spiffe::SpiffeId;

use super::errors::OAuthError;
use super::form::Form;
use crate::authority::Issuer;
use crate::caller::Caller;
use crate::registry::Registry;
use crate::svid::{jwt, unix_seconds};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Most assertion `jti`s remembered at once; past it, new assertions are refused
/// (`temporarily_unavailable`) until old ones expire, rather than forgetting one early.
pub const MAX_REPLAY_ENTRIES: usize = 100_000;
/// Longest assertion lifetime accepted (`exp` − now): the replay cache holds a `jti` that
/// long, so an assertion valid for days would pin memory for days.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Remembers used assertion ids until they expire.
#[derive(Debug, Default)]
pub struct ReplayCache {
    /// (sub, jti) → exp (Unix seconds, leeway included).
    seen: HashMap<(String, String), i64>,
    max: usize,
}

/// Why an assertion was not accepted for use.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    Used,
    Full,
}

impl ReplayCache {
    pub fn new(max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            max,
        }
    }

    /// Records `(sub, jti)` until `exp`; refuses one seen before.
    ///
    /// # Errors
    /// Seen before and not yet expired, or the cache is full of live entries.
    pub fn use_once(&mut self, sub: &str, jti: &str, exp: i64, now: i64) -> Result<(), Replay> {
        let key = (sub.to_string(), jti.to_string());
        if self.seen.get(&key).is_some_and(|e| *e > now) {
            return Err(Replay::Used);
        }
        if self.seen.len() >= self.max {
            self.seen.retain(|_, e| *e > now);
            if self.seen.len() >= self.max {
                return Err(Replay::Full);
            }
        }
        self.seen.insert(key, exp);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// An authenticated client.
pub struct Client {
    pub caller: Arc<Caller>,
    pub spiffe_id: SpiffeId,
    /// The `jti` of the assertion it authenticated with (recorded in the audit log).
    pub assertion_jti: String,
}

/// Verifies client assertions and turns them into callers.
pub struct ClientAuth {
    issuer: String,
    token_endpoint: String,
    identities: Arc<dyn Issuer>,
    registry: Arc<Registry>,
    replay: Mutex<ReplayCache>,
}

impl ClientAuth {
    pub fn new(
        issuer: &str,
        token_endpoint: &str,
        identities: Arc<dyn Issuer>,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            issuer: issuer.to_string(),
            token_endpoint: token_endpoint.to_string(),
            identities,
            registry,
            replay: Mutex::new(ReplayCache::new(MAX_REPLAY_ENTRIES)),
        }
    }

    /// The authenticated client of a request, as a broker caller.
    ///
    /// # Errors
    /// `invalid_client` for a missing, malformed, unverifiable, replayed or unregistered
    /// assertion; `temporarily_unavailable` when the replay cache is full.
    pub fn authenticate(&self, form: &Form) -> Result<Client, OAuthError> {
        let (spiffe_id, assertion_jti) = self.verify(form, SystemTime::now())?;
        let (identity, selectors) = self.registry.entry_for_id(&spiffe_id).ok_or_else(|| {
            OAuthError::invalid_client(format!(
                "no registration entry names {spiffe_id}: only workloads of a [[entry]] without placeholders can be OAuth clients"
            ))
        })?;
        Ok(Client {
            caller: Arc::new(Caller {
                pid: 0,
                selectors,
                identities: vec![identity],
                upstream: None,
            }),
            spiffe_id,
            assertion_jti,
        })
    }

    /// Checks the assertion and spends it; returns its subject and `jti`.
    ///
    /// # Errors
    /// As [`ClientAuth::authenticate`].
    pub fn verify(&self, form: &Form, now: SystemTime) -> Result<(SpiffeId, String), OAuthError> {
        let how = "authenticate with client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and client_assertion=<your JWT-SVID for audience the issuer>";
        match form.get("client_assertion_type") {
            Some(JWT_BEARER) => {}
            Some(other) => {
                return Err(OAuthError::invalid_client(format!(
                    "client_assertion_type {other:?} is not supported: {how}"
                )))
            }
            None => {
                return Err(OAuthError::invalid_client(format!(
                    "client authentication is required: {how}"
                )))
            }
        }
        let token = form.get("client_assertion").ok_or_else(|| {
            OAuthError::invalid_client(format!("client_assertion is missing: {how}"))
        })?;
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion is {} bytes; the limit is {}",
                token.len(),
                jwt::MAX_TOKEN_BYTES
            )));
        }
        let bad =
            |why: String| OAuthError::invalid_client(format!("client_assertion rejected: {why}"));
        let parsed = jwt::parse(token).map_err(|e| bad(e.to_string()))?;
        let auds = parsed.audiences();
        let aud = [self.issuer.as_str(), self.token_endpoint.as_str()]
            .into_iter()
            .find(|a| auds.contains(a))
            .ok_or_else(|| {
                bad(format!(
                    "its aud is {}, not the issuer {}",
                    auds.join(", "),
                    self.issuer
                ))
            })?
            .to_string();
        let bundle = self.identities.current_bundle();
        let verified = jwt::verify(token, &aud, now, |td| {
            (td == &bundle.trust_domain).then_some(bundle.as_ref())
        })
        .map_err(|e| bad(e.to_string()))?;
        let sub = verified.spiffe_id;
        if let Some(client_id) = form.get("client_id") {
            if client_id != sub.to_string() {
                return Err(bad(format!(
                    "client_id {client_id} is not its subject {sub}"
                )));
            }
        }
        let jti = verified
            .parsed
            .claims
            .get("jti")
            .and_then(|v| v.as_str())
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("no jti (1 to 256 bytes): it could be replayed".into()))?
            .to_string();
        let now_s = unix_seconds(now);
        let exp = verified.parsed.numeric("exp").unwrap_or(0);
        if exp - now_s > MAX_ASSERTION_LIFETIME.as_secs() as i64 {
            return Err(bad(format!(
                "it lives {}s more; the limit is {}s",
                exp - now_s,
                MAX_ASSERTION_LIFETIME.as_secs()
            )));
        }
        let keep_until = exp.saturating_add(jwt::LEEWAY.as_secs() as i64);
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .use_once(&sub.to_string(), &jti, keep_until, now_s)
            .map_err(|r| match r {
                Replay::Used => bad(format!(
                    "it was already used (jti {jti}); fetch a fresh JWT-SVID for each request"
                )),
                Replay::Full => OAuthError::temporarily_unavailable(
                    "too many assertions in flight; retry when some have expired",
                ),
            })?;
        Ok((sub, jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_is_used_once_within_its_lifetime() {
        let mut c = ReplayCache::new(10);
        c.use_once("spiffe://td/a", "j1", 100, 50).unwrap();
        assert_eq!(
            c.use_once("spiffe://td/a", "j1", 100, 60),
            Err(Replay::Used)
        );
        // Another subject's jti is its own.
        c.use_once("spiffe://td/b", "j1", 100, 60).unwrap();
        // After expiry the id is forgotten (the token itself is refused as expired).
        c.use_once("spiffe://td/a", "j1", 200, 101).unwrap();
    }

    #[test]
    fn the_cache_is_bounded_and_fails_closed_at_its_edge() {
        let mut c = ReplayCache::new(3);
        for j in ["a", "b", "c"] {
            c.use_once("s", j, 100, 0).unwrap();
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.use_once("s", "d", 100, 0), Err(Replay::Full));
        // Expired entries make room.
        c.use_once("s", "d", 300, 150).unwrap();
        assert_eq!(c.len(), 1);
    }
}
