//! The calls each row makes, one client (one connection) at a time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
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
    MintTaskToken,
    IntrospectToken,
    /// OpenTask, MintTaskToken, CloseTask in sequence, timed as one.
    TaskCycle,
    /// FetchJWTSVID with a fresh audience against a SPIRE agent.
    SpireJwtFreshAudience,
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
        Workload::MintTaskToken,
        Workload::IntrospectToken,
        Workload::TaskCycle,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Workload::Noop => "no-op (health Check)",
            Workload::JwtSameAudience => "FetchJWTSVID same audience",
            Workload::JwtFreshAudience => "FetchJWTSVID fresh audience",
            Workload::X509FirstMessage => "FetchX509SVID first message, new connection",
            Workload::ValidateJwt => "ValidateJWTSVID",
            Workload::OpenTask => "OpenTask",
            Workload::MintTaskToken => "MintTaskToken",
            Workload::IntrospectToken => "IntrospectToken",
            Workload::TaskCycle => "OpenTask+MintTaskToken+CloseTask",
            Workload::SpireJwtFreshAudience => "SPIRE agent: FetchJWTSVID fresh audience",
        }
    }

    /// TaskBroker rows: `Unimplemented` means "not served yet", not a failure.
    pub fn is_task_broker(self) -> bool {
        matches!(
            self,
            Workload::OpenTask
                | Workload::MintTaskToken
                | Workload::IntrospectToken
                | Workload::TaskCycle
        )
    }

    /// Rows that are a single RPC on a known connection (the p99 target applies to them).
    pub fn is_single_call(self) -> bool {
        matches!(
            self,
            Workload::JwtSameAudience
                | Workload::JwtFreshAudience
                | Workload::ValidateJwt
                | Workload::OpenTask
                | Workload::MintTaskToken
                | Workload::IntrospectToken
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
}

impl Client {
    /// Connects and prepares the row's state (a token to validate, a task to mint from).
    ///
    /// # Errors
    /// The connection or the preparing calls fail.
    pub async fn new(workload: Workload, socket: &Path) -> Result<Self, Status> {
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
        };
        match workload {
            Workload::ValidateJwt => {
                c.token = c.fetch_jwt(SAME_AUDIENCE.to_string()).await?;
            }
            Workload::MintTaskToken => {
                c.task_id = c.open_task().await?;
            }
            Workload::IntrospectToken => {
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
            Workload::OpenTask => {
                let id = self.open_task().await?;
                self.opened.push(id);
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
        let r = self
            .workload_api
            .fetch_jwtsvid(pb::JwtsvidRequest {
                audience: vec![audience],
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
