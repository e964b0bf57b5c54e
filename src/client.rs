//! A client of our own socket, for the CLI: finds the socket the SPIFFE way and adds the
//! security header to every call.

use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::DEFAULT_SOCKET_PATH;
use crate::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use crate::server::header::SECURITY_HEADER;

/// The socket path: `--socket`, else `SPIFFE_ENDPOINT_SOCKET` (`unix:///path`), else the
/// default.
///
/// # Errors
/// An address that is not a Unix socket.
pub fn socket_path(flag: Option<&str>, env: Option<&str>) -> anyhow::Result<PathBuf> {
    let raw = match (flag, env) {
        (Some(f), _) => f,
        (None, Some(e)) if !e.is_empty() => e,
        _ => DEFAULT_SOCKET_PATH,
    };
    if let Some(rest) = raw.strip_prefix("unix://") {
        return Ok(PathBuf::from(rest));
    }
    if raw.starts_with("tcp://") || raw.contains("://") {
        anyhow::bail!(
            "unsupported endpoint {raw:?}: svid-broker serves a Unix socket (unix:///path)"
        );
    }
    Ok(PathBuf::from(raw))
}

/// Connects to the broker's socket.
///
/// # Errors
/// The socket is missing or nobody listens: the message says to start the daemon.
pub async fn connect(path: PathBuf) -> anyhow::Result<Channel> {
    // Connect once up front so "not running" is a clear error, not a transport error later.
    connect_unix(&path).await.with_context(|| {
        format!(
            "cannot connect to svid-broker at {} (is `svid-broker run` running? set --socket or SPIFFE_ENDPOINT_SOCKET)",
            path.display()
        )
    })?;
    let channel = Endpoint::try_from("http://svid-broker.invalid")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(connect_unix(&path).await?)) }
        }))
        .await?;
    Ok(channel)
}

/// How long to keep retrying a connect that finds the server's backlog full.
const BACKLOG_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects to a Unix socket, retrying while the server's listen backlog is full (`EAGAIN`):
/// a transient condition — under a connection flood from another local user, say — that a
/// gRPC client would treat as Unavailable and retry.
async fn connect_unix(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let deadline = tokio::time::Instant::now() + BACKLOG_RETRY_FOR;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match UnixStream::connect(path).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

pub type HeaderChannel = InterceptedService<
    Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// Adds `workload.spiffe.io: true`.
///
/// # Errors
/// Never.
pub fn add_security_header(
    mut req: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(req)
}

pub fn with_header(channel: Channel) -> HeaderChannel {
    InterceptedService::new(channel, add_security_header as fn(_) -> _)
}

/// A Workload API client with the header set.
pub fn workload_client(channel: Channel) -> SpiffeWorkloadApiClient<HeaderChannel> {
    SpiffeWorkloadApiClient::new(with_header(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_resolution_order() {
        assert_eq!(
            socket_path(Some("/a"), Some("unix:///b")).unwrap(),
            PathBuf::from("/a")
        );
        assert_eq!(
            socket_path(None, Some("unix:///b")).unwrap(),
            PathBuf::from("/b")
        );
        assert_eq!(
            socket_path(None, None).unwrap(),
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
        assert!(socket_path(None, Some("tcp://127.0.0.1:1")).is_err());
    }
}
