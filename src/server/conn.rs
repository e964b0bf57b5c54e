//! A Unix connection that carries its pinned caller into every request's extensions.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

use super::caller::CallerHandle;

pub struct PeerConn {
    stream: UnixStream,
    caller: Arc<CallerHandle>,
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
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
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
