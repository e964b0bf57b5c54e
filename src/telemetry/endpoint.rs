//! The `/metrics` endpoint: HTTP/1.1 from hyper, one request per connection. Local users can
//! reach it, so it is bounded: a few connections at once, a small request head, and a
//! deadline for the whole exchange.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::metrics::{Metrics, CONTENT_TYPE};

/// Largest HTTP request head (request line and headers) the metrics endpoint reads.
pub const MAX_METRICS_REQUEST_BYTES: usize = 8 * 1024;
/// Most request headers the metrics endpoint reads.
pub const MAX_METRICS_REQUEST_HEADERS: usize = 32;
/// Most metrics scrapes served at once; further connections wait in the backlog.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// A scrape's request head must arrive, and its answer be written, within this.
pub const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of descriptors, say) before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `GET /metrics` until the listener is dropped (the task is aborted).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(METRICS_CONNECTION_TIMEOUT)
        .max_header_size(MAX_METRICS_REQUEST_BYTES)
        .max_headers(MAX_METRICS_REQUEST_HEADERS)
        .keep_alive(false);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors: accepting again at once would spin.
                tracing::debug!(error = %e, "metrics listener cannot accept; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req| {
            let answer = answer(&req, &metrics);
            async move { Ok::<_, Infallible>(answer) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!("metrics connection timed out"),
            }
        });
    }
}

fn answer<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if req.method() == Method::GET && req.uri().path() == "/metrics" {
            (StatusCode::OK, CONTENT_TYPE, metrics.render())
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "only GET /metrics is served\n".to_string(),
            )
        };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn start() -> (
        std::net::SocketAddr,
        Arc<Metrics>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(serve_metrics(listener, metrics.clone()));
        (addr, metrics, task)
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let (addr, metrics, task) = start().await;
        metrics.jwt_issued();
        // HTTP/1.0 without keep-alive, as a plain scraper (and the benchmark) sends it.
        let ok = exchange(addr, b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP "), "{ok}");
        assert!(
            ok.contains("svid_broker_jwt_svids_issued_total 1\n"),
            "{ok}"
        );
        let other = exchange(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        let post = exchange(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: t\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 404"), "{post}");
        task.abort();
    }

    #[tokio::test]
    async fn refuses_a_request_head_over_the_limit() {
        let (addr, _, task) = start().await;
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nx-pad: {}\r\n\r\n",
            "a".repeat(MAX_METRICS_REQUEST_BYTES)
        );
        let answer = exchange(addr, big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let many: String = (0..=MAX_METRICS_REQUEST_HEADERS)
            .map(|i| format!("x-h{i}: 1\r\n"))
            .collect();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: t\r\n{many}\r\n");
        let answer = exchange(addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn closes_a_connection_that_sends_no_request() {
        let (addr, _, task) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        let mut out = Vec::new();
        // The paused clock jumps to the deadline once everything is idle.
        let read = tokio::time::timeout(2 * METRICS_CONNECTION_TIMEOUT, s.read_to_end(&mut out));
        assert!(
            read.await.is_ok(),
            "the endpoint kept a silent connection open"
        );
        task.abort();
    }
}
