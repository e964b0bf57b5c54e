//! Bad input against the real daemon: each gets the standard status, and the daemon still
//! serves a JWT-SVID afterwards.

#[path = "support/daemon.rs"]
mod daemon;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use daemon::{Daemon, DaemonConfig, Entry};
use futures::StreamExt;
use svid_broker::proto::workload as pb;
use svid_broker::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

const ID: &str = "spiffe://example.org/test/errors";
const AUDIENCE: &str = "spiffe://example.org/relying-party";
const HEADER: &str = "workload.spiffe.io";

async fn client(d: &Daemon) -> SpiffeWorkloadApiClient<Channel> {
    let channel = svid_broker::client::connect(d.socket_path().to_path_buf())
        .await
        .expect("connect");
    // Decoding limits are the server's business; let the client send and read anything.
    SpiffeWorkloadApiClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// `msg` with the security header.
fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(HEADER, "true".parse().unwrap());
    r
}

fn jwt_req(audience: Vec<String>, spiffe_id: &str) -> Request<pb::JwtsvidRequest> {
    req(pb::JwtsvidRequest {
        audience,
        spiffe_id: spiffe_id.to_string(),
    })
}

/// The daemon still answers: a JWT-SVID over a fresh connection, and over `c`.
async fn still_serving(d: &Daemon, c: &mut SpiffeWorkloadApiClient<Channel>) {
    let token = d.fetch_jwt(AUDIENCE);
    assert!(token.starts_with("eyJ"), "{token}");
    let resp = c
        .fetch_jwtsvid(jwt_req(vec![AUDIENCE.into()], ""))
        .await
        .unwrap_or_else(|s| panic!("the same connection still serves: {s:?}"))
        .into_inner();
    assert_eq!(resp.svids[0].spiffe_id, ID);
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: Code,
    message_part: &str,
    what: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got a success: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(
                s.message().contains(message_part),
                "{what}: message {:?} should contain {message_part:?}",
                s.message()
            );
        }
    }
}

fn me() -> DaemonConfig {
    DaemonConfig::new().entry_for_me(ID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_duplicated_security_header() {
    let d = Daemon::start(me());
    let mut c = client(&d).await;

    let r = c
        .fetch_jwtsvid(Request::new(pb::JwtsvidRequest {
            audience: vec![AUDIENCE.into()],
            spiffe_id: String::new(),
        }))
        .await;
    assert_status(r, Code::InvalidArgument, "security header", "no header");
    let r = c.fetch_x509svid(Request::new(pb::X509svidRequest {})).await;
    assert_status(
        r.map(|_| ()),
        Code::InvalidArgument,
        "security header",
        "no header (stream)",
    );
    still_serving(&d, &mut c).await;

    let mut twice = req(pb::JwtsvidRequest {
        audience: vec![AUDIENCE.into()],
        spiffe_id: String::new(),
    });
    twice.metadata_mut().append(HEADER, "true".parse().unwrap());
    assert_eq!(twice.metadata().get_all(HEADER).iter().count(), 2);
    let r = c.fetch_jwtsvid(twice).await;
    assert_status(r, Code::InvalidArgument, "more than once", "header twice");
    still_serving(&d, &mut c).await;

    let mut wrong = Request::new(pb::JwtsvidRequest {
        audience: vec![AUDIENCE.into()],
        spiffe_id: String::new(),
    });
    wrong.metadata_mut().insert(HEADER, "True".parse().unwrap());
    let r = c.fetch_jwtsvid(wrong).await;
    assert_status(
        r,
        Code::InvalidArgument,
        "security header",
        "header value True",
    );
    still_serving(&d, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audiences() {
    let d = Daemon::start(me());
    let mut c = client(&d).await;

    let r = c.fetch_jwtsvid(jwt_req(vec![], "")).await;
    assert_status(r, Code::InvalidArgument, "audience", "no audience");
    still_serving(&d, &mut c).await;

    let r = c.fetch_jwtsvid(jwt_req(vec![String::new()], "")).await;
    assert_status(r, Code::InvalidArgument, "audience", "empty audience");
    still_serving(&d, &mut c).await;

    let many: Vec<String> = (0..10_000).map(|i| format!("aud-{i}")).collect();
    let r = c.fetch_jwtsvid(jwt_req(many, "")).await;
    assert_status(r, Code::InvalidArgument, "audiences", "10,000 audiences");
    still_serving(&d, &mut c).await;

    let huge = "a".repeat(1024 * 1024);
    let r = c.fetch_jwtsvid(jwt_req(vec![huge.clone()], "")).await;
    assert_status(r, Code::InvalidArgument, "audience", "a 1 MiB audience");
    still_serving(&d, &mut c).await;

    let r = c
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: huge,
            svid: d.fetch_jwt(AUDIENCE),
        }))
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "audience",
        "validate with a 1 MiB audience",
    );
    still_serving(&d, &mut c).await;

    let r = c
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: String::new(),
            svid: d.fetch_jwt(AUDIENCE),
        }))
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "audience",
        "validate with no audience",
    );
    still_serving(&d, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_id_in_fetch_jwtsvid() {
    let d = Daemon::start(me());
    let mut c = client(&d).await;

    for bad in [
        "not-a-spiffe-id",
        "spiffe://example.org/bad%20char",
        "spiffe://example.org/./dot",
        "spiffe://user@example.org/x",
        "spiffe://example.org:8080/x",
        "spiffe://example.org/a//b",
        "spiffe://example.org/trailing/",
        "spiffe://example.org/%41",
        "https://example.org/x",
    ] {
        let r = c.fetch_jwtsvid(jwt_req(vec![AUDIENCE.into()], bad)).await;
        assert_status(r, Code::InvalidArgument, "spiffe_id", bad);
        still_serving(&d, &mut c).await;
    }
    let long = format!("spiffe://example.org/{}", "a".repeat(4096));
    let r = c.fetch_jwtsvid(jwt_req(vec![AUDIENCE.into()], &long)).await;
    assert_status(r, Code::InvalidArgument, "spiffe_id", "a 4 KiB SPIFFE ID");

    // A valid ID the caller does not hold.
    let r = c
        .fetch_jwtsvid(jwt_req(
            vec![AUDIENCE.into()],
            "spiffe://example.org/someone-else",
        ))
        .await;
    assert_status(
        r,
        Code::PermissionDenied,
        "no identity issued",
        "an ID not held",
    );
    still_serving(&d, &mut c).await;

    // The ID it does hold works.
    let resp = c
        .fetch_jwtsvid(jwt_req(vec![AUDIENCE.into()], ID))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.svids.len(), 1);
    assert_eq!(resp.svids[0].spiffe_id, ID);
}

/// A compact JWS from header and claims JSON, signed by `sign` over `header.payload`.
fn compact(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn claims() -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"sub": ID, "aud": [AUDIENCE], "iat": now, "exp": now + 300, "jti": "x"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_in_validate_jwtsvid() {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let d = Daemon::start(me());
    let mut c = client(&d).await;
    let good = d.fetch_jwt(AUDIENCE);
    let kid = {
        let header = good.split('.').next().unwrap();
        let h: serde_json::Value = serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
        h["kid"].as_str().unwrap().to_string()
    };
    let validate = |svid: String| {
        req(pb::ValidateJwtsvidRequest {
            audience: AUDIENCE.into(),
            svid,
        })
    };

    // The real one validates.
    let ok = c
        .validate_jwtsvid(validate(good.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, ID);

    let r = c.validate_jwtsvid(validate(String::new())).await;
    assert_status(r, Code::InvalidArgument, "svid", "empty token");
    still_serving(&d, &mut c).await;

    // Signed by a key of our own, claiming the daemon's kid.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let other =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let forged = compact(&header, &claims(), |m| {
        other.sign(&rng, m).unwrap().as_ref().to_vec()
    });
    let r = c.validate_jwtsvid(validate(forged)).await;
    assert_status(
        r,
        Code::InvalidArgument,
        "invalid JWT-SVID",
        "signed by another key",
    );
    still_serving(&d, &mut c).await;

    // The same, under a kid the bundle does not have.
    let header = serde_json::json!({"alg": "ES256", "kid": "no-such-kid", "typ": "JWT"});
    let forged = compact(&header, &claims(), |m| {
        other.sign(&rng, m).unwrap().as_ref().to_vec()
    });
    let r = c.validate_jwtsvid(validate(forged)).await;
    assert_status(r, Code::InvalidArgument, "invalid JWT-SVID", "unknown kid");
    still_serving(&d, &mut c).await;

    // alg: none, with and without a signature part.
    let header = serde_json::json!({"alg": "none", "kid": kid, "typ": "JWT"});
    let none = compact(&header, &claims(), |_| Vec::new());
    let r = c.validate_jwtsvid(validate(none.clone())).await;
    assert_status(r, Code::InvalidArgument, "invalid JWT-SVID", "alg none");
    let r = c
        .validate_jwtsvid(validate(none.trim_end_matches('.').to_string()))
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "invalid JWT-SVID",
        "alg none, two parts",
    );
    still_serving(&d, &mut c).await;

    // HS256 keyed with the public JWKS: the classic algorithm confusion.
    let jwks = d.cli_ok(&["api", "fetch", "bundles"]);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, jwks.as_bytes());
    let header = serde_json::json!({"alg": "HS256", "kid": kid, "typ": "JWT"});
    let hs = compact(&header, &claims(), |m| {
        ring::hmac::sign(&key, m).as_ref().to_vec()
    });
    let r = c.validate_jwtsvid(validate(hs)).await;
    assert_status(r, Code::InvalidArgument, "invalid JWT-SVID", "HS256");
    still_serving(&d, &mut c).await;

    // The real token with one claim changed, and garbage.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut cl: serde_json::Value =
        serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    cl["sub"] = "spiffe://example.org/admin".into();
    parts[1] = B64.encode(cl.to_string());
    let r = c.validate_jwtsvid(validate(parts.join("."))).await;
    assert_status(r, Code::InvalidArgument, "invalid JWT-SVID", "altered sub");
    for junk in ["a.b.c", "....", "not a token", &"x".repeat(100_000)] {
        let r = c.validate_jwtsvid(validate(junk.to_string())).await;
        assert!(
            matches!(&r, Err(s) if s.code() == Code::InvalidArgument),
            "junk token: {r:?}"
        );
    }
    still_serving(&d, &mut c).await;

    // The wrong audience.
    let r = c
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: "spiffe://example.org/other".into(),
            svid: good,
        }))
        .await;
    assert_status(
        r,
        Code::InvalidArgument,
        "invalid JWT-SVID",
        "wrong audience",
    );
    still_serving(&d, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_with_no_matching_entry_is_denied() {
    // Entries this test process cannot match: another uid, and another program.
    let other_uid = format!("unix:uid:{}", daemon::euid().wrapping_add(54_321));
    let d = Daemon::start(
        DaemonConfig::new()
            .entry(Entry::new("spiffe://example.org/other-user", &[&other_uid]))
            .entry(Entry::new(
                "spiffe://example.org/other-program",
                &["unix:path:/usr/sbin/no-such-program"],
            )),
    );
    let mut c = client(&d).await;
    for _ in 0..2 {
        let r = c.fetch_jwtsvid(jwt_req(vec![AUDIENCE.into()], "")).await;
        assert_status(
            r,
            Code::PermissionDenied,
            "no identity issued",
            "FetchJWTSVID",
        );
        let r = c.fetch_x509svid(req(pb::X509svidRequest {})).await;
        assert_status(
            r.map(|_| ()),
            Code::PermissionDenied,
            "no identity issued",
            "FetchX509SVID",
        );
        let r = c.fetch_jwt_bundles(req(pb::JwtBundlesRequest {})).await;
        assert_status(
            r.map(|_| ()),
            Code::PermissionDenied,
            "no identity issued",
            "FetchJWTBundles",
        );
    }
    // The CLI says the same, and fails.
    let out = d.cli(&["api", "fetch", "jwt", "--audience", AUDIENCE]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no identity issued"));
    // `debug selectors` names what was missing for this process.
    let pid = std::process::id().to_string();
    let out = std::process::Command::new(daemon::bin())
        .args(["debug", "selectors", "--pid", &pid, "--config"])
        .arg(d.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&other_uid), "debug selectors output:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wit_svid_is_unimplemented() {
    let d = Daemon::start(me());
    let mut c = client(&d).await;
    let r = c
        .fetch_witsvid(req(pb::WitsvidRequest {
            spiffe_id: String::new(),
        }))
        .await;
    assert_status(r.map(|_| ()), Code::Unimplemented, "", "FetchWITSVID");
    let r = c.fetch_wit_bundles(req(pb::WitBundlesRequest {})).await;
    assert_status(r.map(|_| ()), Code::Unimplemented, "", "FetchWITBundles");
    still_serving(&d, &mut c).await;
    // And the streams that are implemented send their first message at once.
    let mut s = c
        .fetch_x509svid(req(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
        .await
        .expect("first X509SVIDResponse at once")
        .unwrap()
        .unwrap();
    assert_eq!(first.svids[0].spiffe_id, ID);
}

#[test]
fn cli_against_a_missing_socket_says_to_start_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody-here.sock");
    for args in [
        &["api", "fetch", "x509"][..],
        &["api", "fetch", "jwt", "--audience", AUDIENCE],
        &["api", "fetch", "bundles"],
    ] {
        let out = daemon::cli_with_endpoint(&format!("unix://{}", socket.display()), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains("is `svid-broker run` running"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&socket.display().to_string()),
            "names the socket: {stderr}"
        );
    }
}
