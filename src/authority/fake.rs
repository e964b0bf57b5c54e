//! An [`Issuer`] for unit tests: signs JWTs with an in-memory key under a fixed trust bundle,
//! mints no X.509-SVIDs, and fails on demand so callers' error paths can be driven.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use spiffe::TrustDomain;
use tokio::sync::watch;

use super::{IssuedJwt, Issuer, SignedToken};
use crate::caller::{Caller, IssueError};
use crate::registry::Identity;
use crate::svid::bundle::{JwtAuthority, JwtPublicKey, TrustBundle};
use crate::svid::jwt::sign_es256;
use crate::svid::keys::EcKey;
use crate::svid::x509::X509Svid;

const KID: &str = "fake-key";

pub struct FakeIssuer {
    trust_domain: TrustDomain,
    key: EcKey,
    bundle: watch::Sender<Arc<TrustBundle>>,
    changes: watch::Sender<u64>,
    /// Returned by the next signing call instead of a token.
    fail_next: Mutex<Option<IssueError>>,
    /// When set, task tokens expire this many seconds after they were asked to (an upstream
    /// cutting the lifetime), or earlier when negative.
    exp_shift: Mutex<i64>,
    signed: Mutex<u32>,
}

impl std::fmt::Debug for FakeIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeIssuer")
    }
}

impl FakeIssuer {
    pub fn new(trust_domain: &str) -> Arc<Self> {
        let key = EcKey::generate().expect("P-256 key");
        let trust_domain = TrustDomain::new(trust_domain).expect("trust domain");
        let bundle = TrustBundle::new(
            trust_domain.clone(),
            1,
            Duration::from_secs(300),
            vec![],
            vec![JwtAuthority {
                kid: KID.into(),
                key: JwtPublicKey::P256(key.public_point().to_vec()),
            }],
        );
        Arc::new(Self {
            trust_domain,
            key,
            bundle: watch::channel(Arc::new(bundle)).0,
            changes: watch::channel(0).0,
            fail_next: Mutex::new(None),
            exp_shift: Mutex::new(0),
            signed: Mutex::new(0),
        })
    }

    /// The next signing call fails with `e`.
    /// Reports an SVID renewal, as an issuer does when it renews one.
    pub fn renewed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// Reports a bundle change (the same bundle, sent again).
    pub fn bundle_changed(&self) {
        self.bundle.send_modify(|_| ());
    }

    pub fn fail_next(&self, e: IssueError) {
        *self.fail_next.lock().unwrap() = Some(e);
    }

    /// Task tokens come back expiring `by` seconds off the `exp` asked for.
    pub fn shift_expiry(&self, by: i64) {
        *self.exp_shift.lock().unwrap() = by;
    }

    /// How many tokens were signed.
    pub fn signed(&self) -> u32 {
        *self.signed.lock().unwrap()
    }

    /// Signs `claims` as this issuer, for tests that need a token from outside the broker.
    pub fn sign(&self, claims: &Map<String, Value>) -> String {
        sign_es256(&self.key, KID, claims).expect("fake signs")
    }

    fn take_failure(&self) -> Result<(), IssueError> {
        match self.fail_next.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Issuer for FakeIssuer {
    fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn x509_svid(&self, _identity: &Identity) -> Result<Arc<X509Svid>, IssueError> {
        self.take_failure()?;
        Err(IssueError::Failed(
            "the fake issuer mints no X.509-SVIDs".into(),
        ))
    }

    async fn jwt_svid(
        &self,
        _caller: &Caller,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<IssuedJwt, IssueError> {
        self.take_failure()?;
        let claims = crate::svid::jwt::svid_claims(
            &identity.spiffe_id,
            audiences,
            std::time::SystemTime::now(),
            identity.jwt_ttl,
            "fake-jti",
        );
        Ok(IssuedJwt::from_token(self.sign(&claims).into()))
    }

    async fn task_token(
        &self,
        _caller: &Caller,
        claims: &Map<String, Value>,
    ) -> Result<SignedToken, IssueError> {
        self.take_failure()?;
        let shift = *self.exp_shift.lock().unwrap();
        let mut claims = claims.clone();
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0) + shift;
        claims.insert("exp".into(), Value::from(exp));
        *self.signed.lock().unwrap() += 1;
        Ok(SignedToken {
            token: self.sign(&claims),
            expires_at: exp,
        })
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let _ = shutdown.wait_for(|s| *s).await;
    }
}
