//! The pod list shared by concurrent attestations: at most one kubelet request in flight, its
//! answer (or its error) handed to everyone waiting, and kept for `cache_ttl`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{FutureExt, Shared};
use tokio::time::Instant;

use super::kubelet::{KubeletClient, KubeletError};
use super::selectors::PodList;
use crate::attest::BoxFuture;

/// One pod list as fetched. `generation` grows with every request started.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub fetched_at: Instant,
    pub pods: PodList,
}

pub type FetchResult = Result<Arc<Snapshot>, Arc<KubeletError>>;
type Inflight = Shared<BoxFuture<'static, FetchResult>>;

#[derive(Default)]
struct State {
    latest: Option<Arc<Snapshot>>,
    inflight: Option<Inflight>,
    next_generation: u64,
    requests: u64,
}

pub struct PodCache {
    client: Arc<KubeletClient>,
    ttl: Duration,
    state: Arc<Mutex<State>>,
}

impl PodCache {
    pub fn new(client: KubeletClient, ttl: Duration) -> Self {
        Self {
            client: Arc::new(client),
            ttl,
            state: Arc::default(),
        }
    }

    pub fn client(&self) -> &KubeletClient {
        &self.client
    }

    /// Requests sent to the kubelet so far (for tests and metrics).
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }

    /// A pod list younger than `cache_ttl` and, when `newer_than` is given, fetched by a
    /// request started after that generation's (a container was missing from it). Joins the
    /// request in flight if there is one; otherwise starts one. A request runs to its end even
    /// if every caller gives up, so the next caller finds its answer.
    ///
    /// # Errors
    /// The kubelet request's error, shared by everyone who waited for it.
    pub async fn get(&self, newer_than: Option<u64>) -> FetchResult {
        let inflight = {
            let mut st = lock(&self.state);
            if let Some(snap) = &st.latest {
                let fresh = snap.fetched_at.elapsed() < self.ttl;
                let newer = newer_than.is_none_or(|g| snap.generation > g);
                if fresh && newer {
                    return Ok(snap.clone());
                }
            }
            match &st.inflight {
                Some(f) => f.clone(),
                None => {
                    let f = self.start(&mut st);
                    st.inflight = Some(f.clone());
                    f
                }
            }
        };
        inflight.await
    }

    fn start(&self, st: &mut State) -> Inflight {
        let generation = st.next_generation;
        st.next_generation += 1;
        st.requests += 1;
        let client = self.client.clone();
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let result: FetchResult = match client.pods().await {
                Ok(pods) => Ok(Arc::new(Snapshot {
                    generation,
                    fetched_at: Instant::now(),
                    pods,
                })),
                Err(e) => Err(Arc::new(e)),
            };
            let mut st = lock(&state);
            if let Ok(snap) = &result {
                st.latest = Some(snap.clone());
            }
            st.inflight = None;
            result
        });
        let joined: BoxFuture<'static, FetchResult> = Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::new(KubeletError::Internal(e.to_string()))))
        });
        joined.shared()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
