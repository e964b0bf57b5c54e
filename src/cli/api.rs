//! `svid-broker api …`: a Workload API client shaped like `spire-agent api`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;

use crate::client::{connect, socket_path, workload_client};
use crate::proto::workload as pb;
use crate::svid::{der, pem};

#[derive(clap::Args, Debug, Clone)]
pub struct SocketArgs {
    /// The broker's socket (else SPIFFE_ENDPOINT_SOCKET, else the default path).
    #[arg(long, global = true)]
    pub socket: Option<String>,
    /// Read from the environment, as every SPIFFE client does.
    #[arg(skip = std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())]
    pub env_socket: Option<String>,
}

impl SocketArgs {
    async fn client(
        &self,
    ) -> anyhow::Result<
        crate::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
            crate::client::HeaderChannel,
        >,
    > {
        let path = socket_path(self.socket.as_deref(), self.env_socket.as_deref())?;
        Ok(workload_client(connect(path).await?))
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ApiCommand {
    /// Fetch SVIDs or bundles.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate a JWT-SVID through the broker.
    Validate {
        #[arg(long)]
        audience: String,
        #[arg(long)]
        token: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Stream X.509-SVID updates until interrupted.
    Watch {
        #[command(flatten)]
        socket: SocketArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum FetchCommand {
    /// The caller's X.509-SVIDs.
    X509 {
        /// Write svid.pem, svid_key.pem (0600) and bundle.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// A JWT-SVID for an audience.
    Jwt {
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Which of the caller's identities (default: all).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Print only the first token, for scripts.
        #[arg(long)]
        token_only: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// The trust bundles (X.509 and JWT).
    Bundles {
        #[command(flatten)]
        socket: SocketArgs,
    },
}

/// # Errors
/// Connection failures and error statuses, as a message for a person.
pub async fn run(cmd: ApiCommand) -> anyhow::Result<()> {
    match cmd {
        ApiCommand::Fetch(FetchCommand::X509 { write, socket }) => {
            fetch_x509(&socket, write.as_deref()).await
        }
        ApiCommand::Fetch(FetchCommand::Jwt {
            audience,
            spiffe_id,
            token_only,
            socket,
        }) => fetch_jwt(&socket, audience, spiffe_id, token_only).await,
        ApiCommand::Fetch(FetchCommand::Bundles { socket }) => fetch_bundles(&socket).await,
        ApiCommand::Validate {
            audience,
            token,
            socket,
        } => validate(&socket, audience, token).await,
        ApiCommand::Watch { socket } => watch(&socket).await,
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_text(s.code()), s.message())
}

fn code_text(c: tonic::Code) -> String {
    format!("{c:?}")
}

async fn first_x509(socket: &SocketArgs) -> anyhow::Result<pb::X509svidResponse> {
    let mut client = socket.client().await?;
    let mut stream = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    stream
        .next()
        .await
        .context("the stream closed before sending an SVID")?
        .map_err(status_error)
}

async fn fetch_x509(socket: &SocketArgs, write: Option<&Path>) -> anyhow::Result<()> {
    let started = Instant::now();
    let resp = first_x509(socket).await?;
    println!(
        "Received {} svid after {:?}\n",
        resp.svids.len(),
        started.elapsed()
    );
    for svid in &resp.svids {
        print_svid(svid)?;
    }
    if let (Some(dir), Some(svid)) = (write, resp.svids.first()) {
        write_svid(dir, svid)?;
        println!(
            "Wrote svid.pem, svid_key.pem and bundle.pem to {}",
            dir.display()
        );
    }
    Ok(())
}

fn print_svid(svid: &pb::X509svid) -> anyhow::Result<()> {
    use x509_parser::prelude::*;
    println!("SPIFFE ID:\t\t{}", svid.spiffe_id);
    if !svid.hint.is_empty() {
        println!("Hint:\t\t\t{}", svid.hint);
    }
    let certs = split_der(&svid.x509_svid)?;
    if let Some(leaf) = certs.first() {
        let (_, c) = X509Certificate::from_der(leaf).context("leaf certificate")?;
        println!("SVID Valid After:\t{}", c.validity().not_before);
        println!("SVID Valid Until:\t{}", c.validity().not_after);
    }
    for (i, ca) in split_der(&svid.bundle)?.iter().enumerate() {
        let (_, c) = X509Certificate::from_der(ca).context("bundle certificate")?;
        println!("CA #{} Valid After:\t{}", i + 1, c.validity().not_before);
        println!("CA #{} Valid Until:\t{}", i + 1, c.validity().not_after);
    }
    println!();
    Ok(())
}

/// Splits concatenated DER certificates.
///
/// # Errors
/// Bytes that are not a sequence of DER certificates.
fn split_der(der: &[u8]) -> anyhow::Result<Vec<&[u8]>> {
    der::split_certificates(der).map_err(|e| anyhow::anyhow!("bad certificate bytes: {e}"))
}

fn write_svid(dir: &Path, svid: &pb::X509svid) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let chain = pem::certificates(split_der(&svid.x509_svid)?);
    let bundle = pem::certificates(split_der(&svid.bundle)?);
    let key = pem::private_key(&svid.x509_svid_key);
    write_file(&dir.join("svid.pem"), chain.as_bytes(), 0o644)?;
    write_file(&dir.join("svid_key.pem"), key.as_bytes(), 0o600)?;
    write_file(&dir.join("bundle.pem"), bundle.as_bytes(), 0o644)?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

async fn fetch_jwt(
    socket: &SocketArgs,
    audience: Vec<String>,
    spiffe_id: Option<String>,
    token_only: bool,
) -> anyhow::Result<()> {
    let mut client = socket.client().await?;
    let resp = client
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if token_only {
        let first = resp.svids.first().context("no JWT-SVID returned")?;
        println!("{}", first.svid);
        return Ok(());
    }
    for svid in resp.svids {
        println!("token({}):\n\t{}\n", svid.spiffe_id, svid.svid);
    }
    Ok(())
}

async fn fetch_bundles(socket: &SocketArgs) -> anyhow::Result<()> {
    let mut client = socket.client().await?;
    let x509 = client
        .fetch_x509_bundles(pb::X509BundlesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .next()
        .await
        .context("X.509 bundle stream closed")?
        .map_err(status_error)?;
    let jwt = client
        .fetch_jwt_bundles(pb::JwtBundlesRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .next()
        .await
        .context("JWT bundle stream closed")?
        .map_err(status_error)?;
    let mut out = serde_json::Map::new();
    for (td, der) in &x509.bundles {
        let pems: Vec<String> = split_der(der)?
            .into_iter()
            .map(|c| pem::encode(pem::CERTIFICATE, c))
            .collect();
        out.entry(td.clone())
            .or_insert_with(|| serde_json::json!({}))["x509_authorities"] = serde_json::json!(pems);
    }
    for (td, jwks) in &jwt.bundles {
        let doc: serde_json::Value = serde_json::from_slice(jwks).context("JWKS is not JSON")?;
        out.entry(td.clone())
            .or_insert_with(|| serde_json::json!({}))["jwks"] = doc;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn validate(socket: &SocketArgs, audience: String, token: String) -> anyhow::Result<()> {
    let mut client = socket.client().await?;
    let resp = client
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience,
            svid: token,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("SVID is valid.\nSPIFFE ID : {}", resp.spiffe_id);
    if let Some(claims) = resp.claims {
        println!("Claims    : {}", struct_to_json(&claims));
    }
    Ok(())
}

async fn watch(socket: &SocketArgs) -> anyhow::Result<()> {
    let mut client = socket.client().await?;
    let mut stream = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(status_error)?;
        println!("Received {} svid(s)", msg.svids.len());
        for svid in &msg.svids {
            print_svid(svid)?;
        }
    }
    Ok(())
}

/// `google.protobuf.Struct` → JSON text.
pub fn struct_to_json(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9e15 {
                (*n as i64).into()
            } else {
                (*n).into()
            }
        }
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}
