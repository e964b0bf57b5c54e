//! The SPIRE authority (`[authority] kind = "spire"`): a SPIRE agent on this node issues every
//! SVID, and svid-broker re-serves them.
//!
//! - The broker's own X.509-SVID comes from the agent's Workload API (the `spiffe` crate's
//!   client), streamed and followed across rotations ([`own`]).
//! - Trust bundles come from the agent's Delegated Identity API bundle streams, kept as SPIRE
//!   sent them (the JWKS bytes are served unchanged) ([`bundles`]).
//! - Per-caller SVIDs: svid-broker attests the caller itself, then subscribes on the agent's
//!   admin socket with `SubscribeToX509SVIDs` by the caller's selectors, one subscription per
//!   distinct selector set, kept while a caller holds it and for [`IDLE_SUBSCRIPTION`] after
//!   ([`subscription`]). JWT-SVIDs come from `FetchJWTSVIDs` by the same selectors.
//! - Outage: every stream reconnects with [`backoff`] (exponential, jittered, bounded); the last
//!   SVIDs received keep being served until they expire; [`SpireAuthority::health`] reports
//!   degraded meanwhile; a fresh message from the agent is pushed to every open stream.

pub mod backoff;
pub mod bundles;
pub mod issuer;
pub mod own;
pub use issuer::HEALTH_SERVICE;
pub mod settings;
pub mod subscription;
mod wire;

pub use settings::SpireAuthorityConfig;
pub use wire::{spiffe_id_string, stream_error, to_spire_selectors, upstream_status};

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use spiffe::{SpiffeId, TrustDomain};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::attest::Selector;
use crate::authority::jwt_cache::{self, JwtCache};
use crate::caller::NO_IDENTITY;
use crate::proto::spire::api::agent::delegatedidentity::v1 as di;
use crate::proto::spire::api::agent::delegatedidentity::v1::delegated_identity_client::DelegatedIdentityClient;
use crate::registry::Identity;
use crate::svid::bundle::TrustBundle;
use crate::svid::unix_seconds;
use crate::svid::x509::X509Svid;

pub use subscription::Subscription;

/// How long a selector set's subscription outlives the last caller holding it, so a workload
/// that reconnects (a CLI run again, a restarted client) finds its SVIDs at once — and during an
/// agent outage, at all.
pub const IDLE_SUBSCRIPTION: Duration = Duration::from_secs(600);
/// Most selector sets subscribed at once.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;
/// How long a first request waits for the agent's first answer for its selectors.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Deadline of one FetchJWTSVIDs call.
pub const JWT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The second audience of a task token minted through SPIRE:
/// `urn:svid-broker:task:<task_id>:<jti>`.
/// Largest gRPC message decoded from the agent (a trusted peer; requests from local callers
/// have the tighter bounds of the connection layer).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Which of the long-lived agent streams are up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Links {
    pub own_svid: bool,
    pub x509_bundles: bool,
    pub jwt_bundles: bool,
}

impl Links {
    pub fn all_up(&self) -> bool {
        self.own_svid && self.x509_bundles && self.jwt_bundles
    }
}

#[derive(Clone)]
struct CachedJwt {
    token: Arc<str>,
    exp: i64,
}

pub struct SpireAuthority {
    trust_domain: TrustDomain,
    config: SpireAuthorityConfig,
    admin: Channel,
    bundle_tx: watch::Sender<Arc<TrustBundle>>,
    bundle_parts: Mutex<bundles::Parts>,
    federated: Mutex<Arc<bundles::Federated>>,
    own: watch::Sender<Option<own::OwnSvid>>,
    /// Latest SVID per SPIFFE ID, from whichever subscription delivered it.
    svids: Mutex<HashMap<SpiffeId, Arc<X509Svid>>>,
    subscriptions: Mutex<HashMap<Vec<Selector>, Arc<Subscription>>>,
    jwt_cache: JwtCache<CachedJwt>,
    /// Bumped whenever an SVID arrives.
    changes: watch::Sender<u64>,
    links: watch::Sender<Links>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Itself, for the subscriptions it hands out (they hold it weakly).
    me: std::sync::Weak<SpireAuthority>,
}

impl std::fmt::Debug for SpireAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpireAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("config", &self.config)
            .field("links", &*self.links.borrow())
            .finish_non_exhaustive()
    }
}

impl SpireAuthority {
    /// Builds the authority; nothing connects until [`SpireAuthority::start`].
    ///
    /// # Errors
    /// An invalid socket address.
    pub fn new(
        trust_domain: TrustDomain,
        config: SpireAuthorityConfig,
    ) -> Result<Arc<Self>, String> {
        config.validate()?;
        let path = config.admin_path();
        let admin =
            Endpoint::try_from("http://spire-agent.invalid")
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
        let empty = TrustBundle::new(
            trust_domain.clone(),
            0,
            crate::authority::embedded::BUNDLE_REFRESH_HINT,
            Vec::new(),
            Vec::new(),
        );
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            trust_domain,
            config,
            admin,
            bundle_tx: watch::channel(Arc::new(empty)).0,
            bundle_parts: Mutex::new(bundles::Parts::default()),
            federated: Mutex::new(Arc::default()),
            own: watch::channel(None).0,
            svids: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            jwt_cache: JwtCache::default(),
            changes: watch::channel(0).0,
            links: watch::channel(Links::default()).0,
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// Starts the agent streams (own SVID, bundles) and the subscription janitor, then waits up
    /// to `startup_wait` for the first trust bundle. Returns whether it arrived; when not, the
    /// broker serves degraded and keeps reconnecting.
    pub async fn start(self: &Arc<Self>) -> bool {
        {
            let mut tasks = lock(&self.tasks);
            if !tasks.is_empty() {
                return !self.current_bundle().x509_authorities.is_empty();
            }
            tasks.push(tokio::spawn(own::follow(Arc::downgrade(self))));
            tasks.push(tokio::spawn(bundles::follow_x509(Arc::downgrade(self))));
            tasks.push(tokio::spawn(bundles::follow_jwt(Arc::downgrade(self))));
            tasks.push(tokio::spawn(janitor(Arc::downgrade(self))));
        }
        let mut rx = self.bundle_tx.subscribe();
        let ready = tokio::time::timeout(
            self.config.startup_wait,
            rx.wait_for(|b| !b.x509_authorities.is_empty()),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if ready {
            tracing::info!(
                own_spiffe_id = ?self.own_spiffe_id().map(|i| i.to_string()),
                "SPIRE agent connected: trust bundle received"
            );
        } else {
            tracing::warn!(
                admin_socket = %self.config.admin_socket,
                "no trust bundle from the SPIRE agent yet; serving degraded and reconnecting \
                 (is the agent up, and is svid-broker's SPIFFE ID in its authorized_delegates?)"
            );
        }
        ready
    }

    /// Itself as an `Arc`, while it lives.
    pub(crate) fn me(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// Stops every background stream.
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        lock(&self.subscriptions).clear();
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn config(&self) -> &SpireAuthorityConfig {
        &self.config
    }

    pub fn bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle_tx.subscribe()
    }

    pub fn current_bundle(&self) -> Arc<TrustBundle> {
        self.bundle_tx.borrow().clone()
    }

    /// Bundles of federated trust domains (not ours), as the agent sent them; the bundle
    /// sequence of [`SpireAuthority::bundle`] changes when they do.
    pub fn federated(&self) -> Arc<bundles::Federated> {
        lock(&self.federated).clone()
    }

    /// Fires whenever an SVID arrives from the agent.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The state of the agent streams; `changed()` fires on every transition.
    pub fn health(&self) -> watch::Receiver<Links> {
        self.links.subscribe()
    }

    /// The broker's own SPIFFE ID, as the agent's Workload API issued it.
    pub fn own_spiffe_id(&self) -> Option<SpiffeId> {
        self.own.borrow().as_ref().map(|o| o.spiffe_id.clone())
    }

    pub(crate) fn admin_client(&self) -> DelegatedIdentityClient<Channel> {
        DelegatedIdentityClient::new(self.admin.clone())
            .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES)
    }

    fn set_link(&self, f: impl FnOnce(&mut Links)) {
        self.links.send_if_modified(|l| {
            let before = *l;
            f(l);
            let changed = before != *l;
            if changed {
                if l.all_up() {
                    tracing::info!("SPIRE agent streams up: serving");
                } else if before.all_up() {
                    tracing::warn!(links = ?*l, "SPIRE agent stream down: serving cached SVIDs until they expire, reconnecting");
                }
            }
            changed
        });
    }

    /// The latest X.509-SVID the agent issued for `id`, while it is valid.
    ///
    /// # Errors
    /// None received, or it expired (the agent was unreachable for too long).
    pub fn x509_svid(&self, id: &SpiffeId) -> Result<Arc<X509Svid>, String> {
        let svid = lock(&self.svids)
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no X.509-SVID for {id} from the SPIRE agent"))?;
        if svid.not_after <= SystemTime::now() {
            return Err(format!(
                "the X.509-SVID for {id} expired and the SPIRE agent has not sent a new one"
            ));
        }
        Ok(svid)
    }

    /// The identities SPIRE gives a caller with `selectors`, and the subscription that keeps
    /// them current (hold it as long as the caller is served).
    ///
    /// # Errors
    /// `Unavailable` when the agent cannot answer and nothing valid is cached.
    pub async fn subscribe(
        self: &Arc<Self>,
        selectors: &BTreeSet<Selector>,
    ) -> Result<(Vec<Identity>, Arc<Subscription>), Status> {
        let key: Vec<Selector> = selectors.iter().cloned().collect();
        let sub = {
            let mut subs = lock(&self.subscriptions);
            match subs.get(&key) {
                Some(s) => s.clone(),
                None => {
                    if subs.len() >= MAX_SUBSCRIPTIONS {
                        subs.retain(|_, s| Arc::strong_count(s) > 1);
                        if subs.len() >= MAX_SUBSCRIPTIONS {
                            return Err(Status::resource_exhausted(
                                "too many distinct workloads subscribed to the SPIRE agent",
                            ));
                        }
                    }
                    let s = Subscription::start(Arc::downgrade(self), key.clone());
                    subs.insert(key, s.clone());
                    s
                }
            }
        };
        sub.touch();
        match sub.first_answer(FIRST_ANSWER_WAIT).await {
            subscription::Answer::Svids(list) => Ok((subscription::to_identities(&list)?, sub)),
            subscription::Answer::Failed(why) => Err(Status::unavailable(format!(
                "SPIRE agent unavailable: {why}"
            ))),
            subscription::Answer::Timeout => Err(Status::unavailable(
                "the SPIRE agent did not answer in time; retry",
            )),
        }
    }

    /// Stores SVIDs a subscription received and wakes every stream.
    fn publish(&self, svids: &[subscription::SpireSvid]) {
        {
            let mut map = lock(&self.svids);
            for s in svids {
                map.insert(s.svid.spiffe_id.clone(), s.svid.clone());
            }
        }
        self.changes.send_modify(|g| *g += 1);
    }

    /// A JWT-SVID from the agent for the caller with `selectors`, as `id`, for `audiences`.
    /// During an agent outage an unexpired token fetched earlier for the same ID and audiences is
    /// served, as the agent itself would from its cache.
    ///
    /// # Errors
    /// `PermissionDenied` "no identity issued" when SPIRE gives these selectors no such ID;
    /// `Unavailable` when the agent cannot be reached and nothing is cached.
    pub async fn jwt_svid(
        &self,
        selectors: &BTreeSet<Selector>,
        id: &SpiffeId,
        audiences: &[String],
    ) -> Result<Arc<str>, Status> {
        let key = jwt_cache::key(id, audiences);
        match self.fetch_jwt(selectors, id, audiences).await {
            Ok((token, exp)) => {
                let token: Arc<str> = token.into();
                let now = unix_seconds(SystemTime::now());
                self.jwt_cache.insert(
                    key,
                    CachedJwt {
                        token: token.clone(),
                        exp,
                    },
                    |c| c.exp > now,
                );
                Ok(token)
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                let now = unix_seconds(SystemTime::now());
                match self.jwt_cache.get(&key, |c| c.exp > now + 1) {
                    Some(c) => {
                        tracing::debug!(spiffe_id = %id, "SPIRE agent unreachable: serving a cached JWT-SVID");
                        Ok(c.token)
                    }
                    None => Err(status),
                }
            }
            Err(status) => Err(status),
        }
    }

    /// One FetchJWTSVIDs call; returns the token for `id` and its `exp`.
    ///
    /// # Errors
    /// As [`SpireAuthority::jwt_svid`], never served from a cache.
    pub async fn fetch_jwt(
        &self,
        selectors: &BTreeSet<Selector>,
        id: &SpiffeId,
        audiences: &[String],
    ) -> Result<(String, i64), Status> {
        let mut req = tonic::Request::new(di::FetchJwtsviDsRequest {
            audience: audiences.to_vec(),
            selectors: to_spire_selectors(selectors),
            pid: 0,
        });
        req.set_timeout(JWT_FETCH_TIMEOUT);
        let resp =
            tokio::time::timeout(JWT_FETCH_TIMEOUT, self.admin_client().fetch_jwtsvi_ds(req))
                .await
                .map_err(|_| Status::unavailable("the SPIRE agent did not answer in time; retry"))?
                .map_err(|s| upstream_status(&s))?
                .into_inner();
        let wanted = id.to_string();
        resp.svids
            .into_iter()
            .find(|s| s.id.as_ref().is_some_and(|i| spiffe_id_string(i) == wanted))
            .map(|s| (s.token, s.expires_at))
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "{NO_IDENTITY}: SPIRE does not issue {wanted} to this workload"
                ))
            })
    }
}

/// Drops subscriptions no caller held for [`IDLE_SUBSCRIPTION`], and SVIDs that expired.
async fn janitor(me: std::sync::Weak<SpireAuthority>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let Some(me) = me.upgrade() else { return };
        lock(&me.subscriptions)
            .retain(|_, s| Arc::strong_count(s) > 1 || s.idle_for() < IDLE_SUBSCRIPTION);
        let now = SystemTime::now();
        lock(&me.svids).retain(|_, s| s.not_after > now);
        let now_s = unix_seconds(now);
        me.jwt_cache.retain(|c| c.exp > now_s);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_must_be_unix_and_absolute() {
        let ok = SpireAuthorityConfig {
            workload_socket: "unix:///run/spire/api.sock".into(),
            admin_socket: "unix:///run/spire/admin.sock".into(),
            startup_wait: settings::default_startup_wait(),
        };
        assert!(ok.validate().is_ok());
        let bad = SpireAuthorityConfig {
            admin_socket: "tcp://127.0.0.1:1".into(),
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().contains("admin_socket"));
        let rel = SpireAuthorityConfig {
            workload_socket: "unix://relative.sock".into(),
            ..ok
        };
        assert!(rel.validate().is_err());
    }

    #[tokio::test]
    async fn an_absent_agent_means_unavailable_and_degraded_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpireAuthorityConfig {
            workload_socket: format!("unix://{}/none.sock", dir.path().display()),
            admin_socket: format!("unix://{}/none-admin.sock", dir.path().display()),
            startup_wait: Duration::from_millis(300),
        };
        let td = TrustDomain::new("example.org").unwrap();
        let spire = SpireAuthority::new(td, cfg).unwrap();
        assert!(!spire.start().await, "no agent, yet ready");
        assert!(!spire.health().borrow().all_up());
        let selectors: BTreeSet<Selector> = ["unix:uid:1000".parse().unwrap()].into();
        let started = std::time::Instant::now();
        let err = spire.subscribe(&selectors).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(
            started.elapsed() < FIRST_ANSWER_WAIT,
            "waited for a dead agent"
        );
        let id = SpiffeId::new("spiffe://example.org/w").unwrap();
        let err = spire
            .jwt_svid(&selectors, &id, &["aud".into()])
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(spire.x509_svid(&id).is_err());
        spire.stop();
    }

    #[test]
    fn agent_errors_map_to_workload_api_codes() {
        let none = upstream_status(&Status::permission_denied("no identity issued"));
        assert_eq!(none.code(), tonic::Code::PermissionDenied);
        assert_eq!(none.message(), NO_IDENTITY);
        let refused = upstream_status(&Status::permission_denied("caller not authorized"));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(refused.message().contains("authorized_delegates"));
        let down = upstream_status(&Status::unavailable("connection refused"));
        assert_eq!(down.code(), tonic::Code::Unavailable);
    }
}
