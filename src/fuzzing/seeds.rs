//! Seeds that only the fixture keys can make (signed tokens, certificates the fixture CA
//! issued). `tests/fuzz_corpus.rs` writes them into `fuzz/corpus/` on request; the other
//! seeds are written by hand.

use std::time::SystemTime;

use prost::Message;
use serde_json::{json, Map, Value};
use spiffe::SpiffeId;

use super::fixtures::{self, AUDIENCE, JWT_KID, LONG_TTL, OIDC_AUDIENCE, OIDC_ISSUER};
use crate::svid::der::split_certificates;
use crate::svid::jwt;
use crate::svid::pem::{self, CERTIFICATE, PRIVATE_KEY};
use crate::svid::unix_seconds;

/// `(target, file name, contents)` of every generated seed.
pub fn generated() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target, name, bytes: Vec<u8>| out.push((target, name, bytes));

    let now = SystemTime::now();
    let far = unix_seconds(now + LONG_TTL);
    let id = SpiffeId::new("spiffe://example.org/agent/a").expect("seed SPIFFE ID");
    let mut svid = jwt::svid_claims(&id, &[AUDIENCE.into()], now, LONG_TTL, "seed");
    add("jwt", "gen-svid-token", token(&svid));
    add("jwt", "gen-svid-claims.json", to_json(&svid));
    svid.insert("nbf".into(), json!(unix_seconds(now)));
    svid.insert("aud".into(), json!(AUDIENCE));
    add("jwt", "gen-svid-token-nbf", token(&svid));
    let mut user = Map::new();
    user.insert("iss".into(), json!(OIDC_ISSUER));
    user.insert("aud".into(), json!([OIDC_AUDIENCE, "other"]));
    user.insert("sub".into(), json!("alice"));
    user.insert("exp".into(), json!(far));
    add("jwt", "gen-oidc-token", token(&user));
    add("jwt", "gen-oidc-claims.json", to_json(&user));

    let resp = fixtures::svid_response("spiffe://example.org/agent/a");
    let svid = &resp.svids[0];
    let chain = split_certificates(&svid.x509_svid).expect("fixture chain splits");
    let ca = fixtures::ca();
    add("x509", "gen-response.pb", resp.encode_to_vec());
    add("x509", "gen-leaf.der", chain[0].to_vec());
    add("x509", "gen-bundle.der", svid.bundle.clone());
    let mut peer = chain[0].to_vec();
    peer.extend_from_slice(&ca.cert_der);
    add("x509", "gen-peer-chain.der", peer);
    let mut leaf_pem = pem::encode(CERTIFICATE, chain[0]);
    leaf_pem.push_str(&pem::encode(PRIVATE_KEY, &svid.x509_svid_key));
    add("x509", "gen-svid.pem", leaf_pem.into_bytes());
    let mut ca_pem = pem::encode(CERTIFICATE, &ca.cert_der);
    ca_pem.push_str(&pem::encode(PRIVATE_KEY, fixtures::ca_key().pkcs8().der()));
    add("x509", "gen-operator-ca.pem", ca_pem.into_bytes());
    out
}

fn token(claims: &Map<String, Value>) -> Vec<u8> {
    jwt::sign_es256(&fixtures::jwt_key(), JWT_KID, claims)
        .expect("fixture key signs")
        .into_bytes()
}

fn to_json(claims: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(claims).expect("claims serialize")
}
