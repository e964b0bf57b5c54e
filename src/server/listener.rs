//! The accept loop of a Unix socket: admission by uid ([`super::gate`]) before a single byte
//! is read, and a pause instead of a spin when the process runs out of descriptors.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::conn::{ConnTimeouts, PeerConn};
use super::gate::Gate;
use super::limits::{ACCEPT_BACKOFF, REFUSAL_LOG_INTERVAL};

/// Accepted connections waiting for the server to pick them up.
const HANDOFF_QUEUE: usize = 64;

/// Connections the kernel queues before we accept them (capped by `net.core.somaxconn`).
/// A connect-and-close flood fills a short backlog faster than any accept loop drains it,
/// and other callers' connects then fail with `EAGAIN`.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Connections from `listener`, admitted by `gate`, as the stream tonic serves. Accepting
/// stops when the stream is dropped (the server stopped accepting at shutdown).
pub fn incoming(
    listener: UnixListener,
    gate: Arc<Gate>,
    timeouts: ConnTimeouts,
) -> ReceiverStream<io::Result<PeerConn>> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a socket that is already listening only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        tracing::warn!(
            error = %io::Error::last_os_error(),
            "cannot raise the listen backlog"
        );
    }
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    tokio::spawn(accept_loop(listener, gate, timeouts, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: UnixListener,
    gate: Arc<Gate>,
    timeouts: ConnTimeouts,
    tx: mpsc::Sender<io::Result<PeerConn>>,
) {
    let mut last_backoff_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or socket memory: the pending connection stays in the
                // backlog, so accepting again at once fails again at once. Pause, and let
                // connections close.
                let now = Instant::now();
                if last_backoff_log.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
                    last_backoff_log = Some(now);
                    tracing::warn!(
                        error = %e,
                        open = gate.open_connections(),
                        backoff = ?ACCEPT_BACKOFF,
                        "cannot accept connections; pausing (raise the fd limit or lower limits.max_connections)"
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(cred) => cred.uid(),
            Err(e) => {
                tracing::debug!(error = %e, "no peer credentials; closing");
                continue;
            }
        };
        // Over a cap, the connection is closed at once: no pidfd, no task, no buffer.
        let Ok(slot) = gate.admit(uid) else {
            continue;
        };
        if tx
            .send(Ok(PeerConn::accept(stream, slot, timeouts)))
            .await
            .is_err()
        {
            return;
        }
    }
}
