//! X.509 from outside: an operator's CA PEM, concatenated DER bundles and SVID chains from
//! SPIRE or the Workload API, and peer certificates in a TLS handshake.
//!
//! The input is read three ways: as PEM (the operator CA path: certificates and key, each
//! certificate as an SVID leaf, as a peer's leaf and as a bundle member), as concatenated DER
//! (the certificate splitter, a trust bundle, a peer's chain presented to our verifier), and as a
//! `FetchX509SVID` response (protobuf).

use std::time::Duration;

use prost::Message;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use super::fixtures::{self, TRUST_DOMAIN};
use crate::proto::workload as pb;
use crate::svid::bundle::TrustBundle as SvidBundle;
use crate::svid::der::split_certificates;
use crate::svid::x509::{check_leaf, CaCert};
use crate::tls::{self, Authorize, PeerError, TrustBundle, X509Context, X509Source};

pub fn check(data: &[u8]) {
    pem(data);
    der(data);
    response(data);
}

/// The operator CA files: certificates and a PKCS#8 key in PEM.
fn pem(data: &[u8]) {
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut &data[..])
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    for der in &certs {
        one_cert(der);
    }
    for key in rustls_pemfile::pkcs8_private_keys(&mut &data[..]).filter_map(Result::ok) {
        let _ = crate::svid::keys::EcKey::from_pkcs8(crate::svid::keys::SecretKey::new(
            key.secret_pkcs8_der().to_vec(),
        ));
    }
    if let Some((first, above)) = certs.split_first() {
        // The fixed key matches none of them unless the input is the fixture CA itself.
        let _ = CaCert::from_parts(first.clone(), above.to_vec(), fixtures::ca_key());
    }
}

/// One certificate as an SVID leaf and as a bundle member.
fn one_cert(der: &[u8]) {
    let leaf = check_leaf(der);
    let peer = verify_peer(der, &[]);
    if let Ok(facts) = &leaf {
        // Every rule the verifier checks on a peer's leaf is one check_leaf checks too.
        if let Err(PeerError::Malformed(why)) = &peer {
            panic!(
                "check_leaf accepted {} but the peer verifier says {why}",
                facts.spiffe_id
            );
        }
    }
    // Encodes the certificate as a JWK where it holds a P-256 key.
    let bundle = SvidBundle::new(
        fixtures::trust_domain(),
        1,
        Duration::from_secs(60),
        vec![der.to_vec()],
        vec![],
    );
    let json = bundle.spiffe_bundle_json();
    assert!(json["keys"].as_array().is_some_and(|k| k.len() <= 1));
}

/// Concatenated DER, as SPIRE and the Workload API send bundles and chains.
fn der(data: &[u8]) {
    let certs = match split_certificates(data) {
        Ok(certs) => {
            // Strict: every byte is a certificate, in the order given.
            assert_eq!(certs.concat(), data, "the split lost or reordered bytes");
            certs
        }
        Err(e) => {
            assert!(e.offset < data.len(), "error past the end: {e}");
            let before = split_certificates(&data[..e.offset])
                .expect("the bytes before the reported offset split cleanly");
            assert_eq!(before.concat(), &data[..e.offset]);
            before
        }
    };
    assert!(certs.iter().all(|c| !c.is_empty()), "an empty certificate");
    if let Ok(strict) = TrustBundle::from_concatenated_der(fixtures::trust_domain(), data) {
        // The bundle reader accepts only what splits whole, one anchor per certificate.
        assert_eq!(
            certs.concat(),
            data,
            "a bundle from bytes that do not split"
        );
        assert_eq!(strict.len(), certs.len());
    }
    // The first certificate as a peer's leaf, the rest as its intermediates.
    if let Some((leaf, rest)) = certs.split_first() {
        one_cert(leaf);
        if !rest.is_empty() {
            let rest: Vec<Vec<u8>> = rest.iter().map(|c| c.to_vec()).collect();
            let _ = verify_peer(leaf, &rest);
        }
    }
}

/// A `FetchX509SVID` answer: accepted only when the SVID is one the fixture CA signed.
fn response(data: &[u8]) {
    let Ok(resp) = pb::X509svidResponse::decode(data) else {
        return;
    };
    if let Ok(ctx) = X509Context::from_response(&resp) {
        let svid = &resp.svids[0];
        assert_eq!(ctx.spiffe_id().to_string(), svid.spiffe_id);
        let chain = split_certificates(&svid.x509_svid).expect("accepted SVID chain splits");
        let facts = check_leaf(chain[0]).expect("accepted SVID breaks the leaf rules");
        assert_eq!(&facts.spiffe_id, ctx.spiffe_id());
        assert!(ctx.bundle(ctx.spiffe_id().trust_domain_name()).is_some());
    }
}

/// A peer's chain (`leaf`, `intermediates`) against our bundle, as a TLS server sees it.
fn verify_peer(leaf: &[u8], intermediates: &[Vec<u8>]) -> Result<(), PeerError> {
    let verifier = tls::SpiffeClientVerifier::new(
        X509Source::fixed(fixtures::x509_context()),
        Authorize::any_in_trust_domain(fixtures::trust_domain()),
        tls::provider(),
    );
    let leaf = CertificateDer::from(leaf.to_vec());
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    match verifier.verify_client_cert(&leaf, &intermediates, UnixTime::now()) {
        Ok(_) => {
            // Only the fixture CA signs for example.org, and the authorization asked for it.
            let id = fixtures::x509_context().spiffe_id().clone();
            assert_eq!(id.trust_domain_name(), TRUST_DOMAIN);
            Ok(())
        }
        Err(rustls::Error::Other(e)) => Err(match e.0.downcast_ref::<PeerError>() {
            Some(PeerError::Malformed(why)) => PeerError::Malformed(why),
            _ => PeerError::NoCertificate,
        }),
        Err(e) => panic!("verifier failed outside its own errors: {e}"),
    }
}
