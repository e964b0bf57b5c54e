//! The HTTP/1.1 listener: TCP (TLS, or plain on loopback) or a Unix socket, every input an
//! unauthenticated client controls bounded — connections, header bytes, body bytes, the time
//! to send a request and to finish a TLS handshake — and the routes.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};
use zeroize::Zeroizing;

use super::errors::OAuthError;
use super::form::Form;
use super::record::Record;
use super::{grants, introspect, jwks, metadata, State};

/// Largest request body read (a token request with a 16 KiB subject token fits).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest request head (request line and headers) held; hyper answers 431 past it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header lines in one request.
pub const MAX_HEADERS: usize = 64;
/// Longest a connection is kept, however busy: clients reconnect, nothing is pinned forever.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// A bound socket, not yet served.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, SocketFile),
}

/// Removes the Unix socket when the listener goes away.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
}

/// Accepts and serves until `drain` turns true (or its sender goes away): then stops
/// accepting (the socket is closed, a Unix socket file removed), lets every connection finish
/// the request it is on — each is told to close after it, idle keep-alive connections close at
/// once — and returns when the last one has ended. The caller bounds that wait (the daemon's
/// `shutdown_grace`) and drops this future past it, which ends the connections still open.
pub async fn serve(
    bound: Bound,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    bounds: Bounds,
    mut drain: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Dropping the set (the caller gave up waiting) aborts every connection in it.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            biased;
            _ = drained(&mut drain) => break,
            s = accept(&bound) => s,
        };
        let Some(stream) = stream else { continue };
        // Over the cap the connection is closed at once: a flood costs us one accept each.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("oauth listener at max_connections; closing a new connection");
            drop(stream);
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        let drain = drain.clone();
        connections.spawn(async move {
            let _permit = permit;
            let served = async {
                match acceptor {
                    Some(a) => {
                        match tokio::time::timeout(bounds.handshake_timeout, a.accept(stream)).await
                        {
                            Ok(Ok(tls)) => connection(tls, state, bounds, drain).await,
                            Ok(Err(e)) => tracing::debug!(error = %e, "oauth TLS handshake failed"),
                            Err(_) => tracing::debug!("oauth TLS handshake timed out"),
                        }
                    }
                    None => connection(stream, state, bounds, drain).await,
                }
            };
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFETIME, served).await;
        });
    }
    drop(bound);
    tracing::info!(
        connections = connections.len(),
        "oauth listener closed; letting open requests finish"
    );
    while connections.join_next().await.is_some() {}
    tracing::info!("oauth listener drained");
}

/// Returns once `drain` is true or its sender is gone.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// The next connection, or `None` after an accept error (and a pause).
async fn accept(bound: &Bound) -> Option<Box<dyn Io>> {
    let accepted: std::io::Result<Box<dyn Io>> = match bound {
        Bound::Tcp(l) => l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            Box::new(s) as Box<dyn Io>
        }),
        Bound::Unix(l, _) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
    };
    match accepted {
        Ok(s) => Some(s),
        Err(e) => {
            accept_error(e).await;
            None
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn accept_error(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!(error = %e, "oauth listener accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    state: Arc<State>,
    bounds: Bounds,
    mut drain: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, req, bounds.request_timeout).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.request_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        _ = drained(&mut drain) => {
            // Finish the request in progress (its answer says Connection: close), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "oauth connection ended");
    }
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: Vec<u8>, no_store: bool) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if no_store {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    }
    r
}

fn error(e: &OAuthError) -> Resp {
    let mut r = json(e.status, e.body(), true);
    if e.basic_challenge {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(super::errors::BASIC_CHALLENGE),
        );
    }
    r
}

/// Dispatches one request.
async fn route(st: &State, req: Request<Incoming>, timeout: Duration) -> Resp {
    let prefix = st.prefix.as_str();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let rest = path.strip_prefix(prefix).unwrap_or("");
    let is_metadata = [
        format!("/.well-known/oauth-authorization-server{prefix}"),
        format!("/.well-known/openid-configuration{prefix}"),
        format!("{prefix}/.well-known/oauth-authorization-server"),
        format!("{prefix}/.well-known/openid-configuration"),
    ]
    .contains(&path);
    if is_metadata || rest == "/jwks.json" {
        if method != Method::GET && method != Method::HEAD {
            return error(&OAuthError::method(format!("{path} answers GET")));
        }
        return if is_metadata {
            metadata_response(st)
        } else {
            jwks_response(st, &req)
        };
    }
    if rest == "/authorize" {
        return error(&OAuthError::unsupported_response_type(
            "no authorization code flow: tokens go only to attested workloads, by client_credentials or token exchange at the token endpoint with the workload's JWT-SVID",
        ));
    }
    let endpoint: &'static str = match rest {
        "/token" => "token",
        "/introspect" => "introspect",
        "/revoke" => "revoke",
        _ => return error(&OAuthError::not_found(format!("no endpoint at {path}"))),
    };
    if method != Method::POST {
        return error(&OAuthError::method(format!("{path} answers POST")));
    }
    // Client credentials (HTTP Basic), wiped when the request is done.
    let authorization = match req.headers().get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(Zeroizing::new(v.to_string())),
        Some(Err(_)) => {
            let e = OAuthError::invalid_client("the Authorization header is not visible ASCII")
                .with_basic_challenge();
            audit(st, &Record::new(endpoint), Err(&e)).await;
            return error(&e);
        }
    };
    let authorization = authorization.as_deref().map(String::as_str);
    let form = match read_form(req, timeout).await {
        Ok(f) => f,
        Err(e) => {
            let rec = Record::new(endpoint);
            audit(st, &rec, Err(&e)).await;
            return error(&e);
        }
    };
    let mut rec = Record::new(endpoint);
    let outcome = match endpoint {
        "token" => grants::token(st, &form, authorization, &mut rec).await,
        "introspect" => introspect::introspect(st, &form, authorization, &mut rec).await,
        _ => introspect::revoke(st, &form, authorization, &mut rec).await,
    };
    match outcome {
        Ok(body) => {
            // Nothing leaves without its record on disk.
            if !audit(st, &rec, Ok(())).await {
                return error(&OAuthError::temporarily_unavailable(
                    "audit log unavailable, nothing issued",
                ));
            }
            json(
                StatusCode::OK,
                serde_json::to_vec(&body).unwrap_or_default(),
                true,
            )
        }
        Err(e) => {
            audit(st, &rec, Err(&e)).await;
            tracing::info!(endpoint, error = e.code, description = %e.description, "oauth request refused");
            error(&e)
        }
    }
}

/// Writes the record; false if the log refused it.
async fn audit(st: &State, rec: &Record, outcome: Result<(), &OAuthError>) -> bool {
    match st.broker.audit(rec.event(outcome)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e.message(), "oauth audit record refused");
            false
        }
    }
}

async fn read_form(req: Request<Incoming>, timeout: Duration) -> Result<Form, OAuthError> {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
        .unwrap_or(false);
    if !form_type {
        return Err(OAuthError::invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => {
            return Err(OAuthError::timeout(format!(
                "the request body did not arrive within {}s",
                timeout.as_secs_f32()
            )))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(OAuthError::invalid_request(format!(
                "reading the body: {e}"
            )))
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    Form::parse(&bytes)
}

fn too_large() -> OAuthError {
    OAuthError::too_large(format!(
        "the request body is larger than {MAX_BODY_BYTES} bytes"
    ))
}

fn metadata_response(st: &State) -> Resp {
    let bundle = st.identities.current_bundle();
    let doc = metadata::document(
        &st.endpoints,
        &jwks::algorithms(&bundle),
        st.auth.has_secret_clients(),
    );
    let mut r = json(
        StatusCode::OK,
        serde_json::to_vec(&doc).unwrap_or_default(),
        false,
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

fn jwks_response(st: &State, req: &Request<Incoming>) -> Resp {
    let bundle = st.identities.current_bundle();
    let etag = jwks::etag(&bundle);
    let max_age = jwks::max_age(st.jwt_key_ttl, bundle.refresh_hint);
    let cache = format!("public, max-age={}", max_age.as_secs());
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let doc = jwks::document(&bundle);
        let mut r = json(
            StatusCode::OK,
            serde_json::to_vec(&doc).unwrap_or_default(),
            false,
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}
