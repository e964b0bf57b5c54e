//! Who signs: the [`Issuer`] seam. Everything that hands out an identity (the Workload API,
//! the TaskBroker, the connection layer asking which identities a caller holds) talks to an
//! `Arc<dyn Issuer>` and never to a particular backend.
//!
//! - [`embedded`]: our own CA and JWT keys, rotated with overlap, SVIDs cached and renewed here.
//! - [`spire`]: a SPIRE agent issues and renews; we re-serve what it sends.
//! - [`fake`] (tests): an in-memory signer with error injection, so broker logic is tested
//!   without a daemon.
//!
//! A third backend (a Vault PKI, a cloud CA) is one more folder implementing [`Issuer`].

pub mod embedded;
#[cfg(test)]
pub mod fake;
pub mod jwt_cache;
pub mod settings;
pub mod spire;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use spiffe::TrustDomain;
use tokio::sync::watch;

pub use embedded::issuer::EmbeddedIssuer;
pub use embedded::{AuthorityError, EmbeddedAuthority};
pub use spire::SpireAuthority;

use crate::attest::Selector;
use crate::caller::{Caller, IssueError, LiveIdentities};
use crate::registry::Identity;
use crate::svid::bundle::{Federated, TrustBundle};
use crate::svid::x509::X509Svid;

/// The issuer `settings` name. SPIRE: connects to the agent and waits up to `startup_wait`
/// for the trust bundle (serving degraded after that).
///
/// # Errors
/// Key material that cannot be loaded or made, or `[authority.spire]` missing or invalid.
pub async fn build(
    trust_domain: &TrustDomain,
    settings: &settings::AuthorityConfig,
    data_dir: Option<&std::path::Path>,
    clock: Arc<dyn crate::clock::Clock>,
) -> anyhow::Result<Arc<dyn Issuer>> {
    match settings.kind {
        settings::AuthorityKind::Spire => {
            let spire_cfg = settings.spire.clone().ok_or_else(|| {
                anyhow::anyhow!("authority.kind = \"spire\" needs [authority.spire]")
            })?;
            let spire = SpireAuthority::new(trust_domain.clone(), spire_cfg)
                .map_err(|e| anyhow::anyhow!("[authority.spire]: {e}"))?;
            spire.start().await;
            Ok(spire)
        }
        settings::AuthorityKind::Embedded => {
            let authority = Arc::new(EmbeddedAuthority::new(
                trust_domain.clone(),
                settings.clone(),
                data_dir,
            )?);
            Ok(EmbeddedIssuer::new(authority, clock))
        }
    }
}

/// A signed task token and when it really expires (an upstream may cut the lifetime we
/// asked for).
#[derive(Clone)]
pub struct SignedToken {
    pub token: String,
    pub expires_at: i64,
}

impl fmt::Debug for SignedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never in Debug output.
        f.debug_struct("SignedToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A JWT-SVID and what its audit record names, so that record is written without parsing
/// the token again.
#[derive(Clone)]
pub struct IssuedJwt {
    pub token: Arc<str>,
    /// `None` when the signer sets none (SPIRE-minted tokens may have none).
    pub jti: Option<Arc<str>>,
    pub audiences: Arc<[String]>,
    /// `exp`, in Unix seconds (0 if absent).
    pub expires_at: u64,
}

impl IssuedJwt {
    /// Reads `jti`, `aud` and `exp` from a token someone else signed.
    pub fn from_token(token: Arc<str>) -> Self {
        let parsed = crate::svid::jwt::parse(&token).ok();
        let jti = parsed
            .as_ref()
            .and_then(|p| p.claims.get("jti"))
            .and_then(Value::as_str)
            .map(Arc::from);
        let audiences = parsed.as_ref().map_or_else(Vec::new, |p| {
            p.audiences().into_iter().map(str::to_string).collect()
        });
        let expires_at = parsed
            .as_ref()
            .and_then(|p| p.numeric("exp"))
            .map_or(0, |e| e.max(0) as u64);
        Self {
            token,
            jti,
            audiences: audiences.into(),
            expires_at,
        }
    }
}

impl fmt::Debug for IssuedJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never in Debug output.
        f.debug_struct("IssuedJwt")
            .field("jti", &self.jti)
            .field("audiences", &self.audiences)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Identities for a caller's selectors, and the signing of everything handed out under them.
#[async_trait::async_trait]
pub trait Issuer: Send + Sync + fmt::Debug {
    fn trust_domain(&self) -> &TrustDomain;

    /// The trust domain's bundle; `changed()` fires whenever it changes.
    fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>>;

    fn current_bundle(&self) -> Arc<TrustBundle> {
        self.bundle().borrow().clone()
    }

    /// Bundles of federated trust domains (X.509 DER and JWKS by trust domain ID).
    fn federated(&self) -> Arc<Federated> {
        Arc::default()
    }

    /// Bumped whenever any X.509-SVID is renewed: streams re-send on it.
    fn changes(&self) -> watch::Receiver<u64>;

    /// The identities this issuer, rather than our registry, gives a caller with `selectors`,
    /// kept current for as long as the returned handle is held. `None`: the registry decides.
    ///
    /// # Errors
    /// The issuer cannot answer now.
    async fn identities_for(
        &self,
        _selectors: &BTreeSet<Selector>,
    ) -> Result<Option<(Vec<Identity>, Arc<dyn LiveIdentities>)>, IssueError> {
        Ok(None)
    }

    /// The current X.509-SVID for `identity`.
    ///
    /// # Errors
    /// Minting failed, or an upstream has none.
    fn x509_svid(&self, identity: &Identity) -> Result<Arc<X509Svid>, IssueError>;

    /// A JWT-SVID for `caller` as `identity`.
    ///
    /// # Errors
    /// The caller may not have it, or signing failed.
    async fn jwt_svid(
        &self,
        caller: &Caller,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<IssuedJwt, IssueError>;

    /// A task token for `caller` carrying `claims` (as `broker::token::claims` builds them).
    ///
    /// # Errors
    /// The caller may not have the subject, or signing failed.
    async fn task_token(
        &self,
        caller: &Caller,
        claims: &Map<String, Value>,
    ) -> Result<SignedToken, IssueError>;

    /// Renews, rotates or follows upstream until `shutdown` fires.
    async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>);

    /// A health signal other than "serving", named for gRPC health: `true` while healthy.
    fn health(&self) -> Option<(&'static str, watch::Receiver<bool>)> {
        None
    }

    /// When the CA that signs X.509-SVIDs expires, where we hold it.
    fn ca_not_after(&self) -> Option<SystemTime> {
        None
    }

    /// Federated X.509 bundles for the trust domains `caller`'s SVIDs federate with, for
    /// `X509SVIDResponse.federated_bundles`.
    fn federated_x509_for(&self, caller: &Caller) -> HashMap<String, Vec<u8>> {
        let wanted = caller.federates_with();
        if wanted.is_empty() {
            return HashMap::new();
        }
        let federated = self.federated();
        wanted
            .iter()
            .filter_map(|td| federated.x509.get(td).map(|b| (td.clone(), b.clone())))
            .collect()
    }
}
