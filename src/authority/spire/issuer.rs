//! [`SpireAuthority`] as an [`Issuer`]: the agent decides who holds which identity (by the
//! caller's selectors) and mints every SVID and task token; we re-serve and cache.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};
use spiffe::TrustDomain;
use tokio::sync::watch;
use tonic::{Code, Status};

use super::subscription::Subscription;
use super::SpireAuthority;
use crate::attest::Selector;
use crate::authority::{IssuedJwt, Issuer, SignedToken};
use crate::caller::{Caller, IssueError, LiveIdentities};
use crate::registry::Identity;
use crate::svid::bundle::{Federated, TrustBundle};
use crate::svid::task_audience;
use crate::svid::x509::X509Svid;

/// Name of the gRPC health service that reports the agent link.
pub const HEALTH_SERVICE: &str = "svid-broker.spire";

/// An agent answer as a typed error: "no identity" stays that, anything else means the agent
/// could not serve us (retryable), as `upstream_status` already decided.
pub(super) fn issue_error(s: &Status) -> IssueError {
    let msg = s.message().to_string();
    match s.code() {
        Code::PermissionDenied => IssueError::NoIdentity(msg),
        Code::ResourceExhausted => IssueError::Exhausted(msg),
        Code::Internal => IssueError::Failed(msg),
        _ => IssueError::Unavailable(msg),
    }
}

impl LiveIdentities for Subscription {
    fn identities(&self) -> Result<Vec<Identity>, IssueError> {
        Subscription::identities(self).map_err(|s| issue_error(&s))
    }

    fn federates_with(&self) -> Arc<Vec<String>> {
        Subscription::federates_with(self)
    }
}

#[async_trait::async_trait]
impl Issuer for SpireAuthority {
    fn trust_domain(&self) -> &TrustDomain {
        SpireAuthority::trust_domain(self)
    }

    fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        SpireAuthority::bundle(self)
    }

    fn current_bundle(&self) -> Arc<TrustBundle> {
        SpireAuthority::current_bundle(self)
    }

    fn federated(&self) -> Arc<Federated> {
        SpireAuthority::federated(self)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        SpireAuthority::changes(self)
    }

    async fn identities_for(
        &self,
        selectors: &BTreeSet<Selector>,
    ) -> Result<Option<(Vec<Identity>, Arc<dyn LiveIdentities>)>, IssueError> {
        let me = self.me().ok_or_else(|| {
            IssueError::Unavailable("the SPIRE link is shutting down; retry".into())
        })?;
        let (identities, sub) = me.subscribe(selectors).await.map_err(|s| issue_error(&s))?;
        Ok(Some((identities, sub as Arc<dyn LiveIdentities>)))
    }

    fn x509_svid(&self, identity: &Identity) -> Result<Arc<X509Svid>, IssueError> {
        SpireAuthority::x509_svid(self, &identity.spiffe_id)
            .map_err(|e| IssueError::Unavailable(format!("cannot mint X.509-SVID: SPIRE: {e}")))
    }

    async fn jwt_svid(
        &self,
        caller: &Caller,
        identity: &Identity,
        audiences: &[String],
    ) -> Result<IssuedJwt, IssueError> {
        SpireAuthority::jwt_svid(self, &caller.selectors, &identity.spiffe_id, audiences)
            .await
            .map(IssuedJwt::from_token)
            .map_err(|s| issue_error(&s))
    }

    /// A JWT-SVID the agent mints for the caller's selectors, subject `claims.sub`, audiences
    /// `[claims.aud, task audience]` where the task audience
    /// `urn:svid-broker:task:<task_id>:<jti>` makes every mint a distinct token the task table
    /// can track. SPIRE sets `exp` and carries no other claim.
    async fn task_token(
        &self,
        caller: &Caller,
        claims: &Map<String, Value>,
    ) -> Result<SignedToken, IssueError> {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
        let audience = claims
            .get("aud")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sub = crate::spiffe_id::parse(text("sub"))
            .map_err(|e| IssueError::Failed(format!("task token subject: {e}")))?;
        let audiences = vec![
            audience.to_string(),
            task_audience::encode(text("task_id"), text("jti")),
        ];
        let (token, expires_at) = self
            .fetch_jwt(&caller.selectors, &sub, &audiences)
            .await
            .map_err(|s| issue_error(&s))?;
        Ok(SignedToken { token, expires_at })
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // The agent renews; we follow its streams until shutdown.
        self.start().await;
        let _ = shutdown.wait_for(|stop| *stop).await;
        self.stop();
    }

    fn health(&self) -> Option<(&'static str, watch::Receiver<bool>)> {
        let mut links = SpireAuthority::health(self);
        let (tx, rx) = watch::channel(links.borrow().all_up());
        tokio::spawn(async move {
            while links.changed().await.is_ok() {
                let up = links.borrow_and_update().all_up();
                if tx.send(up).is_err() {
                    return;
                }
            }
        });
        Some((HEALTH_SERVICE, rx))
    }
}
