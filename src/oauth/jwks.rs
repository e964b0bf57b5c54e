//! The trust domain's JWT keys as a plain JWKS (RFC 7517) for OAuth libraries: `use: sig`
//! and `alg` on each key (a SPIFFE bundle says `use: jwt-svid`, which generic libraries such
//! as PyJWT's `PyJWKClient` skip), with cache headers that follow key rotation.
//!
//! The embedded authority publishes a successor JWT key at half its lifetime and signs with
//! it from three quarters: a quarter of the lifetime ahead. `max-age` is an eighth of the
//! key lifetime (capped by the bundle's refresh hint), so a verifier that honours it has
//! fetched the successor at least an eighth of the lifetime before the first token it signs.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::svid::bundle::{JwtPublicKey, TrustBundle};

/// Floor of `max-age`, so a very short key lifetime does not turn into no caching at all.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(1);

/// One JWK with `use: sig` and the algorithm the key signs with.
fn jwk(kid: &str, key: &JwtPublicKey) -> Value {
    let mut j = match key {
        JwtPublicKey::P256(p) => json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&p[33..65]),
        }),
        JwtPublicKey::P384(p) => json!({
            "kty": "EC", "crv": "P-384", "alg": "ES384",
            "x": URL_SAFE_NO_PAD.encode(&p[1..49]),
            "y": URL_SAFE_NO_PAD.encode(&p[49..97]),
        }),
        JwtPublicKey::Rsa { n, e } => json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(n),
            "e": URL_SAFE_NO_PAD.encode(e),
        }),
    };
    j["kid"] = json!(kid);
    j["use"] = json!("sig");
    j
}

/// The JWKS document of `bundle`'s JWT authorities.
pub fn document(bundle: &TrustBundle) -> Value {
    json!({
        "keys": bundle
            .jwt_authorities
            .iter()
            .filter(|a| match &a.key {
                JwtPublicKey::P256(p) => p.len() == 65,
                JwtPublicKey::P384(p) => p.len() == 97,
                JwtPublicKey::Rsa { .. } => true,
            })
            .map(|a| jwk(&a.kid, &a.key))
            .collect::<Vec<_>>(),
    })
}

/// The signing algorithms of the keys published now.
pub fn algorithms(bundle: &TrustBundle) -> Vec<&'static str> {
    let mut algs: Vec<&'static str> = bundle
        .jwt_authorities
        .iter()
        .map(|a| match a.key {
            JwtPublicKey::P256(_) => "ES256",
            JwtPublicKey::P384(_) => "ES384",
            JwtPublicKey::Rsa { .. } => "RS256",
        })
        .collect();
    algs.sort_unstable();
    algs.dedup();
    if algs.is_empty() {
        algs.push("ES256");
    }
    algs
}

/// `max-age` for a key lifetime and refresh hint (see the module text).
pub fn max_age(jwt_key_ttl: Duration, refresh_hint: Duration) -> Duration {
    (jwt_key_ttl / 8).min(refresh_hint).max(MIN_MAX_AGE)
}

/// The `ETag` of a bundle: its sequence number, which changes with every key change.
pub fn etag(bundle: &TrustBundle) -> String {
    format!("\"{}\"", bundle.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svid::bundle::JwtAuthority;

    #[test]
    fn keys_are_marked_for_signatures() {
        let mut p = vec![4u8];
        p.extend([1u8; 64]);
        let b = TrustBundle::new(
            spiffe::TrustDomain::new("example.org").unwrap(),
            7,
            Duration::from_secs(300),
            vec![],
            vec![JwtAuthority {
                kid: "k1".into(),
                key: JwtPublicKey::P256(p),
            }],
        );
        let d = document(&b);
        assert_eq!(d["keys"][0]["use"], "sig");
        assert_eq!(d["keys"][0]["alg"], "ES256");
        assert_eq!(d["keys"][0]["kid"], "k1");
        assert_eq!(etag(&b), "\"7\"");
        assert_eq!(algorithms(&b), ["ES256"]);
    }

    #[test]
    fn max_age_stays_inside_the_prepublication_window() {
        let day = Duration::from_secs(86_400);
        // A day-long key: successor published 6 h before it signs; cache at most the hint.
        assert_eq!(
            max_age(day, Duration::from_secs(300)),
            Duration::from_secs(300)
        );
        // A 16-minute key: published 4 min ahead; cache 2 min.
        assert_eq!(
            max_age(Duration::from_secs(960), Duration::from_secs(300)),
            Duration::from_secs(120)
        );
        assert_eq!(max_age(Duration::from_secs(2), day), MIN_MAX_AGE);
    }
}
