//! Rotation, persistence and operator CAs of the embedded authority, on paused time.

use super::*;

fn cfg(ca_ttl: u64, jwt_ttl: u64) -> AuthorityConfig {
    AuthorityConfig {
        ca_ttl: Duration::from_secs(ca_ttl),
        jwt_key_ttl: Duration::from_secs(jwt_ttl),
        ..Default::default()
    }
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

#[tokio::test(start_paused = true)]
async fn ca_overlaps_in_the_bundle_before_it_signs() {
    let a = EmbeddedAuthority::new(td(), cfg(400, 4000), None).unwrap();
    let id = SpiffeId::new("spiffe://example.org/w").unwrap();
    let first = a.current_bundle();
    assert_eq!(first.x509_authorities.len(), 1);

    tokio::time::advance(Duration::from_secs(200)).await;
    let r = a.rotate(Instant::now()).unwrap();
    assert_eq!(
        r,
        Rotation {
            bundle_changed: true,
            x509_signer_changed: false
        }
    );
    let b = a.current_bundle();
    assert_eq!(b.x509_authorities.len(), 2);
    assert!(b.sequence > first.sequence);
    // Still signed by the first CA.
    let svid = a.mint_x509_svid(&id, Duration::from_secs(60)).unwrap();
    assert!(verifies_under(&svid.chain[0], &first.x509_authorities[0]));

    tokio::time::advance(Duration::from_secs(100)).await;
    let r = a.rotate(Instant::now()).unwrap();
    assert!(r.x509_signer_changed);
    let svid = a.mint_x509_svid(&id, Duration::from_secs(60)).unwrap();
    assert!(verifies_under(&svid.chain[0], &b.x509_authorities[1]));
    assert_eq!(
        a.current_bundle().x509_authorities.len(),
        2,
        "old CA stays until expiry"
    );

    tokio::time::advance(Duration::from_secs(100)).await;
    let r = a.rotate(Instant::now()).unwrap();
    assert!(r.bundle_changed);
    let now = a.current_bundle();
    assert!(
        !now.x509_authorities.contains(&first.x509_authorities[0]),
        "expired CA dropped"
    );
    assert_eq!(now.x509_authorities[0], b.x509_authorities[1]);
}

#[tokio::test(start_paused = true)]
async fn jwt_keys_rotate_with_overlap() {
    let a = EmbeddedAuthority::new(td(), cfg(4000, 400), None).unwrap();
    let mut claims = Map::new();
    claims.insert("sub".into(), "spiffe://example.org/w".into());
    let kid_of = |t: &str| {
        jwt::parse(t).map(|p| p.kid).unwrap_or_else(|_| {
            let h = t.split('.').next().unwrap();
            let v: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(h)
                    .unwrap(),
            )
            .unwrap();
            v["kid"].as_str().unwrap().to_string()
        })
    };
    let k1 = kid_of(&a.sign_jwt(&claims).unwrap());
    tokio::time::advance(Duration::from_secs(200)).await;
    a.rotate(Instant::now()).unwrap();
    assert_eq!(a.current_bundle().jwt_authorities.len(), 2);
    assert_eq!(kid_of(&a.sign_jwt(&claims).unwrap()), k1);
    tokio::time::advance(Duration::from_secs(100)).await;
    a.rotate(Instant::now()).unwrap();
    let k2 = kid_of(&a.sign_jwt(&claims).unwrap());
    assert_ne!(k1, k2);
    assert!(a.current_bundle().find_jwt_authority(&k1).is_some());
}

#[test]
fn keys_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _g = rt.enter();
    let a = EmbeddedAuthority::new(td(), cfg(3600, 3600), Some(dir.path())).unwrap();
    let b1 = a.current_bundle();
    drop(a);
    let b = EmbeddedAuthority::new(td(), cfg(3600, 3600), Some(dir.path())).unwrap();
    let b2 = b.current_bundle();
    assert_eq!(b1.x509_authorities, b2.x509_authorities);
    assert_eq!(b1.jwt_authorities, b2.jwt_authorities);
    assert!(b2.sequence > b1.sequence);
    let text = std::fs::read_to_string(dir.path().join(super::store::KEYS_FILE)).unwrap();
    assert!(!format!("{:?}", b.current_bundle()).contains(&text[..20]));
}

fn verifies_under(leaf: &[u8], ca: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    let (_, ca) = X509Certificate::from_der(ca).unwrap();
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}
