//! JWT-SVID and OIDC subject-token parsing and validation ([`crate::svid::jwt`],
//! [`crate::broker::oidc`]), with the fixed keys of [`super::fixtures`].
//!
//! The input is tried as a token. If it is a JSON object it is also taken as the claims of a
//! token signed with the fixed key, so the checks after the signature (times, audience,
//! subject) run on fuzzed claims, and the verdict is compared with the rules written out here.

use serde_json::{Map, Value};

use super::fixtures::{self, AUDIENCE, JWT_KID, OIDC_AUDIENCE, OIDC_ISSUER, TRUST_DOMAIN};
use crate::svid::jwt::{self, LEEWAY};
use crate::svid::unix_seconds;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    token(text);
    if let Ok(claims) = serde_json::from_str::<Map<String, Value>>(text) {
        signed_claims(&claims);
    }
}

fn token(token: &str) {
    let now = super::now();
    let svid = jwt::parse(token);
    let jws = jwt::parse_jws(token);
    if let Ok(p) = &svid {
        let j = jws.as_ref().expect("parse accepted what parse_jws refused");
        assert_eq!((&p.alg, &p.kid, &p.claims), (&j.alg, &j.kid, &j.claims));
        assert!(!p.audiences().is_empty() && p.subject().is_ok());
    }
    if let Ok(j) = &jws {
        assert!(jwt::ALLOWED_ALGS.contains(&j.alg.as_str()) && !j.kid.is_empty());
        assert!(j.numeric("exp").is_some());
    }
    let bundle = fixtures::jwt_bundle();
    let audience = svid
        .as_ref()
        .ok()
        .and_then(|p| p.audiences().first().map(|a| a.to_string()))
        .unwrap_or_else(|| AUDIENCE.to_string());
    let verified = jwt::verify(token, &audience, now, |td| {
        (td == &bundle.trust_domain).then_some(bundle)
    });
    if let Ok(v) = &verified {
        assert_eq!(v.spiffe_id.trust_domain_name(), TRUST_DOMAIN);
        assert_eq!(v.parsed.kid, JWT_KID);
        assert!(v.parsed.audiences().contains(&audience.as_str()));
        assert!(svid.is_ok());
    }
    if let Ok(obo) = fixtures::oidc().verify(token, now) {
        assert_eq!(obo["iss"], OIDC_ISSUER);
        let sub = obo["sub"].as_str().expect("sub is a string");
        assert!(!sub.is_empty() && sub.len() <= 256);
        assert!(jws.is_ok());
    }
}

/// Signs `claims` with the fixed key and checks both verifiers against the rules.
fn signed_claims(claims: &Map<String, Value>) {
    let Ok(token) = jwt::sign_es256(&fixtures::jwt_key(), JWT_KID, claims) else {
        return;
    };
    let now = super::now();
    let now_s = unix_seconds(now);
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let int = |name: &str| claims.get(name).and_then(Value::as_i64).map(i128::from);
    let leeway = i128::from(LEEWAY.as_secs());
    let exp_ok = int("exp").is_some_and(|exp| exp + leeway > i128::from(now_s));
    let nbf_ok = int("nbf").is_none_or(|nbf| nbf - leeway <= i128::from(now_s));
    let fits = token.len() <= jwt::MAX_TOKEN_BYTES;
    let times_ok = fits && exp_ok && nbf_ok;

    let audience = audiences.first().copied().unwrap_or(AUDIENCE);
    let sub = claims.get("sub").and_then(Value::as_str);
    let ours = sub
        .and_then(|s| crate::spiffe_id::parse(s).ok())
        .is_some_and(|id| id.trust_domain_name() == TRUST_DOMAIN);
    let want = times_ok && ours && audiences.contains(&audience);
    let bundle = fixtures::jwt_bundle();
    let got = jwt::verify(&token, audience, now, |td| {
        (td == &bundle.trust_domain).then_some(bundle)
    });
    assert_eq!(
        got.is_ok(),
        want,
        "JWT-SVID verdict {got:?} for claims {claims:?}"
    );

    let iss_ok = claims.get("iss").and_then(Value::as_str) == Some(OIDC_ISSUER);
    let sub_ok = sub.is_some_and(|s| !s.is_empty() && s.len() <= 256);
    let want = times_ok && iss_ok && audiences.contains(&OIDC_AUDIENCE) && sub_ok;
    let got = fixtures::oidc().verify(&token, now);
    assert_eq!(
        got.is_ok(),
        want,
        "OIDC verdict {got:?} for claims {claims:?}"
    );
}
