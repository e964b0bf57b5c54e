//! TLS for the OAuth listener: an operator certificate from PEM files, or the broker's own
//! X.509-SVID for a registered SPIFFE ID, re-read on every handshake so a renewed SVID is
//! served from the next connection on.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::config::TlsMode;
use crate::authority::Issuer;
use crate::registry::{Identity, Registry};

/// The rustls configuration for `mode`, or `None` for plain HTTP.
///
/// # Errors
/// Unreadable or mismatched certificate and key, or an unregistered SPIFFE ID.
pub fn server_config(
    mode: &TlsMode,
    identities: &Arc<dyn Issuer>,
    registry: &Registry,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let builder = || {
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth())
    };
    let mut config = match mode {
        TlsMode::Plain => return Ok(None),
        TlsMode::Files { cert, key } => {
            let certs = read_certs(cert)?;
            let key = read_key(key)?;
            builder()?
                .with_single_cert(certs, key)
                .map_err(|e| anyhow::anyhow!("oauth.tls_cert_file / tls_key_file: {e}"))?
        }
        TlsMode::Svid(id) => {
            let spiffe_id = crate::spiffe_id::parse(id)
                .map_err(|e| anyhow::anyhow!("oauth.tls_spiffe_id {id:?}: {e}"))?;
            let (identity, _) = registry.entry_for_id(&spiffe_id).ok_or_else(|| {
                anyhow::anyhow!(
                    "oauth.tls_spiffe_id {id}: no [[entry]] without placeholders names it"
                )
            })?;
            let resolver = SvidResolver {
                identities: identities.clone(),
                identity,
                last: Mutex::new(None),
            };
            resolver.current().ok_or_else(|| {
                anyhow::anyhow!("oauth.tls_spiffe_id {id}: cannot mint its X.509-SVID")
            })?;
            builder()?.with_cert_resolver(Arc::new(resolver))
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// ring, as everywhere in the daemon.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
    );
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .ok_or_else(|| anyhow::anyhow!("{}: no private key", path.display()))
}

/// Presents the broker's current X.509-SVID for one identity.
struct SvidResolver {
    identities: Arc<dyn Issuer>,
    identity: Identity,
    /// (serial, key): rebuilt only when the SVID changed.
    last: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl SvidResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self.identities.x509_svid(&self.identity).ok()?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((serial, key)) = last.as_ref() {
            if *serial == svid.serial {
                return Some(key.clone());
            }
        }
        let chain = svid
            .chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.der().to_vec()));
        let certified = Arc::new(CertifiedKey::from_der(chain, key, &provider()).ok()?);
        *last = Some((svid.serial.clone(), certified.clone()));
        Some(certified)
    }
}

impl std::fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidResolver")
            .field("spiffe_id", &self.identity.spiffe_id.to_string())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}
