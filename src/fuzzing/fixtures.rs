//! Fixed keys the targets verify against, built once per process. Test keys only: they sign
//! nothing outside the fuzz corpus.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use spiffe::{SpiffeId, TrustDomain};

use crate::broker::oidc::{OidcIssuerConfig, OidcIssuers};
use crate::proto::workload as pb;
use crate::svid::bundle::{JwtAuthority, JwtPublicKey, TrustBundle};
use crate::svid::keys::{EcKey, SecretKey};
use crate::svid::x509::CaCert;
use crate::tls::X509Context;

pub const TRUST_DOMAIN: &str = "example.org";
pub const JWT_KID: &str = "fuzz-k1";
pub const AUDIENCE: &str = "spiffe://example.org/tool/a";
pub const OIDC_ISSUER: &str = "https://login.example.com";
pub const OIDC_AUDIENCE: &str = "svid-broker";
/// Lifetime of the CA and the SVIDs in the generated seeds: they must verify for years.
pub const LONG_TTL: Duration = Duration::from_secs(50 * 365 * 24 * 3600);

/// P-256 PKCS#8 of the CA.
const CA_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSKrON9Yi7UPelWSmozrpczXknRxWdTypIwPKl6daw26hRANCAAQcT5Q1ulO97ArmgmaDKJhNJaQWWNnJJyxbyccvjKuCXL2UkYyoS/NBmu8oITkbIH8z+zj1cHxcNzigeuLBrq8o";
/// P-256 PKCS#8 of the JWT signing key (also the OIDC issuer's key).
const JWT_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcmcmaxoMYVks98KYJ0VEt6q1nIpvxTJ28lfT0348AOahRANCAARVGlL9BwbZ+TFSbpPe+zEydndQYVgShXaA+CiO+tU0SlhaFMKa+uW93asYGU291XnCjEjXtIcLJVLdIdEejNFy";

fn key(b64: &str) -> EcKey {
    let der = STANDARD.decode(b64).expect("fixture key is base64");
    EcKey::from_pkcs8(SecretKey::new(der)).expect("fixture key is P-256 PKCS#8")
}

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).expect("fixture trust domain")
}

pub fn ca_key() -> EcKey {
    key(CA_KEY)
}

pub fn jwt_key() -> EcKey {
    key(JWT_KEY)
}

/// A CA with the fixed key and subject: certificates its key signed chain to it whenever it
/// was made, so seeds generated earlier still verify.
pub fn ca() -> CaCert {
    CaCert::self_signed(&trust_domain(), LONG_TTL, ca_key()).expect("fixture CA")
}

/// The JWT bundle of `example.org`: the one fixed key.
pub fn jwt_bundle() -> &'static TrustBundle {
    static BUNDLE: OnceLock<TrustBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        TrustBundle::new(
            trust_domain(),
            1,
            Duration::from_secs(300),
            vec![],
            vec![JwtAuthority {
                kid: JWT_KID.into(),
                key: JwtPublicKey::P256(jwt_key().public_point().to_vec()),
            }],
        )
    })
}

/// One OIDC issuer whose JWKS holds the fixed JWT key (as `use: sig`).
pub fn oidc() -> &'static OidcIssuers {
    static ISSUERS: OnceLock<OidcIssuers> = OnceLock::new();
    ISSUERS.get_or_init(|| {
        let jwks = String::from_utf8(jwt_bundle().jwks.clone())
            .expect("JWKS is JSON")
            .replace("jwt-svid", "sig");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks).expect("write JWKS");
        OidcIssuers::load(&[OidcIssuerConfig {
            issuer: OIDC_ISSUER.into(),
            audience: OIDC_AUDIENCE.into(),
            jwks_path: path,
        }])
        .expect("fixture OIDC issuer")
    })
}

/// An SVID response as the Workload API sends it: one SVID for `id`, its key, the bundle.
pub fn svid_response(id: &str) -> pb::X509svidResponse {
    let ca = ca();
    let id = SpiffeId::new(id).expect("fixture SPIFFE ID");
    let svid = ca.mint_svid(&id, LONG_TTL).expect("fixture SVID");
    pb::X509svidResponse {
        svids: vec![pb::X509svid {
            spiffe_id: id.to_string(),
            x509_svid: svid.chain.concat(),
            x509_svid_key: svid.key.der().to_vec(),
            bundle: ca.cert_der.clone(),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: HashMap::new(),
    }
}

/// Our own X.509 context (SVID `spiffe://example.org/fuzz`), for verifying peers against.
pub fn x509_context() -> Arc<X509Context> {
    static CONTEXT: OnceLock<Arc<X509Context>> = OnceLock::new();
    CONTEXT
        .get_or_init(|| {
            let resp = svid_response("spiffe://example.org/fuzz");
            Arc::new(X509Context::from_response(&resp).expect("fixture X.509 context"))
        })
        .clone()
}
