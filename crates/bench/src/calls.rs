//! The calls each row makes, one client (one connection) at a time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::daemon::{BENCH_SPIFFE_ID, TASK_AUDIENCE, TASK_SCOPE};
use svid_broker::client::{with_header, HeaderChannel};
use svid_broker::proto::svidbroker::v1 as broker;
use svid_broker::proto::svidbroker::v1::task_broker_client::TaskBrokerClient;
use svid_broker::proto::workload as pb;
use svid_broker::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The audience of same-audience JWT-SVIDs.
pub const SAME_AUDIENCE: &str = "spiffe://bench.test/same";

/// Makes fresh audiences unique across clients and rows.
static FRESH: AtomicU64 = AtomicU64::new(0);

/// The `resource` (RFC 8707) of the bench's OAuth grants: a tool the permit-all policy allows.
pub const OAUTH_RESOURCE: &str = "https://tool.bench.test/mcp";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Unmeasured calls per client before the clock starts, for rows that spend one pre-fetched
/// assertion per call (instead of a warm-up duration).
pub const OAUTH_WARMUP_CALLS: usize = 3;

/// The daemon's OAuth listener (plain HTTP on loopback).
#[derive(Debug, Clone)]
pub struct OAuthTarget {
    pub addr: SocketAddr,
    /// What assertions carry as `aud`.
    pub issuer: String,
}

/// One benchmark row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `grpc.health.v1.Health/Check`: the no-op baseline on the same server and socket.
    Noop,
    JwtSameAudience,
    JwtFreshAudience,
    /// A new connection, FetchX509SVID, its first message: "first SVID after connect".
    X509FirstMessage,
    ValidateJwt,
    OpenTask,
    /// OpenTask with a delegation token of the client's own task: a child task.
    DelegatedOpenTask,
    MintTaskToken,
    IntrospectToken,
    /// OpenTask, MintTaskToken, CloseTask in sequence, timed as one.
    TaskCycle,
    /// OpenTask once the table's every slot holds an expired task the sweep still keeps
    /// ([`super::full_table`]); run after the other rows' rounds.
    OpenTaskFullTable,
    /// FetchJWTSVID with a fresh audience against a SPIRE agent.
    SpireJwtFreshAudience,
    /// GET /.well-known/oauth-authorization-server: the OAuth listener's no-op baseline
    /// (no authentication, no crypto).
    OAuthNoop,
    /// POST /token, client_credentials with a pre-fetched JWT-SVID client assertion.
    OAuthToken,
    /// POST /introspect of a task token, authenticated the same way.
    OAuthIntrospect,
}

impl Workload {
    /// The rows run against svid-broker, in table order.
    pub const BROKER_ROWS: &'static [Workload] = &[
        Workload::Noop,
        Workload::JwtSameAudience,
        Workload::JwtFreshAudience,
        Workload::X509FirstMessage,
        Workload::ValidateJwt,
        Workload::OpenTask,
        Workload::DelegatedOpenTask,
        Workload::MintTaskToken,
        Workload::IntrospectToken,
        Workload::TaskCycle,
        Workload::OpenTaskFullTable,
        Workload::OAuthNoop,
        Workload::OAuthToken,
        Workload::OAuthIntrospect,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Workload::Noop => "no-op (health Check)",
            Workload::JwtSameAudience => "FetchJWTSVID same audience",
            Workload::JwtFreshAudience => "FetchJWTSVID fresh audience",
            Workload::X509FirstMessage => "FetchX509SVID first message, new connection",
            Workload::ValidateJwt => "ValidateJWTSVID",
            Workload::OpenTask => "OpenTask",
            Workload::DelegatedOpenTask => "OpenTask delegated (parent token)",
            Workload::MintTaskToken => "MintTaskToken",
            Workload::IntrospectToken => "IntrospectToken",
            Workload::TaskCycle => "OpenTask+MintTaskToken+CloseTask",
            Workload::OpenTaskFullTable => "OpenTask, table full of expired tasks",
            Workload::SpireJwtFreshAudience => "SPIRE agent: FetchJWTSVID fresh audience",
            Workload::OAuthNoop => "oauth no-op",
            Workload::OAuthToken => "oauth token",
            Workload::OAuthIntrospect => "oauth introspect",
        }
    }

    /// Rows on the OAuth HTTP listener.
    pub fn is_oauth(self) -> bool {
        matches!(
            self,
            Workload::OAuthNoop | Workload::OAuthToken | Workload::OAuthIntrospect
        )
    }

    /// Rows that spend one single-use client assertion per call (fetched before the row).
    pub fn needs_assertions(self) -> bool {
        matches!(self, Workload::OAuthToken | Workload::OAuthIntrospect)
    }

    /// The row this one's throughput is compared to: the no-op on the same listener.
    pub fn baseline(self) -> Workload {
        if self.is_oauth() {
            Workload::OAuthNoop
        } else {
            Workload::Noop
        }
    }

    /// TaskBroker rows: `Unimplemented` means "not served yet", not a failure.
    pub fn is_task_broker(self) -> bool {
        matches!(
            self,
            Workload::OpenTask
                | Workload::DelegatedOpenTask
                | Workload::MintTaskToken
                | Workload::IntrospectToken
                | Workload::TaskCycle
                | Workload::OpenTaskFullTable
        )
    }

    /// RPCs one timed operation of the row makes.
    pub fn rpcs_per_call(self) -> u32 {
        match self {
            Workload::TaskCycle => 3,
            _ => 1,
        }
    }

    /// ES256 signatures the daemon must make for one timed operation of the row.
    pub fn signatures_per_call(self) -> u32 {
        match self {
            Workload::JwtFreshAudience
            | Workload::MintTaskToken
            | Workload::TaskCycle
            | Workload::OAuthToken => 1,
            _ => 0,
        }
    }

    /// Rows that are a single RPC on a known connection (the p99 target applies to them).
    pub fn is_single_call(self) -> bool {
        matches!(
            self,
            Workload::JwtSameAudience
                | Workload::JwtFreshAudience
                | Workload::ValidateJwt
                | Workload::OpenTask
                | Workload::DelegatedOpenTask
                | Workload::MintTaskToken
                | Workload::IntrospectToken
                | Workload::OpenTaskFullTable
        )
    }
}

/// Connects to a Unix socket (no pre-flight connect, so a row pays one connection per channel).
///
/// # Errors
/// Nobody listens.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://svid-broker.invalid")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

fn transport(e: tonic::transport::Error) -> Status {
    Status::unavailable(format!("connect: {e}"))
}

/// One health check on a new connection: is the daemon serving?
///
/// # Errors
/// Not reachable or not serving.
pub async fn health_once(path: &Path) -> Result<(), Status> {
    let channel = connect(path).await.map_err(transport)?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

/// One benchmark client: its own connection and whatever state its row needs.
pub struct Client {
    workload: Workload,
    socket: PathBuf,
    health: HealthClient<Channel>,
    workload_api: SpiffeWorkloadApiClient<HeaderChannel>,
    broker: TaskBrokerClient<HeaderChannel>,
    /// A JWT-SVID (ValidateJWTSVID) or a task token (IntrospectToken).
    token: String,
    task_id: String,
    /// Tasks the OpenTask row opened, closed after the row (untimed).
    opened: Vec<String>,
    /// The OAuth listener, for the OAuth rows.
    oauth_addr: Option<SocketAddr>,
    /// The OAuth rows' keep-alive HTTP/1.1 connection, opened by the first call (see
    /// [`Client::http`]).
    http: Option<Http>,
    /// Single-use client assertions, fetched before the row; one per call.
    assertions: Vec<String>,
}

impl Client {
    /// Connects and prepares the row's state (a token to validate, a task to mint from).
    ///
    /// # Errors
    /// The connection or the preparing calls fail.
    pub async fn new(workload: Workload, socket: &Path) -> Result<Self, Status> {
        Self::with_oauth(workload, socket, None, 0).await
    }

    /// Like [`Client::new`]; the OAuth rows also connect to `oauth` and fetch `assertions`
    /// client assertions (JWT-SVIDs for the issuer and a unique second audience each).
    ///
    /// # Errors
    /// The connections or the preparing calls fail, or an OAuth row has no OAuth listener.
    pub async fn with_oauth(
        workload: Workload,
        socket: &Path,
        oauth: Option<&OAuthTarget>,
        assertions: usize,
    ) -> Result<Self, Status> {
        let channel = connect(socket).await.map_err(transport)?;
        let mut c = Self {
            workload,
            socket: socket.to_path_buf(),
            health: HealthClient::new(channel.clone()),
            workload_api: SpiffeWorkloadApiClient::new(with_header(channel.clone())),
            broker: TaskBrokerClient::new(with_header(channel)),
            token: String::new(),
            task_id: String::new(),
            opened: Vec::new(),
            oauth_addr: None,
            http: None,
            assertions: Vec::new(),
        };
        if workload.is_oauth() {
            let oauth = oauth.ok_or_else(|| {
                Status::unavailable(
                    "no OAuth listener (the bench only configures one on a daemon it starts)",
                )
            })?;
            c.oauth_addr = Some(oauth.addr);
            if workload.needs_assertions() {
                c.assertions.reserve(assertions);
                for _ in 0..assertions {
                    let n = FRESH.fetch_add(1, Ordering::Relaxed);
                    let a = c
                        .fetch_jwt_for(vec![oauth.issuer.clone(), format!("urn:nonce:{n}")])
                        .await?;
                    c.assertions.push(a);
                }
            }
        }
        match workload {
            Workload::ValidateJwt => {
                c.token = c.fetch_jwt(SAME_AUDIENCE.to_string()).await?;
            }
            Workload::MintTaskToken => {
                c.task_id = c.open_task().await?;
            }
            Workload::DelegatedOpenTask => {
                // A delegation token must be addressed to the identity that presents it: the
                // client's own task delegates to the client.
                c.task_id = c.open_task().await?;
                c.token = c.mint_for(BENCH_SPIFFE_ID).await?;
            }
            Workload::IntrospectToken | Workload::OAuthIntrospect => {
                // Only a token's audience (or an operator) may introspect it: mint one for
                // ourselves.
                c.task_id = c.open_task().await?;
                c.token = c.mint_for(BENCH_SPIFFE_ID).await?;
            }
            _ => {}
        }
        Ok(c)
    }

    /// One timed operation of the row.
    ///
    /// # Errors
    /// The call's status.
    pub async fn call(&mut self) -> Result<(), Status> {
        match self.workload {
            Workload::Noop => {
                self.health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
            Workload::JwtSameAudience => {
                self.fetch_jwt(SAME_AUDIENCE.to_string()).await?;
            }
            Workload::JwtFreshAudience | Workload::SpireJwtFreshAudience => {
                let n = FRESH.fetch_add(1, Ordering::Relaxed);
                self.fetch_jwt(format!("spiffe://bench.test/fresh/{n}"))
                    .await?;
            }
            Workload::X509FirstMessage => {
                x509_first_message(&self.socket).await?;
            }
            Workload::ValidateJwt => {
                self.workload_api
                    .validate_jwtsvid(pb::ValidateJwtsvidRequest {
                        audience: SAME_AUDIENCE.to_string(),
                        svid: self.token.clone(),
                    })
                    .await?;
            }
            Workload::OpenTask | Workload::OpenTaskFullTable => {
                let id = self.open_task().await?;
                self.opened.push(id);
            }
            Workload::DelegatedOpenTask => {
                // Its children close with the parent task after the row.
                self.broker
                    .open_task(broker::OpenTaskRequest {
                        purpose: "benchmark subtask".into(),
                        audiences: vec![TASK_AUDIENCE.into()],
                        scopes: vec![TASK_SCOPE.into()],
                        ttl_seconds: 300,
                        parent_token: self.token.clone(),
                        ..Default::default()
                    })
                    .await?;
            }
            Workload::MintTaskToken => {
                self.mint().await?;
            }
            Workload::IntrospectToken => {
                let r = self
                    .broker
                    .introspect_token(broker::IntrospectTokenRequest {
                        token: self.token.clone(),
                    })
                    .await?;
                if !r.get_ref().active {
                    return Err(Status::failed_precondition("token introspected inactive"));
                }
            }
            Workload::OAuthNoop => {
                self.http()
                    .await?
                    .request(Method::GET, "/.well-known/oauth-authorization-server", None)
                    .await?;
            }
            Workload::OAuthToken => {
                let a = self.assertion()?;
                let body = format!(
                    "grant_type=client_credentials&client_assertion_type={}&client_assertion={a}&resource={}&scope={}",
                    form_encode(JWT_BEARER),
                    form_encode(OAUTH_RESOURCE),
                    form_encode(TASK_SCOPE)
                );
                let r = self
                    .http()
                    .await?
                    .request(Method::POST, "/token", Some(body))
                    .await?;
                if !contains(&r, b"\"access_token\"") {
                    return Err(Status::internal("token response without access_token"));
                }
            }
            Workload::OAuthIntrospect => {
                let a = self.assertion()?;
                let body = format!(
                    "client_assertion_type={}&client_assertion={a}&token={}",
                    form_encode(JWT_BEARER),
                    form_encode(&self.token)
                );
                let r = self
                    .http()
                    .await?
                    .request(Method::POST, "/introspect", Some(body))
                    .await?;
                if !contains(&r, b"\"active\":true") {
                    return Err(Status::failed_precondition("token introspected inactive"));
                }
            }
            Workload::TaskCycle => {
                self.task_id = self.open_task().await?;
                self.mint().await?;
                self.broker
                    .close_task(broker::CloseTaskRequest {
                        task_id: std::mem::take(&mut self.task_id),
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// No assertion left for another call (rows that spend one per call).
    pub fn exhausted(&self) -> bool {
        self.workload.needs_assertions() && self.assertions.is_empty()
    }

    /// Warm-up calls allowed: bounded for rows that spend an assertion per call.
    pub fn warmup_limit(&self) -> Option<usize> {
        self.workload
            .needs_assertions()
            .then_some(OAUTH_WARMUP_CALLS)
    }

    fn assertion(&mut self) -> Result<String, Status> {
        self.assertions
            .pop()
            .ok_or_else(|| Status::resource_exhausted("no pre-fetched client assertion left"))
    }

    /// Opens the OAuth rows' HTTP connection (nothing for the other rows). Done after every
    /// client of the row is prepared, not while preparing: the listener closes a keep-alive
    /// connection that stays idle for its `request_timeout` (10 s by default), and preparing
    /// can take longer than that (a 1-client row fetches its ~20,000 client assertions one
    /// after the other), which left every call of the row on a closed connection.
    ///
    /// # Errors
    /// The connection fails.
    pub async fn open_http(&mut self) -> Result<(), Status> {
        if let (Some(addr), None) = (self.oauth_addr, &self.http) {
            self.http = Some(Http::connect(addr).await?);
        }
        Ok(())
    }

    /// The OAuth connection, opened here if [`Client::open_http`] was not called.
    async fn http(&mut self) -> Result<&mut Http, Status> {
        self.open_http().await?;
        self.http
            .as_mut()
            .ok_or_else(|| Status::unavailable("no OAuth connection"))
    }

    /// Closes what the row left open (the tasks OpenTask opened, the task MintTaskToken and
    /// IntrospectToken minted from), so the next row starts with an empty task table.
    pub async fn clean_up(&mut self) {
        let mut ids = std::mem::take(&mut self.opened);
        if !self.task_id.is_empty() {
            ids.push(std::mem::take(&mut self.task_id));
        }
        for task_id in ids {
            let _ = self
                .broker
                .close_task(broker::CloseTaskRequest { task_id })
                .await;
        }
    }

    /// FetchJWTSVID for one audience on this client's connection.
    ///
    /// # Errors
    /// The call's status, or an empty answer.
    pub async fn fetch_jwt(&mut self, audience: String) -> Result<String, Status> {
        self.fetch_jwt_for(vec![audience]).await
    }

    /// FetchJWTSVID for these audiences on this client's connection.
    ///
    /// # Errors
    /// The call's status, or an empty answer.
    pub async fn fetch_jwt_for(&mut self, audience: Vec<String>) -> Result<String, Status> {
        let r = self
            .workload_api
            .fetch_jwtsvid(pb::JwtsvidRequest {
                audience,
                spiffe_id: String::new(),
            })
            .await?;
        r.into_inner()
            .svids
            .into_iter()
            .next()
            .map(|s| s.svid)
            .ok_or_else(|| Status::internal("FetchJWTSVID answered no SVID"))
    }

    async fn open_task(&mut self) -> Result<String, Status> {
        let r = self
            .broker
            .open_task(broker::OpenTaskRequest {
                purpose: "benchmark".into(),
                audiences: vec![TASK_AUDIENCE.into(), BENCH_SPIFFE_ID.into()],
                scopes: vec![TASK_SCOPE.into()],
                ttl_seconds: 600,
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().task_id)
    }

    async fn mint(&mut self) -> Result<String, Status> {
        self.mint_for(TASK_AUDIENCE).await
    }

    async fn mint_for(&mut self, audience: &str) -> Result<String, Status> {
        let r = self
            .broker
            .mint_task_token(broker::MintTaskTokenRequest {
                task_id: self.task_id.clone(),
                audience: audience.into(),
                scopes: vec![TASK_SCOPE.into()],
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().token)
    }
}

/// Connects, opens FetchX509SVID and waits for its first message.
///
/// # Errors
/// Connection, call or stream failure, or a stream that ends without a message.
pub async fn x509_first_message(socket: &Path) -> Result<pb::X509svidResponse, Status> {
    let channel = connect(socket).await.map_err(transport)?;
    let mut client = SpiffeWorkloadApiClient::new(with_header(channel));
    let mut stream = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await?
        .into_inner();
    stream
        .message()
        .await?
        .ok_or_else(|| Status::new(Code::Unavailable, "stream ended before the first SVID"))
}

/// One keep-alive HTTP/1.1 connection to the OAuth listener.
struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Result<Self, Status> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Status::unavailable(format!("connect {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Status::unavailable(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// One request; the body of a 200 answer, else an error carrying the answer.
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Bytes, Status> {
        let http_err = |e: hyper::Error| Status::unavailable(format!("HTTP: {e}"));
        self.sender.ready().await.map_err(http_err)?;
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        if form.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = b
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|e| Status::internal(format!("request: {e}")))?;
        let resp = self.sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        if status == StatusCode::OK {
            return Ok(body);
        }
        let text: String = String::from_utf8_lossy(&body).chars().take(160).collect();
        let code = match status {
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            StatusCode::NOT_FOUND => Code::Unimplemented,
            _ => Code::Internal,
        };
        Err(Status::new(code, format!("HTTP {status}: {text}")))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
