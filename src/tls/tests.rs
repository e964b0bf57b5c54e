//! Handshakes between real rustls endpoints over in-memory pipes, with SVIDs from our CA.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use spiffe::{SpiffeId, TrustDomain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::proto::workload as pb;
use crate::svid::keys::EcKey;
use crate::svid::x509::CaCert;

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn new_ca(td: &str) -> CaCert {
    let td = TrustDomain::new(td).unwrap();
    CaCert::self_signed(&td, HOUR, EcKey::generate().unwrap()).unwrap()
}

fn svid_msg(ca: &CaCert, spiffe_id: &str) -> pb::X509svid {
    let svid = ca.mint_svid(&id(spiffe_id), HOUR).unwrap();
    pb::X509svid {
        spiffe_id: spiffe_id.to_owned(),
        x509_svid: svid.chain.concat(),
        x509_svid_key: svid.key.der().to_vec(),
        bundle: ca.cert_der.clone(),
        hint: String::new(),
    }
}

fn response(ca: &CaCert, spiffe_id: &str) -> pb::X509svidResponse {
    pb::X509svidResponse {
        svids: vec![svid_msg(ca, spiffe_id)],
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    }
}

fn source(ca: &CaCert, spiffe_id: &str) -> X509Source {
    X509Source::fixed(Arc::new(
        X509Context::from_response(&response(ca, spiffe_id)).unwrap(),
    ))
}

fn expect(s: &str) -> Authorize {
    Authorize::expect_id(id(s))
}

/// Server result: the client's SPIFFE ID; client result: the server's serial. Each side
/// exchanges one message so failures the peer reports after the handshake surface too.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (io::Result<SpiffeId>, io::Result<String>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(s).await?;
        let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates()).map_err(io::Error::other)?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(peer)
    };
    let client_side = async move {
        let name = ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut tls = TlsConnector::from(client).connect(name, c).await?;
        let serial = peer_serial(tls.get_ref().1.peer_certificates()).map_err(io::Error::other)?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        Ok(serial)
    };
    tokio::join!(server_side, client_side)
}

#[test]
fn context_checks_the_svid_before_use() {
    let ca = new_ca("example.org");
    let good = svid_msg(&ca, "spiffe://example.org/a");
    let none = HashMap::new();
    let ctx = X509Context::from_svid(&good, &none).unwrap();
    assert_eq!(ctx.spiffe_id(), &id("spiffe://example.org/a"));
    assert_eq!(ctx.bundle("example.org").map(TrustBundle::len), Some(1));
    assert_eq!(ctx.serial().len(), 32);

    let other_ca = new_ca("example.org");
    type Case = (&'static str, pb::X509svid, fn(&SvidError) -> bool);
    let cases: Vec<Case> = vec![
        (
            "bundle of another CA",
            pb::X509svid {
                bundle: other_ca.cert_der.clone(),
                ..good.clone()
            },
            |e| matches!(e, SvidError::Chain { .. }),
        ),
        (
            "ID field differs from the certificate",
            pb::X509svid {
                spiffe_id: "spiffe://example.org/b".into(),
                ..good.clone()
            },
            |e| matches!(e, SvidError::IdMismatch { .. }),
        ),
        (
            "key of another SVID",
            pb::X509svid {
                x509_svid_key: svid_msg(&ca, "spiffe://example.org/a").x509_svid_key,
                ..good.clone()
            },
            |e| matches!(e, SvidError::Key(_)),
        ),
        (
            "empty bundle",
            pb::X509svid {
                bundle: Vec::new(),
                ..good.clone()
            },
            |e| matches!(e, SvidError::Bundle(_)),
        ),
        (
            "garbage chain",
            pb::X509svid {
                x509_svid: vec![0x30, 0x03, 1, 2, 3],
                ..good.clone()
            },
            |e| matches!(e, SvidError::ChainDer),
        ),
        (
            "a CA certificate as the SVID",
            pb::X509svid {
                x509_svid: ca.cert_der.clone(),
                ..good.clone()
            },
            |e| matches!(e, SvidError::Leaf(_)),
        ),
        (
            "not a SPIFFE ID",
            pb::X509svid {
                spiffe_id: "https://example.org/a".into(),
                ..good.clone()
            },
            |e| matches!(e, SvidError::SpiffeId(_)),
        ),
    ];
    for (name, svid, want) in cases {
        let err = X509Context::from_svid(&svid, &none).unwrap_err();
        assert!(want(&err), "{name}: {err}");
    }
    let empty = pb::X509svidResponse::default();
    assert!(matches!(
        X509Context::from_response(&empty),
        Err(SvidError::Empty)
    ));
}

#[tokio::test]
async fn mutual_tls_authorizes_both_peers() {
    let ca = new_ca("example.org");
    let a = source(&ca, "spiffe://example.org/stage/a");
    let b = source(&ca, "spiffe://example.org/stage/b");
    let server = server_config(a.clone(), expect("spiffe://example.org/stage/b")).unwrap();
    let client = client_config(b, expect("spiffe://example.org/stage/a")).unwrap();
    let (s, c) = handshake(server, client).await;
    assert_eq!(s.unwrap(), id("spiffe://example.org/stage/b"));
    assert_eq!(c.unwrap(), a.current().serial());
}

#[tokio::test]
async fn client_refuses_a_server_with_another_id() {
    let ca = new_ca("example.org");
    let server = server_config(
        source(&ca, "spiffe://example.org/stage/a"),
        expect("spiffe://example.org/stage/b"),
    )
    .unwrap();
    let client = client_config(
        source(&ca, "spiffe://example.org/stage/b"),
        expect("spiffe://example.org/stage/c"),
    )
    .unwrap();
    let (s, c) = handshake(server, client).await;
    assert!(s.is_err());
    let err = c.unwrap_err();
    assert!(
        matches!(peer_error(&err), Some(PeerError::Unauthorized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains(
        "peer SPIFFE ID spiffe://example.org/stage/a is not authorized (expected spiffe://example.org/stage/c)"
    ), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_with_another_id() {
    let ca = new_ca("example.org");
    let server = server_config(
        source(&ca, "spiffe://example.org/stage/a"),
        expect("spiffe://example.org/stage/c"),
    )
    .unwrap();
    let client = client_config(
        source(&ca, "spiffe://example.org/stage/b"),
        expect("spiffe://example.org/stage/a"),
    )
    .unwrap();
    let (s, c) = handshake(server, client).await;
    let err = s.unwrap_err();
    assert!(err.to_string().contains("spiffe://example.org/stage/b is not authorized (expected spiffe://example.org/stage/c)"), "{err}");
    assert!(
        c.is_err(),
        "the client learns of the refusal at the latest on its first read"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = new_ca("example.org");
    let server = server_config(
        source(&ca, "spiffe://example.org/a"),
        Authorize::any_in_trust_domain(TrustDomain::new("example.org").unwrap()),
    )
    .unwrap();
    let b = source(&ca, "spiffe://example.org/b");
    let verifier = SpiffeServerVerifier::new(b, expect("spiffe://example.org/a"), provider());
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let (s, c) = handshake(server, Arc::new(client)).await;
    let err = s.unwrap_err();
    assert!(
        err.to_string().contains("peer sent no certificates"),
        "{err}"
    );
    assert!(c.is_err());
}

#[tokio::test]
async fn peers_under_a_foreign_ca_or_trust_domain_are_refused() {
    let ca1 = new_ca("example.org");
    let rogue = new_ca("example.org");
    let server = server_config(
        source(&ca1, "spiffe://example.org/a"),
        Authorize::any_in_trust_domain(TrustDomain::new("example.org").unwrap()),
    )
    .unwrap();
    // Same trust domain name (and CA subject), signed by a CA the server does not trust; the
    // client trusts both.
    let mut rogue_msg = svid_msg(&rogue, "spiffe://example.org/b");
    rogue_msg.bundle = [rogue.cert_der.clone(), ca1.cert_der.clone()].concat();
    let rogue_ctx = X509Context::from_svid(&rogue_msg, &HashMap::new()).unwrap();
    let client = client_config(
        X509Source::fixed(Arc::new(rogue_ctx)),
        expect("spiffe://example.org/a"),
    )
    .unwrap();
    let err = handshake(server.clone(), client).await.0.unwrap_err();
    assert!(
        matches!(peer_error(&err), Some(PeerError::Chain { .. })),
        "{err}"
    );

    // Another trust domain, for which the server has no bundle.
    let other = new_ca("other.org");
    let mut other_resp = response(&other, "spiffe://other.org/b");
    other_resp
        .federated_bundles
        .insert("spiffe://example.org".into(), ca1.cert_der.clone());
    let other_ctx = X509Context::from_response(&other_resp).unwrap();
    let client = client_config(
        X509Source::fixed(Arc::new(other_ctx)),
        expect("spiffe://example.org/a"),
    )
    .unwrap();
    let err = handshake(server, client).await.0.unwrap_err();
    assert!(
        matches!(peer_error(&err), Some(PeerError::NoBundle(td)) if td == "other.org"),
        "{err}"
    );
}

#[tokio::test]
async fn federated_bundles_verify_peers_of_other_trust_domains() {
    let home = new_ca("example.org");
    let other = new_ca("other.org");
    let mut resp = response(&home, "spiffe://example.org/a");
    resp.federated_bundles
        .insert("spiffe://other.org".into(), other.cert_der.clone());
    let a = X509Source::fixed(Arc::new(X509Context::from_response(&resp).unwrap()));
    let server = server_config(
        a,
        Authorize::any_in_trust_domain(TrustDomain::new("other.org").unwrap()),
    )
    .unwrap();
    let mut b_resp = response(&other, "spiffe://other.org/b");
    b_resp
        .federated_bundles
        .insert("spiffe://example.org".into(), home.cert_der.clone());
    let b = X509Source::fixed(Arc::new(X509Context::from_response(&b_resp).unwrap()));
    let client = client_config(b, expect("spiffe://example.org/a")).unwrap();
    let (s, c) = handshake(server, client).await;
    assert_eq!(s.unwrap(), id("spiffe://other.org/b"));
    assert!(c.is_ok());
}

#[tokio::test]
async fn a_connection_after_rotation_presents_the_new_svid() {
    let ca = new_ca("example.org");
    let first =
        Arc::new(X509Context::from_response(&response(&ca, "spiffe://example.org/a")).unwrap());
    let (tx, rx) = watch::channel(first.clone());
    let a = X509Source::new(rx);
    let server = server_config(a, expect("spiffe://example.org/b")).unwrap();
    let client = client_config(
        source(&ca, "spiffe://example.org/b"),
        expect("spiffe://example.org/a"),
    )
    .unwrap();

    let before = handshake(server.clone(), client.clone()).await.1.unwrap();
    assert_eq!(before, first.serial());

    watcher::publish(&tx, &response(&ca, "spiffe://example.org/a"));
    let rotated = tx.borrow().serial().to_owned();
    assert_ne!(rotated, before);
    let after = handshake(server.clone(), client.clone()).await.1.unwrap();
    assert_eq!(after, rotated);

    // An update that fails its checks is not published: the last good SVID stays.
    let mut bad = response(&ca, "spiffe://example.org/a");
    bad.svids[0].bundle = new_ca("example.org").cert_der;
    watcher::publish(&tx, &bad);
    assert_eq!(tx.borrow().serial(), rotated);
    assert_eq!(handshake(server, client).await.1.unwrap(), rotated);
}
