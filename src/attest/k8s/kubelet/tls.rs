//! TLS to the kubelet: roots from `ca_path` (or no verification, only when configured), and
//! an optional client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use zeroize::Zeroizing;

use super::super::config::{K8sAttestorConfig, K8sConfigError, DEFAULT_CA_PATH};

pub(super) fn tls_config(
    cfg: &K8sAttestorConfig,
    client_pair: Option<&(PathBuf, PathBuf)>,
) -> Result<rustls::ClientConfig, K8sConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if cfg.skip_kubelet_verification {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert { provider }))
    } else {
        let path = cfg
            .ca_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_PATH));
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs("ca_path", &path)? {
            roots.add(cert)?;
        }
        builder.with_root_certificates(roots)
    };
    Ok(match client_pair {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("client_cert_path", cert)?;
            let key = read_key(key)?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, K8sConfigError> {
    std::fs::read(path).map_err(|source| K8sConfigError::ReadFile {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, K8sConfigError> {
    let pem = read_pem(key, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| K8sConfigError::ReadFile {
            key,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(K8sConfigError::EmptyPem {
            key,
            path: path.to_path_buf(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, K8sConfigError> {
    let key = "client_key_path";
    let pem = Zeroizing::new(read_pem(key, path)?);
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| K8sConfigError::ReadFile {
            key,
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| K8sConfigError::EmptyPem {
            key,
            path: path.to_path_buf(),
            what: "PEM private key",
        })
}

/// `skip_kubelet_verification`: any certificate is accepted, but the handshake signatures are
/// still checked, so the session is at least bound to the presented key.
#[derive(Debug)]
struct AnyServerCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
