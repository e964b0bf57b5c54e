//! The embedded authority: a P-256 CA (self-signed, or an operator's CA from PEM files) and
//! ES256 JWT keys, rotated with overlap, published as a [`TrustBundle`] on a watch channel.

pub mod issuer;
pub mod schedule;
pub mod store;

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
use crate::config::AuthorityConfig;
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

impl AuthorityError {
    /// As a gRPC status: SPIRE trouble is `Unavailable` (clients retry), the rest `Internal`.
    pub fn into_status(self, what: &str) -> tonic::Status {
        match self {
            AuthorityError::Upstream(e) => tonic::Status::unavailable(format!("{what}: {e}")),
            e => tonic::Status::internal(format!("{what}: {e}")),
        }
    }
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

fn stored_key<K>(slot: &Slot<K>, kid: String, cert_der: String, key: &SecretKey) -> StoredKey {
    StoredKey {
        kid,
        cert_der,
        key_pkcs8: STANDARD.encode(key.der()),
        issued_at: unix_seconds(slot.issued_at),
        ttl_secs: slot.ttl.as_secs(),
        state: slot.state.as_str().to_string(),
    }
}

fn restore(ring: &mut KeyRing, stored: &StoredKeys) -> Result<(), AuthorityError> {
    let now_sys = SystemTime::now();
    let now = Instant::now();
    let corrupt = |reason: &str| {
        AuthorityError::Store(StoreError::Corrupt {
            path: store::KEYS_FILE.into(),
            reason: reason.to_string(),
        })
    };
    let slot_time = |k: &StoredKey| {
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(k.issued_at.max(0) as u64);
        let age = now_sys.duration_since(issued_at).unwrap_or(Duration::ZERO);
        (issued_at, now.checked_sub(age).unwrap_or(now))
    };
    for k in &stored.cas {
        let key = EcKey::from_pkcs8(SecretKey::new(
            STANDARD
                .decode(&k.key_pkcs8)
                .map_err(|_| corrupt("CA key"))?,
        ))?;
        let der = STANDARD
            .decode(&k.cert_der)
            .map_err(|_| corrupt("CA cert"))?;
        let ca = CaCert::from_parts(der, Vec::new(), key)?;
        let (issued_at, issued) = slot_time(k);
        let state = SlotState::parse(&k.state).ok_or_else(|| corrupt("CA state"))?;
        ring.cas.push(Slot {
            key: Arc::new(ca),
            issued,
            issued_at,
            ttl: Duration::from_secs(k.ttl_secs),
            state,
        });
    }
    for k in &stored.jwt_keys {
        let key = EcKey::from_pkcs8(SecretKey::new(
            STANDARD
                .decode(&k.key_pkcs8)
                .map_err(|_| corrupt("JWT key"))?,
        ))?;
        let (issued_at, issued) = slot_time(k);
        let state = SlotState::parse(&k.state).ok_or_else(|| corrupt("JWT key state"))?;
        ring.jwt_keys.push(Slot {
            key: Arc::new(JwtKey {
                kid: k.kid.clone(),
                key,
            }),
            issued,
            issued_at,
            ttl: Duration::from_secs(k.ttl_secs),
            state,
        });
    }
    // Drop what expired while we were down; `rotate` handles the rest.
    ring.cas.retain(|s| s.age(now) < s.ttl);
    ring.jwt_keys.retain(|s| s.age(now) < s.ttl);
    ring.sequence = stored.sequence;
    Ok(())
}

fn load_operator_ca(config: &AuthorityConfig) -> Result<Option<CaCert>, AuthorityError> {
    let (Some(cert_path), Some(key_path)) = (&config.ca_cert_path, &config.ca_key_path) else {
        return Ok(None);
    };
    // Certificates decide what we publish as roots, so they are trusted inputs; the key must
    // also be private to us.
    let trust = crate::fs_trust::FsTrust::current();
    let read_from = |p: &std::path::Path, file: Result<std::fs::File, TrustError>| {
        let mut bytes = Vec::new();
        file.map_err(|e| AuthorityError::OperatorCa(e.to_string()))?
            .read_to_end(&mut bytes)
            .map_err(|e| AuthorityError::OperatorCa(format!("{}: {e}", p.display())))?;
        Ok::<_, AuthorityError>(bytes)
    };
    let read = |what, p| read_from(p, trust.open_input(what, p));
    let certs: Vec<Vec<u8>> =
        rustls_pemfile::certs(&mut read("authority.ca_cert_path", cert_path)?.as_slice())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| AuthorityError::OperatorCa(format!("{}: {e}", cert_path.display())))?;
    let Some((first, above)) = certs.split_first() else {
        return Err(AuthorityError::OperatorCa(format!(
            "{}: no certificate",
            cert_path.display()
        )));
    };
    let key_pem = zeroize::Zeroizing::new(read_from(
        key_path,
        trust.open_private("authority.ca_key_path", key_path),
    )?);
    let key = rustls_pemfile::pkcs8_private_keys(&mut key_pem.as_slice())
        .next()
        .ok_or_else(|| {
            AuthorityError::OperatorCa(format!("{}: no PKCS#8 key", key_path.display()))
        })?
        .map_err(|e| AuthorityError::OperatorCa(format!("{}: {e}", key_path.display())))?;
    let key = EcKey::from_pkcs8(SecretKey::new(key.secret_pkcs8_der().to_vec())).map_err(|_| {
        AuthorityError::OperatorCa(format!("{}: not a P-256 key", key_path.display()))
    })?;
    let mut above = above.to_vec();
    if let Some(bundle_path) = &config.ca_bundle_path {
        let roots: Vec<Vec<u8>> =
            rustls_pemfile::certs(&mut read("authority.ca_bundle_path", bundle_path)?.as_slice())
                .filter_map(Result::ok)
                .map(|c| c.to_vec())
                .collect();
        if roots.is_empty() {
            return Err(AuthorityError::OperatorCa(format!(
                "{}: no certificate",
                bundle_path.display()
            )));
        }
        above.extend(roots);
    }
    let ca = CaCert::from_parts(first.clone(), above, key)?;
    Ok(Some(ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ca_ttl: u64, jwt_ttl: u64) -> AuthorityConfig {
        AuthorityConfig {
            ca_ttl: Duration::from_secs(ca_ttl),
            jwt_key_ttl: Duration::from_secs(jwt_ttl),
            ..Default::default()
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn ca_overlaps_in_the_bundle_before_it_signs() {
        let a = EmbeddedAuthority::new(td(), cfg(400, 4000), None).unwrap();
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let first = a.current_bundle();
        assert_eq!(first.x509_authorities.len(), 1);

        tokio::time::advance(Duration::from_secs(200)).await;
        let r = a.rotate(Instant::now()).unwrap();
        assert_eq!(
            r,
            Rotation {
                bundle_changed: true,
                x509_signer_changed: false
            }
        );
        let b = a.current_bundle();
        assert_eq!(b.x509_authorities.len(), 2);
        assert!(b.sequence > first.sequence);
        // Still signed by the first CA.
        let svid = a.mint_x509_svid(&id, Duration::from_secs(60)).unwrap();
        assert!(verifies_under(&svid.chain[0], &first.x509_authorities[0]));

        tokio::time::advance(Duration::from_secs(100)).await;
        let r = a.rotate(Instant::now()).unwrap();
        assert!(r.x509_signer_changed);
        let svid = a.mint_x509_svid(&id, Duration::from_secs(60)).unwrap();
        assert!(verifies_under(&svid.chain[0], &b.x509_authorities[1]));
        assert_eq!(
            a.current_bundle().x509_authorities.len(),
            2,
            "old CA stays until expiry"
        );

        tokio::time::advance(Duration::from_secs(100)).await;
        let r = a.rotate(Instant::now()).unwrap();
        assert!(r.bundle_changed);
        let now = a.current_bundle();
        assert!(
            !now.x509_authorities.contains(&first.x509_authorities[0]),
            "expired CA dropped"
        );
        assert_eq!(now.x509_authorities[0], b.x509_authorities[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn jwt_keys_rotate_with_overlap() {
        let a = EmbeddedAuthority::new(td(), cfg(4000, 400), None).unwrap();
        let mut claims = Map::new();
        claims.insert("sub".into(), "spiffe://example.org/w".into());
        let kid_of = |t: &str| {
            jwt::parse(t).map(|p| p.kid).unwrap_or_else(|_| {
                let h = t.split('.').next().unwrap();
                let v: Value = serde_json::from_slice(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(h)
                        .unwrap(),
                )
                .unwrap();
                v["kid"].as_str().unwrap().to_string()
            })
        };
        let k1 = kid_of(&a.sign_jwt(&claims).unwrap());
        tokio::time::advance(Duration::from_secs(200)).await;
        a.rotate(Instant::now()).unwrap();
        assert_eq!(a.current_bundle().jwt_authorities.len(), 2);
        assert_eq!(kid_of(&a.sign_jwt(&claims).unwrap()), k1);
        tokio::time::advance(Duration::from_secs(100)).await;
        a.rotate(Instant::now()).unwrap();
        let k2 = kid_of(&a.sign_jwt(&claims).unwrap());
        assert_ne!(k1, k2);
        assert!(a.current_bundle().find_jwt_authority(&k1).is_some());
    }

    #[test]
    fn keys_persist_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let a = EmbeddedAuthority::new(td(), cfg(3600, 3600), Some(dir.path())).unwrap();
        let b1 = a.current_bundle();
        drop(a);
        let b = EmbeddedAuthority::new(td(), cfg(3600, 3600), Some(dir.path())).unwrap();
        let b2 = b.current_bundle();
        assert_eq!(b1.x509_authorities, b2.x509_authorities);
        assert_eq!(b1.jwt_authorities, b2.jwt_authorities);
        assert!(b2.sequence > b1.sequence);
        let text = std::fs::read_to_string(dir.path().join(super::store::KEYS_FILE)).unwrap();
        assert!(!format!("{:?}", b.current_bundle()).contains(&text[..20]));
    }

    fn verifies_under(leaf: &[u8], ca: &[u8]) -> bool {
        use x509_parser::prelude::*;
        let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    }
}
