//! Trust bundles: a trust domain's X.509 authorities and JWT authorities, with the encodings
//! the Workload API sends (concatenated DER; JWKS with `spiffe_sequence` and
//! `spiffe_refresh_hint`).

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use spiffe::TrustDomain;

/// Most keys read from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 256;
/// Largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A public key that verifies JWT-SVIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtPublicKey {
    /// Uncompressed point 0x04 || x || y.
    P256(Vec<u8>),
    P384(Vec<u8>),
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuthority {
    pub kid: String,
    pub key: JwtPublicKey,
}

impl JwtAuthority {
    fn to_jwk(&self) -> Value {
        let mut jwk = match &self.key {
            JwtPublicKey::P256(p) | JwtPublicKey::P384(p) => {
                let (crv, n) = match &self.key {
                    JwtPublicKey::P256(_) => ("P-256", 32),
                    _ => ("P-384", 48),
                };
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": URL_SAFE_NO_PAD.encode(&p[1..1 + n]),
                    "y": URL_SAFE_NO_PAD.encode(&p[1 + n..1 + 2 * n]),
                })
            }
            JwtPublicKey::Rsa { n, e } => json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
            }),
        };
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("jwt-svid");
        jwk
    }
}

/// One trust domain's bundle, with its encodings computed once.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    pub sequence: u64,
    pub refresh_hint: Duration,
    pub x509_authorities: Vec<Vec<u8>>,
    pub jwt_authorities: Vec<JwtAuthority>,
    /// X.509 authorities, DER concatenated (the Workload API's bundle bytes).
    pub x509_der: Vec<u8>,
    /// JWKS of the JWT authorities only (FetchJWTBundles).
    pub jwks: Vec<u8>,
}

impl TrustBundle {
    pub fn new(
        trust_domain: TrustDomain,
        sequence: u64,
        refresh_hint: Duration,
        x509_authorities: Vec<Vec<u8>>,
        jwt_authorities: Vec<JwtAuthority>,
    ) -> Self {
        let x509_der = x509_authorities.concat();
        let jwks = serde_json::to_vec(&json!({
            "keys": jwt_authorities.iter().map(JwtAuthority::to_jwk).collect::<Vec<_>>(),
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": refresh_hint.as_secs(),
        }))
        .unwrap_or_default();
        Self {
            trust_domain,
            sequence,
            refresh_hint,
            x509_authorities,
            jwt_authorities,
            x509_der,
            jwks,
        }
    }

    /// The full SPIFFE bundle (JWKS with both `x509-svid` and `jwt-svid` keys), the format
    /// for federation and for `api fetch bundles`.
    pub fn spiffe_bundle_json(&self) -> Value {
        let mut keys: Vec<Value> = self
            .x509_authorities
            .iter()
            .filter_map(|der| x509_jwk(der))
            .collect();
        keys.extend(self.jwt_authorities.iter().map(JwtAuthority::to_jwk));
        json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint.as_secs(),
        })
    }

    pub fn find_jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.kid == kid)
    }
}

fn x509_jwk(der: &[u8]) -> Option<Value> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let spki = cert.public_key();
    let point = spki.subject_public_key.data.as_ref();
    if point.len() != 65 {
        return None;
    }
    Some(json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "use": "x509-svid",
        "x5c": [STANDARD.encode(der)],
    }))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("JWKS larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no \"keys\" array")]
    NoKeys,
    #[error("JWKS has more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
}

/// Reads the `jwt-svid` keys of a JWKS document. Keys of unknown `use` or `kty`, or
/// malformed ones, are dropped as the bundle format asks.
///
/// # Errors
/// The document is oversize, not JSON, or has no `keys`.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<JwtAuthority>, JwksError> {
    parse_keys(bytes, |use_| use_ == Some("jwt-svid"))
}

/// Reads the keys of a JWT bundle as SPIRE's Workload and Delegated Identity APIs send it:
/// `use` is `jwt-svid` or absent (go-spiffe writes JWT bundles without it).
///
/// # Errors
/// As [`parse_jwks`].
pub fn parse_jwt_bundle(bytes: &[u8]) -> Result<Vec<JwtAuthority>, JwksError> {
    parse_keys(bytes, |use_| matches!(use_, None | Some("jwt-svid")))
}

/// Reads the signing keys of an OIDC provider's JWKS (`use` absent or `sig`).
///
/// # Errors
/// As [`parse_jwks`].
pub fn parse_oidc_jwks(bytes: &[u8]) -> Result<Vec<JwtAuthority>, JwksError> {
    parse_keys(bytes, |use_| matches!(use_, None | Some("sig")))
}

fn parse_keys(
    bytes: &[u8],
    wanted_use: impl Fn(Option<&str>) -> bool,
) -> Result<Vec<JwtAuthority>, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeys)?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys);
    }
    Ok(keys
        .iter()
        .filter(|k| wanted_use(k.get("use").and_then(Value::as_str)))
        .filter_map(parse_jwk)
        .collect())
}

fn parse_jwk(jwk: &Value) -> Option<JwtAuthority> {
    let kid = jwk.get("kid")?.as_str()?.to_string();
    let b64 =
        |name: &str| -> Option<Vec<u8>> { URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok() };
    let key = match jwk.get("kty")?.as_str()? {
        "EC" => {
            let (x, y) = (b64("x")?, b64("y")?);
            let n = match jwk.get("crv")?.as_str()? {
                "P-256" => 32,
                "P-384" => 48,
                _ => return None,
            };
            if x.len() != n || y.len() != n {
                return None;
            }
            let point = [&[4u8][..], &x, &y].concat();
            if n == 32 {
                JwtPublicKey::P256(point)
            } else {
                JwtPublicKey::P384(point)
            }
        }
        "RSA" => JwtPublicKey::Rsa {
            n: b64("n")?,
            e: b64("e")?,
        },
        _ => return None,
    };
    Some(JwtAuthority { kid, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svid::keys::EcKey;

    #[test]
    fn jwks_round_trips_and_carries_spiffe_fields() {
        let k = EcKey::generate().unwrap();
        let auth = JwtAuthority {
            kid: "k1".into(),
            key: JwtPublicKey::P256(k.public_point().to_vec()),
        };
        let td = TrustDomain::new("example.org").unwrap();
        let b = TrustBundle::new(td, 7, Duration::from_secs(300), vec![], vec![auth.clone()]);
        let doc: Value = serde_json::from_slice(&b.jwks).unwrap();
        assert_eq!(doc["spiffe_sequence"], 7);
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        assert_eq!(doc["keys"][0]["use"], "jwt-svid");
        assert_eq!(parse_jwks(&b.jwks).unwrap(), vec![auth]);
    }

    #[test]
    fn unknown_keys_are_dropped_and_bad_documents_refused() {
        let doc = br#"{"keys":[{"use":"x509-svid","kty":"EC"},{"use":"jwt-svid","kty":"OKP","kid":"a"}]}"#;
        assert!(parse_jwks(doc).unwrap().is_empty());
        assert_eq!(parse_jwks(b"{}"), Err(JwksError::NoKeys));
        assert!(matches!(parse_jwks(b"nope"), Err(JwksError::Json(_))));
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert_eq!(parse_jwks(&big), Err(JwksError::TooLarge));
    }
}

/// Bundles of the other trust domains an upstream holds (federation), keyed by trust domain ID, as
/// the agent sent them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Federated {
    pub x509: std::collections::HashMap<String, Vec<u8>>,
    pub jwt: std::collections::HashMap<String, Vec<u8>>,
}
