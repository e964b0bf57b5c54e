//! The latest X.509-SVID and trust bundles, parsed and checked once when they arrive, and the
//! watch channel that hands them to resolvers and verifiers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor, UnixTime};
use rustls::sign::CertifiedKey;
use spiffe::{SpiffeId, TrustDomain};
use tokio::sync::watch;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::proto::workload as pb;
use crate::svid::x509::{check_leaf, X509Error};

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("the Workload API answer holds no X.509-SVID")]
    Empty,
    #[error("invalid SPIFFE ID {0:?}")]
    SpiffeId(String),
    #[error("the SVID certificate chain is empty or does not parse")]
    ChainDer,
    #[error(transparent)]
    Leaf(#[from] X509Error),
    #[error("the SVID is for {field} but its certificate names {cert}")]
    IdMismatch { field: SpiffeId, cert: SpiffeId },
    #[error("the trust bundle of {0} is empty or does not parse")]
    Bundle(String),
    #[error("the SVID does not chain to the trust bundle of {trust_domain}: {source}")]
    Chain {
        trust_domain: String,
        source: webpki::Error,
    },
    #[error("the SVID private key does not load or does not match the certificate: {0}")]
    Key(rustls::Error),
}

/// The CA certificates of one trust domain, parsed into trust anchors.
pub struct TrustBundle {
    trust_domain: TrustDomain,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// A bundle from concatenated DER certificates (the Workload API's encoding).
    ///
    /// # Errors
    /// The bytes hold no certificate, or one does not parse as a trust anchor.
    pub fn from_concatenated_der(trust_domain: TrustDomain, der: &[u8]) -> Result<Self, SvidError> {
        let bad = || SvidError::Bundle(trust_domain.to_string());
        let certs = split_der(der).ok_or_else(bad)?;
        let anchors = certs
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        Ok(Self {
            trust_domain,
            anchors,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Builds a path from `leaf` through `intermediates` to one of this bundle's CAs and checks
    /// validity at `now` and the extended key usage.
    pub(crate) fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        provider: &CryptoProvider,
    ) -> Result<(), webpki::Error> {
        let cert = EndEntityCert::try_from(leaf)?;
        cert.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )?;
        Ok(())
    }
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain.to_string())
            .field("cas", &self.anchors.len())
            .finish()
    }
}

/// One checked X.509-SVID with its key, plus the trust bundles to verify peers with.
pub struct X509Context {
    spiffe_id: SpiffeId,
    serial: String,
    not_after: SystemTime,
    hint: String,
    certified: Arc<CertifiedKey>,
    bundles: HashMap<String, TrustBundle>,
}

impl X509Context {
    /// The default (first) SVID of a `FetchX509SVID` answer, with its bundle and the
    /// federated bundles.
    ///
    /// # Errors
    /// See [`X509Context::from_svid`]; [`SvidError::Empty`] when there is no SVID.
    pub fn from_response(resp: &pb::X509svidResponse) -> Result<Self, SvidError> {
        let svid = resp.svids.first().ok_or(SvidError::Empty)?;
        Self::from_svid(svid, &resp.federated_bundles)
    }

    /// Checks an SVID before anyone uses it: the SPIFFE ID parses and equals the leaf's one
    /// URI SAN, the leaf follows the X.509-SVID rules, the key matches the leaf, and the chain
    /// verifies against the bundle of the SVID's own trust domain now.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn from_svid(
        svid: &pb::X509svid,
        federated: &HashMap<String, Vec<u8>>,
    ) -> Result<Self, SvidError> {
        let spiffe_id = crate::spiffe_id::parse(&svid.spiffe_id)
            .map_err(|_| SvidError::SpiffeId(svid.spiffe_id.clone()))?;
        let chain = split_der(&svid.x509_svid).ok_or(SvidError::ChainDer)?;
        let (leaf, intermediates) = chain.split_first().ok_or(SvidError::ChainDer)?;
        let facts = check_leaf(leaf.as_ref())?;
        if facts.spiffe_id != spiffe_id {
            return Err(SvidError::IdMismatch {
                field: spiffe_id,
                cert: facts.spiffe_id,
            });
        }
        let own_td = spiffe_id.trust_domain_name().to_owned();
        let mut bundles = HashMap::new();
        for (key, der) in federated {
            let td = crate::spiffe_id::parse_trust_domain(key)
                .map_err(|_| SvidError::Bundle(key.clone()))?;
            bundles.insert(td.to_string(), TrustBundle::from_concatenated_der(td, der)?);
        }
        let td = TrustDomain::new(&own_td).map_err(|_| SvidError::Bundle(own_td.clone()))?;
        let own = TrustBundle::from_concatenated_der(td, &svid.bundle)?;
        let provider = super::provider();
        for usage in [KeyUsage::client_auth(), KeyUsage::server_auth()] {
            own.verify(leaf, intermediates, UnixTime::now(), usage, &provider)
                .map_err(|source| SvidError::Chain {
                    trust_domain: own_td.clone(),
                    source,
                })?;
        }
        bundles.insert(own_td, own);
        let serial = serial_hex(leaf.as_ref()).map_err(|_| SvidError::ChainDer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone()));
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(SvidError::Key)?;
        certified.keys_match().map_err(SvidError::Key)?;
        Ok(Self {
            spiffe_id,
            serial,
            not_after: facts.not_after,
            hint: svid.hint.clone(),
            certified: Arc::new(certified),
            bundles,
        })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The leaf's serial number, hex (as the daemon logs it).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn hint(&self) -> &str {
        &self.hint
    }

    /// The chain and signing key, as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The bundle for a trust domain (by name, e.g. `example.org`).
    pub fn bundle(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }
}

impl std::fmt::Debug for X509Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Context")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("bundles", &self.bundles.values().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Where resolvers and verifiers read the current [`X509Context`]: a watch channel that an
/// [`super::SvidWatcher`] updates, or a fixed context.
#[derive(Clone)]
pub struct X509Source(watch::Receiver<Arc<X509Context>>);

impl X509Source {
    /// A source that never changes (files loaded once, a snapshot, tests).
    pub fn fixed(context: Arc<X509Context>) -> Self {
        Self(watch::channel(context).1)
    }

    pub(crate) fn new(rx: watch::Receiver<Arc<X509Context>>) -> Self {
        Self(rx)
    }

    /// The latest context.
    pub fn current(&self) -> Arc<X509Context> {
        self.0.borrow().clone()
    }

    /// Waits until a new context is published.
    ///
    /// # Errors
    /// The publisher is gone (a fixed source, or the watcher was dropped).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.0.changed().await
    }
}

impl std::fmt::Debug for X509Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("X509Source").field(&self.current()).finish()
    }
}

/// The certificates of concatenated DER; `None` when empty or not all certificates.
fn split_der(der: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs = crate::svid::der::split_certificates(der).ok()?;
    (!certs.is_empty()).then(|| {
        certs
            .into_iter()
            .map(|c| CertificateDer::from(c.to_vec()))
            .collect()
    })
}

/// A certificate's serial number, hex.
pub(crate) fn serial_hex(der: &[u8]) -> Result<String, X509Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| X509Error::Parse(e.to_string()))?;
    Ok(hex::encode(cert.raw_serial()))
}
