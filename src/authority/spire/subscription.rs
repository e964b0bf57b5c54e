//! One `SubscribeToX509SVIDs` stream per distinct selector set, reconnected with backoff for
//! as long as the subscription lives; the last SVIDs received stay available meanwhile.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::Status;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::{lock, spiffe_id_string, to_spire_selectors, SpireAuthority};
use crate::attest::Selector;
use crate::proto::spire::api::agent::delegatedidentity::v1 as di;
use crate::registry::Identity;
use crate::svid::keys::SecretKey;
use crate::svid::x509::X509Svid;

/// An SVID as the agent sent it, with its hint.
#[derive(Debug, Clone)]
pub struct SpireSvid {
    pub svid: Arc<X509Svid>,
    pub hint: String,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// The last list received (`None`: nothing yet).
    svids: Option<Arc<Vec<SpireSvid>>>,
    /// Trust domain IDs the SVIDs federate with (their bundles go in X509SVIDResponse).
    federates_with: Arc<Vec<String>>,
    /// Why the stream is down, while it is.
    error: Option<String>,
}

/// What a first request learns.
pub enum Answer {
    Svids(Arc<Vec<SpireSvid>>),
    Failed(String),
    Timeout,
}

pub struct Subscription {
    selectors: Vec<Selector>,
    state: watch::Receiver<State>,
    last_used: Mutex<Instant>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("selectors", &self.selectors.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    pub(super) fn start(authority: Weak<SpireAuthority>, selectors: Vec<Selector>) -> Arc<Self> {
        let (tx, rx) = watch::channel(State::default());
        let task = tokio::spawn(follow(authority, selectors.clone(), tx));
        Arc::new(Self {
            selectors,
            state: rx,
            last_used: Mutex::new(Instant::now()),
            task,
        })
    }

    pub(super) fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    pub(super) fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }

    /// The identities the agent gives these selectors now (its last answer), skipping expired
    /// SVIDs.
    ///
    /// # Errors
    /// `Unavailable` when nothing was received yet, or everything received expired.
    pub fn identities(&self) -> Result<Vec<Identity>, Status> {
        let list = self
            .state
            .borrow()
            .svids
            .clone()
            .ok_or_else(|| Status::unavailable("no answer from the SPIRE agent yet; retry"))?;
        to_identities(&list)
    }

    /// Trust domain IDs the caller's SVIDs federate with, per the agent's last answer.
    pub fn federates_with(&self) -> Arc<Vec<String>> {
        self.state.borrow().federates_with.clone()
    }

    /// The SVIDs received (possibly from before an outage), else the first error, waiting up to
    /// `wait` for either.
    pub(super) async fn first_answer(&self, wait: Duration) -> Answer {
        let mut rx = self.state.clone();
        let got = tokio::time::timeout(
            wait,
            rx.wait_for(|s| s.svids.is_some() || s.error.is_some()),
        )
        .await;
        match got {
            Ok(Ok(s)) => match (&s.svids, &s.error) {
                (Some(list), _) => Answer::Svids(list.clone()),
                (None, Some(e)) => Answer::Failed(e.clone()),
                (None, None) => Answer::Timeout,
            },
            _ => Answer::Timeout,
        }
    }
}

async fn follow(
    authority: Weak<SpireAuthority>,
    selectors: Vec<Selector>,
    tx: watch::Sender<State>,
) {
    let mut backoff = Backoff::default();
    let request = di::SubscribeToX509sviDsRequest {
        selectors: to_spire_selectors(&selectors.iter().cloned().collect()),
        pid: 0,
    };
    loop {
        let Some(me) = authority.upgrade() else {
            return;
        };
        let mut client = me.admin_client();
        drop(me);
        let why = match client.subscribe_to_x509svi_ds(request.clone()).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff.reset();
                            let federates_with = Arc::new(msg.federates_with.clone());
                            let list = Arc::new(convert(msg));
                            // State first: a stream woken by `publish` must see it.
                            tx.send_replace(State {
                                svids: Some(list.clone()),
                                federates_with,
                                error: None,
                            });
                            if let Some(me) = authority.upgrade() {
                                me.publish(&list);
                            }
                        }
                        Ok(None) => break "the SPIRE agent closed the stream".to_string(),
                        Err(s) => break super::stream_error(&s),
                    }
                }
            }
            Err(s) => super::stream_error(&s),
        };
        tracing::debug!(error = %why, "SPIRE X.509-SVID subscription down; reconnecting");
        tx.send_modify(|s| s.error = Some(why));
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn convert(msg: di::SubscribeToX509sviDsResponse) -> Vec<SpireSvid> {
    msg.x509_svids
        .into_iter()
        .filter_map(|s| {
            let svid = s.x509_svid?;
            let id = svid.id.as_ref().map(spiffe_id_string)?;
            let spiffe_id = match crate::spiffe_id::parse(&id) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(spiffe_id = %id, error = %e, "SPIRE sent an invalid SPIFFE ID; skipped");
                    return None;
                }
            };
            if svid.cert_chain.is_empty() || s.x509_svid_key.is_empty() {
                return None;
            }
            let serial = serial_of(&svid.cert_chain[0])
                .unwrap_or_else(|| format!("exp-{}", svid.expires_at));
            Some(SpireSvid {
                svid: Arc::new(X509Svid {
                    spiffe_id,
                    chain: svid.cert_chain,
                    key: SecretKey::new(s.x509_svid_key),
                    not_after: UNIX_EPOCH + Duration::from_secs(svid.expires_at.max(0) as u64),
                    serial,
                }),
                hint: svid.hint,
            })
        })
        .collect()
}

/// Identities from the SVIDs the agent sent, in its order (the first is the default).
///
/// # Errors
/// `Unavailable` when there were SVIDs but all expired (the agent is unreachable).
pub(super) fn to_identities(list: &[SpireSvid]) -> Result<Vec<Identity>, Status> {
    let now = SystemTime::now();
    let identities: Vec<Identity> = list
        .iter()
        .filter(|s| s.svid.not_after > now)
        .map(|s| Identity {
            spiffe_id: s.svid.spiffe_id.clone(),
            x509_ttl: s
                .svid
                .not_after
                .duration_since(now)
                .unwrap_or(Duration::ZERO),
            jwt_ttl: crate::registry::DEFAULT_JWT_TTL,
            hint: s.hint.clone(),
        })
        .collect();
    if identities.is_empty() && !list.is_empty() {
        return Err(Status::unavailable(
            "the SVIDs from the SPIRE agent expired and it is unreachable; retry",
        ));
    }
    Ok(identities)
}

fn serial_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}
