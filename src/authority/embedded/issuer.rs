//! The embedded [`Issuer`]: SVIDs from our own [`EmbeddedAuthority`], cached per SPIFFE ID
//! and renewed at half-life with jitter, plus the loop that drives key rotation. Streams wait
//! on [`Issuer::changes`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::schedule::svid_refresh_in;
use super::{AuthorityError, EmbeddedAuthority};
use crate::authority::jwt_cache::{self, JwtCache};
use crate::authority::{IssuedJwt, Issuer, SignedToken};
use crate::caller::{Caller, IssueError};
use crate::clock::Clock;
use crate::registry::Identity;
use crate::svid::bundle::TrustBundle;
use crate::svid::jwt::svid_claims;
use crate::svid::random_hex;
use crate::svid::x509::X509Svid;

/// Most distinct X.509-SVIDs held at once; past it, SVIDs nobody fetched since their last
/// renewal are dropped first.
pub const MAX_CACHED_X509_SVIDS: usize = 100_000;
struct CachedX509 {
    svid: Arc<X509Svid>,
    ttl: Duration,
    refresh_at: Instant,
    /// Fetched since minted: someone still wants it renewed.
    wanted: bool,
}

#[derive(Clone)]
struct CachedJwt {
    token: IssuedJwt,
    refresh_at: Instant,
}

pub struct EmbeddedIssuer {
    authority: Arc<EmbeddedAuthority>,
    clock: Arc<dyn Clock>,
    x509: Mutex<HashMap<SpiffeId, CachedX509>>,
    jwt: JwtCache<CachedJwt>,
    /// Bumped whenever any X.509-SVID is renewed.
    generation: watch::Sender<u64>,
    wake: Notify,
}

impl std::fmt::Debug for EmbeddedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedIssuer({})", self.authority.trust_domain())
    }
}

/// An authority failure as the caller sees it: what we were doing, then why.
fn issue_error(what: &str, e: AuthorityError) -> IssueError {
    match e {
        AuthorityError::Upstream(e) => IssueError::Unavailable(format!("{what}: SPIRE: {e}")),
        e => IssueError::Failed(format!("{what}: {e}")),
    }
}

impl EmbeddedIssuer {
    pub fn new(authority: Arc<EmbeddedAuthority>, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            authority,
            clock,
            x509: Mutex::new(HashMap::new()),
            jwt: JwtCache::default(),
            generation: watch::channel(0).0,
            wake: Notify::new(),
        })
    }

    pub fn authority(&self) -> &Arc<EmbeddedAuthority> {
        &self.authority
    }

    /// The current X.509-SVID for `identity`, minted on first use.
    ///
    /// # Errors
    /// Minting failed.
    pub fn cached_x509_svid(&self, identity: &Identity) -> Result<Arc<X509Svid>, AuthorityError> {
        if let Some(c) = self.x509_cache().get_mut(&identity.spiffe_id) {
            c.wanted = true;
            return Ok(c.svid.clone());
        }
        let svid = Arc::new(
            self.authority
                .mint_x509_svid(&identity.spiffe_id, identity.x509_ttl)?,
        );
        let mut cache = self.x509_cache();
        if cache.len() >= MAX_CACHED_X509_SVIDS {
            cache.retain(|_, c| c.wanted);
        }
        let entry = cache
            .entry(identity.spiffe_id.clone())
            .or_insert_with(|| CachedX509 {
                svid,
                ttl: identity.x509_ttl,
                refresh_at: Instant::now() + svid_refresh_in(identity.x509_ttl, jitter()),
                wanted: true,
            });
        let out = entry.svid.clone();
        drop(cache);
        self.wake.notify_one();
        Ok(out)
    }

    /// A JWT-SVID for `identity` and `audiences`, reused until its half-life like SPIRE does.
    ///
    /// # Errors
    /// Signing failed.
    pub fn cached_jwt_svid(
        &self,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<IssuedJwt, AuthorityError> {
        let key = jwt_cache::key(&identity.spiffe_id, audiences);
        let now = Instant::now();
        if let Some(c) = self.jwt.get(&key, |c| c.refresh_at > now) {
            return Ok(c.token);
        }
        let jti = random_hex(16);
        let issued = self.clock.now();
        let claims = svid_claims(&identity.spiffe_id, &key.1, issued, identity.jwt_ttl, &jti);
        let token = IssuedJwt {
            token: self.authority.sign_jwt(&claims)?.into(),
            jti: Some(jti.into()),
            audiences: key.1.clone().into(),
            expires_at: claims
                .get("exp")
                .and_then(Value::as_i64)
                .map_or(0, |e| e.max(0) as u64),
        };
        self.jwt.insert(
            key,
            CachedJwt {
                token: token.clone(),
                refresh_at: now + identity.jwt_ttl / 2,
            },
            |c| c.refresh_at > now,
        );
        Ok(token)
    }

    /// One pass: rotate keys, then renew the SVIDs that are due (all of them when a new CA
    /// took over signing).
    pub fn tick(&self, now: Instant) {
        let authority = &self.authority;
        let rotation = match authority.rotate(now) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "key rotation failed; retrying at the next tick");
                Default::default()
            }
        };
        let due: Vec<(SpiffeId, Duration)> = {
            let mut cache = self.x509_cache();
            // Nobody fetched it since the last renewal: let it go instead of renewing.
            cache.retain(|_, c| c.wanted || (c.refresh_at > now && !rotation.x509_signer_changed));
            cache
                .iter()
                .filter(|(_, c)| rotation.x509_signer_changed || c.refresh_at <= now)
                .map(|(id, c)| (id.clone(), c.ttl))
                .collect()
        };
        let mut renewed = 0u64;
        for (id, ttl) in due {
            match authority.mint_x509_svid(&id, ttl) {
                Ok(svid) => {
                    if let Some(c) = self.x509_cache().get_mut(&id) {
                        c.svid = Arc::new(svid);
                        c.refresh_at = Instant::now() + svid_refresh_in(ttl, jitter());
                        c.wanted = false;
                        renewed += 1;
                    }
                }
                Err(e) => tracing::error!(error = %e, spiffe_id = %id, "SVID renewal failed"),
            }
        }
        if rotation.x509_signer_changed || rotation.bundle_changed {
            self.jwt.clear();
        }
        if renewed > 0 {
            tracing::debug!(renewed, "X.509-SVIDs renewed");
            self.generation.send_modify(|g| *g += 1);
        }
    }

    fn next_deadline(&self) -> Instant {
        let svids = self.x509_cache().values().map(|c| c.refresh_at).min();
        let keys = self.authority.next_rotation();
        svids.map_or(keys, |s| s.min(keys))
    }

    fn x509_cache(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, CachedX509>> {
        self.x509.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Issuer for EmbeddedIssuer {
    fn trust_domain(&self) -> &TrustDomain {
        self.authority.trust_domain()
    }

    fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.authority.bundle()
    }

    fn current_bundle(&self) -> Arc<TrustBundle> {
        self.authority.current_bundle()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn x509_svid(&self, identity: &Identity) -> Result<Arc<X509Svid>, IssueError> {
        self.cached_x509_svid(identity)
            .map_err(|e| issue_error("cannot mint X.509-SVID", e))
    }

    async fn jwt_svid(
        &self,
        _caller: &Caller,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<IssuedJwt, IssueError> {
        self.cached_jwt_svid(identity, audiences)
            .map_err(|e| issue_error("cannot sign JWT-SVID", e))
    }

    async fn task_token(
        &self,
        _caller: &Caller,
        claims: &Map<String, Value>,
    ) -> Result<SignedToken, IssueError> {
        let token = self
            .authority
            .sign_jwt(claims)
            .map_err(|e| issue_error("cannot sign token", e))?;
        // Our own tokens carry exactly the `exp` the broker chose.
        let expires_at = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        Ok(SignedToken { token, expires_at })
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = self.next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = self.wake.notified() => continue,
                _ = shutdown.changed() => return,
            }
            self.tick(Instant::now());
        }
    }

    fn ca_not_after(&self) -> Option<std::time::SystemTime> {
        Some(self.authority.active_ca_not_after())
    }
}

fn jitter() -> f64 {
    use rand::Rng;
    rand::thread_rng().gen_range(-1.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::settings::AuthorityConfig;
    use spiffe::TrustDomain;

    fn manager(ca_ttl: u64) -> Arc<EmbeddedIssuer> {
        let cfg = AuthorityConfig {
            ca_ttl: Duration::from_secs(ca_ttl),
            jwt_key_ttl: Duration::from_secs(ca_ttl),
            ..Default::default()
        };
        let td = TrustDomain::new("example.org").unwrap();
        EmbeddedIssuer::new(
            Arc::new(EmbeddedAuthority::new(td, cfg, None).unwrap()),
            crate::clock::system(),
        )
    }

    fn identity(ttl: u64) -> Identity {
        Identity {
            spiffe_id: SpiffeId::new("spiffe://example.org/w").unwrap(),
            x509_ttl: Duration::from_secs(ttl),
            jwt_ttl: Duration::from_secs(ttl),
            hint: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn svids_renew_before_they_expire() {
        let m = manager(100_000);
        let id = identity(100);
        let first = m.cached_x509_svid(&id).unwrap();
        let mut changes = m.changes();
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(m.clone().run(stop_rx));
        let started = Instant::now();
        changes.changed().await.unwrap();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(45) && elapsed <= Duration::from_secs(55),
            "{elapsed:?}"
        );
        let second = m.cached_x509_svid(&id).unwrap();
        assert_ne!(first.serial, second.serial);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn jwt_svids_are_reused_until_half_life() {
        let m = manager(100_000);
        let id = identity(100);
        let a = m.cached_jwt_svid(&id, &["x".into(), "y".into()]).unwrap();
        let b = m.cached_jwt_svid(&id, &["y".into(), "x".into()]).unwrap();
        assert_eq!(a.token, b.token);
        // What the audit record names comes with the token, and matches what it says.
        let parsed = crate::svid::jwt::parse(&a.token).unwrap();
        assert_eq!(a.jti.as_deref(), parsed.claims["jti"].as_str());
        assert_eq!(*a.audiences, ["x".to_string(), "y".to_string()]);
        assert_eq!(a.expires_at as i64, parsed.numeric("exp").unwrap());
        assert!(!format!("{a:?}").contains(&*a.token), "no token in Debug");
        tokio::time::advance(Duration::from_secs(51)).await;
        assert_ne!(
            a.token,
            m.cached_jwt_svid(&id, &["x".into(), "y".into()])
                .unwrap()
                .token
        );
    }
}
