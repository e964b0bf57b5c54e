//! Peer verification the SPIFFE way: the peer's leaf carries exactly one URI SAN, a SPIFFE
//! ID; its chain must build to a CA in the bundle of that ID's trust domain (webpki, with the
//! TLS role's EKU); then the ID is authorized. No hostname is checked.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use spiffe::SpiffeId;
use webpki::KeyUsage;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{Authorize, X509Source};

/// Why a peer was refused. Returned to rustls as `rustls::Error::Other`, so the local error
/// reads as below (the peer receives a `handshake_failure` alert).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer presented no certificate")]
    NoCertificate,
    #[error("peer certificate is not an X.509-SVID: {0}")]
    Malformed(&'static str),
    #[error("no trust bundle for the peer's trust domain {0}")]
    NoBundle(String),
    #[error("peer {peer} does not chain to the trust bundle of its trust domain: {source}")]
    Chain {
        peer: SpiffeId,
        source: webpki::Error,
    },
    #[error("peer SPIFFE ID {peer} is not authorized (expected {expected})")]
    Unauthorized { peer: SpiffeId, expected: String },
}

impl From<PeerError> for rustls::Error {
    fn from(e: PeerError) -> Self {
        rustls::Error::Other(OtherError(Arc::new(e)))
    }
}

/// The SPIFFE ID of a peer's leaf, with the checks every X.509-SVID verifier makes: exactly
/// one URI SAN holding a SPIFFE ID with a path, not a CA, no certificate or CRL signing.
pub(crate) fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId, PeerError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| PeerError::Malformed("leaf does not parse"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PeerError::Malformed("duplicate subjectAltName"))?
        .ok_or(PeerError::Malformed("no subjectAltName"))?;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return Err(PeerError::Malformed("not exactly one URI SAN"));
    };
    let id = crate::spiffe_id::parse(uri)
        .map_err(|_| PeerError::Malformed("URI SAN is not a SPIFFE ID"))?;
    if id.path().is_empty() {
        return Err(PeerError::Malformed("SPIFFE ID has no path"));
    }
    if cert.is_ca() {
        return Err(PeerError::Malformed("leaf is a CA"));
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(PeerError::Malformed("leaf may sign certificates or CRLs"));
        }
    }
    Ok(id)
}

/// What both verifiers share.
#[derive(Debug)]
struct Core {
    source: X509Source,
    authorize: Authorize,
    provider: Arc<CryptoProvider>,
}

impl Core {
    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, PeerError> {
        let peer = leaf_spiffe_id(leaf.as_ref())?;
        let context = self.source.current();
        let bundle = context
            .bundle(peer.trust_domain_name())
            .ok_or_else(|| PeerError::NoBundle(peer.trust_domain_name().to_owned()))?;
        if let Err(source) = bundle.verify(leaf, intermediates, now, usage, &self.provider) {
            return Err(PeerError::Chain { peer, source });
        }
        self.authorize.check(&peer)?;
        Ok(peer)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a server's X.509-SVID (client side).
#[derive(Debug)]
pub struct SpiffeServerVerifier(Core);

impl SpiffeServerVerifier {
    pub fn new(source: X509Source, authorize: Authorize, provider: Arc<CryptoProvider>) -> Self {
        Self(Core {
            source,
            authorize,
            provider,
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Verifies a client's X.509-SVID (server side); a client certificate is mandatory.
#[derive(Debug)]
pub struct SpiffeClientVerifier(Core);

impl SpiffeClientVerifier {
    pub fn new(source: X509Source, authorize: Authorize, provider: Arc<CryptoProvider>) -> Self {
        Self(Core {
            source,
            authorize,
            provider,
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

    use super::*;

    fn cert(sans: &[SanType], ca: bool, usages: Vec<KeyUsagePurpose>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        params.key_usages = usages;
        if ca {
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn peer_leaf_rules() {
        let sign = || vec![KeyUsagePurpose::DigitalSignature];
        let a = uri("spiffe://example.org/a");
        let cases: Vec<(&str, Vec<u8>, Result<&str, &str>)> = vec![
            (
                "one SPIFFE URI",
                cert(std::slice::from_ref(&a), false, sign()),
                Ok("spiffe://example.org/a"),
            ),
            ("no SAN", cert(&[], false, sign()), Err("no subjectAltName")),
            (
                "DNS name only",
                cert(
                    &[SanType::DnsName("a.example.org".try_into().unwrap())],
                    false,
                    sign(),
                ),
                Err("not exactly one URI SAN"),
            ),
            (
                "two URIs",
                cert(&[a.clone(), uri("spiffe://example.org/b")], false, sign()),
                Err("not exactly one URI SAN"),
            ),
            (
                "https URI",
                cert(&[uri("https://example.org/a")], false, sign()),
                Err("URI SAN is not a SPIFFE ID"),
            ),
            (
                "trust domain only",
                cert(&[uri("spiffe://example.org")], false, sign()),
                Err("SPIFFE ID has no path"),
            ),
            (
                "a CA",
                cert(std::slice::from_ref(&a), true, sign()),
                Err("leaf is a CA"),
            ),
            (
                "may sign certificates",
                cert(
                    &[a],
                    false,
                    vec![
                        KeyUsagePurpose::DigitalSignature,
                        KeyUsagePurpose::KeyCertSign,
                    ],
                ),
                Err("leaf may sign certificates or CRLs"),
            ),
            ("garbage", vec![0x30, 0x00], Err("leaf does not parse")),
        ];
        for (name, der, want) in cases {
            let got = leaf_spiffe_id(&der);
            match (got, want) {
                (Ok(id), Ok(w)) => assert_eq!(id.to_string(), w, "{name}"),
                (Err(PeerError::Malformed(why)), Err(w)) => assert_eq!(why, w, "{name}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
