//! The embedded authority: a P-256 CA (self-signed, or an operator's CA from PEM files) and
//! ES256 JWT keys, rotated with overlap, published as a [`TrustBundle`] on a watch channel.

pub mod issuer;
pub mod schedule;
pub mod store;

mod persist;
use persist::{load_operator_ca, restore, stored_key};

use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use tokio::time::Instant;

use self::schedule::{key_phase, next_key_event, KeyPhase};
use self::store::{KeyStore, StoreError, StoredKey, StoredKeys};
use crate::authority::settings::AuthorityConfig;
use crate::fs_trust::TrustError;
use crate::svid::bundle::{JwtAuthority, JwtPublicKey, TrustBundle};
use crate::svid::jwt::{self, JwtError};
use crate::svid::keys::{EcKey, KeyError, SecretKey};
use crate::svid::x509::{CaCert, X509Error, X509Svid};
use crate::svid::{random_hex, unix_seconds};

/// How often relying parties are told to re-fetch the bundle.
pub const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    X509(#[from] X509Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("operator CA: {0}")]
    OperatorCa(String),
    /// The SPIRE agent could not give us what was asked (retryable).
    #[error("SPIRE: {0}")]
    Upstream(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Prepared,
    Active,
    Retired,
}

impl SlotState {
    fn as_str(self) -> &'static str {
        match self {
            SlotState::Prepared => "prepared",
            SlotState::Active => "active",
            SlotState::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "prepared" => Some(SlotState::Prepared),
            "active" => Some(SlotState::Active),
            "retired" => Some(SlotState::Retired),
            _ => None,
        }
    }
}

struct Slot<K> {
    key: Arc<K>,
    issued: Instant,
    issued_at: SystemTime,
    ttl: Duration,
    state: SlotState,
}

impl<K> Slot<K> {
    fn new(key: K, ttl: Duration, state: SlotState) -> Self {
        Self {
            key: Arc::new(key),
            issued: Instant::now(),
            issued_at: SystemTime::now(),
            ttl,
            state,
        }
    }

    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.issued)
    }
}

/// A JWT signing key and its id.
pub struct JwtKey {
    pub kid: String,
    pub key: EcKey,
}

struct KeyRing {
    cas: Vec<Slot<CaCert>>,
    jwt_keys: Vec<Slot<JwtKey>>,
    sequence: u64,
}

/// What a rotation step changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The set of published keys changed: streams must get the new bundle.
    pub bundle_changed: bool,
    /// A new CA signs from now on: every X.509-SVID should be re-minted.
    pub x509_signer_changed: bool,
}

pub struct EmbeddedAuthority {
    trust_domain: TrustDomain,
    config: AuthorityConfig,
    /// Operator-provided CAs do not rotate: we cannot mint their successor.
    rotates_ca: bool,
    ring: RwLock<KeyRing>,
    store: Option<KeyStore>,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
}

impl EmbeddedAuthority {
    /// Loads keys from `data_dir` (or the operator's CA files), or generates them.
    ///
    /// # Errors
    /// Unreadable or corrupt key material, or a failure to persist new keys.
    pub fn new(
        trust_domain: TrustDomain,
        config: AuthorityConfig,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Self, AuthorityError> {
        let store = data_dir.map(KeyStore::open).transpose()?;
        let stored = match &store {
            Some(s) => s.load()?,
            None => None,
        };
        let operator_ca = load_operator_ca(&config)?;
        let rotates_ca = operator_ca.is_none();
        let mut ring = KeyRing {
            cas: Vec::new(),
            jwt_keys: Vec::new(),
            sequence: 0,
        };
        if let Some(stored) = &stored {
            restore(&mut ring, stored)?;
        }
        if let Some(ca) = operator_ca {
            let ttl = ca
                .not_after
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            ring.cas = vec![Slot::new(ca, ttl, SlotState::Active)];
        }
        if !ring.cas.iter().any(|s| s.state == SlotState::Active) {
            let ca = CaCert::self_signed(&trust_domain, config.ca_ttl, EcKey::generate()?)?;
            ring.cas
                .push(Slot::new(ca, config.ca_ttl, SlotState::Active));
        }
        if !ring.jwt_keys.iter().any(|s| s.state == SlotState::Active) {
            ring.jwt_keys.push(Slot::new(
                new_jwt_key()?,
                config.jwt_key_ttl,
                SlotState::Active,
            ));
        }
        ring.sequence += 1;
        let bundle = build_bundle(&trust_domain, &ring);
        let (bundle_tx, _) = watch::channel(Arc::new(bundle));
        let authority = Self {
            trust_domain,
            config,
            rotates_ca,
            ring: RwLock::new(ring),
            store,
            bundle_tx,
        };
        authority.persist()?;
        Ok(authority)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The current bundle; `changed()` fires on every rotation that alters it.
    pub fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle_tx.subscribe()
    }

    pub fn current_bundle(&self) -> Arc<TrustBundle> {
        self.bundle_tx.borrow().clone()
    }

    /// Expiry of the CA that signs now (for metrics and health).
    pub fn active_ca_not_after(&self) -> SystemTime {
        let ring = self.read();
        active(&ring.cas)
            .map(|s| s.key.not_after)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Signs an X.509-SVID with the active CA.
    ///
    /// # Errors
    /// Certificate generation failed.
    pub fn mint_x509_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<X509Svid, AuthorityError> {
        let ca = {
            let ring = self.read();
            active(&ring.cas).map(|s| s.key.clone())
        }
        .ok_or_else(|| AuthorityError::OperatorCa("no active CA".into()))?;
        Ok(ca.mint_svid(id, ttl)?)
    }

    /// Signs JWT claims with the active JWT key (ES256, header alg/kid/typ).
    ///
    /// # Errors
    /// Signing failed.
    pub fn sign_jwt(&self, claims: &Map<String, Value>) -> Result<String, AuthorityError> {
        let key = {
            let ring = self.read();
            active(&ring.jwt_keys).map(|s| s.key.clone())
        }
        .ok_or(AuthorityError::Key(KeyError::Sign))?;
        Ok(jwt::sign_es256(&key.key, &key.kid, claims)?)
    }

    /// The earliest time a key changes phase.
    pub fn next_rotation(&self) -> Instant {
        let ring = self.read();
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let now = Instant::now();
        let mut next = far;
        let mut consider = |issued: Instant, age: Duration, ttl: Duration| {
            if let Some(d) = next_key_event(age, ttl) {
                next = next.min(issued + age + d);
            }
        };
        for s in &ring.cas {
            if self.rotates_ca || s.state != SlotState::Active {
                consider(s.issued, s.age(now), s.ttl);
            }
        }
        for s in &ring.jwt_keys {
            consider(s.issued, s.age(now), s.ttl);
        }
        next
    }

    /// Advances every key by its age at `now`: prepares, activates and drops keys, then
    /// publishes and persists what changed.
    ///
    /// # Errors
    /// Key generation or persistence failed; the ring is left as it was published.
    pub fn rotate(&self, now: Instant) -> Result<Rotation, AuthorityError> {
        let mut out = Rotation::default();
        {
            let mut ring = self.write();
            if self.rotates_ca {
                let td = self.trust_domain.clone();
                let ttl = self.config.ca_ttl;
                let (bundle, signer) = step(
                    &mut ring.cas,
                    now,
                    || Ok(CaCert::self_signed(&td, ttl, EcKey::generate()?)?),
                    ttl,
                )?;
                out.bundle_changed |= bundle;
                out.x509_signer_changed |= signer;
            }
            let ttl = self.config.jwt_key_ttl;
            let (bundle, _) = step(&mut ring.jwt_keys, now, new_jwt_key, ttl)?;
            out.bundle_changed |= bundle;
            if out.bundle_changed {
                ring.sequence += 1;
                let bundle = build_bundle(&self.trust_domain, &ring);
                self.bundle_tx.send_replace(Arc::new(bundle));
            }
        }
        if out.bundle_changed || out.x509_signer_changed {
            tracing::info!(
                bundle_changed = out.bundle_changed,
                x509_signer_changed = out.x509_signer_changed,
                "authority keys rotated"
            );
            self.persist()?;
        }
        Ok(out)
    }

    fn persist(&self) -> Result<(), AuthorityError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let ring = self.read();
        let stored = StoredKeys {
            sequence: ring.sequence,
            cas: ring
                .cas
                .iter()
                .filter(|_| self.rotates_ca)
                .map(|s| {
                    stored_key(
                        s,
                        String::new(),
                        STANDARD.encode(&s.key.cert_der),
                        s.key.key.pkcs8(),
                    )
                })
                .collect(),
            jwt_keys: ring
                .jwt_keys
                .iter()
                .map(|s| stored_key(s, s.key.kid.clone(), String::new(), s.key.key.pkcs8()))
                .collect(),
        };
        drop(ring);
        store.save(&stored)?;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyRing> {
        self.ring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyRing> {
        self.ring.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn new_jwt_key() -> Result<JwtKey, AuthorityError> {
    Ok(JwtKey {
        kid: random_hex(16),
        key: EcKey::generate()?,
    })
}

fn active<K>(slots: &[Slot<K>]) -> Option<&Slot<K>> {
    slots.iter().rev().find(|s| s.state == SlotState::Active)
}

/// One rotation step over a list of keys. Returns (bundle changed, signer changed).
fn step<K>(
    slots: &mut Vec<Slot<K>>,
    now: Instant,
    make: impl FnOnce() -> Result<K, AuthorityError>,
    ttl: Duration,
) -> Result<(bool, bool), AuthorityError> {
    let before = slots.len();
    slots.retain(|s| {
        key_phase(s.age(now), s.ttl) != KeyPhase::Expired || s.state == SlotState::Active
    });
    let mut bundle_changed = slots.len() != before;
    let mut signer_changed = false;
    let Some(active_idx) = slots.iter().rposition(|s| s.state == SlotState::Active) else {
        return Ok((bundle_changed, false));
    };
    let phase = key_phase(slots[active_idx].age(now), slots[active_idx].ttl);
    let prepared = slots.iter().position(|s| s.state == SlotState::Prepared);
    match (phase, prepared) {
        (KeyPhase::PrepareSuccessor, None) => {
            slots.push(Slot::new(make()?, ttl, SlotState::Prepared));
            bundle_changed = true;
        }
        (KeyPhase::ActivateSuccessor | KeyPhase::Expired, prepared) => {
            let next = match prepared {
                Some(i) => i,
                None => {
                    // Missed the prepare window (e.g. the daemon was down): publish and
                    // activate at once rather than sign with an expiring key.
                    slots.push(Slot::new(make()?, ttl, SlotState::Prepared));
                    bundle_changed = true;
                    slots.len() - 1
                }
            };
            slots[active_idx].state = SlotState::Retired;
            slots[next].state = SlotState::Active;
            signer_changed = true;
            if phase == KeyPhase::Expired {
                slots.remove(active_idx);
                bundle_changed = true;
            }
        }
        _ => {}
    }
    Ok((bundle_changed, signer_changed))
}

fn build_bundle(td: &TrustDomain, ring: &KeyRing) -> TrustBundle {
    let x509 = ring
        .cas
        .iter()
        .map(|s| {
            s.key
                .chain_above
                .last()
                .cloned()
                .unwrap_or_else(|| s.key.cert_der.clone())
        })
        .collect();
    let jwt = ring
        .jwt_keys
        .iter()
        .map(|s| JwtAuthority {
            kid: s.key.kid.clone(),
            key: JwtPublicKey::P256(s.key.key.public_point().to_vec()),
        })
        .collect();
    TrustBundle::new(td.clone(), ring.sequence, BUNDLE_REFRESH_HINT, x509, jwt)
}

#[cfg(test)]
mod tests;
