//! A Unix connection that carries its pinned caller into every request's extensions, hands
//! `h2` the request stream with `:authority` normalized ([`super::authority`]), and closes
//! itself when the client does not finish the HTTP/2 handshake in time or sits idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::authority::AuthorityRewriter;
use super::caller::CallerHandle;
use super::gate::{ConnSlot, Gate};

/// Bytes read from the socket at a time; with the rewriter's bound, what one connection
/// buffers before `h2` takes it.
const READ_CHUNK: usize = 8192;

#[derive(Clone, Copy, Debug)]
pub struct ConnTimeouts {
    /// From accept to the end of the client's HTTP/2 preface.
    pub handshake: Duration,
    /// No open call and nothing received for this long: the connection is closed.
    pub idle: Duration,
}

/// What every request on a connection carries in its extensions (tonic's connect info).
#[derive(Clone)]
pub struct ConnInfo {
    pub caller: Arc<CallerHandle>,
    pub activity: Arc<Activity>,
}

/// Calls in progress on one connection, for the idle timeout, and the connection's uid for
/// request-body reservations.
pub struct Activity {
    uid: u32,
    gate: Arc<Gate>,
    open_calls: AtomicUsize,
    /// When the last call ended, as milliseconds since `epoch`.
    last_call_end_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Counts a call as open until the guard drops.
    pub fn start_call(self: &Arc<Self>) -> CallGuard {
        self.open_calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    fn last_call_end(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_call_end_ms.load(Ordering::Acquire))
    }
}

/// An open call; dropping it (the response ended or was abandoned) closes it.
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.epoch.elapsed().as_millis() as u64;
        a.last_call_end_ms.store(ms, Ordering::Release);
        a.open_calls.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct PeerConn {
    stream: UnixStream,
    info: ConnInfo,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes not yet read by the server, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    eof: bool,
    timeouts: ConnTimeouts,
    /// The handshake deadline, then the next idle check.
    timer: Pin<Box<Sleep>>,
    last_read: Instant,
    handshaken: bool,
    /// Frees the connection's place in the gate when the connection ends.
    _slot: ConnSlot,
}

impl PeerConn {
    /// Pins the peer at accept time, before it can exit and hand its PID to someone else.
    pub fn accept(stream: UnixStream, slot: ConnSlot, timeouts: ConnTimeouts) -> Self {
        use std::os::fd::AsRawFd;
        let pinned = crate::attest::peer::PinnedProcess::from_socket(stream.as_raw_fd());
        if let Err(e) = &pinned {
            tracing::warn!(error = %e, "cannot pin caller at accept; its calls will be refused");
        }
        let now = Instant::now();
        let activity = Arc::new(Activity {
            uid: slot.uid(),
            gate: slot.gate().clone(),
            open_calls: AtomicUsize::new(0),
            last_call_end_ms: AtomicU64::new(0),
            epoch: now,
        });
        Self {
            stream,
            info: ConnInfo {
                caller: Arc::new(CallerHandle::new(pinned)),
                activity,
            },
            rewriter: AuthorityRewriter::new(),
            pending: Vec::new(),
            pending_at: 0,
            eof: false,
            timeouts,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.handshake)),
            last_read: now,
            handshaken: false,
            _slot: slot,
        }
    }

    /// The timer fired: `Some(result)` ends the connection, `None` re-armed it.
    fn on_timer(&mut self) -> Option<std::io::Result<()>> {
        if !self.handshaken {
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "HTTP/2 handshake not completed in time",
            )));
        }
        let activity = &self.info.activity;
        let quiet_since = self.last_read.max(activity.last_call_end());
        let idle_until = quiet_since + self.timeouts.idle;
        let now = Instant::now();
        if activity.open_calls.load(Ordering::Acquire) == 0 && now >= idle_until {
            tracing::debug!(uid = activity.uid, "closing idle connection");
            self.eof = true;
            return Some(Ok(()));
        }
        let next = if now >= idle_until {
            now + self.timeouts.idle
        } else {
            idle_until
        };
        self.timer.as_mut().reset(next);
        None
    }
}

impl Connected for PeerConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pending_at < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.pending_at);
                buf.put_slice(&this.pending[this.pending_at..this.pending_at + n]);
                this.pending_at += n;
                if this.pending_at == this.pending.len() {
                    this.pending.clear();
                    this.pending_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Left uninitialised: the socket read fills what it reports, and zeroing 8 KiB
            // before every read (most of which find nothing, or a few hundred bytes) was a
            // visible share of a small call's CPU.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut this.stream).poll_read(cx, &mut read) {
                Poll::Ready(r) => r?,
                Poll::Pending => match this.timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => match this.on_timer() {
                        Some(end) => return Poll::Ready(end),
                        None => continue,
                    },
                },
            }
            this.last_read = Instant::now();
            if read.filled().is_empty() {
                this.rewriter.flush(&mut this.pending);
                this.eof = true;
            } else {
                this.rewriter.feed(read.filled(), &mut this.pending);
            }
            // After feeding: the read that completes the preface completes the handshake,
            // even if the client then says nothing more.
            if !this.handshaken && this.rewriter.past_preface() {
                this.handshaken = true;
                let next = this.last_read + this.timeouts.idle;
                this.timer.as_mut().reset(next);
            }
        }
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
