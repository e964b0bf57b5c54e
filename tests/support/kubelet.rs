//! A test kubelet on 127.0.0.1 (ephemeral port), plain HTTP or HTTPS with an rcgen CA. It
//! answers `GET /pods` in the way the test asks: the pod list, slowly, 500, garbage, oversize.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the kubelet answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 with the pod list and a Content-Length.
    Serve,
    /// 200 with the pod list, chunked.
    ServeChunked,
    /// The pod list after a pause.
    Slow(Duration),
    /// This status, with a short text body.
    Status(u16),
    /// 200 with a body that is not JSON.
    GarbageBody,
    /// Bytes that are not HTTP at all.
    GarbageWire,
    /// 200 with `n` bytes, declared in Content-Length.
    Oversize(usize),
    /// 200 with `n` bytes, chunked, no length declared.
    OversizeChunked(usize),
}

struct State {
    mode: Mode,
    body: Vec<u8>,
    require_token: Option<String>,
}

pub struct TestKubelet {
    pub url: String,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    last_auth: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Drop for TestKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, a kubelet serving certificate for 127.0.0.1 and `node-a.test`, and a client
/// certificate, as files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
    pub client_cert_path: PathBuf,
    pub client_key_path: PathBuf,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test kubelet CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "node-a.test".to_string()])
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svid-broker");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("client cert");

        let ca_path = dir.path().join("ca.pem");
        let client_cert_path = dir.path().join("client.pem");
        let client_key_path = dir.path().join("client-key.pem");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write ca");
        std::fs::write(&client_cert_path, client_cert.pem()).expect("write client cert");
        std::fs::write(&client_key_path, client_key.serialize_pem()).expect("write client key");
        Self {
            dir,
            ca_path,
            client_cert_path,
            client_key_path,
            server_chain: vec![server_cert.der().clone()],
            server_key: server_key.serialize_der(),
            ca_der: ca_cert.der().clone(),
        }
    }

    /// A second, unrelated CA file (the kubelet's certificate does not chain to it).
    pub fn other_ca(&self) -> PathBuf {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("cert");
        let path = self.dir.path().join("other-ca.pem");
        std::fs::write(&path, cert.pem()).expect("write");
        path
    }

    pub fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join("token");
        std::fs::write(&path, format!("{token}\n")).expect("write token");
        path
    }

    fn server_config(&self, require_client_cert: bool) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).expect("root");
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        builder
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server cert")
    }
}

impl TestKubelet {
    /// The read-only port: plain HTTP.
    pub async fn http(body: Vec<u8>) -> Self {
        Self::start(body, None).await
    }

    /// The authenticated port: HTTPS with `pki`'s serving certificate.
    pub async fn https(body: Vec<u8>, pki: &Pki, require_client_cert: bool) -> Self {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(require_client_cert)));
        Self::start(body, Some(acceptor)).await
    }

    async fn start(body: Vec<u8>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Serve,
            body,
            require_token: None,
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let last_auth = Arc::new(Mutex::new(None));
        let (st, rq, la) = (state.clone(), requests.clone(), last_auth.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (st, rq, la, tls) = (st.clone(), rq.clone(), la.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, st, rq, la).await;
                            }
                        }
                        None => serve(tcp, st, rq, la).await,
                    }
                });
            }
        });
        Self {
            url: format!("{scheme}://{addr}"),
            state,
            requests,
            last_auth,
            task,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("lock").mode = mode;
    }

    pub fn set_body(&self, body: Vec<u8>) {
        self.state.lock().expect("lock").body = body;
    }

    /// Answer 401 unless `Authorization: Bearer <token>` comes with the request.
    pub fn require_token(&self, token: &str) {
        self.state.lock().expect("lock").require_token = Some(token.to_string());
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn last_authorization(&self) -> Option<String> {
        self.last_auth.lock().expect("lock").clone()
    }
}

/// A URL on which nothing listens.
pub async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    last_auth: Arc<Mutex<Option<String>>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let auth = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        })
        .map(str::to_string);
    *last_auth.lock().expect("lock") = auth.clone();
    let (mode, body, require) = {
        let st = state.lock().expect("lock");
        (st.mode.clone(), st.body.clone(), st.require_token.clone())
    };
    if path != "/pods" {
        return respond(&mut io, 404, b"404 page not found").await;
    }
    if let Some(token) = require {
        if auth.as_deref() != Some(format!("Bearer {token}").as_str()) {
            return respond(&mut io, 401, b"Unauthorized").await;
        }
    }
    match mode {
        Mode::Serve => respond(&mut io, 200, &body).await,
        Mode::Slow(pause) => {
            tokio::time::sleep(pause).await;
            respond(&mut io, 200, &body).await
        }
        Mode::ServeChunked => chunked(&mut io, &body).await,
        Mode::Status(code) => respond(&mut io, code, b"internal error\n").await,
        Mode::GarbageBody => respond(&mut io, 200, b"<html>this is not json</html>").await,
        Mode::GarbageWire => {
            let _ = io
                .write_all(b"\x00\x01garbage that is not HTTP\r\n\r\n")
                .await;
            let _ = io.shutdown().await;
        }
        Mode::Oversize(n) => respond(&mut io, 200, &vec![b' '; n]).await,
        Mode::OversizeChunked(n) => chunked(&mut io, &vec![b' '; n]).await,
    }
}

async fn respond<S: AsyncWrite + Unpin>(io: &mut S, code: u16, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = io.write_all(head.as_bytes()).await;
    let _ = io.write_all(body).await;
    let _ = io.shutdown().await;
}

async fn chunked<S: AsyncWrite + Unpin>(io: &mut S, body: &[u8]) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if io.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for part in body.chunks(64 * 1024) {
        let frame = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
        if io.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = io.write_all(b"0\r\n\r\n").await;
    let _ = io.shutdown().await;
}

/// A fake proc root holding one process, `pid`, with this cgroup (and optional mountinfo).
pub fn fake_proc(pid: i32, cgroup: Option<&Path>, mountinfo: Option<&Path>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let proc = dir.path().join(pid.to_string());
    std::fs::create_dir_all(&proc).expect("mkdir");
    if let Some(src) = cgroup {
        std::fs::copy(src, proc.join("cgroup")).expect("copy cgroup");
    }
    if let Some(src) = mountinfo {
        std::fs::copy(src, proc.join("mountinfo")).expect("copy mountinfo");
    }
    dir
}
