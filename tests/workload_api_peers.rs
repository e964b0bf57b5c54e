//! The real daemon on a temp socket against clients we did not write: the `spiffe` crate,
//! py-spiffe, `buf curl`, PyJWT, jwcrypto and `openssl verify`; and the X.509-SVID checked field
//! by field against the SPIFFE X.509-SVID rules.
//!
//! The Python peers and `buf` come from `scripts/install-peers.sh`; a test whose peer is missing
//! fails and says so.

#[path = "support/daemon.rs"]
mod daemon;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daemon::{require_tool, venv_bin, venv_python, Daemon, DaemonConfig, Entry};
use futures::StreamExt;
use spiffe::{JwtBundleSet, JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient, X509Source};

const ID: &str = "spiffe://example.org/test/peer";
const AUDIENCE: &str = "spiffe://example.org/relying-party";

fn daemon() -> Daemon {
    Daemon::start(DaemonConfig::new().entry_for_me(ID))
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

// ---- the spiffe crate ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_x509_source_gets_the_svid() {
    let d = daemon();
    let source = X509Source::builder()
        .endpoint(d.endpoint())
        .build()
        .await
        .expect("X509Source against svid-broker");
    let svid = source.svid().expect("an X.509-SVID");
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert!(!svid.cert_chain().is_empty());
    let bundles = source.bundle_set().expect("bundle set");
    let bundle = bundles.get(&td()).expect("a bundle for example.org");
    assert!(!bundle.authorities().is_empty());
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_fetches_and_validates_a_jwt_svid() {
    let d = daemon();
    let client = WorkloadApiClient::connect_to(d.endpoint()).await.unwrap();
    let svid = client
        .fetch_jwt_svid([AUDIENCE], None)
        .await
        .expect("FetchJWTSVID");
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert_eq!(svid.audience(), [AUDIENCE.to_string()]);
    let token = svid.token().to_string();

    // Through the Workload API.
    let validated = client
        .validate_jwt_token(AUDIENCE, &token)
        .await
        .expect("ValidateJWTSVID");
    assert_eq!(validated.spiffe_id().to_string(), ID);

    // Offline, with only the JWT bundle the API handed out.
    let bundles: JwtBundleSet = client.fetch_jwt_bundles().await.expect("FetchJWTBundles");
    let offline = JwtSvid::parse_and_validate(&token, &bundles, &[AUDIENCE]).expect("offline");
    assert_eq!(offline.spiffe_id().to_string(), ID);
    assert!(
        JwtSvid::parse_and_validate(&token, &bundles, &["spiffe://example.org/other"]).is_err()
    );

    // Asking for the identity by SPIFFE ID gives the same subject.
    let id = SpiffeId::new(ID).unwrap();
    let by_id = client.fetch_jwt_svid([AUDIENCE], Some(&id)).await.unwrap();
    assert_eq!(by_id.spiffe_id(), &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_bundle_stream_receives_a_rotation() {
    // A JWT key lives 20 s; its successor is published at half-life, about 10 s in.
    let d = Daemon::start(DaemonConfig::new().entry_for_me(ID).jwt_key_ttl("20s"));
    let client = WorkloadApiClient::connect_to(d.endpoint()).await.unwrap();
    let mut stream = client.stream_jwt_bundles().await.expect("stream");
    let kids = |set: &JwtBundleSet| -> BTreeSet<String> {
        set.get(&td())
            .expect("example.org bundle")
            .jwt_authorities()
            .map(|a| a.key_id().to_string())
            .collect()
    };
    let first = stream.next().await.expect("first message").expect("bundle");
    let first_kids = kids(&first);
    assert_eq!(first_kids.len(), 1, "one JWT key at start: {first_kids:?}");
    let first_seq = jwks_sequence(&d);

    let next = tokio::time::timeout(Duration::from_secs(25), stream.next())
        .await
        .expect("no rotation reached the stream within 25 s")
        .expect("stream ended")
        .expect("bundle");
    let next_kids = kids(&next);
    assert!(
        next_kids.is_superset(&first_kids) && next_kids.len() == 2,
        "the successor key is published beside the current one: {first_kids:?} -> {next_kids:?}"
    );
    assert!(
        jwks_sequence(&d) > first_seq,
        "spiffe_sequence increases on rotation"
    );
}

/// `spiffe_sequence` of the example.org JWKS, through the CLI.
fn jwks_sequence(d: &Daemon) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["api", "fetch", "bundles"])).unwrap();
    v["spiffe://example.org"]["jwks"]["spiffe_sequence"]
        .as_u64()
        .expect("spiffe_sequence")
}

// ---- py-spiffe -----------------------------------------------------------------------------

#[test]
fn py_spiffe_fetches_x509_context_and_jwt_and_validates() {
    let d = daemon();
    let v = daemon::python_peer("pyspiffe_client.py", &[AUDIENCE], &d.endpoint());
    assert_eq!(v["x509_spiffe_id"], ID);
    assert_eq!(v["x509_chain_len"], 1);
    assert_eq!(
        v["x509_bundle_trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert!(v["x509_bundle_authorities"].as_u64().unwrap() >= 1);
    assert_eq!(v["jwt_spiffe_id"], ID);
    assert_eq!(v["jwt_audience"], serde_json::json!([AUDIENCE]));
    assert_eq!(v["validated_spiffe_id"], ID);
    assert_eq!(v["offline_spiffe_id"], ID);
    assert!(v["jwt_bundle_keys"].as_u64().unwrap() >= 1);
    assert_eq!(v["wrong_audience_rejected"], true);
}

// ---- buf curl ------------------------------------------------------------------------------

fn buf_curl(d: &Daemon, headers: &[&str], method: &str, body: &str) -> std::process::Output {
    let buf = venv_bin("buf");
    let mut cmd = Command::new(buf);
    cmd.args([
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--unix-socket",
    ])
    .arg(d.socket_path());
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.args(["-d", body])
        .arg(format!("http://localhost/SpiffeWorkloadAPI/{method}"))
        // buf keeps a cache of reflection results; keep it in the test's dir.
        .env("BUF_CACHE_DIR", d.dir().join("buf-cache"))
        .output()
        .expect("run buf")
}

#[test]
fn buf_curl_needs_the_security_header() {
    let d = daemon();
    let body = format!(r#"{{"audience":["{AUDIENCE}"]}}"#);
    let out = buf_curl(&d, &[], "FetchJWTSVID", &body);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no header must fail: {stderr}");
    let err: serde_json::Value = serde_json::from_str(stderr.trim())
        .unwrap_or_else(|e| panic!("buf curl error is not JSON ({e}): {stderr}"));
    assert_eq!(err["code"], "invalid_argument", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("security header"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no SVID without the header");

    let out = buf_curl(&d, &["workload.spiffe.io: true"], "FetchJWTSVID", &body);
    assert!(
        out.status.success(),
        "with the header: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resp["svids"][0]["spiffeId"], ID);
    assert!(resp["svids"][0]["svid"]
        .as_str()
        .unwrap()
        .starts_with("eyJ"));
}

// ---- relying parties that are not ours -----------------------------------------------------

#[test]
fn pyjwt_and_jwcrypto_verify_with_only_the_jwks() {
    let python = venv_python();
    let d = daemon();
    let bundles: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["api", "fetch", "bundles"])).unwrap();
    let jwks = &bundles["spiffe://example.org"]["jwks"];
    assert!(
        jwks["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{bundles}"
    );
    let jwks_file = d.dir().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let token = d.fetch_jwt(AUDIENCE);

    let run = |token: &str, audience: &str| -> serde_json::Value {
        let out = Command::new(&python)
            .arg(daemon::peer_file("python/relying_party.py"))
            .arg(&jwks_file)
            .arg(token)
            .arg(audience)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "relying_party.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let v = run(&token, AUDIENCE);
    for lib in ["pyjwt", "jwcrypto"] {
        assert_eq!(v[lib]["ok"], true, "{lib} must accept the JWT-SVID: {v}");
        assert_eq!(v[lib]["claims"]["sub"], ID, "{lib}: {v}");
    }
    assert_eq!(v["pyjwt"]["header"]["alg"], "ES256");
    assert_eq!(v["pyjwt"]["header"]["typ"], "JWT");

    // The same libraries refuse it for another audience and with a flipped signature byte.
    let v = run(&token, "spiffe://example.org/someone-else");
    for lib in ["pyjwt", "jwcrypto"] {
        assert_eq!(
            v[lib]["ok"], false,
            "{lib} must refuse a wrong audience: {v}"
        );
    }
    let mut tampered = token.clone().into_bytes();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let v = run(std::str::from_utf8(&tampered).unwrap(), AUDIENCE);
    for lib in ["pyjwt", "jwcrypto"] {
        assert_eq!(
            v[lib]["ok"], false,
            "{lib} must refuse a bad signature: {v}"
        );
    }
}

/// `api fetch x509 --write DIR` into the daemon's temp dir.
fn write_svid(d: &Daemon) -> std::path::PathBuf {
    let dir = d.dir().join("svid");
    d.cli_ok(&["api", "fetch", "x509", "--write", dir.to_str().unwrap()]);
    dir
}

#[test]
fn openssl_verifies_the_x509_svid_for_client_and_server() {
    let openssl = require_tool(
        "openssl",
        "run scripts/install-peers.sh (apt-get install openssl)",
    );
    let d = daemon();
    let dir = write_svid(&d);
    for purpose in ["sslclient", "sslserver"] {
        let out = Command::new(&openssl)
            .args(["verify", "-purpose", purpose, "-CAfile"])
            .arg(dir.join("bundle.pem"))
            .arg(dir.join("svid.pem"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "openssl verify -purpose {purpose}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The key is private to its owner.
    let mode = std::fs::metadata(dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "svid_key.pem mode {:o}", mode & 0o777);
    // And openssl agrees the key belongs to the certificate.
    let pubkey = |args: &[&str], file: &Path| {
        let out = Command::new(&openssl)
            .args(args)
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in"], &dir.join("svid.pem")),
        pubkey(&["pkey", "-pubout", "-in"], &dir.join("svid_key.pem"))
    );
}

// ---- the X.509-SVID, field by field --------------------------------------------------------

fn pem_blocks(path: &Path, label: &str) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap();
    x509_parser::pem::Pem::iter_from_buffer(&text)
        .map(|p| p.expect("PEM"))
        .inspect(|p| assert_eq!(p.label, label, "{}", path.display()))
        .map(|p| p.contents)
        .collect()
}

#[test]
fn x509_svid_follows_the_spiffe_rules_field_by_field() {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::*;

    let d = Daemon::start(
        DaemonConfig::new()
            .entry(Entry::new(ID, &[&format!("unix:uid:{}", daemon::euid())]).x509_ttl("30m")),
    );
    let dir = write_svid(&d);
    let chain = pem_blocks(&dir.join("svid.pem"), "CERTIFICATE");
    let bundle = pem_blocks(&dir.join("bundle.pem"), "CERTIFICATE");
    let keys = pem_blocks(&dir.join("svid_key.pem"), "PRIVATE KEY");
    assert_eq!(chain.len(), 1, "the embedded CA signs leaves directly");
    assert!(!bundle.is_empty());
    assert_eq!(keys.len(), 1);

    let (rest, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf parses");
    assert!(rest.is_empty());
    assert_eq!(leaf.version(), X509Version::V3);

    // Exactly one SAN, a URI, the SPIFFE ID.
    let san = leaf
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    let names: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(names.len(), 1, "exactly one SAN: {names:?}");
    assert!(
        matches!(names[0], GeneralName::URI(u) if *u == ID),
        "{names:?}"
    );

    // basicConstraints present, cA = false.
    let bc = leaf
        .basic_constraints()
        .expect("basicConstraints parses")
        .expect("basicConstraints present (rust-spiffe refuses leaves without it)");
    assert!(!bc.value.ca, "leaf must have cA=false");

    // keyUsage critical, digitalSignature, and never keyCertSign / cRLSign.
    let ku = leaf
        .key_usage()
        .expect("keyUsage parses")
        .expect("keyUsage present");
    assert!(ku.critical, "keyUsage must be critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    assert!(
        !ku.value.key_agreement() && !ku.value.data_encipherment(),
        "only digitalSignature is needed for an EC key: {:?}",
        ku.value
    );

    // EKU has both serverAuth and clientAuth.
    let eku = leaf
        .extended_key_usage()
        .expect("EKU parses")
        .expect("EKU present");
    assert!(
        eku.value.server_auth && eku.value.client_auth,
        "{:?}",
        eku.value
    );

    // No unknown critical extension; the leaf is not a CA in any other way.
    for ext in leaf.extensions() {
        if ext.critical {
            assert!(
                matches!(
                    ext.parsed_extension(),
                    ParsedExtension::KeyUsage(_)
                        | ParsedExtension::BasicConstraints(_)
                        | ParsedExtension::SubjectAlternativeName(_)
                ),
                "unexpected critical extension {}",
                ext.oid
            );
        }
    }

    // Lifetime as configured (NotBefore may be backdated a little).
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (30 * 60..=30 * 60 + 60).contains(&life),
        "lifetime {life} s for x509_ttl 30m"
    );
    assert!(leaf.validity().is_valid());

    // The leaf chains to a CA in the bundle, and that CA is a proper SPIFFE CA.
    let issuer = bundle
        .iter()
        .map(|der| X509Certificate::from_der(der).unwrap().1)
        .find(|ca| ca.subject() == leaf.issuer())
        .expect("the leaf's issuer is in the bundle");
    let verify = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        issuer.public_key().subject_public_key.data.as_ref(),
    );
    verify
        .verify(
            leaf.tbs_certificate.as_ref(),
            leaf.signature_value.data.as_ref(),
        )
        .expect("the leaf's signature verifies with the bundle CA's key");
    let ca_bc = issuer
        .basic_constraints()
        .unwrap()
        .expect("CA basicConstraints");
    assert!(ca_bc.value.ca);
    let ca_ku = issuer.key_usage().unwrap().expect("CA keyUsage");
    assert!(ca_ku.value.key_cert_sign());
    if let Ok(Some(ca_san)) = issuer.subject_alternative_name() {
        for n in &ca_san.value.general_names {
            if let GeneralName::URI(u) = n {
                let id = SpiffeId::new(u).expect("CA SPIFFE ID");
                assert!(id.path().is_empty(), "a CA's SPIFFE ID has no path: {u}");
            }
        }
    }
    assert!(issuer.validity().not_after >= leaf.validity().not_after);

    // The PKCS#8 key is the leaf's key.
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &keys[0],
        &rng,
    )
    .expect("svid_key.pem is a PKCS#8 P-256 key");
    use ring::signature::KeyPair;
    assert_eq!(
        key.public_key().as_ref(),
        leaf.public_key().subject_public_key.data.as_ref(),
        "the private key matches the certificate"
    );
    let mode = std::fs::metadata(dir.join("svid_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
