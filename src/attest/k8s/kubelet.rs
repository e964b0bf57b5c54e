//! Kubelet client: `GET /pods` over HTTPS (bearer token or client certificate, CA file, skip
//! verification only when configured) or the read-only HTTP port, with one timeout over the
//! whole exchange and a ceiling on the answer's size.

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::config::{K8sAttestorConfig, K8sConfigError, DEFAULT_TOKEN_PATH};
use super::selectors::PodList;

mod tls;

/// A token file longer than this is refused (service-account JWTs are ≈ 1 KiB).
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// How much of an error answer is quoted in the message.
const ERROR_EXCERPT_BYTES: usize = 200;

/// Why one `/pods` request failed. Every message names the URL and a next step.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot connect to the kubelet at {url}: {source} (is kubelet_url right, and is the kubelet up?)")]
    Connect { url: String, source: io::Error },
    #[error("TLS handshake with the kubelet at {url} failed: {source} (check ca_path, or the kubelet's serving certificate names this host)")]
    Tls { url: String, source: io::Error },
    #[error("HTTP exchange with the kubelet at {url} failed: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("the kubelet at {url} did not answer within {timeout} (attestor.k8s.request_timeout)", timeout = humantime::format_duration(*.after))]
    Timeout { url: String, after: Duration },
    #[error("the kubelet at {url} answered {status}{hint}: {excerpt:?}")]
    Status {
        url: String,
        status: StatusCode,
        hint: &'static str,
        excerpt: String,
    },
    #[error(
        "the kubelet at {url} answered more than {limit} bytes (attestor.k8s.max_response_bytes)"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("the kubelet at {url} answered something that is not a pod list: {source} (does kubelet_url point at the kubelet API?)")]
    Parse {
        url: String,
        source: serde_json::Error,
    },
    #[error("cannot read the kubelet bearer token {path}: {reason} (attestor.k8s.token_path)")]
    Token { path: PathBuf, reason: String },
    #[error("kubelet request task failed: {0}")]
    Internal(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// A parsed `kubelet_url`, with `/pods` appended.
#[derive(Clone, Debug)]
pub struct Endpoint {
    scheme: Scheme,
    host: String,
    /// The name the kubelet's certificate must carry; the host unless configured.
    tls_name: String,
    port: u16,
    authority: String,
    path: String,
    display: String,
}

impl Endpoint {
    /// Parses `url` after replacing `{node_name}`.
    ///
    /// # Errors
    /// Not `http(s)://host[:port][/path]`, or `{node_name}` needed but unknown.
    pub fn parse(url: &str, node_name: Option<&str>, env: &str) -> Result<Self, K8sConfigError> {
        let invalid = |reason: &str| K8sConfigError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let text = fill_node_name(url, node_name, env)?;
        let uri: Uri = text.parse().map_err(|_| invalid("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            _ => return Err(invalid("the scheme must be https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info is not allowed; use token_path"));
        }
        if uri.query().is_some() {
            return Err(invalid("a query string is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Https => 10250,
            Scheme::Http => 10255,
        });
        let path = format!("{}/pods", uri.path().trim_end_matches('/'));
        let display = format!("{}://{}{}", uri.scheme_str().unwrap_or(""), authority, path);
        Ok(Self {
            scheme,
            tls_name: host.clone(),
            host,
            port,
            authority: authority.as_str().to_string(),
            path,
            display,
        })
    }

    /// Verify the kubelet's certificate for `name` (`{node_name}` filled in) instead of the
    /// URL's host: `https://127.0.0.1:10250` with a certificate issued to the node's name.
    ///
    /// # Errors
    /// `{node_name}` needed but unknown.
    pub fn with_tls_name(
        mut self,
        name: Option<&str>,
        node_name: Option<&str>,
        env: &str,
    ) -> Result<Self, K8sConfigError> {
        if let Some(name) = name {
            self.tls_name = fill_node_name(name, node_name, env)?;
        }
        Ok(self)
    }

    /// `scheme://host:port/…/pods`, for messages.
    pub fn as_str(&self) -> &str {
        &self.display
    }
}

/// Replaces `{node_name}` in `text`.
fn fill_node_name(
    text: &str,
    node_name: Option<&str>,
    env: &str,
) -> Result<String, K8sConfigError> {
    if !text.contains("{node_name}") {
        return Ok(text.to_string());
    }
    let node = node_name.ok_or_else(|| K8sConfigError::MissingNodeName {
        env: env.to_string(),
    })?;
    Ok(text.replace("{node_name}", node))
}

/// One kubelet, ready to be asked. Holds no secret in memory: the token is re-read per request.
pub struct KubeletClient {
    endpoint: Endpoint,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    token_path: Option<PathBuf>,
    timeout: Duration,
    max_response_bytes: u64,
}

impl fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeletClient")
            .field("url", &self.endpoint.display)
            .field("tls", &self.tls.is_some())
            .field("token_path", &self.token_path)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl KubeletClient {
    /// Loads the CA and client certificate now, so a bad path fails at start.
    ///
    /// # Errors
    /// Unreadable or empty PEM files, half a client certificate, credentials over plain HTTP.
    pub fn new(cfg: &K8sAttestorConfig, endpoint: Endpoint) -> Result<Self, K8sConfigError> {
        let client_pair = match (&cfg.client_cert_path, &cfg.client_key_path) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(K8sConfigError::HalfClientCert),
        };
        let (tls, token_path) = match endpoint.scheme {
            Scheme::Http => {
                for (key, set) in [
                    ("token_path", cfg.token_path.is_some()),
                    ("client_cert_path", client_pair.is_some()),
                ] {
                    if set {
                        return Err(K8sConfigError::CredentialsOverHttp { key });
                    }
                }
                (None, None)
            }
            Scheme::Https => {
                let config = tls::tls_config(cfg, client_pair.as_ref())?;
                let name = ServerName::try_from(endpoint.tls_name.clone()).map_err(|_| {
                    K8sConfigError::InvalidUrl {
                        url: endpoint.display.clone(),
                        reason: format!("{:?} is not a valid TLS server name", endpoint.tls_name),
                    }
                })?;
                // A client certificate replaces the token unless a token is named too.
                let token = match (&cfg.token_path, &client_pair) {
                    (Some(p), _) => Some(p.clone()),
                    (None, None) => Some(PathBuf::from(DEFAULT_TOKEN_PATH)),
                    (None, Some(_)) => None,
                };
                (
                    Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)),
                    token,
                )
            }
        };
        if cfg.skip_kubelet_verification && tls.is_some() {
            tracing::warn!(
                url = %endpoint.display,
                "attestor.k8s.skip_kubelet_verification = true: the kubelet's certificate is not checked"
            );
        }
        Ok(Self {
            endpoint,
            tls,
            token_path,
            timeout: cfg.request_timeout,
            max_response_bytes: cfg.max_response_bytes,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET /pods`, bounded by `request_timeout` from connect to the last byte.
    ///
    /// # Errors
    /// See [`KubeletError`].
    pub async fn pods(&self) -> Result<PodList, KubeletError> {
        let url = &self.endpoint.display;
        let body = tokio::time::timeout(self.timeout, self.exchange())
            .await
            .map_err(|_| KubeletError::Timeout {
                url: url.clone(),
                after: self.timeout,
            })??;
        serde_json::from_slice(&body).map_err(|source| KubeletError::Parse {
            url: url.clone(),
            source,
        })
    }

    async fn exchange(&self) -> Result<Vec<u8>, KubeletError> {
        let url = &self.endpoint.display;
        let token = self.token()?;
        let tcp = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|source| KubeletError::Connect {
                url: url.clone(),
                source,
            })?;
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| KubeletError::Tls {
                        url: url.clone(),
                        source,
                    })?;
                self.get(tls, token).await
            }
            None => self.get(tcp, token).await,
        }
    }

    async fn get<S>(&self, io: S, token: Option<Zeroizing<String>>) -> Result<Vec<u8>, KubeletError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let url = &self.endpoint.display;
        let http = |source| KubeletError::Http {
            url: url.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        let _driver = AbortOnDrop(tokio::spawn(conn));
        let mut request = Request::get(self.endpoint.path.as_str())
            .header(HOST, self.endpoint.authority.as_str())
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("svid-broker/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| KubeletError::Internal(e.to_string()))?;
        if let Some(token) = token {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.as_str())).map_err(|_| {
                    KubeletError::Token {
                        path: self.token_path.clone().unwrap_or_default(),
                        reason: "the token holds characters not allowed in a header".to_string(),
                    }
                })?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = if status.is_success() {
            self.max_response_bytes
        } else {
            ERROR_EXCERPT_BYTES as u64
        };
        if status.is_success() && declared.is_some_and(|n| n > limit) {
            return Err(KubeletError::TooLarge {
                url: url.clone(),
                limit,
            });
        }
        let mut body = response.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http)?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if (buf.len() + data.len()) as u64 > limit {
                if status.is_success() {
                    return Err(KubeletError::TooLarge {
                        url: url.clone(),
                        limit,
                    });
                }
                let room = (limit as usize).saturating_sub(buf.len());
                buf.extend_from_slice(&data[..room.min(data.len())]);
                break;
            }
            buf.extend_from_slice(data);
        }
        if !status.is_success() {
            return Err(KubeletError::Status {
                url: url.clone(),
                status,
                hint: status_hint(status),
                excerpt: excerpt(&buf),
            });
        }
        Ok(buf)
    }

    fn token(&self) -> Result<Option<Zeroizing<String>>, KubeletError> {
        let Some(path) = &self.token_path else {
            return Ok(None);
        };
        let fail = |reason: String| KubeletError::Token {
            path: path.clone(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_TOKEN_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| fail(e.to_string()))?;
        if text.len() as u64 > MAX_TOKEN_BYTES {
            return Err(fail(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let trimmed = Zeroizing::new(text.trim().to_string());
        if trimmed.is_empty() {
            return Err(fail("the file is empty".to_string()));
        }
        Ok(Some(trimmed))
    }
}

fn status_hint(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => {
            " (the kubelet rejected our credentials: check token_path or the client certificate)"
        }
        StatusCode::FORBIDDEN => {
            " (RBAC: the broker's ServiceAccount needs `get` on nodes/proxy and nodes/pods)"
        }
        StatusCode::NOT_FOUND => " (kubelet_url should be the kubelet's base URL, without /pods)",
        _ => "",
    }
}

/// The start of an error body, printable characters only.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(ERROR_EXCERPT_BYTES)
        .collect::<String>()
        .trim()
        .to_string()
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn urls() {
        let cases: &[(&str, Option<&str>, &str, u16)] = &[
            (
                "https://10.0.0.1:10250",
                None,
                "https://10.0.0.1:10250/pods",
                10250,
            ),
            ("https://node-1", None, "https://node-1/pods", 10250),
            ("http://127.0.0.1", None, "http://127.0.0.1/pods", 10255),
            (
                "https://{node_name}:10250/",
                Some("k8s-node-1"),
                "https://k8s-node-1:10250/pods",
                10250,
            ),
            (
                "https://kubernetes.default.svc/api/v1/nodes/{node_name}/proxy",
                Some("n1"),
                "https://kubernetes.default.svc/api/v1/nodes/n1/proxy/pods",
                10250,
            ),
            ("https://[::1]:9999", None, "https://[::1]:9999/pods", 9999),
        ];
        for (url, node, want, port) in cases {
            let e = Endpoint::parse(url, *node, "NODE_NAME").unwrap();
            assert_eq!(e.as_str(), *want);
            assert_eq!(e.port, *port);
        }
        assert_eq!(
            Endpoint::parse("https://[::1]:9999", None, "X")
                .unwrap()
                .host,
            "::1"
        );
        for bad in [
            "ftp://x",
            "127.0.0.1:10250",
            "https://u:p@x",
            "https://x/?a=b",
            "not a url",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(bad, None, "X"),
                    Err(K8sConfigError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Endpoint::parse("https://{node_name}:10250", None, "MY_NODE"),
            Err(K8sConfigError::MissingNodeName { .. })
        ));
    }

    #[test]
    fn credentials_never_go_over_http() {
        let mut cfg = K8sAttestorConfig {
            kubelet_url: "http://127.0.0.1:10255".into(),
            token_path: Some("/tmp/token".into()),
            ..Default::default()
        };
        let e = Endpoint::parse(&cfg.kubelet_url, None, "X").unwrap();
        assert!(matches!(
            KubeletClient::new(&cfg, e.clone()),
            Err(K8sConfigError::CredentialsOverHttp { key: "token_path" })
        ));
        cfg.token_path = None;
        cfg.client_cert_path = Some("/c".into());
        assert!(matches!(
            KubeletClient::new(&cfg, e.clone()),
            Err(K8sConfigError::HalfClientCert)
        ));
        cfg.client_key_path = Some("/k".into());
        assert!(matches!(
            KubeletClient::new(&cfg, e),
            Err(K8sConfigError::CredentialsOverHttp { .. })
        ));
    }

    #[test]
    fn https_needs_a_readable_ca_unless_skipping() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let mut cfg = K8sAttestorConfig {
            kubelet_url: "https://127.0.0.1:10250".into(),
            ca_path: Some(missing.clone()),
            ..Default::default()
        };
        let e = Endpoint::parse(&cfg.kubelet_url, None, "X").unwrap();
        let err = KubeletClient::new(&cfg, e.clone()).unwrap_err();
        assert!(
            matches!(err, K8sConfigError::ReadFile { key: "ca_path", .. }),
            "{err}"
        );
        std::fs::write(&missing, "no pem here").unwrap();
        let err = KubeletClient::new(&cfg, e.clone()).unwrap_err();
        assert!(
            matches!(err, K8sConfigError::EmptyPem { key: "ca_path", .. }),
            "{err}"
        );
        cfg.skip_kubelet_verification = true;
        let client = KubeletClient::new(&cfg, e).unwrap();
        assert_eq!(
            client.token_path.as_deref(),
            Some(Path::new(DEFAULT_TOKEN_PATH))
        );
        assert!(!format!("{client:?}").contains("Bearer"));
    }

    #[test]
    fn token_file_is_bounded_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let cfg = K8sAttestorConfig {
            kubelet_url: "https://127.0.0.1:10250".into(),
            skip_kubelet_verification: true,
            token_path: Some(path.clone()),
            ..Default::default()
        };
        let e = Endpoint::parse(&cfg.kubelet_url, None, "X").unwrap();
        let client = KubeletClient::new(&cfg, e).unwrap();
        assert!(
            matches!(client.token(), Err(KubeletError::Token { .. })),
            "missing"
        );
        std::fs::write(&path, " \n").unwrap();
        assert!(
            matches!(client.token(), Err(KubeletError::Token { .. })),
            "empty"
        );
        let at_limit = format!("{}\n", "t".repeat(MAX_TOKEN_BYTES as usize - 1));
        std::fs::write(&path, &at_limit).unwrap();
        let token = client.token().unwrap().unwrap();
        assert_eq!(token.len(), MAX_TOKEN_BYTES as usize - 1);
        std::fs::write(&path, format!("{at_limit}x")).unwrap();
        let err = client.token().unwrap_err().to_string();
        assert!(err.contains("token_path") && !err.contains("ttt"), "{err}");
    }

    #[test]
    fn error_excerpts_are_short_and_printable() {
        let body = b"oops\n\x1b[31m".repeat(100);
        let e = excerpt(&body);
        assert!(e.chars().count() <= ERROR_EXCERPT_BYTES);
        assert!(!e.chars().any(char::is_control));
    }
}
