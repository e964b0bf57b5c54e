//! The SVIDs the broker hands out, cached per SPIFFE ID and renewed at half-life with jitter,
//! plus the loop that drives key rotation. Streams wait on [`IdentityManager::changes`].
//!
//! With `[authority] kind = "spire"` the SPIRE agent issues and renews every SVID: this manager
//! then only passes through to the [`SpireAuthority`] (see `authority/spire.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use spiffe::SpiffeId;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::audit::{AuditEvent, AuditLog};
use crate::authority::schedule::svid_refresh_in;
use crate::authority::{Authority, AuthorityError, EmbeddedAuthority, SpireAuthority};
use crate::registry::Identity;
use crate::server::caller::Caller;
use crate::svid::jwt::svid_claims;
use crate::svid::random_hex;
use crate::svid::x509::X509Svid;

/// Most distinct X.509-SVIDs held at once; past it, SVIDs nobody fetched since their last
/// renewal are dropped first.
pub const MAX_CACHED_X509_SVIDS: usize = 100_000;
/// Most cached JWT-SVIDs (per SPIFFE ID and audience set).
pub const MAX_CACHED_JWT_SVIDS: usize = 10_000;

struct CachedX509 {
    svid: Arc<X509Svid>,
    ttl: Duration,
    refresh_at: Instant,
    /// Fetched since minted: someone still wants it renewed.
    wanted: bool,
}

struct CachedJwt {
    token: Arc<str>,
    refresh_at: Instant,
}

pub struct IdentityManager {
    authority: Authority,
    x509: Mutex<HashMap<SpiffeId, CachedX509>>,
    jwt: Mutex<HashMap<(SpiffeId, Vec<String>), CachedJwt>>,
    /// Bumped whenever any X.509-SVID is renewed.
    generation: watch::Sender<u64>,
    wake: Notify,
    audit: std::sync::OnceLock<AuditLog>,
}

impl IdentityManager {
    pub fn new(authority: Arc<EmbeddedAuthority>) -> Arc<Self> {
        Self::with_authority(Authority::Embedded(authority))
    }

    /// Every SVID from a SPIRE agent.
    pub fn with_spire(spire: Arc<SpireAuthority>) -> Arc<Self> {
        Self::with_authority(Authority::Spire(spire))
    }

    fn with_authority(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            authority,
            x509: Mutex::new(HashMap::new()),
            jwt: Mutex::new(HashMap::new()),
            generation: watch::channel(0).0,
            wake: Notify::new(),
            audit: std::sync::OnceLock::new(),
        })
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Records every SVID handed to a caller in `log` from now on ([`Self::record_issued`]);
    /// task tokens are recorded by the broker.
    pub fn set_audit(&self, log: AuditLog) {
        let _ = self.audit.set(log);
    }

    /// Records SVIDs handed to a caller and returns once the records are on disk: an SVID
    /// leaves only with its record. Without an audit log, nothing to do.
    ///
    /// # Errors
    /// `Unavailable` "audit log unavailable: …" when the log refuses the records; the SVIDs
    /// must not be handed out.
    pub async fn record_issued(&self, events: Vec<AuditEvent>) -> Result<(), tonic::Status> {
        let Some(log) = self.audit.get() else {
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        log.append_all(events)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("audit log unavailable: {e}")))
    }

    /// Fires when SVIDs were renewed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        match &self.authority {
            Authority::Embedded(_) => self.generation.subscribe(),
            Authority::Spire(s) => s.changes(),
        }
    }

    /// A JWT-SVID for `caller` as `identity`: signed here (embedded), or minted by the SPIRE
    /// agent for the caller's selectors.
    ///
    /// # Errors
    /// As a gRPC status for the caller.
    pub async fn jwt_svid_for(
        &self,
        caller: &Caller,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<Arc<str>, tonic::Status> {
        match &self.authority {
            Authority::Embedded(_) => self
                .jwt_svid(identity, audiences)
                .map_err(|e| e.into_status("cannot sign JWT-SVID")),
            Authority::Spire(s) => {
                s.jwt_svid(&caller.selectors, &identity.spiffe_id, audiences)
                    .await
            }
        }
    }

    /// A task token for `caller` with `claims` (as built by `broker::token::claims`).
    ///
    /// Embedded: the claims signed with our JWT key. SPIRE: a JWT-SVID the agent mints for
    /// the caller's selectors, subject `claims.sub`, audiences `[claims.aud, task audience]`
    /// where the task audience `urn:svid-broker:task:<task_id>:<jti>` makes every mint a
    /// distinct token the task table can track; SPIRE sets `exp` and carries no other claim.
    ///
    /// # Errors
    /// As a gRPC status for the caller.
    pub async fn sign_task_token(
        &self,
        caller: &Caller,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, tonic::Status> {
        match &self.authority {
            Authority::Embedded(a) => a
                .sign_jwt(claims)
                .map_err(|e| e.into_status("cannot sign token")),
            Authority::Spire(s) => {
                let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                let audience = claims
                    .get("aud")
                    .and_then(|a| a.as_array())
                    .and_then(|a| a.first())
                    .and_then(|a| a.as_str())
                    .unwrap_or_default();
                let sub = crate::spiffe_id::parse(text("sub"))
                    .map_err(|e| tonic::Status::internal(format!("task token subject: {e}")))?;
                let audiences = vec![
                    audience.to_string(),
                    crate::authority::spire::task_audience(text("task_id"), text("jti")),
                ];
                s.fetch_jwt(&caller.selectors, &sub, &audiences)
                    .await
                    .map(|(token, _)| token)
            }
        }
    }

    /// The current X.509-SVID for `identity`, minted on first use.
    ///
    /// # Errors
    /// Minting failed.
    pub fn x509_svid(&self, identity: &Identity) -> Result<Arc<X509Svid>, AuthorityError> {
        let authority = match &self.authority {
            Authority::Embedded(a) => a,
            Authority::Spire(s) => {
                return s
                    .x509_svid(&identity.spiffe_id)
                    .map_err(AuthorityError::Upstream)
            }
        };
        if let Some(c) = self.x509_cache().get_mut(&identity.spiffe_id) {
            c.wanted = true;
            return Ok(c.svid.clone());
        }
        let svid = Arc::new(authority.mint_x509_svid(&identity.spiffe_id, identity.x509_ttl)?);
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
    pub fn jwt_svid(
        &self,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<Arc<str>, AuthorityError> {
        let mut key_aud = audiences.to_vec();
        key_aud.sort();
        key_aud.dedup();
        let key = (identity.spiffe_id.clone(), key_aud);
        let now = Instant::now();
        if let Some(c) = self.jwt_cache().get(&key) {
            if c.refresh_at > now {
                return Ok(c.token.clone());
            }
        }
        let jti = random_hex(16);
        let issued = SystemTime::now();
        let claims = svid_claims(&identity.spiffe_id, &key.1, issued, identity.jwt_ttl, &jti);
        let token: Arc<str> = self.authority.sign_jwt(&claims)?.into();
        let mut cache = self.jwt_cache();
        if cache.len() >= MAX_CACHED_JWT_SVIDS {
            cache.retain(|_, c| c.refresh_at > now);
            if cache.len() >= MAX_CACHED_JWT_SVIDS {
                cache.clear();
            }
        }
        cache.insert(
            key,
            CachedJwt {
                token: token.clone(),
                refresh_at: now + identity.jwt_ttl / 2,
            },
        );
        Ok(token)
    }

    /// Renews due SVIDs and rotates keys until `shutdown` fires.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if let Authority::Spire(s) = &self.authority {
            // The agent renews; we follow its streams until shutdown.
            s.start().await;
            let _ = shutdown.wait_for(|stop| *stop).await;
            s.stop();
            return;
        }
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

    /// One pass: rotate keys, then renew the SVIDs that are due (all of them when a new CA
    /// took over signing).
    pub fn tick(&self, now: Instant) {
        let Authority::Embedded(authority) = &self.authority else {
            return;
        };
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
            self.jwt_cache().clear();
        }
        if renewed > 0 {
            tracing::debug!(renewed, "X.509-SVIDs renewed");
            self.generation.send_modify(|g| *g += 1);
        }
    }

    fn next_deadline(&self) -> Instant {
        let svids = self.x509_cache().values().map(|c| c.refresh_at).min();
        let keys = match &self.authority {
            Authority::Embedded(a) => a.next_rotation(),
            Authority::Spire(_) => Instant::now() + Duration::from_secs(24 * 3600),
        };
        svids.map_or(keys, |s| s.min(keys))
    }

    fn x509_cache(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, CachedX509>> {
        self.x509.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn jwt_cache(&self) -> std::sync::MutexGuard<'_, HashMap<(SpiffeId, Vec<String>), CachedJwt>> {
        self.jwt.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn jitter() -> f64 {
    use rand::Rng;
    rand::thread_rng().gen_range(-1.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthorityConfig;
    use spiffe::TrustDomain;

    fn manager(ca_ttl: u64) -> Arc<IdentityManager> {
        let cfg = AuthorityConfig {
            ca_ttl: Duration::from_secs(ca_ttl),
            jwt_key_ttl: Duration::from_secs(ca_ttl),
            ..Default::default()
        };
        let td = TrustDomain::new("example.org").unwrap();
        IdentityManager::new(Arc::new(EmbeddedAuthority::new(td, cfg, None).unwrap()))
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
        let first = m.x509_svid(&id).unwrap();
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
        let second = m.x509_svid(&id).unwrap();
        assert_ne!(first.serial, second.serial);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn jwt_svids_are_reused_until_half_life() {
        let m = manager(100_000);
        let id = identity(100);
        let a = m.jwt_svid(&id, &["x".into(), "y".into()]).unwrap();
        let b = m.jwt_svid(&id, &["y".into(), "x".into()]).unwrap();
        assert_eq!(a, b);
        tokio::time::advance(Duration::from_secs(51)).await;
        assert_ne!(a, m.jwt_svid(&id, &["x".into(), "y".into()]).unwrap());
    }
}
