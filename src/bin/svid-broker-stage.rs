//! A pipeline stage talking mTLS with SVIDs from svid-broker: an example of `svid_broker::tls`
//! and a tool for checking that two workloads can reach and authorize each other.
//!
//! ```text
//! svid-broker-stage serve --listen 127.0.0.1:7000 --peer-id spiffe://example.org/stage/b
//! svid-broker-stage call --connect 127.0.0.1:7000 --peer-id spiffe://example.org/stage/a --message hello
//! ```

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rustls::pki_types::ServerName;
use spiffe::SpiffeId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use svid_broker::client::socket_path;
use svid_broker::tls::{self, Authorize, SvidWatcher, X509Source};

/// Longest request line accepted, newline included.
const MAX_LINE: u64 = 4096;
/// Time allowed for a handshake plus one request and its reply.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "A pipeline stage speaking mTLS with SVIDs from svid-broker")]
struct Cli {
    /// Workload API socket (path or unix:///path).
    #[arg(long, global = true, env = "SPIFFE_ENDPOINT_SOCKET")]
    socket: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept mTLS connections from the peer and answer "hello".
    Serve {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The only SPIFFE ID allowed to connect.
        #[arg(long)]
        peer_id: SpiffeId,
    },
    /// Connect to a stage, send one line, print the reply.
    Call {
        #[arg(long)]
        connect: SocketAddr,
        /// The SPIFFE ID the server must have.
        #[arg(long)]
        peer_id: SpiffeId,
        #[arg(long, default_value = "hello")]
        message: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svid-broker-stage: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = socket_path(cli.socket.as_deref(), None)?;
    let watcher = tokio::time::timeout(EXCHANGE_TIMEOUT, SvidWatcher::start(socket))
        .await
        .map_err(|_| {
            anyhow::anyhow!("no X.509-SVID from the Workload API within {EXCHANGE_TIMEOUT:?}")
        })?
        .context("cannot get an X.509-SVID")?;
    match cli.command {
        Command::Serve { listen, peer_id } => serve(watcher, listen, peer_id).await,
        Command::Call {
            connect,
            peer_id,
            message,
        } => call(watcher, connect, peer_id, &message).await,
    }
}

async fn serve(watcher: SvidWatcher, listen: SocketAddr, peer: SpiffeId) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let own = watcher.current();
    println!(
        "listening on {} as {} (serial {})",
        listener.local_addr()?,
        own.spiffe_id(),
        own.serial()
    );
    let authorize = Authorize::expect_id(peer);
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not exit.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A snapshot per connection, so the log line names exactly the SVID this connection
        // presents; `tls::server_config(watcher.source(), …)` built once does the same
        // without the log line.
        let snapshot = watcher.current();
        let config = tls::server_config(X509Source::fixed(snapshot.clone()), authorize.clone())?;
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(EXCHANGE_TIMEOUT, TlsAcceptor::from(config).accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return eprintln!("refused connection from {from}: {}", describe(&e)),
                Err(_) => return eprintln!("handshake with {from} timed out"),
            };
            let peer = match tls::peer_spiffe_id(tls.get_ref().1.peer_certificates()) {
                Ok(peer) => peer,
                Err(e) => return eprintln!("connection from {from}: {e}"),
            };
            println!(
                "connection from {from}: peer={peer} serial={}",
                snapshot.serial()
            );
            if let Err(e) = answer_lines(tls, snapshot.spiffe_id(), &peer).await {
                eprintln!("connection from {from} ({peer}) failed: {}", describe(&e));
            }
        });
    }
}

/// "hello" → "hello from <own> to <peer>", one reply per line, until the peer closes, goes
/// quiet for `EXCHANGE_TIMEOUT` or sends an overlong line.
async fn answer_lines(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    own: &SpiffeId,
    peer: &SpiffeId,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(tls);
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        let mut limited = (&mut read).take(MAX_LINE);
        let next = limited.read_line(&mut line);
        let Ok(n) = tokio::time::timeout(EXCHANGE_TIMEOUT, next).await else {
            return write.shutdown().await;
        };
        let n = n?;
        if n == 0 {
            return write.shutdown().await;
        }
        if n as u64 == MAX_LINE && !line.ends_with('\n') {
            write.write_all(b"line too long\n").await?;
            return write.shutdown().await;
        }
        let reply = match line.trim_end() {
            "hello" => format!("hello from {own} to {peer}\n"),
            other => format!("unknown message {other:?}\n"),
        };
        write.write_all(reply.as_bytes()).await?;
        write.flush().await?;
    }
}

async fn call(
    watcher: SvidWatcher,
    addr: SocketAddr,
    peer: SpiffeId,
    message: &str,
) -> anyhow::Result<()> {
    let own = watcher.current().spiffe_id().clone();
    let config = tls::client_config(watcher.source(), Authorize::expect_id(peer))?;
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let tls = TlsConnector::from(config)
            .connect(ServerName::from(addr.ip()), tcp)
            .await
            .map_err(|e| anyhow::anyhow!("mTLS handshake with {addr} failed: {}", describe(&e)))?;
        let serial = tls::peer_serial(tls.get_ref().1.peer_certificates())?;
        let (read, mut write) = tokio::io::split(tls);
        write.write_all(format!("{message}\n").as_bytes()).await?;
        write.flush().await?;
        let mut reply = String::new();
        // In TLS 1.3 a server that refuses our certificate says so after our side of the
        // handshake is done: the refusal arrives here, as an alert.
        let refused = |why: String| {
            anyhow::anyhow!("{addr} refused the connection after the handshake ({why}); is {own} authorized there?")
        };
        BufReader::new(read)
            .take(MAX_LINE)
            .read_line(&mut reply)
            .await
            .map_err(|e| refused(describe(&e)))?;
        if reply.is_empty() {
            return Err(refused("closed without a reply".into()));
        }
        Ok((reply, serial))
    };
    let (reply, serial) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no reply from {addr} within {EXCHANGE_TIMEOUT:?}"))??;
    println!("reply: {}", reply.trim_end());
    println!("server serial: {serial}");
    Ok(())
}

/// The SPIFFE reason when that is what failed, else the I/O error.
fn describe(e: &std::io::Error) -> String {
    tls::peer_error(e).map_or_else(|| e.to_string(), ToString::to_string)
}
