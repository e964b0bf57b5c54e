//! JWT-SVIDs: ES256 signing and validation by the JWT-SVID rules — `alg` from the allowed
//! list only (never `none`, HS*, or EdDSA), header `alg`/`kid`/`typ` and nothing else, `kid`
//! required, `sub` a SPIFFE ID, `aud` containing the expected audience, `exp` in the future.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};
use serde_json::{json, Map, Value};
use spiffe::{SpiffeId, TrustDomain};

use super::bundle::{JwtPublicKey, TrustBundle};
use super::keys::{EcKey, KeyError};
use super::unix_seconds;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Longest token accepted for validation.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Signature algorithms a JWT-SVID may use.
pub const ALLOWED_ALGS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token is empty")]
    Empty,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token is not a JWS compact serialization (three base64url parts)")]
    Malformed,
    #[error("token header: {0}")]
    Header(String),
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    Algorithm(String),
    #[error("token has no \"kid\" header")]
    MissingKid,
    #[error("token claims: {0}")]
    Claims(String),
    #[error("token subject {0:?} is not a SPIFFE ID")]
    Subject(String),
    #[error("no bundle for trust domain {0:?} (not ours and not federated)")]
    UnknownTrustDomain(String),
    #[error("no key {kid:?} in the bundle of {trust_domain}")]
    UnknownKey { kid: String, trust_domain: String },
    #[error("signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("audience {0:?} is not in the token's aud")]
    Audience(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Signs `claims` as an ES256 JWS with header `{"alg":"ES256","kid":…,"typ":"JWT"}`.
///
/// # Errors
/// Signing failed.
pub fn sign_es256(key: &EcKey, kid: &str, claims: &Map<String, Value>) -> Result<String, JwtError> {
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()));
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(token)
}

/// The standard claims of a JWT-SVID, plus whatever `extra` a caller adds (task claims).
pub fn svid_claims(
    sub: &SpiffeId,
    audiences: &[String],
    issued: SystemTime,
    ttl: Duration,
    jti: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("sub".into(), json!(sub.to_string()));
    m.insert("aud".into(), json!(audiences));
    m.insert("iat".into(), json!(unix_seconds(issued)));
    m.insert("exp".into(), json!(unix_seconds(issued + ttl)));
    m.insert("jti".into(), json!(jti));
    m
}

/// A token whose shape was checked but not its signature.
#[derive(Debug)]
pub struct ParsedJwt {
    pub alg: String,
    pub kid: String,
    pub claims: Map<String, Value>,
    signing_input_len: usize,
    signature: Vec<u8>,
}

impl ParsedJwt {
    pub fn subject(&self) -> Result<SpiffeId, JwtError> {
        let sub = self
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        crate::spiffe_id::parse(sub).map_err(|_| JwtError::Subject(sub.to_string()))
    }

    pub fn audiences(&self) -> Vec<&str> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    pub fn numeric(&self, name: &str) -> Option<i64> {
        self.claims.get(name).and_then(Value::as_i64)
    }
}

/// Parses a compact JWS and checks the header and the presence of the mandatory claims.
///
/// # Errors
/// The first rule the token breaks.
pub fn parse(token: &str) -> Result<ParsedJwt, JwtError> {
    let parsed = parse_jws(token)?;
    if parsed.audiences().is_empty() {
        return Err(JwtError::Claims("aud missing or empty".into()));
    }
    parsed.subject()?;
    Ok(parsed)
}

/// Parses any JWS with an allowed algorithm, a `kid` and an integer `exp`, without the
/// JWT-SVID rules on `sub` and `aud` (for users' OIDC tokens).
///
/// # Errors
/// The first rule the token breaks.
pub fn parse_jws(token: &str) -> Result<ParsedJwt, JwtError> {
    if token.is_empty() {
        return Err(JwtError::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed);
    let header: Map<String, Value> =
        serde_json::from_slice(&decode(h)?).map_err(|e| JwtError::Header(e.to_string()))?;
    for key in header.keys() {
        if !matches!(key.as_str(), "alg" | "kid" | "typ") {
            return Err(JwtError::Header(format!("unexpected header {key:?}")));
        }
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !ALLOWED_ALGS.contains(&alg.as_str()) {
        return Err(JwtError::Algorithm(alg));
    }
    if let Some(typ) = header.get("typ") {
        if !matches!(typ.as_str(), Some("JWT") | Some("JOSE")) {
            return Err(JwtError::Header(format!("typ {typ} is not JWT or JOSE")));
        }
    }
    let kid = match header.get("kid").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => k.to_string(),
        _ => return Err(JwtError::MissingKid),
    };
    let claims: Map<String, Value> =
        serde_json::from_slice(&decode(c)?).map_err(|e| JwtError::Claims(e.to_string()))?;
    if !claims.get("exp").is_some_and(Value::is_i64) {
        return Err(JwtError::Claims("exp missing or not an integer".into()));
    }
    Ok(ParsedJwt {
        alg,
        kid,
        claims,
        signing_input_len: h.len() + 1 + c.len(),
        signature: decode(s)?,
    })
}

/// Checks the signature of a parsed token against the key with its `kid` among `keys`.
///
/// # Errors
/// No such key, or the signature does not verify.
pub fn verify_signature(
    token: &str,
    parsed: &ParsedJwt,
    keys: &[super::bundle::JwtAuthority],
) -> Result<(), JwtError> {
    let key = keys
        .iter()
        .find(|k| k.kid == parsed.kid)
        .ok_or_else(|| JwtError::UnknownKey {
            kid: parsed.kid.clone(),
            trust_domain: String::new(),
        })?;
    check_signature(
        parsed,
        &token.as_bytes()[..parsed.signing_input_len],
        &key.key,
    )
}

/// Checks `exp` and `nbf` against `now` with [`LEEWAY`].
///
/// # Errors
/// Expired or not yet valid.
pub fn check_times(parsed: &ParsedJwt, now: SystemTime) -> Result<(), JwtError> {
    let now_s = unix_seconds(now);
    let leeway = LEEWAY.as_secs() as i64;
    // Saturating: a signed token may carry any i64, and an overflow must not panic or wrap.
    if parsed.numeric("exp").unwrap_or(0).saturating_add(leeway) <= now_s {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = parsed.numeric("nbf") {
        if nbf.saturating_sub(leeway) > now_s {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(())
}

/// A validated token.
#[derive(Debug)]
pub struct VerifiedJwt {
    pub spiffe_id: SpiffeId,
    pub parsed: ParsedJwt,
}

/// Validates `token` for `audience` with the bundle of the subject's trust domain, found by
/// `bundle_for`.
///
/// # Errors
/// The first failed check.
pub fn verify<'b>(
    token: &str,
    audience: &str,
    now: SystemTime,
    bundle_for: impl Fn(&TrustDomain) -> Option<&'b TrustBundle>,
) -> Result<VerifiedJwt, JwtError> {
    verify_parsed(
        token,
        parse(token)?,
        audience,
        now,
        bundle_for,
        Signature::Check,
    )
}

/// Whether [`verify_parsed`] checks the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    Check,
    /// The caller knows these exact bytes: it signed them itself and kept their SHA-256
    /// ([`digest`]). Everything else is still checked, the key id included (a key that has
    /// left the bundle no longer vouches for anything).
    IssuedHere,
}

/// SHA-256 of a token's bytes: what a signer keeps to recognise its own tokens later without
/// keeping the tokens.
pub fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// As [`verify`], for a token already parsed by [`parse`] from `token`.
///
/// # Errors
/// The first failed check.
pub fn verify_parsed<'b>(
    token: &str,
    parsed: ParsedJwt,
    audience: &str,
    now: SystemTime,
    bundle_for: impl Fn(&TrustDomain) -> Option<&'b TrustBundle>,
    signature: Signature,
) -> Result<VerifiedJwt, JwtError> {
    let spiffe_id = parsed.subject()?;
    let td = spiffe_id.trust_domain();
    let bundle = bundle_for(td).ok_or_else(|| JwtError::UnknownTrustDomain(td.to_string()))?;
    let authority = bundle
        .find_jwt_authority(&parsed.kid)
        .ok_or_else(|| JwtError::UnknownKey {
            kid: parsed.kid.clone(),
            trust_domain: td.to_string(),
        })?;
    if signature == Signature::Check {
        check_signature(
            &parsed,
            &token.as_bytes()[..parsed.signing_input_len],
            &authority.key,
        )?;
    }
    check_times(&parsed, now)?;
    if !parsed.audiences().contains(&audience) {
        return Err(JwtError::Audience(audience.to_string()));
    }
    Ok(VerifiedJwt { spiffe_id, parsed })
}

fn check_signature(parsed: &ParsedJwt, input: &[u8], key: &JwtPublicKey) -> Result<(), JwtError> {
    let ok = match (parsed.alg.as_str(), key) {
        ("ES256", JwtPublicKey::P256(p)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                .verify(input, &parsed.signature)
        }
        ("ES384", JwtPublicKey::P384(p)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                .verify(input, &parsed.signature)
        }
        (alg, JwtPublicKey::Rsa { n, e }) => {
            let params: &signature::RsaParameters = match alg {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Err(JwtError::Signature),
            };
            signature::RsaPublicKeyComponents { n, e }.verify(params, input, &parsed.signature)
        }
        // The algorithm does not fit the key: e.g. a token claiming RS256 against an EC key.
        _ => return Err(JwtError::Signature),
    };
    ok.map_err(|_| JwtError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svid::bundle::JwtAuthority;

    struct Fixture {
        key: EcKey,
        bundle: TrustBundle,
        id: SpiffeId,
    }

    fn fixture() -> Fixture {
        let key = EcKey::generate().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let bundle = TrustBundle::new(
            td,
            1,
            Duration::from_secs(60),
            vec![],
            vec![JwtAuthority {
                kid: "k1".into(),
                key: JwtPublicKey::P256(key.public_point().to_vec()),
            }],
        );
        Fixture {
            key,
            bundle,
            id: SpiffeId::new("spiffe://example.org/a").unwrap(),
        }
    }

    fn token(f: &Fixture, ttl: u64) -> String {
        let claims = svid_claims(
            &f.id,
            &["aud1".into()],
            SystemTime::now(),
            Duration::from_secs(ttl),
            "j",
        );
        sign_es256(&f.key, "k1", &claims).unwrap()
    }

    /// A 60 s JWT-SVID for `aud1`, issued at `issued`, signed by the fixture's key under `kid`.
    fn signed_at(f: &Fixture, kid: &str, issued: SystemTime) -> String {
        let claims = svid_claims(
            &f.id,
            &["aud1".into()],
            issued,
            Duration::from_secs(60),
            "j",
        );
        sign_es256(&f.key, kid, &claims).unwrap()
    }

    fn check(f: &Fixture, tok: &str, aud: &str) -> Result<VerifiedJwt, JwtError> {
        verify(tok, aud, SystemTime::now(), |td| {
            (td == &f.bundle.trust_domain).then_some(&f.bundle)
        })
    }

    fn forge(header: &str, claims: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn extreme_times_neither_panic_nor_wrap() {
        let f = fixture();
        let at = |exp: i64, nbf: i64| {
            let claims: Map<String, Value> = serde_json::from_str(&format!(
                r#"{{"sub":"spiffe://example.org/a","aud":["aud1"],"exp":{exp},"nbf":{nbf}}}"#
            ))
            .unwrap();
            let tok = sign_es256(&f.key, "k1", &claims).unwrap();
            check_times(&parse(&tok).unwrap(), SystemTime::now())
        };
        // exp near i64::MAX: valid for ever, not wrapped into the past.
        assert!(at(i64::MAX, 0).is_ok());
        // nbf near i64::MIN: already valid.
        assert!(at(i64::MAX, i64::MIN).is_ok());
        // exp near i64::MIN: expired.
        assert!(at(i64::MIN, 0).is_err());
    }

    #[test]
    fn issued_here_skips_only_the_signature() {
        let f = fixture();
        let bundle_for = |td: &TrustDomain| (td == &f.bundle.trust_domain).then_some(&f.bundle);
        let at = |tok: &str, aud: &str| {
            verify_parsed(
                tok,
                parse(tok).unwrap(),
                aud,
                SystemTime::now(),
                bundle_for,
                Signature::IssuedHere,
            )
        };
        assert!(at(&token(&f, 300), "aud1").is_ok());
        assert_eq!(
            at(&token(&f, 300), "aud2").unwrap_err(),
            JwtError::Audience("aud2".into())
        );
        let expired = signed_at(&f, "k1", SystemTime::now() - Duration::from_secs(3600));
        assert_eq!(at(&expired, "aud1").unwrap_err(), JwtError::Expired);
        // A key that left the bundle vouches for nothing, even for bytes we signed.
        let retired = signed_at(&f, "k0", SystemTime::now());
        assert!(matches!(
            at(&retired, "aud1").unwrap_err(),
            JwtError::UnknownKey { .. }
        ));
        assert_eq!(digest("a"), digest("a"));
        assert_ne!(digest("a"), digest("b"));
    }

    #[test]
    fn valid_token_verifies() {
        let f = fixture();
        let v = check(&f, &token(&f, 300), "aud1").unwrap();
        assert_eq!(v.spiffe_id, f.id);
    }

    #[test]
    fn every_broken_rule_is_refused() {
        let f = fixture();
        let good = token(&f, 300);
        let claims = r#"{"sub":"spiffe://example.org/a","aud":["aud1"],"exp":9999999999}"#;
        let other = EcKey::generate().unwrap();
        let mut m = Map::new();
        m.insert("sub".into(), json!("spiffe://example.org/a"));
        m.insert("aud".into(), json!(["aud1"]));
        m.insert("exp".into(), json!(9_999_999_999i64));
        let foreign_sig = sign_es256(&other, "k1", &m).unwrap();
        let mut tampered: Vec<&str> = good.split('.').collect();
        let evil_claims = URL_SAFE_NO_PAD.encode(claims.replace("/a", "/admin"));
        tampered[1] = &evil_claims;
        let tampered = tampered.join(".");
        let expired = signed_at(&f, "k1", SystemTime::now() - Duration::from_secs(3600));
        let cases: Vec<(String, &str, JwtError)> = vec![
            (String::new(), "aud1", JwtError::Empty),
            ("a.b".into(), "aud1", JwtError::Malformed),
            ("x".repeat(MAX_TOKEN_BYTES + 1), "aud1", JwtError::TooLong),
            (good.clone(), "aud2", JwtError::Audience("aud2".into())),
            (expired, "aud1", JwtError::Expired),
            (
                forge(r#"{"alg":"none","kid":"k1"}"#, claims, b""),
                "aud1",
                JwtError::Algorithm("none".into()),
            ),
            (
                forge(r#"{"alg":"HS256","kid":"k1"}"#, claims, b"x"),
                "aud1",
                JwtError::Algorithm("HS256".into()),
            ),
            (
                forge(r#"{"alg":"EdDSA","kid":"k1"}"#, claims, b"x"),
                "aud1",
                JwtError::Algorithm("EdDSA".into()),
            ),
            (
                forge(r#"{"alg":"ES256"}"#, claims, b"x"),
                "aud1",
                JwtError::MissingKid,
            ),
            (
                forge(r#"{"alg":"RS256","kid":"k1"}"#, claims, b"x"),
                "aud1",
                JwtError::Signature,
            ),
            (
                forge(r#"{"alg":"ES256","kid":"k9"}"#, claims, b"x"),
                "aud1",
                JwtError::UnknownKey {
                    kid: "k9".into(),
                    trust_domain: "example.org".into(),
                },
            ),
            (
                forge(
                    r#"{"alg":"ES256","kid":"k1"}"#,
                    &claims.replace("example.org", "other.org"),
                    b"x",
                ),
                "aud1",
                JwtError::UnknownTrustDomain("other.org".into()),
            ),
            (foreign_sig, "aud1", JwtError::Signature),
            (tampered, "aud1", JwtError::Signature),
        ];
        for (tok, aud, want) in cases {
            let got = check(&f, &tok, aud).map(|_| ()).unwrap_err();
            assert_eq!(got, want, "token {tok:.40}");
        }
        let extra_header = forge(
            r#"{"alg":"ES256","kid":"k1","jku":"http://evil"}"#,
            claims,
            b"x",
        );
        assert!(matches!(
            check(&f, &extra_header, "aud1"),
            Err(JwtError::Header(_))
        ));
        let no_sub = forge(
            r#"{"alg":"ES256","kid":"k1"}"#,
            r#"{"aud":["a"],"exp":9999999999}"#,
            b"x",
        );
        assert!(matches!(check(&f, &no_sub, "a"), Err(JwtError::Subject(_))));
    }

    #[test]
    fn leeway_applies_at_its_edge() {
        let f = fixture();
        let tok = token(&f, 10);
        let at = |secs| {
            verify(
                &tok,
                "aud1",
                SystemTime::now() + Duration::from_secs(secs),
                |_| Some(&f.bundle),
            )
        };
        assert!(at(10 + LEEWAY.as_secs() - 2).is_ok());
        assert_eq!(
            at(10 + LEEWAY.as_secs() + 1).unwrap_err(),
            JwtError::Expired
        );
    }
}
