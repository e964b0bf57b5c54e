//! Who signs. The embedded authority holds its own CA and JWT keys and rotates them with
//! overlap; [`schedule`] is the pure timing, [`store`] the on-disk form. The SPIRE authority
//! ([`spire`]) re-serves what a SPIRE agent issues. [`Authority`] is either.

pub mod embedded;
pub mod schedule;
pub mod spire;
pub mod store;

use std::sync::Arc;

pub use embedded::{AuthorityError, EmbeddedAuthority};
pub use spire::SpireAuthority;

use crate::svid::bundle::TrustBundle;

/// The authority behind the [`IdentityManager`](crate::identity::IdentityManager).
#[derive(Clone)]
pub enum Authority {
    Embedded(Arc<EmbeddedAuthority>),
    Spire(Arc<SpireAuthority>),
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authority::Embedded(a) => write!(f, "Authority::Embedded({})", a.trust_domain()),
            Authority::Spire(s) => write!(f, "Authority::{s:?}"),
        }
    }
}

impl Authority {
    pub fn trust_domain(&self) -> &spiffe::TrustDomain {
        match self {
            Authority::Embedded(a) => a.trust_domain(),
            Authority::Spire(s) => s.trust_domain(),
        }
    }

    /// The trust domain's bundle; `changed()` fires whenever it changes.
    pub fn bundle(&self) -> tokio::sync::watch::Receiver<Arc<TrustBundle>> {
        match self {
            Authority::Embedded(a) => a.bundle(),
            Authority::Spire(s) => s.bundle(),
        }
    }

    pub fn current_bundle(&self) -> Arc<TrustBundle> {
        match self {
            Authority::Embedded(a) => a.current_bundle(),
            Authority::Spire(s) => s.current_bundle(),
        }
    }

    /// Signs JWT claims with our own key. Only the embedded authority holds one: with SPIRE,
    /// tokens are JWT-SVIDs the agent mints
    /// ([`IdentityManager::sign_task_token`](crate::identity::IdentityManager::sign_task_token)).
    ///
    /// # Errors
    /// Signing failed, or there is no local key.
    pub fn sign_jwt(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, AuthorityError> {
        match self {
            Authority::Embedded(a) => a.sign_jwt(claims),
            Authority::Spire(_) => Err(AuthorityError::Upstream(
                "no local signing key: SPIRE mints every JWT".into(),
            )),
        }
    }

    /// Federated X.509 bundles for the trust domains `caller`'s SVIDs federate with (SPIRE's
    /// `federates_with`), for `X509SVIDResponse.federated_bundles`. Embedded: none.
    pub fn federated_x509_for(
        &self,
        caller: &crate::server::caller::Caller,
    ) -> std::collections::HashMap<String, Vec<u8>> {
        let (Authority::Spire(s), Some(sub)) = (self, &caller.upstream) else {
            return Default::default();
        };
        let federated = s.federated();
        sub.federates_with()
            .iter()
            .filter_map(|td| federated.x509.get(td).map(|b| (td.clone(), b.clone())))
            .collect()
    }

    /// Every federated bundle (X.509 DER, JWT JWKS) by trust domain ID, for FetchX509Bundles
    /// and FetchJWTBundles next to our own. Embedded: none.
    pub fn federated_bundles(&self) -> Option<Arc<spire::bundles::Federated>> {
        match self {
            Authority::Spire(s) => Some(s.federated()),
            Authority::Embedded(_) => None,
        }
    }

    pub fn embedded(&self) -> Option<&Arc<EmbeddedAuthority>> {
        match self {
            Authority::Embedded(a) => Some(a),
            Authority::Spire(_) => None,
        }
    }

    pub fn spire(&self) -> Option<&Arc<SpireAuthority>> {
        match self {
            Authority::Spire(s) => Some(s),
            Authority::Embedded(_) => None,
        }
    }
}
