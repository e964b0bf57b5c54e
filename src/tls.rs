//! SPIFFE mTLS over rustls with SVIDs from the Workload API.
//!
//! An [`SvidWatcher`] follows `FetchX509SVID` on our socket and keeps the latest default
//! X.509-SVID and trust bundles, each checked before it is swapped in. [`server_config`] and
//! [`client_config`] build rustls configurations that present the latest SVID on every new
//! handshake, verify the peer's chain against the bundle of the peer's trust domain (no
//! hostname checks: SPIFFE names the peer by its URI SAN), then ask an [`Authorize`] whether
//! that SPIFFE ID may talk to us. Session resumption is off, so every connection presents the
//! current SVID and verifies and authorizes its peer afresh.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use svid_broker::tls::{self, Authorize, SvidWatcher};
//! let watcher = SvidWatcher::start("/tmp/svid-broker/api.sock".into()).await?;
//! let peer = spiffe::SpiffeId::new("spiffe://example.org/stage/b")?;
//! let config = tls::server_config(watcher.source(), Authorize::expect_id(peer))?;
//! let acceptor = tokio_rustls::TlsAcceptor::from(config);
//! # let _ = acceptor; Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod authorize;
mod context;
mod resolve;
mod verify;
mod watcher;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use spiffe::SpiffeId;

pub use authorize::Authorize;
pub use context::{SvidError, TrustBundle, X509Context, X509Source};
pub use resolve::{SvidClientResolver, SvidServerResolver};
pub use verify::{PeerError, SpiffeClientVerifier, SpiffeServerVerifier};
pub use watcher::{SvidWatcher, WatchError};

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration: presents the latest SVID from `source`, requires a client
/// certificate, verifies it against the bundle and authorizes its SPIFFE ID.
///
/// # Errors
/// The provider rejects the default protocol versions (it does not for ring).
pub fn server_config(
    source: X509Source,
    authorize: Authorize,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier = SpiffeClientVerifier::new(source.clone(), authorize, provider.clone());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SvidServerResolver::new(source)));
    // No resumption: a resumed session would skip both certificates, so a connection after a
    // rotation would neither present the new SVID nor re-verify and re-authorize the peer.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration: presents the latest SVID from `source` as client certificate and
/// verifies and authorizes the server the same way. The `ServerName` passed to the connector
/// is not checked; an IP address avoids sending SNI.
///
/// # Errors
/// The provider rejects the default protocol versions (it does not for ring).
pub fn client_config(
    source: X509Source,
    authorize: Authorize,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(source.clone(), authorize, provider.clone());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SvidClientResolver::new(source)));
    // Every connection is a full handshake (see `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SPIFFE ID in a peer's leaf certificate, as seen after a handshake
/// (`connection.peer_certificates()`): for logging who is on the other end.
///
/// # Errors
/// No certificate, or the leaf is not an X.509-SVID.
pub fn peer_spiffe_id(
    certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Result<SpiffeId, PeerError> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or(PeerError::NoCertificate)?;
    verify::leaf_spiffe_id(leaf.as_ref())
}

/// The serial number (hex) of a peer's leaf certificate.
///
/// # Errors
/// No certificate, or it does not parse.
pub fn peer_serial(
    certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
) -> Result<String, PeerError> {
    let leaf = certs
        .and_then(<[_]>::first)
        .ok_or(PeerError::NoCertificate)?;
    context::serial_hex(leaf.as_ref()).map_err(|_| PeerError::Malformed("leaf does not parse"))
}

/// The SPIFFE failure behind a failed handshake, if that is what failed: unwraps the
/// `io::Error` that tokio-rustls returns.
pub fn peer_error(err: &std::io::Error) -> Option<&PeerError> {
    let rustls_err = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_err {
        rustls::Error::Other(other) => other.0.downcast_ref::<PeerError>(),
        _ => None,
    }
}
