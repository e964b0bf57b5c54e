//! A Unix connection that carries its pinned caller into every request's extensions, and
//! hands `h2` the request stream with `:authority` normalized ([`super::authority`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::authority::AuthorityRewriter;
use super::caller::CallerHandle;

pub struct PeerConn {
    stream: UnixStream,
    caller: Arc<CallerHandle>,
    rewriter: AuthorityRewriter,
    /// Rewritten bytes not yet read by the server, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    eof: bool,
}

impl PeerConn {
    /// Pins the peer at accept time, before it can exit and hand its PID to someone else.
    pub fn accept(stream: UnixStream) -> Self {
        use std::os::fd::AsRawFd;
        let pinned = crate::attest::peer::PinnedProcess::from_socket(stream.as_raw_fd());
        if let Err(e) = &pinned {
            tracing::warn!(error = %e, "cannot pin caller at accept; its calls will be refused");
        }
        Self {
            stream,
            caller: Arc::new(CallerHandle::new(pinned)),
            rewriter: AuthorityRewriter::new(),
            pending: Vec::new(),
            pending_at: 0,
            eof: false,
        }
    }
}

impl Connected for PeerConn {
    type ConnectInfo = Arc<CallerHandle>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.caller.clone()
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
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.rewriter.flush(&mut this.pending);
                this.eof = true;
            } else {
                this.rewriter.feed(read.filled(), &mut this.pending);
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
