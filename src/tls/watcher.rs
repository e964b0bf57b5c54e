//! Follows `FetchX509SVID` on our socket and publishes each new default SVID once it has been
//! checked; a bad update is logged and the last good SVID stays. A broken stream is reopened
//! with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Streaming;

use super::{SvidError, X509Context, X509Source};
use crate::client::{connect, workload_client};
use crate::proto::workload as pb;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0:#}")]
    Connect(anyhow::Error),
    #[error("FetchX509SVID refused ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the FetchX509SVID stream ended before an SVID arrived")]
    Ended,
    #[error("the X.509-SVID from the Workload API is not usable: {0}")]
    Invalid(#[from] SvidError),
}

impl From<tonic::Status> for WatchError {
    fn from(s: tonic::Status) -> Self {
        Self::Refused {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// The latest checked X.509-SVID and bundles from a Workload API socket. Dropping the watcher
/// stops following the stream; sources handed out keep the last context.
#[derive(Debug)]
pub struct SvidWatcher {
    source: X509Source,
    task: JoinHandle<()>,
}

impl SvidWatcher {
    /// Connects, waits for the first SVID and checks it, then follows rotations in the
    /// background.
    ///
    /// # Errors
    /// The socket is unreachable, the daemon refuses (e.g. `PermissionDenied`, no identity
    /// issued), or the first SVID fails its checks.
    pub async fn start(socket: PathBuf) -> Result<Self, WatchError> {
        let mut stream = open(socket.clone()).await?;
        let first = stream.message().await?.ok_or(WatchError::Ended)?;
        let context = X509Context::from_response(&first)?;
        tracing::info!(spiffe_id = %context.spiffe_id(), serial = context.serial(), "X.509-SVID received");
        let (tx, rx) = watch::channel(Arc::new(context));
        let task = tokio::spawn(follow(socket, stream, tx));
        Ok(Self {
            source: X509Source::new(rx),
            task,
        })
    }

    /// A handle on the latest context, for resolvers and verifiers.
    pub fn source(&self) -> X509Source {
        self.source.clone()
    }

    /// The latest context.
    pub fn current(&self) -> Arc<X509Context> {
        self.source.current()
    }
}

impl Drop for SvidWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn open(socket: PathBuf) -> Result<Streaming<pb::X509svidResponse>, WatchError> {
    let channel = connect(socket).await.map_err(WatchError::Connect)?;
    let stream = workload_client(channel)
        .fetch_x509svid(pb::X509svidRequest {})
        .await?
        .into_inner();
    Ok(stream)
}

async fn follow(
    socket: PathBuf,
    mut stream: Streaming<pb::X509svidResponse>,
    tx: watch::Sender<Arc<X509Context>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    backoff = BACKOFF_MIN;
                    publish(&tx, &resp);
                }
                Ok(None) => {
                    tracing::warn!("FetchX509SVID stream ended; reconnecting");
                    break;
                }
                Err(status) => {
                    tracing::warn!(error = %WatchError::from(status), "FetchX509SVID stream failed; reconnecting");
                    break;
                }
            }
        }
        stream = loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match open(socket.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reopen FetchX509SVID")
                }
            }
        };
    }
}

/// Swaps in a checked context; keeps the old one when the update fails its checks.
pub(super) fn publish(tx: &watch::Sender<Arc<X509Context>>, resp: &pb::X509svidResponse) {
    match X509Context::from_response(resp) {
        Ok(context) => {
            if context.serial() != tx.borrow().serial() {
                tracing::info!(spiffe_id = %context.spiffe_id(), serial = context.serial(), "X.509-SVID rotated");
            }
            tx.send_replace(Arc::new(context));
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an X.509-SVID update that fails its checks; keeping the last good one")
        }
    }
}
