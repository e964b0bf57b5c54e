//! The OAuth face (`[oauth]`) of the real daemon: metadata, JWKS, the token endpoint with a
//! JWT-SVID client assertion, introspection, revocation, token exchange, RFC 6749 errors,
//! audit records, and the listener's bounds at their edges. The Python peers (PyJWT,
//! Authlib, the MCP SDK) run from here too, against the same daemon.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spiffe::WorkloadApiClient;
use svid_broker::client::{connect, with_header};
use svid_broker::proto::svidbroker::v1 as pb;
use svid_broker::proto::svidbroker::v1::task_broker_client::TaskBrokerClient;

const RUNNER: &str = "spiffe://example.org/test/runner";
/// A second identity of this test process: a configured introspector.
const RS: &str = "spiffe://example.org/test/resource-server";
const TOOL: &str = "https://tool.test/mcp";
/// The Python peers' identities (both held by the peers venv's interpreter).
const PY_AGENT: &str = "spiffe://example.org/agent/py";
const MCP_SERVER: &str = "spiffe://example.org/tool/mcp-server";
const OTHER_TOOL: &str = "https://other.test/mcp";
const FORBIDDEN: &str = "https://forbidden.test/mcp";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

const POLICY: &str = r#"
@id("oauth-test-allow")
permit (
  principal,
  action in [SvidBroker::Action::"OpenTask", SvidBroker::Action::"MintTaskToken", SvidBroker::Action::"Delegate"],
  resource
)
when { principal.trust_domain == "example.org" && ["read", "write"].containsAll(context.scopes) };

@id("oauth-test-forbidden-tool")
forbid (principal, action, resource == SvidBroker::Audience::"https://forbidden.test/mcp");
"#;

/// The daemon with an `[oauth]` listener on a loopback port, this test binary registered as
/// [`RUNNER`] and [`RS`]. SIGTERM on drop.
struct Daemon {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    /// `https` when `[oauth]` has TLS, else `http`.
    scheme: &'static str,
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    fn start(oauth_extra: &str) -> Self {
        Self::start_with(oauth_extra, "")
    }

    /// `tail` is appended to the config (e.g. more `[[entry]]`s).
    fn start_with(oauth_extra: &str, tail: &str) -> Self {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&root).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("oa")
            .tempdir_in(&root)
            .unwrap();
        let d = canon(dir.path());
        let me = canon(&std::env::current_exe().unwrap());
        let port = free_port();
        let scheme = if oauth_extra.contains("tls_") {
            "https"
        } else {
            "http"
        };
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let config = format!(
            r#"trust_domain = "example.org"
socket_path = {sock}
data_dir = {data}
shutdown_grace = "2s"

[[entry]]
spiffe_id = "{RUNNER}"
selectors = ["unix:path:{me}"]

[[entry]]
spiffe_id = "{RS}"
selectors = ["unix:path:{me}"]

[policy]
file = {policy}

[audit]
path = {audit}

[broker]
introspectors = ["{RS}", "{MCP_SERVER}"]

[oauth]
listen = "127.0.0.1:{port}"
issuer = "{scheme}://127.0.0.1:{port}"
{oauth_extra}

{tail}
"#,
            sock = q(&d.join("api.sock")),
            data = q(&d.join("data")),
            policy = q(&d.join("policy.cedar")),
            audit = q(&d.join("audit.log")),
            me = me.display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        std::fs::write(d.join("policy.cedar"), POLICY).unwrap();
        let log = std::fs::File::create(d.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_svid-broker"))
            .args(["run", "--config"])
            .arg(d.join("config.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = Self {
            dir,
            port,
            child,
            scheme,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = daemon.child.try_wait().unwrap() {
                panic!("daemon exited ({s}):\n{}", daemon.log());
            }
            let up = std::os::unix::net::UnixStream::connect(d.join("api.sock")).is_ok()
                && TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn issuer(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    fn oauth_records(&self) -> Vec<Value> {
        self.audit_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|r| r.get("event").cloned().unwrap_or(r))
            .filter(|e| e["kind"] == "oauth_request")
            .collect()
    }

    fn endpoint(&self) -> String {
        format!(
            "unix://{}",
            canon(self.dir.path()).join("api.sock").display()
        )
    }

    /// A fresh JWT-SVID for `id` with `aud` = the issuer. The Workload API reuses a JWT-SVID
    /// for the same audiences until its half-life, so a second, unique audience makes it new.
    async fn assertion(&self, id: &str) -> String {
        let c = WorkloadApiClient::connect_to(self.endpoint())
            .await
            .unwrap();
        let nonce = format!("urn:nonce:{}", rand_hex());
        let id = spiffe::SpiffeId::new(id).unwrap();
        c.fetch_jwt_token([self.issuer(), nonce], Some(&id))
            .await
            .unwrap()
    }

    /// A JWT-SVID for `id` and exactly the audiences given (may be cached by the Workload API).
    async fn jwt_svid(&self, id: &str, audiences: &[&str]) -> String {
        let c = WorkloadApiClient::connect_to(self.endpoint())
            .await
            .unwrap();
        let id = spiffe::SpiffeId::new(id).unwrap();
        c.fetch_jwt_token(audiences, Some(&id)).await.unwrap()
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.post_with(path, "", form)
    }

    /// A POST with extra header lines (each ending in `\r\n`).
    fn post_with(&self, path: &str, headers: &str, form: &[(&str, &str)]) -> Resp {
        http(self.port, &post_request(path, headers, form))
    }

    fn get(&self, path: &str, headers: &str) -> Resp {
        http(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"),
        )
    }

    async fn grant(&self, resource: &str, scope: &str, extra: &[(&str, &str)]) -> Resp {
        let a = self.assertion(RUNNER).await;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", a.as_str()),
            ("resource", resource),
            ("scope", scope),
        ];
        form.extend_from_slice(extra);
        self.post("/token", &form)
    }

    async fn introspect_as(&self, id: &str, token: &str) -> Value {
        let a = self.assertion(id).await;
        let r = self.post(
            "/introspect",
            &[
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &a),
                ("token", token),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return; // already reaped by the test: its pid may belong to someone else now
        }
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_hex() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:x}{:x}", N.fetch_add(1, Ordering::Relaxed))
}

#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// Asserts an RFC 6749 error: status, `error`, a description containing `needle`.
    #[track_caller]
    fn assert_error(&self, status: u16, code: &str, needle: &str) {
        let v = self.json();
        assert_eq!(
            (self.status, v["error"].as_str()),
            (status, Some(code)),
            "{}",
            self.text
        );
        let d = v["error_description"].as_str().unwrap_or_default();
        assert!(d.contains(needle), "{d:?} should contain {needle:?}");
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json")
        );
    }
}

/// A form POST with extra header lines, `Connection: close`.
fn post_request(path: &str, headers: &str, form: &[(&str, &str)]) -> String {
    let body = serde_urlencoded::to_string(form).unwrap();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Parses a whole HTTP/1.1 answer.
fn response(out: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        head: head.to_string(),
        text: body.to_string(),
    }
}

/// One raw HTTP/1.1 exchange (the request must say `Connection: close`).
fn http(port: u16, request: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    response(&out)
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_and_jwks_describe_what_is_served() {
    let d = Daemon::start("");
    let iss = d.issuer();
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let r = d.get(path, "");
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let m = r.json();
        assert_eq!(m["issuer"], iss);
        assert_eq!(m["token_endpoint"], format!("{iss}/token"));
        assert_eq!(m["authorization_endpoint"], format!("{iss}/authorize"));
        assert_eq!(m["jwks_uri"], format!("{iss}/jwks.json"));
        assert_eq!(m["introspection_endpoint"], format!("{iss}/introspect"));
        assert_eq!(m["revocation_endpoint"], format!("{iss}/revoke"));
        assert_eq!(
            m["grant_types_supported"],
            json!(["client_credentials", TOKEN_EXCHANGE])
        );
        assert_eq!(
            m["token_endpoint_auth_methods_supported"],
            json!(["private_key_jwt"])
        );
        assert_eq!(
            m["token_endpoint_auth_signing_alg_values_supported"],
            json!(["ES256"])
        );
        // No [[oauth.introspection_client]]: no client secrets anywhere.
        assert_eq!(
            m["introspection_endpoint_auth_methods_supported"],
            json!(["private_key_jwt"])
        );
    }
    let r = d.get("/jwks.json", "");
    assert_eq!(r.status, 200);
    let jwks = r.json();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        assert_eq!(
            (k["use"].as_str(), k["alg"].as_str()),
            (Some("sig"), Some("ES256"))
        );
        assert!(k["kid"].is_string() && k["x"].is_string() && k["y"].is_string());
    }
    let cache = r.header("cache-control").unwrap();
    assert!(cache.starts_with("public, max-age="), "{cache}");
    let etag = r.header("etag").unwrap();
    let again = d.get("/jwks.json", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(again.status, 304, "{}", again.head);
    // The same keys as the SPIFFE bundle on the Workload API.
    let c = WorkloadApiClient::connect_to(d.endpoint()).await.unwrap();
    let set = c.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = set.get(&td).unwrap();
    for k in keys {
        assert!(bundle
            .find_jwt_authority(k["kid"].as_str().unwrap())
            .is_some());
    }
    // Wrong method, unknown path.
    d.post("/jwks.json", &[])
        .assert_error(405, "invalid_request", "GET");
    d.get("/token", "")
        .assert_error(405, "invalid_request", "POST");
    d.get("/nope", "")
        .assert_error(404, "invalid_request", "no endpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_introspect_revoke() {
    let d = Daemon::start("");
    let a = d.assertion(RUNNER).await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", a.as_str()),
        ("resource", TOOL),
        ("scope", "read"),
    ];
    let r = d.post("/token", &form);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "read");
    let expires_in = v["expires_in"].as_i64().unwrap();
    assert!((100..=120).contains(&expires_in), "{expires_in}");
    let token = v["access_token"].as_str().unwrap().to_string();
    let c = claims(&token);
    assert_eq!(c["aud"], json!([TOOL]));
    assert_eq!(c["sub"], RUNNER);
    assert_eq!(c["scope"], "read");
    assert_eq!(c["task_id"], v["task_id"]);

    // The spiffe crate validates it with the Workload API's bundle, for that audience only.
    let wl = WorkloadApiClient::connect_to(d.endpoint()).await.unwrap();
    let set = wl.fetch_jwt_bundles().await.unwrap();
    spiffe::svid::jwt::JwtSvid::parse_and_validate(&token, &set, &[TOOL]).unwrap();
    assert!(spiffe::svid::jwt::JwtSvid::parse_and_validate(&token, &set, &[OTHER_TOOL]).is_err());

    // The same assertion a second time is a replay.
    d.post("/token", &form)
        .assert_error(401, "invalid_client", "already used");

    // Introspection: the configured introspector sees it active; the subject (neither its
    // audience nor an introspector) gets only `active: false`.
    let i = d.introspect_as(RS, &token).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["aud"], json!([TOOL]));
    assert_eq!(i["sub"], RUNNER);
    assert_eq!(i["task_id"], v["task_id"]);
    assert_eq!(
        d.introspect_as(RUNNER, &token).await,
        json!({"active": false})
    );
    assert_eq!(
        d.introspect_as(RS, "not-a-token").await,
        json!({"active": false})
    );

    // Another client may not revoke it; the owner may, and that closes the task.
    let rs = d.assertion(RS).await;
    let foreign = d.post(
        "/revoke",
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &rs),
            ("token", &token),
        ],
    );
    foreign.assert_error(400, "unauthorized_client", "owner");
    let a = d.assertion(RUNNER).await;
    let r = d.post(
        "/revoke",
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("token", &token),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(d.introspect_as(RS, &token).await, json!({"active": false}));
    // RFC 7009: garbage is not an error.
    let a = d.assertion(RUNNER).await;
    let r = d.post(
        "/revoke",
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("token", "garbage"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);

    // A token in the task is refused once the task is closed.
    let task_id = v["task_id"].as_str().unwrap();
    d.grant(TOOL, "read", &[("task_id", task_id)])
        .await
        .assert_error(400, "invalid_grant", "closed");

    // Audit: the grant, the replay and the refusals are recorded; no token is.
    let records = d.oauth_records();
    let grant = records
        .iter()
        .find(|e| e["endpoint"] == "token" && e["error"].is_null())
        .expect("grant record");
    assert_eq!(grant["client"], RUNNER);
    assert_eq!(grant["resource"], TOOL);
    assert_eq!(grant["token_jti"], c["jti"]);
    assert_eq!(grant["grant_type"], "client_credentials");
    assert!(records.iter().any(|e| e["error"] == "invalid_client"
        && e["error_description"]
            .as_str()
            .unwrap()
            .contains("already used")));
    assert!(records
        .iter()
        .any(|e| e["endpoint"] == "revoke" && e["error"] == "unauthorized_client"));
    assert!(records
        .iter()
        .any(|e| e["endpoint"] == "introspect" && e["error"] == "unauthorized_client"));
    let audit = d.audit_text();
    assert!(!audit.contains(&token), "the token must never be logged");
    assert!(
        !audit.contains(a.as_str()),
        "the assertion must never be logged"
    );
    assert!(
        !d.log().contains(&token),
        "the token must never be in the daemon log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_rfc6749_errors() {
    let d = Daemon::start("");
    // No client authentication.
    d.post(
        "/token",
        &[("grant_type", "client_credentials"), ("resource", TOOL)],
    )
    .assert_error(401, "invalid_client", "client authentication is required");
    // Unknown grant type (checked before the assertion is spent).
    d.post("/token", &[("grant_type", "password")])
        .assert_error(400, "unsupported_grant_type", "client_credentials");
    d.post("/token", &[])
        .assert_error(400, "invalid_request", "grant_type is required");
    // An assertion for another audience.
    let wrong = d.jwt_svid(RUNNER, &["https://not-the-issuer"]).await;
    d.post(
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &wrong),
            ("resource", TOOL),
        ],
    )
    .assert_error(401, "invalid_client", "not the issuer");
    // A client_id that is not the assertion's subject.
    let a = d.assertion(RUNNER).await;
    d.post(
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", RS),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("resource", TOOL),
        ],
    )
    .assert_error(401, "invalid_client", "not its subject");
    // Resource rules (RFC 8707) and scopes.
    d.grant("", "read", &[])
        .await
        .assert_error(400, "invalid_target", "resource is required");
    d.grant(TOOL, "read", &[("resource", OTHER_TOOL)])
        .await
        .assert_error(400, "invalid_target", "exactly one audience");
    d.grant("not-a-uri", "read", &[])
        .await
        .assert_error(400, "invalid_target", "absolute URI");
    d.grant(TOOL, "bad\u{1}scope", &[])
        .await
        .assert_error(400, "invalid_scope", "scope");
    // Policy: a forbidden resource, a scope beyond what policy allows.
    d.grant(FORBIDDEN, "read", &[])
        .await
        .assert_error(400, "invalid_target", "nothing granted");
    d.grant(TOOL, "admin", &[])
        .await
        .assert_error(400, "invalid_target", "nothing granted");
    // Repeated parameter.
    let a = d.assertion(RUNNER).await;
    d.post(
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
        ],
    )
    .assert_error(400, "invalid_request", "more than once");

    // A token within an open task: its resources only.
    let r = d.grant(TOOL, "read write", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let task = r.json()["task_id"].as_str().unwrap().to_string();
    let r = d.grant(TOOL, "write", &[("task_id", &task)]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims(r.json()["access_token"].as_str().unwrap())["task_id"],
        task.as_str()
    );
    d.grant(OTHER_TOOL, "read", &[("task_id", &task)])
        .await
        .assert_error(400, "invalid_target", "not in task");
    d.grant(TOOL, "read", &[("task_id", "task_unknown")])
        .await
        .assert_error(400, "invalid_target", "not found or not yours");
    // Content type.
    let r = http(
        d.port,
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    r.assert_error(400, "invalid_request", "Content-Type");
    // Every refusal above is in the audit log.
    let refused = d
        .oauth_records()
        .iter()
        .filter(|e| !e["error"].is_null())
        .count();
    assert!(refused >= 15, "{refused} refusals recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_delegates_with_act() {
    let d = Daemon::start("");
    // RUNNER opens a task for the tool and for handing work to RS (over gRPC), gets a token
    // addressed to RS within it over OAuth, and hands it over.
    let mut c = TaskBrokerClient::new(with_header(
        connect(canon(d.dir.path()).join("api.sock")).await.unwrap(),
    ));
    let task = c
        .open_task(pb::OpenTaskRequest {
            purpose: "delegate over OAuth".into(),
            audiences: vec![RS.into(), TOOL.into()],
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = d
        .grant(RS, "read write", &[("task_id", &task.task_id)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let parent = r.json()["access_token"].as_str().unwrap().to_string();
    let a = d.assertion(RS).await;
    let form = |a: &str, subject: &str| {
        vec![
            ("grant_type".to_string(), TOKEN_EXCHANGE.to_string()),
            ("client_assertion_type".into(), JWT_BEARER.into()),
            ("client_assertion".into(), a.to_string()),
            ("subject_token".into(), subject.to_string()),
            (
                "subject_token_type".into(),
                "urn:ietf:params:oauth:token-type:jwt".into(),
            ),
            ("resource".into(), TOOL.into()),
            ("scope".into(), "read".into()),
        ]
    };
    let f = form(&a, &parent);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = d.post("/token", &f);
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        v["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let child = v["access_token"].as_str().unwrap().to_string();
    let c = claims(&child);
    assert_eq!(c["sub"], RS);
    assert_eq!(c["aud"], json!([TOOL]));
    assert_eq!(c["act"], json!({"sub": RUNNER}));
    assert_eq!(d.introspect_as(RS, &child).await["active"], true);

    // A token not addressed to the caller cannot be exchanged.
    let mine = d.grant(TOOL, "read", &[]).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let a = d.assertion(RS).await;
    let f = form(&a, &mine);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    d.post("/token", &f)
        .assert_error(400, "invalid_grant", "parent_token rejected");

    // Revoking the parent closes the child's task too.
    let a = d.assertion(RUNNER).await;
    let r = d.post(
        "/revoke",
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("token", &parent),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(d.introspect_as(RS, &child).await, json!({"active": false}));
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_bounds_hold_at_their_edges() {
    let d = Daemon::start("request_timeout = \"2s\"\nmax_connections = 4");
    const MAX_BODY: usize = svid_broker::oauth::listener::MAX_BODY_BYTES;
    // A body of exactly the limit is read (and refused for what it says, not its size)...
    let body = format!(
        "grant_type=client_credentials&x={}",
        "a".repeat(MAX_BODY - 32)
    );
    assert_eq!(body.len(), MAX_BODY);
    let req = |body: &str| {
        format!(
            "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    http(d.port, &req(&body)).assert_error(401, "invalid_client", "required");
    // ...one byte more is 413.
    let body = format!("{body}a");
    http(d.port, &req(&body)).assert_error(413, "invalid_request", "larger than");
    // Headers past the limit: 431 from the HTTP layer.
    let big = "a".repeat(svid_broker::oauth::listener::MAX_HEADER_BYTES);
    let r = http(
        d.port,
        &format!("GET /jwks.json HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 431, "{}", r.head);
    let r = http(
        d.port,
        &format!(
            "GET /jwks.json HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            &big[..8 * 1024]
        ),
    );
    assert_eq!(r.status, 200, "{}", r.head);

    // A client that never finishes its head is cut off after request_timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    slow.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // A body that never arrives: 408 after request_timeout.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    s.write_all(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nabc").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    drop(s);

    // max_connections = 4: four held connections, the fifth is closed at once.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", d.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = fifth.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = fifth.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "the fifth connection was served: {}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.get("/jwks.json", "").status,
        200,
        "served again once slots free up"
    );
}

#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("oa")
        .tempdir_in(&root)
        .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"example.org\"\nsocket_path = {:?}\n[[entry]]\nspiffe_id = \"{RUNNER}\"\nselectors = [\"unix:uid:0\"]\n[oauth]\nlisten = \"0.0.0.0:0\"\nissuer = \"http://h\"\n",
            dir.path().join("s.sock").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_svid-broker"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

/// The peers venv (scripts/install-oauth-peers.sh): its python, or a failure saying how to
/// install it. Never a skip.
fn peers_python() -> PathBuf {
    let venv = std::env::var_os("SVID_BROKER_OAUTH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers/oauth-venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/install-oauth-peers.sh (it installs mcp, fastmcp, authlib, \
         pyjwt[crypto], httpx and spiffe into that venv; set SVID_BROKER_OAUTH_VENV to use another)",
        py.display()
    );
    py
}

fn peer(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers/oauth")
        .join(name)
}

/// A daemon whose registry gives the peers' interpreter [`PY_AGENT`] and [`MCP_SERVER`].
fn daemon_for_peers(oauth_extra: &str) -> (Daemon, PathBuf) {
    let py = peers_python();
    let exe = canon(&py);
    let mut tail = String::new();
    for id in [PY_AGENT, MCP_SERVER] {
        tail.push_str(&format!(
            "[[entry]]\nspiffe_id = \"{id}\"\nselectors = [\"unix:path:{}\"]\n\n",
            exe.display()
        ));
    }
    (Daemon::start_with(oauth_extra, &tail), py)
}

fn run_peer(d: &Daemon, py: &Path, script: &str, args: &[&str]) -> Value {
    let out = Command::new(py)
        .arg(peer(script))
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", d.endpoint())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} printed no JSON ({e}): {stdout}"))
}

#[test]
fn authlib_and_pyjwt_against_the_token_endpoint_and_jwks() {
    let (d, py) = daemon_for_peers("");
    let v = run_peer(&d, &py, "authlib_pyjwt.py", &[&d.issuer(), PY_AGENT, TOOL]);
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["claims"]["sub"], PY_AGENT);
    assert_eq!(v["claims"]["aud"], json!([TOOL]));
    assert_eq!(v["claims"]["scope"], "read");
    assert_eq!(v["other_audience"], "rejected");
    assert_eq!(v["replay"], "invalid_client");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mcp_sdk_client_and_server_through_the_broker() {
    let (d, py) = daemon_for_peers("grant_ttl = \"12s\"");
    let port = free_port();
    let log = d.dir.path().join("mcp-server.log");
    let f = std::fs::File::create(&log).unwrap();
    let server = Killed(
        Command::new(&py)
            .arg(peer("mcp_server.py"))
            .args([&d.issuer(), &port.to_string(), MCP_SERVER])
            .env("SPIFFE_ENDPOINT_SOCKET", d.endpoint())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "MCP server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = Command::new(&py)
        .arg(peer("mcp_client.py"))
        .args([&d.issuer(), &url, PY_AGENT])
        .env("SPIFFE_ENDPOINT_SOCKET", d.endpoint())
        .output()
        .unwrap();
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "mcp_client.py failed:\n{}\n{}\nserver:\n{server_log}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["tools"], json!(["whoami"]), "{v}");
    assert_eq!(v["whoami"]["sub"], PY_AGENT);
    assert_eq!(v["sdk_token_aud"], json!([url]));
    assert_eq!(v["fresh"], 200, "{v}");
    assert_eq!(v["other_resource"], 401, "{v}");
    assert_eq!(v["closed_task"], 401, "{v}");
    assert_eq!(v["expired"], 401, "{v}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_an_operator_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let cert_path = keys.path().join("cert.pem");
    let key_path = keys.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    // The issuer is https://; the port is chosen by Daemon, so point the issuer at it after.
    let d = Daemon::start_with(
        &format!(
            "tls_cert_file = {:?}\ntls_key_file = {:?}",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        "",
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(svid_broker::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", d.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"token_endpoint\""), "{text}");
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = d.get("/jwks.json", "");
    assert_ne!(plain.status, 200);
}

#[test]
fn fastmcp_jwt_verifier_with_the_jwks_uri() {
    let (d, py) = daemon_for_peers("");
    let port = free_port();
    let log = d.dir.path().join("fastmcp.log");
    let f = std::fs::File::create(&log).unwrap();
    let _server = Killed(
        Command::new(&py)
            .arg(peer("fastmcp_server.py"))
            .args([&d.issuer(), &port.to_string()])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "FastMCP server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    let v = run_peer(&d, &py, "fastmcp_client.py", &[&d.issuer(), &url, PY_AGENT]);
    assert_eq!(v["whoami"], PY_AGENT, "{v}");
    assert_eq!(v["other_resource"], 401, "{v}");
}

#[test]
fn unix_socket_listener_serves_plain_http_and_is_removed_at_stop() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ou")
        .tempdir_in(&root)
        .unwrap();
    let d = canon(dir.path());
    let oauth_sock = d.join("oauth.sock");
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"example.org\"\nsocket_path = {:?}\n[[entry]]\nspiffe_id = \"{RUNNER}\"\nselectors = [\"unix:uid:0\"]\n[oauth]\nsocket_path = {:?}\nissuer = \"http://localhost/broker\"\n",
            d.join("api.sock").display().to_string(),
            oauth_sock.display().to_string()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("daemon.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_svid-broker"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&oauth_sock).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(Instant::now() < deadline, "no oauth socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = std::os::unix::net::UnixStream::connect(&oauth_sock).unwrap();
    s.write_all(b"GET /.well-known/oauth-authorization-server/broker HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\"token_endpoint\":\"http://localhost/broker/token\""),
        "{out}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
    assert!(!oauth_sock.exists(), "the oauth socket is removed at stop");
}

/// A process group started by a test (a shell script and everything it starts): SIGTERM to
/// the whole group on drop, SIGKILL if it is still there after 10 s.
struct Group(Child);
impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// `examples/mcp/README.md`, run the way it says: `serve.sh` in one shell, then `agent.sh` in
/// another, with `SVID_BROKER_BIN` naming the daemon under test (and ports and a directory
/// of the test's own, so it runs beside anything else). The agent's tool call must succeed,
/// the tool must refuse the token once the task is closed, and the audit log must hold the
/// task's opening and closing.
#[test]
fn the_mcp_example_runs_as_its_readme_says() {
    use std::os::unix::process::CommandExt;
    let py = peers_python();
    let venv = py.parent().unwrap().parent().unwrap().to_path_buf();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example = repo.join("examples/mcp");
    let readme = std::fs::read_to_string(example.join("README.md")).unwrap();
    assert!(
        readme.contains("examples/mcp/serve.sh") && readme.contains("examples/mcp/agent.sh"),
        "the README no longer names the two commands this test runs"
    );
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("ex")
        .tempdir_in(&root)
        .unwrap();
    let run = canon(dir.path()).join("demo");
    let (broker_port, tool_port) = (free_port(), free_port());
    let env = [
        (
            "SVID_BROKER_BIN",
            env!("CARGO_BIN_EXE_svid-broker").to_string(),
        ),
        ("SVID_BROKER_OAUTH_VENV", venv.display().to_string()),
        ("MCP_DEMO_DIR", run.display().to_string()),
        ("MCP_DEMO_BROKER_PORT", broker_port.to_string()),
        ("MCP_DEMO_TOOL_PORT", tool_port.to_string()),
    ];
    let serve_log = dir.path().join("serve.log");
    let f = std::fs::File::create(&serve_log).unwrap();
    let serve = Group(
        Command::new("bash")
            .arg(example.join("serve.sh"))
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let logs = || {
        format!(
            "serve.sh:\n{}\nbroker:\n{}",
            std::fs::read_to_string(&serve_log).unwrap_or_default(),
            std::fs::read_to_string(run.join("broker.log")).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", tool_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the example's tool did not start:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("bash")
        .arg(example.join("agent.sh"))
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "agent.sh failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    const AGENT: &str = "spiffe://example.org/demo/agent";
    let expect = [
        "1. token from the broker: expires in ",
        "2. tools: ['forecast']",
        &format!("   forecast: sunny in Lisbon; asked by {AGENT} in task task_"),
        "3. task closed (revoke: HTTP 200)",
        "   the tool now answers the same token with HTTP 401",
    ];
    for line in expect {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "agent output lacks {line:?}:\n{stdout}\n{}",
            logs()
        );
    }
    let task_id = stdout
        .split("in task ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let events: Vec<Value> = std::fs::read_to_string(run.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| r.get("event").cloned().unwrap_or(r))
        .collect();
    let of_task = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["task_id"] == task_id.as_str())
            .unwrap_or_else(|| panic!("no {kind} record for {task_id} in the audit log"))
    };
    let opened = of_task("task_open");
    assert_eq!(opened["spiffe_id"], AGENT);
    assert_eq!(
        opened["audiences"],
        json!([format!("http://127.0.0.1:{tool_port}/mcp")])
    );
    assert_eq!(of_task("token_issued")["spiffe_id"], AGENT);
    let closed = of_task("task_close");
    assert_eq!(closed["by"], AGENT);
    // The tool's introspections are on record too, and no token is.
    assert!(events
        .iter()
        .any(|e| e["kind"] == "oauth_request" && e["endpoint"] == "introspect"));
    assert!(!std::fs::read_to_string(run.join("audit.log"))
        .unwrap()
        .contains("eyJ"));
    drop(serve);
}

/// The resource server of the introspection-client tests: its client id and secret.
const RS_CLIENT: &str = "fastmcp-tool";
const RS_SECRET: &str = "rs-secret-0123456789abcdef0123456789";

/// A directory of the test's own (mode 0700) under the target directory.
fn private_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&root)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Writes `content` to `dir/name` with `mode`.
fn file_with_mode(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = canon(dir).join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// The `[[oauth.introspection_client]]` table for [`RS_CLIENT`], allowed `resources`.
fn introspection_client(secret_file: &Path, resources: &[&str]) -> String {
    format!(
        "[[oauth.introspection_client]]\nclient_id = \"{RS_CLIENT}\"\nsecret_file = {:?}\nresources = {}\n",
        secret_file.display().to_string(),
        serde_json::to_string(resources).unwrap()
    )
}

fn basic_auth(id: &str, secret: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Authorization: Basic {b64}\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_clients_use_a_secret_and_may_only_introspect_their_resources() {
    let keys = private_dir("ik");
    let secret = file_with_mode(keys.path(), "rs.secret", &format!("{RS_SECRET}\n"), 0o600);
    let d = Daemon::start(&introspection_client(&secret, &[TOOL]));

    // Metadata offers client secrets for introspection, and only there.
    let m = d.get("/.well-known/oauth-authorization-server", "").json();
    assert_eq!(
        m["introspection_endpoint_auth_methods_supported"],
        json!([
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post"
        ])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );
    assert_eq!(
        m["revocation_endpoint_auth_methods_supported"],
        json!(["private_key_jwt"])
    );

    let r = d.grant(TOOL, "read", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = d.grant(OTHER_TOOL, "read", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let other = r.json()["access_token"].as_str().unwrap().to_string();
    let basic = basic_auth(RS_CLIENT, RS_SECRET);

    // client_secret_basic and client_secret_post: a token for its resource is active.
    let by_basic = d.post_with("/introspect", &basic, &[("token", &token)]);
    assert_eq!(by_basic.status, 200, "{}", by_basic.text);
    let v = by_basic.json();
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["aud"], json!([TOOL]));
    assert_eq!(v["client_id"], RUNNER);
    assert_eq!(v["scope"], "read");
    let by_post = d.post(
        "/introspect",
        &[
            ("client_id", RS_CLIENT),
            ("client_secret", RS_SECRET),
            ("token", &token),
            ("token_type_hint", "access_token"),
        ],
    );
    assert_eq!(by_post.status, 200, "{}", by_post.text);
    assert_eq!(by_post.json()["active"], true, "{}", by_post.text);

    // A token for a resource not in its list: inactive, and the refusal is recorded.
    let r = d.post_with("/introspect", &basic, &[("token", &other)]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), json!({"active": false}));

    // A wrong secret: 401 invalid_client, with a Basic challenge when it came as Basic.
    let wrong = d.post_with(
        "/introspect",
        &basic_auth(RS_CLIENT, "rs-secret-0123456789abcdef012345678X"),
        &[("token", &token)],
    );
    wrong.assert_error(401, "invalid_client", "do not match");
    let challenge = wrong.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm="), "{}", wrong.head);
    let wrong = d.post(
        "/introspect",
        &[
            ("client_id", RS_CLIENT),
            ("client_secret", "rs-secret-0123456789abcdef012345678X"),
            ("token", &token),
        ],
    );
    wrong.assert_error(401, "invalid_client", "do not match");
    assert_eq!(wrong.header("www-authenticate"), None, "{}", wrong.head);
    d.post_with(
        "/introspect",
        &basic_auth("someone-else", RS_SECRET),
        &[("token", &token)],
    )
    .assert_error(401, "invalid_client", "do not match");
    // Two methods at once.
    let a = d.assertion(RS).await;
    d.post_with(
        "/introspect",
        &basic,
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("token", &token),
        ],
    )
    .assert_error(400, "invalid_request", "more than one");

    // It may not get, exchange or revoke tokens.
    for method in ["basic", "post"] {
        let mut form = vec![("grant_type", "client_credentials"), ("resource", TOOL)];
        let headers = if method == "basic" {
            basic.clone()
        } else {
            form.extend([("client_id", RS_CLIENT), ("client_secret", RS_SECRET)]);
            String::new()
        };
        d.post_with("/token", &headers, &form).assert_error(
            400,
            "unauthorized_client",
            "may only introspect",
        );
    }
    d.post_with(
        "/token",
        &basic,
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", TOOL),
        ],
    )
    .assert_error(400, "unauthorized_client", "may only introspect");
    d.post_with("/revoke", &basic, &[("token", &token)])
        .assert_error(400, "unauthorized_client", "may only introspect");
    // ...and a wrong secret there is still a 401.
    d.post_with(
        "/revoke",
        &basic_auth(RS_CLIENT, "nope-nope-nope-nope-nope"),
        &[("token", &token)],
    )
    .assert_error(401, "invalid_client", "do not match");
    // The token still works: none of that revoked it.
    let v = d
        .post_with("/introspect", &basic, &[("token", &token)])
        .json();
    assert_eq!(v["active"], true, "{v}");

    // Once its task is closed, the token is inactive for the resource server too.
    let a = d.assertion(RUNNER).await;
    let r = d.post(
        "/revoke",
        &[
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("token", &token),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = d
        .post_with("/introspect", &basic, &[("token", &token)])
        .json();
    assert_eq!(v, json!({"active": false}));

    // Audit: the client id on its introspections and refusals, never the secret.
    let records = d.oauth_records();
    let mine: Vec<&Value> = records
        .iter()
        .filter(|e| e["client"] == RS_CLIENT)
        .collect();
    assert!(
        mine.iter()
            .any(|e| e["endpoint"] == "introspect" && e["error"].is_null()),
        "{mine:?}"
    );
    assert!(
        mine.iter().any(|e| e["endpoint"] == "introspect"
            && e["error"] == "unauthorized_client"
            && e["error_description"]
                .as_str()
                .unwrap()
                .contains("not one of introspection client fastmcp-tool's resources")),
        "{mine:?}"
    );
    assert!(mine
        .iter()
        .any(|e| e["endpoint"] == "token" && e["error"] == "unauthorized_client"));
    assert!(records.iter().any(|e| e["endpoint"] == "introspect"
        && e["error"] == "invalid_client"
        && e["client"].is_null()));
    let introspections: Vec<Value> = d
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| r.get("event").cloned().unwrap_or(r))
        .filter(|e| e["kind"] == "introspection")
        .collect();
    assert!(
        introspections
            .iter()
            .any(|e| e["by"] == format!("oauth-client:{RS_CLIENT}") && e["active"] == true),
        "{introspections:?}"
    );
    for (name, text) in [("audit log", d.audit_text()), ("daemon log", d.log())] {
        assert!(!text.contains(RS_SECRET), "the secret is in the {name}");
        assert!(
            !text.contains("rs-secret-0123456789abcdef012345678X"),
            "a presented secret is in the {name}"
        );
    }
}

/// A config with an `[oauth]` listener and `extra`, and the daemon's stderr when it refuses
/// to start (it must refuse).
fn refused_at_start(dir: &Path, extra: &str) -> String {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"example.org\"\nsocket_path = {:?}\n[[entry]]\nspiffe_id = \"{RUNNER}\"\nselectors = [\"unix:uid:0\"]\n[oauth]\nlisten = \"127.0.0.1:0\"\nissuer = \"http://127.0.0.1\"\n{extra}",
            dir.join("s.sock").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_svid-broker"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the daemon started with {extra}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn an_exposed_or_malformed_secret_file_is_a_config_error() {
    let dir = private_dir("is");
    let d = canon(dir.path());
    for (mode, content, needles) in [
        (
            0o640,
            RS_SECRET.to_string(),
            &["rs.secret", "fastmcp-tool"][..],
        ),
        (0o604, RS_SECRET.to_string(), &["rs.secret"][..]),
        (
            0o600,
            "short".to_string(),
            &["16 to 512 bytes", "openssl rand"][..],
        ),
        (0o600, format!("{RS_SECRET} x"), &["letters, digits"][..]),
    ] {
        let _ = std::fs::remove_file(d.join("rs.secret"));
        let secret = file_with_mode(&d, "rs.secret", &content, mode);
        let err = refused_at_start(&d, &introspection_client(&secret, &[TOOL]));
        for needle in needles {
            assert!(err.contains(needle), "mode {mode:o}: {err}");
        }
        assert!(!err.contains(&content), "the secret is in the error: {err}");
    }
    let err = refused_at_start(
        &d,
        &introspection_client(&d.join("missing.secret"), &[TOOL]),
    );
    assert!(err.contains("missing.secret"), "{err}");
    let err = refused_at_start(
        &d,
        "[[oauth.introspection_client]]\nclient_id = \"spiffe://example.org/x\"\nsecret_file = \"/x\"\nresources = [\"https://t\"]\n",
    );
    assert!(err.contains("only letters, digits"), "{err}");
}

#[test]
fn fastmcp_introspection_verifier_with_a_client_secret() {
    let keys = private_dir("fk");
    let secret = file_with_mode(keys.path(), "rs.secret", RS_SECRET, 0o600);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (d, py) = daemon_for_peers(&introspection_client(&secret, &[&url]));
    let log = d.dir.path().join("fastmcp-introspection.log");
    let f = std::fs::File::create(&log).unwrap();
    let _server = Killed(
        Command::new(&py)
            .arg(peer("fastmcp_introspection_server.py"))
            .args([&d.issuer(), &port.to_string(), RS_CLIENT])
            .arg(&secret)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "FastMCP server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(&py)
        .arg(peer("fastmcp_introspection_client.py"))
        .args([&d.issuer(), &url, PY_AGENT])
        .env("SPIFFE_ENDPOINT_SOCKET", d.endpoint())
        .output()
        .unwrap();
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "fastmcp_introspection_client.py failed:\n{}\n{}\nserver:\n{server_log}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["whoami"], PY_AGENT, "{v}\n{server_log}");
    assert_eq!(v["fresh"], 200, "{v}");
    assert_eq!(v["other_resource"], 401, "{v}");
    assert_eq!(v["revoked"], 401, "{v}");
    // The broker saw the verifier introspect as RS_CLIENT, by client_secret_basic.
    let records = d.oauth_records();
    assert!(
        records.iter().any(|e| e["endpoint"] == "introspect"
            && e["client"] == RS_CLIENT
            && e["error"].is_null()),
        "{records:?}"
    );
    assert!(!d.audit_text().contains(RS_SECRET));
}

/// The user's identity provider of the on-behalf-of test: its `iss`, and the `aud` its id
/// tokens carry for the broker.
const IDP: &str = "https://idp.test";
const IDP_AUDIENCE: &str = "svid-broker";
const USER: &str = "alice@example.com";

/// An ES256 signing key of the test's own (ring), and its JWK.
struct IdpKey {
    key: ring::signature::EcdsaKeyPair,
    kid: &'static str,
}

impl IdpKey {
    fn generate(kid: &'static str) -> Self {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Self { key, kid }
    }

    fn jwk(&self) -> Value {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        use ring::signature::KeyPair;
        let point = self.key.public_key().as_ref();
        assert_eq!(point.len(), 65);
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A compact JWS of `claims`, with this key's `kid` (or `kid` if given).
    fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid.unwrap_or(self.kid)});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_on_behalf_of_a_user_with_an_id_token() {
    const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    let idp = IdpKey::generate("idp-key-1");
    let jwks_dir = private_dir("idp");
    let jwks = canon(jwks_dir.path()).join("idp-jwks.json");
    std::fs::write(&jwks, json!({"keys": [idp.jwk()]}).to_string()).unwrap();
    let d = Daemon::start_with(
        "",
        &format!(
            "[[oidc_issuer]]\nissuer = \"{IDP}\"\naudience = \"{IDP_AUDIENCE}\"\njwks_path = {:?}\n",
            jwks.display().to_string()
        ),
    );
    let now = now_secs();
    let user_claims = json!({
        "iss": IDP, "aud": IDP_AUDIENCE, "sub": USER, "iat": now, "exp": now + 300,
        "email": USER,
    });
    let exchange = |subject: String| {
        let d = &d;
        async move {
            let a = d.assertion(RUNNER).await;
            d.post(
                "/token",
                &[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &a),
                    ("subject_token", &subject),
                    ("subject_token_type", ID_TOKEN),
                    ("resource", TOOL),
                    ("scope", "read"),
                ],
            )
        }
    };

    let r = exchange(idp.sign(&user_claims, None)).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text, d.log());
    let v = r.json();
    assert_eq!(
        v["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(v["token_type"], "Bearer");
    let token = v["access_token"].as_str().unwrap().to_string();
    let c = claims(&token);
    assert_eq!(c["obo"], json!({"iss": IDP, "sub": USER}), "{c}");
    assert_eq!(c["aud"], json!([TOOL]));
    assert_eq!(c["sub"], RUNNER, "the client acts, for the user");
    assert_eq!(c["scope"], "read");
    assert!(c.get("act").is_none(), "not a delegation: {c}");
    // Valid as any task token, the user in the introspection answer too.
    let i = d.introspect_as(RS, &token).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["obo"], json!({"iss": IDP, "sub": USER}));
    // The task is recorded as acting for the user; the id token itself is not recorded.
    let opened: Vec<Value> = d
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|r| r.get("event").cloned().unwrap_or(r))
        .filter(|e| e["kind"] == "task_open" && e["task_id"] == v["task_id"])
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(
        opened[0]["on_behalf_of"].as_str().unwrap().contains(USER),
        "{opened:?}"
    );

    // Refusals: invalid_grant, saying why.
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut m = user_claims.as_object().unwrap().clone();
        f(&mut m);
        Value::Object(m)
    };
    let stranger = IdpKey::generate("idp-key-1");
    let cases = [
        (
            "an unconfigured issuer",
            idp.sign(
                &edit(&|m| {
                    m.insert("iss".into(), json!("https://evil.test"));
                }),
                None,
            ),
            "\"https://evil.test\" is not configured",
        ),
        (
            "expired",
            idp.sign(
                &edit(&|m| {
                    m.insert("iat".into(), json!(now - 7200));
                    m.insert("exp".into(), json!(now - 3600));
                }),
                None,
            ),
            "expired",
        ),
        (
            "another audience",
            idp.sign(
                &edit(&|m| {
                    m.insert("aud".into(), json!("some-other-app"));
                }),
                None,
            ),
            "aud does not contain \"svid-broker\"",
        ),
        (
            "signed by another key under the same kid",
            stranger.sign(&user_claims, None),
            "signature does not verify",
        ),
        (
            "a kid the issuer does not publish",
            idp.sign(&user_claims, Some("idp-key-2")),
            "idp-key-2",
        ),
        ("not a JWT", "not-a-jwt".to_string(), "subject_token"),
    ];
    let sent = cases.len();
    for (why, subject, needle) in cases {
        let r = exchange(subject).await;
        let v = r.json();
        assert_eq!(
            (r.status, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{why}: {}",
            r.text
        );
        let d = v["error_description"].as_str().unwrap();
        assert!(
            d.starts_with("subject_token rejected") && d.contains(needle),
            "{why}: {d:?} should contain {needle:?}"
        );
    }
    let refused = d
        .oauth_records()
        .iter()
        .filter(|e| e["endpoint"] == "token" && e["error"] == "invalid_grant")
        .count();
    assert_eq!(refused, sent, "every refusal is in the audit log");
}

/// The broker's own identity for its OAuth listener's TLS (`tls_spiffe_id`).
const BROKER_ID: &str = "spiffe://example.org/broker/oauth";

/// Trusts a server certificate that chains to the trust bundle's roots (webpki, serverAuth),
/// whatever its name (an X.509-SVID has a URI SAN and no DNS name), and keeps it so the test
/// can check its SPIFFE ID itself.
#[derive(Debug)]
struct BundleVerifier {
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let anchors: Vec<_> = self
            .roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("chain: {e:?}")))?;
        self.seen.lock().unwrap().push(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What the test reads from a server certificate: URI SANs, serial, notAfter.
fn cert_facts(der: &[u8]) -> (Vec<String>, String, i64) {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let uris = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        uris,
        cert.raw_serial_as_string(),
        cert.validity().not_after.timestamp(),
    )
}

/// One request over TLS with `verifier`; the answer.
async fn https(
    port: u16,
    verifier: &std::sync::Arc<BundleVerifier>,
    request: &str,
) -> Result<Resp, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier.clone())
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    Ok(response(&out))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_from_the_brokers_own_svid_and_its_renewal() {
    // The broker's identity: an [[entry]] no process matches, with a short X.509-SVID
    // lifetime so that it renews (at half-life, ±10 %) during the test.
    let d = Daemon::start_with(
        &format!("tls_spiffe_id = \"{BROKER_ID}\""),
        &format!(
            "[[entry]]\nspiffe_id = \"{BROKER_ID}\"\nselectors = [\"unix:uid:4294967294\"]\nx509_ttl = \"10s\"\n"
        ),
    );
    assert!(d.issuer().starts_with("https://"));
    // The trust bundle, as any workload gets it from the Workload API.
    let wl = WorkloadApiClient::connect_to(d.endpoint()).await.unwrap();
    let bundles = wl.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> = bundles
        .get(&td)
        .unwrap()
        .authorities()
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    assert!(!roots.is_empty());
    let verifier = std::sync::Arc::new(BundleVerifier {
        roots: roots.clone(),
        seen: Default::default(),
    });

    // Metadata over TLS, from a certificate whose only URI SAN is the configured SPIFFE ID.
    let r = https(
        d.port,
        &verifier,
        "GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["issuer"], d.issuer());
    assert_eq!(r.json()["token_endpoint"], format!("{}/token", d.issuer()));
    let first = verifier.seen.lock().unwrap().last().cloned().unwrap();
    let (uris, serial1, not_after1) = cert_facts(&first);
    assert_eq!(uris, [BROKER_ID]);
    // A token request over TLS, the assertion addressed to the https:// issuer.
    let a = d.assertion(RUNNER).await;
    let r = https(
        d.port,
        &verifier,
        &post_request(
            "/token",
            "",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &a),
                ("resource", TOOL),
                ("scope", "read"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims(r.json()["access_token"].as_str().unwrap())["aud"],
        json!([TOOL])
    );

    // A client that trusts another trust domain's roots refuses the server.
    let stranger = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    let untrusting = std::sync::Arc::new(BundleVerifier {
        roots: vec![stranger.cert.der().clone()],
        seen: Default::default(),
    });
    let e = https(d.port, &untrusting, "GET /jwks.json HTTP/1.1\r\n\r\n")
        .await
        .unwrap_err();
    assert!(e.contains("handshake"), "{e}");

    // Renewal: the 10 s SVID renews at 4.5 to 5.5 s; the next handshakes get the new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let renewed = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = https(
            d.port,
            &verifier,
            "GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        let last = verifier.seen.lock().unwrap().last().cloned().unwrap();
        let facts = cert_facts(&last);
        if facts.1 != serial1 {
            break facts;
        }
        assert!(
            Instant::now() < deadline,
            "the listener still serves the first SVID (serial {serial1}) after 20 s:\n{}",
            d.log()
        );
    };
    assert_eq!(renewed.0, [BROKER_ID]);
    assert!(renewed.2 > not_after1, "{} !> {not_after1}", renewed.2);
    // And past the first SVID's expiry, handshakes still succeed (with a valid certificate).
    let wait = (not_after1 + 2 - now_secs()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = https(
        d.port,
        &verifier,
        "GET /jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let last = verifier.seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        cert_facts(&last).2 > now_secs(),
        "an expired certificate was served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_the_oauth_listener_within_the_grace_period() {
    // shutdown_grace = "2s" (Daemon's config): the bound this test shows.
    const GRACE: Duration = Duration::from_secs(2);
    let mut d = Daemon::start("");
    let a = d.assertion(RUNNER).await;
    let request = post_request(
        "/token",
        "",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("resource", TOOL),
            ("scope", "read"),
        ],
    );
    // In flight at SIGTERM: the head and half the body sent.
    let (first, rest) = request.split_at(request.len() - 40);
    let mut in_flight = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    in_flight.write_all(first.as_bytes()).unwrap();
    // A request that never finishes: it must not hold the daemon past the grace period.
    let mut stalled = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stalled
        .write_all(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    // An idle keep-alive connection, after one answered request.
    let mut idle = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.write_all(b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(300));

    let stop = Instant::now();
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGTERM);
    }
    // No new connections once draining has begun.
    while TcpStream::connect(("127.0.0.1", d.port)).is_ok() {
        assert!(
            stop.elapsed() < GRACE,
            "still accepting {:?} after SIGTERM",
            stop.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The idle connection is closed without waiting for the grace period.
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(stop.elapsed() < GRACE, "{:?}", stop.elapsed());
    // The request in flight is answered in full, and told the connection closes.
    in_flight.write_all(rest.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = in_flight.read_to_end(&mut out);
    let r = response(&out);
    assert_eq!(r.status, 200, "{}\n{}", r.text, d.log());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(
        claims(r.json()["access_token"].as_str().unwrap())["aud"],
        json!([TOOL])
    );
    // The stalled request holds the daemon until the grace period ends, not longer.
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stop.elapsed() < GRACE + Duration::from_secs(5),
            "the daemon is still running {:?} after SIGTERM:\n{}",
            stop.elapsed(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = stop.elapsed();
    assert!(status.success(), "{status}\n{}", d.log());
    assert!(
        took >= GRACE - Duration::from_millis(200),
        "exited after {took:?}, before the grace period: the stalled request was not waited for"
    );
    let mut out = Vec::new();
    let _ = stalled.read_to_end(&mut out);
    assert!(
        !String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let log = d.log();
    assert!(log.contains("oauth listener closed"), "{log}");
    assert!(log.contains("still open after the grace period"), "{log}");
    // The grant answered during the drain is in the audit log.
    assert!(d
        .oauth_records()
        .iter()
        .any(|e| e["endpoint"] == "token" && e["error"].is_null()));
}
