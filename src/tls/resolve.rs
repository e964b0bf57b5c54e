//! Certificate resolvers that present the latest SVID: each handshake reads the source anew,
//! so a connection made after a rotation uses the new SVID while older connections keep theirs.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::X509Source;

/// Server side.
#[derive(Debug)]
pub struct SvidServerResolver(X509Source);

impl SvidServerResolver {
    pub fn new(source: X509Source) -> Self {
        Self(source)
    }
}

impl ResolvesServerCert for SvidServerResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }
}

/// Client side: presents the SVID whatever CAs the server hints at (SPIFFE servers send none).
#[derive(Debug)]
pub struct SvidClientResolver(X509Source);

impl SvidClientResolver {
    pub fn new(source: X509Source) -> Self {
        Self(source)
    }
}

impl ResolvesClientCert for SvidClientResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
