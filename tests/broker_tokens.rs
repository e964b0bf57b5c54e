//! Task tokens are JWT-SVIDs that independent verifiers accept with the JWKS alone, and
//! delegation A → B → C carries an `act` chain and is revoked from the top.

#[path = "support/broker_harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::sync::Arc;

use harness::*;
use spiffe::bundle::jwt::JwtBundleSet;
use spiffe::svid::jwt::JwtSvid;
use spiffe::WorkloadApiClient;
use svid_broker::proto::workload as wl;
use tonic::Code;

const VERIFY_POLICY: &str = r#"
@id("runner-tools")
permit (
  principal == SvidBroker::Workload::"spiffe://example.org/test/runner",
  action in [SvidBroker::Action::"OpenTask", SvidBroker::Action::"MintTaskToken"],
  resource
)
when { ["read", "write"].containsAll(context.scopes) };
"#;

/// PyJWT and jwcrypto, each given only the JWKS, the token and the audience.
const PY_VERIFY: &str = r#"
import json, sys
import jwt
from jwcrypto import jwk as jwk_, jwt as jwt_
jwks = json.load(open(sys.argv[1]))
token = open(sys.argv[2]).read().strip()
aud = sys.argv[3]
hdr = jwt.get_unverified_header(token)
key = [k for k in jwks["keys"] if k["kid"] == hdr["kid"]][0]
pyjwt_claims = jwt.decode(
    token, jwt.PyJWK(key, algorithm="ES256").key, algorithms=["ES256"], audience=aud,
    options={"require": ["exp", "iat", "nbf", "sub", "aud", "jti"]},
)
# jwcrypto only uses keys marked "use": "sig"; a SPIFFE bundle marks them "jwt-svid"
# (SPIFFE Trust Domain and Bundle spec), so hand it the same keys without that member.
generic = {"keys": [{k: v for k, v in j.items() if k != "use"} for j in jwks["keys"]]}
keyset = jwk_.JWKSet.from_json(json.dumps(generic))
t = jwt_.JWT(jwt=token, key=keyset, algs=["ES256"], check_claims={"aud": aud, "exp": None})
jwcrypto_claims = json.loads(t.claims)
# A flipped claim with the old signature must not verify.
h, p, s = token.split(".")
import base64
def unb64(x): return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
claims = json.loads(unb64(p)); claims["scope"] = claims["scope"] + " admin"
bad = h + "." + b64(json.dumps(claims).encode()) + "." + s
try:
    jwt.decode(bad, jwt.PyJWK(key, algorithm="ES256").key, algorithms=["ES256"], audience=aud)
    tampered = "accepted"
except jwt.InvalidSignatureError:
    tampered = "rejected"
print(json.dumps({"header": hdr, "pyjwt": pyjwt_claims, "jwcrypto": jwcrypto_claims, "tampered": tampered}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn task_tokens_verify_independently() {
    let b = Broker::start(Options::new(VERIFY_POLICY));
    let mut c = b.client().await;
    let t = c
        .open_task(open_req("verify tokens", &[TOOL_X], &["read", "write"], 0))
        .await
        .unwrap()
        .into_inner();
    let m = c
        .mint_task_token(mint_req(&t.task_id, TOOL_X, &["write", "read"], 90, 0))
        .await
        .unwrap()
        .into_inner();
    let token = m.token.clone();

    // Claims as written.
    let (header, claims) = jwt_parts(&token);
    let keys: BTreeSet<&str> = header
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["alg", "kid", "typ"]), "{header}");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert!(!header["kid"].as_str().unwrap().is_empty());
    assert_eq!(claims["sub"], RUNNER);
    assert_eq!(
        claims["aud"],
        serde_json::json!([TOOL_X]),
        "exactly one audience"
    );
    let (iat, exp, nbf) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 90);
    assert!(nbf <= iat, "{claims}");
    assert_eq!(exp, m.expires_at);
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti, m.jti);
    assert!(
        jti.len() == 32 && jti.bytes().all(|c| c.is_ascii_hexdigit()),
        "128-bit jti: {jti}"
    );
    assert_eq!(claims["task_id"], t.task_id.as_str());
    assert_eq!(claims["scope"], "read write");
    assert!(claims.get("act").is_none(), "no act on an undelegated task");
    assert_eq!(m.scopes, ["read", "write"]);

    // The JWKS exactly as FetchJWTBundles serves it.
    let ch = svid_broker::client::connect(b.socket.clone())
        .await
        .unwrap();
    let mut wc = svid_broker::client::workload_client(ch);
    let msg = wc
        .fetch_jwt_bundles(wl::JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let jwks = msg.bundles["spiffe://example.org"].clone();

    // 1. PyJWT and jwcrypto with only the JWKS.
    let python = venv_python();
    let jwks_file = b.dir.join("jwks.json");
    let token_file = b.dir.join("token.jwt");
    std::fs::write(&jwks_file, &jwks).unwrap();
    std::fs::write(&token_file, &token).unwrap();
    let out = std::process::Command::new(&python)
        .args(["-c", PY_VERIFY])
        .arg(&jwks_file)
        .arg(&token_file)
        .arg(TOOL_X)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python verification failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(py["pyjwt"], claims, "PyJWT sees the same claims");
    assert_eq!(py["jwcrypto"], claims, "jwcrypto sees the same claims");
    assert_eq!(py["header"], header);
    assert_eq!(py["tampered"], "rejected");

    // 2. The spiffe crate: bundles from its own Workload API client, then parse + validate.
    let endpoint = format!("unix://{}", b.socket.display());
    let sc = WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    let set: JwtBundleSet = sc.fetch_jwt_bundles().await.unwrap();
    let svid = JwtSvid::parse_and_validate(&token, &set, &[TOOL_X]).unwrap();
    assert_eq!(svid.spiffe_id().to_string(), RUNNER);
    assert_eq!(svid.audience(), [TOOL_X.to_string()]);
    assert!(
        JwtSvid::parse_and_validate(&token, &set, &["spiffe://example.org/tool/other"]).is_err(),
        "another audience must not validate"
    );

    // 3. The Workload API's ValidateJWTSVID, through the spiffe crate and directly.
    let v = sc.validate_jwt_token(TOOL_X, &token).await.unwrap();
    assert_eq!(v.spiffe_id().to_string(), RUNNER);
    let r = wc
        .validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience: TOOL_X.into(),
            svid: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.spiffe_id, RUNNER);
    let vclaims = svid_broker::cli::api::struct_to_json(r.claims.as_ref().unwrap());
    assert_eq!(vclaims["task_id"], t.task_id.as_str());
    assert_eq!(vclaims["scope"], "read write");
    let wrong = wc
        .validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience: "spiffe://example.org/tool/other".into(),
            svid: token.clone(),
        })
        .await;
    assert_eq!(wrong.unwrap_err().code(), Code::InvalidArgument);

    // Introspection agrees and adds nothing secret.
    let (active, ic) = introspect(&mut b.admin_broker().await, &token).await;
    assert!(active);
    assert_eq!(ic["jti"], m.jti.as_str());
    assert_eq!(ic["active"], true);

    // The audit log has the jti, never the token.
    let log = std::fs::read_to_string(&b.audit).unwrap();
    assert!(log.contains(&m.jti));
    assert!(
        !log.contains(token.split('.').nth(2).unwrap()),
        "the token's signature is in the audit log"
    );
}

const DELEGATION_POLICY: &str = r#"
@id("agents-open-and-mint")
permit (
  principal,
  action in [SvidBroker::Action::"OpenTask", SvidBroker::Action::"MintTaskToken"],
  resource
)
when { principal.trust_domain == "example.org" && ["read", "write"].containsAll(context.scopes) };

@id("agents-delegate")
permit (principal, action == SvidBroker::Action::"Delegate", resource)
when { resource has tags && resource.tags.contains("agent") };

@id("delegation-depth-max-2")
forbid (principal, action, resource)
when { context.delegation_depth > 2 };
"#;

fn delegation_options() -> Options {
    let mut o = Options::new(DELEGATION_POLICY)
        .broker("max_delegation_depth = 3")
        .broker(&format!("introspectors = [\"{RUNNER}\"]"));
    for id in [AGENT_A, AGENT_B, AGENT_C, RUNNER, RUNNER2] {
        o = o.extra(&format!("[audience.\"{id}\"]\ntags = [\"agent\"]"));
    }
    o
}

fn open_json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn delegation_chain_closes_from_the_top() {
    let b = Broker::start(delegation_options());
    // A: a task covering B, C and the tool.
    let a = open_json(&b.agent_ok(
        "agent-a",
        &[
            "task",
            "open",
            "--purpose",
            "plan the release",
            "--audience",
            AGENT_B,
            "--audience",
            AGENT_C,
            "--audience",
            AGENT_D,
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--scope",
            "write",
        ],
    ));
    let a_task = a["task_id"].as_str().unwrap().to_string();
    assert_eq!(a["delegation_depth"], 0);
    let to_b = b.agent_ok(
        "agent-a",
        &[
            "task",
            "token",
            "--task",
            &a_task,
            "--audience",
            AGENT_B,
            "--token-only",
        ],
    );
    // B: opens from A's token.
    let bo = open_json(&b.agent_ok(
        "agent-b",
        &[
            "task",
            "open",
            "--purpose",
            "write the code",
            "--audience",
            AGENT_C,
            "--audience",
            AGENT_D,
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--scope",
            "write",
            "--parent-token",
            &to_b,
        ],
    ));
    let b_task = bo["task_id"].as_str().unwrap().to_string();
    assert_eq!(bo["delegation_depth"], 1);
    assert_eq!(bo["parent_task_id"], a_task.as_str());
    assert_eq!(bo["spiffe_id"], AGENT_B);
    let to_c = b.agent_ok(
        "agent-b",
        &[
            "task",
            "token",
            "--task",
            &b_task,
            "--audience",
            AGENT_C,
            "--token-only",
        ],
    );
    let (_, to_c_claims) = jwt_parts(&to_c);
    assert_eq!(to_c_claims["act"], serde_json::json!({"sub": AGENT_A}));
    // C: opens from B's token (depth 2, the policy's limit) and mints for the tool.
    let co = open_json(&b.agent_ok(
        "agent-c",
        &[
            "task",
            "open",
            "--purpose",
            "test the code",
            "--audience",
            TOOL_X,
            "--audience",
            AGENT_D,
            "--scope",
            "read",
            "--parent-token",
            &to_c,
        ],
    ));
    let c_task = co["task_id"].as_str().unwrap().to_string();
    assert_eq!(co["delegation_depth"], 2);
    assert_eq!(co["parent_task_id"], b_task.as_str());
    let c_tok = b.agent_ok(
        "agent-c",
        &[
            "task",
            "token",
            "--task",
            &c_task,
            "--audience",
            TOOL_X,
            "--token-only",
        ],
    );
    let (_, cc) = jwt_parts(&c_tok);
    assert_eq!(cc["sub"], AGENT_C);
    assert_eq!(
        cc["act"],
        serde_json::json!({"sub": AGENT_B, "act": {"sub": AGENT_A}})
    );
    assert_eq!(cc["scope"], "read");
    assert_eq!(cc["task_id"], c_task.as_str());

    // Depth 3 is beyond the policy: PermissionDenied, naming the policy.
    let to_d = b.agent_ok(
        "agent-c",
        &[
            "task",
            "token",
            "--task",
            &c_task,
            "--audience",
            AGENT_D,
            "--token-only",
        ],
    );
    let err = b.agent_err(
        "agent-d",
        &[
            "task",
            "open",
            "--purpose",
            "too deep",
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--parent-token",
            &to_d,
        ],
    );
    assert!(
        err.contains("PermissionDenied") && err.contains("delegation-depth-max-2"),
        "{err}"
    );

    // The tool, as the audience, sees C's token active; then A closes its task.
    assert!(cli_active(
        &b.agent_ok("tool-x", &["task", "introspect", "--token", &c_tok])
    ));
    let closed = b.agent_ok("agent-a", &["task", "close", "--task", &a_task]);
    for id in [&a_task, &b_task, &c_task] {
        assert!(closed.contains(id.as_str()), "{closed}");
    }
    assert!(closed.starts_with("closed 3 task(s)"), "{closed}");
    assert!(!cli_active(
        &b.agent_ok("tool-x", &["task", "introspect", "--token", &c_tok])
    ));
    let err = b.agent_err(
        "agent-c",
        &["task", "token", "--task", &c_task, "--audience", TOOL_X],
    );
    assert!(
        err.contains("FailedPrecondition") && err.contains("is closed"),
        "{err}"
    );
    // B and C cannot reopen anything from their stale delegation tokens.
    let err = b.agent_err(
        "agent-c",
        &[
            "task",
            "open",
            "--purpose",
            "again",
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--parent-token",
            &to_c,
        ],
    );
    assert!(
        err.contains("PermissionDenied") && err.contains("closed"),
        "{err}"
    );

    // The close response over gRPC lists the whole subtree too (admin, on a fresh chain).
    let mut admin = b.admin().await;
    let listed = admin
        .list_tasks(pb::ListTasksRequest {
            include_closed: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for id in [&a_task, &b_task, &c_task] {
        let t = listed.tasks.iter().find(|t| &t.task_id == id).unwrap();
        assert_eq!(t.state, "closed");
    }
}

/// A child opened while its parent is being closed must not outlive the close: either the
/// open fails, or the child is closed with the parent.
#[tokio::test(flavor = "multi_thread")]
async fn child_opened_during_parent_close_is_closed_too() {
    let b = Broker::start(delegation_options());
    for round in 0..5 {
        let mut c = b.client().await;
        let parent = c
            .open_task(open_req("parent", &[RUNNER2, TOOL_X], &["read"], 0))
            .await
            .unwrap()
            .into_inner();
        let deleg = c
            .mint_task_token(mint_req(&parent.task_id, RUNNER2, &[], 0, 0))
            .await
            .unwrap()
            .into_inner()
            .token;
        let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut opens = Vec::new();
        for _ in 0..16 {
            let mut c = b.client().await;
            let deleg = deleg.clone();
            let tokens = tokens.clone();
            opens.push(tokio::spawn(async move {
                let mut req = open_req("child", &[TOOL_X], &["read"], 0);
                req.parent_token = deleg;
                req.spiffe_id = RUNNER2.into();
                if let Ok(child) = c.open_task(req).await {
                    let child = child.into_inner();
                    if let Ok(m) = c
                        .mint_task_token(mint_req(&child.task_id, TOOL_X, &[], 0, 0))
                        .await
                    {
                        tokens.lock().unwrap().push(m.into_inner().token);
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2 * round)).await;
        c.close_task(pb::CloseTaskRequest {
            task_id: parent.task_id.clone(),
        })
        .await
        .unwrap();
        for o in opens {
            o.await.unwrap();
        }
        let open_children: Vec<_> = b
            .listed_tasks(true)
            .await
            .iter()
            .filter(|t| t.parent_task_id == parent.task_id && t.state == "open")
            .map(|t| t.task_id.clone())
            .collect();
        assert!(
            open_children.is_empty(),
            "round {round}: children of a closed task still open: {open_children:?}"
        );
        let minted = tokens.lock().unwrap().clone();
        for tok in &minted {
            assert!(
                !introspect(&mut c, tok).await.0,
                "round {round}: a child token outlived its parent's close"
            );
        }
    }
    // The same holds after a restart rebuilds the table from the log.
    let mut b = b;
    b.restart();
    let listed = b
        .admin()
        .await
        .list_tasks(pb::ListTasksRequest {
            include_closed: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.tasks.is_empty(),
        "open after restart: {:?}",
        listed.tasks
    );
}

/// The broker's own bound holds whatever the policy says.
#[tokio::test(flavor = "multi_thread")]
async fn broker_depth_bound_holds_below_the_policy() {
    let b = Broker::start(
        Options::new(DELEGATION_POLICY)
            .broker("max_delegation_depth = 1")
            .extra(&format!("[audience.\"{AGENT_A}\"]\ntags = [\"agent\"]"))
            .extra(&format!("[audience.\"{AGENT_B}\"]\ntags = [\"agent\"]")),
    );
    let a_task = b.agent_ok(
        "agent-a",
        &[
            "task",
            "open",
            "--purpose",
            "p",
            "--audience",
            AGENT_B,
            "--audience",
            AGENT_C,
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--id-only",
        ],
    );
    let to_b = b.agent_ok(
        "agent-a",
        &[
            "task",
            "token",
            "--task",
            &a_task,
            "--audience",
            AGENT_B,
            "--token-only",
        ],
    );
    let b_task = b.agent_ok(
        "agent-b",
        &[
            "task",
            "open",
            "--purpose",
            "p",
            "--audience",
            AGENT_C,
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--parent-token",
            &to_b,
            "--id-only",
        ],
    );
    let to_c = b.agent_ok(
        "agent-b",
        &[
            "task",
            "token",
            "--task",
            &b_task,
            "--audience",
            AGENT_C,
            "--token-only",
        ],
    );
    let err = b.agent_err(
        "agent-c",
        &[
            "task",
            "open",
            "--purpose",
            "p",
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--parent-token",
            &to_c,
        ],
    );
    assert!(
        err.contains("PermissionDenied")
            && err.contains("delegation depth 2 exceeds broker.max_delegation_depth 1"),
        "{err}"
    );
}
