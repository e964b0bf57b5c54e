//! Policy reload under load (every decision from one whole policy version; a broken file
//! leaves the old one), and the admin socket (Admin only there, operators act as admin).

#[path = "support/broker_harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::*;
use svid_broker::proto::svidbroker::v1::admin_client::AdminClient;
use tonic::Code;

fn version(name: &str, scope: &str) -> String {
    format!(
        r#"
// Policy version {name}: the runner may use scope "{scope}" on any audience, nothing else.
@id("{name}-{scope}")
permit (
  principal == SvidBroker::Workload::"{RUNNER}",
  action in [SvidBroker::Action::"OpenTask", SvidBroker::Action::"MintTaskToken"],
  resource
)
when {{ ["{scope}"].containsAll(context.scopes) }};
"#
    )
}

const AUDIENCES: usize = 8;

fn audiences() -> Vec<String> {
    (0..AUDIENCES)
        .map(|i| format!("spiffe://example.org/tool/p{i}"))
        .collect()
}

/// The scope set a task was granted, if it is the same on every requested audience.
fn uniform_grant(t: &pb::OpenTaskResponse) -> Result<Vec<String>, String> {
    let sets: BTreeSet<Vec<String>> = t.grants.iter().map(|g| g.scopes.clone()).collect();
    if t.grants.len() != AUDIENCES || sets.len() != 1 {
        return Err(format!("grant mixes policy versions: {:?}", t.grants));
    }
    Ok(sets.into_iter().next().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_under_load_is_all_or_nothing() {
    let v1 = version("v1", "read");
    let v2 = version("v2", "write");
    let b = Broker::start(Options::new(&v1));
    let auds = audiences();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = b.client().await;
        let (stop, seen, violations, auds) =
            (stop.clone(), seen.clone(), violations.clone(), auds.clone());
        clients.push(tokio::spawn(async move {
            let auds: Vec<&str> = auds.iter().map(String::as_str).collect();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let t = match c
                    .open_task(open_req("reload load", &auds, &["read", "write"], 0))
                    .await
                {
                    Ok(t) => t.into_inner(),
                    Err(s) => {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("open refused: {}", show(&s)));
                        continue;
                    }
                };
                let scopes = match uniform_grant(&t) {
                    Ok(s) => s,
                    Err(e) => {
                        violations.lock().unwrap().push(e);
                        continue;
                    }
                };
                if scopes != ["read"] && scopes != ["write"] {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("granted {scopes:?}: allowed by neither version"));
                }
                seen.lock().unwrap().push(scopes[0].clone());
                // A token for the grant: allowed by the version in force now, or refused by
                // the other one; never anything else.
                let s: Vec<&str> = scopes.iter().map(String::as_str).collect();
                match c
                    .mint_task_token(mint_req(&t.task_id, auds[n as usize % AUDIENCES], &s, 0, 0))
                    .await
                {
                    Ok(m) => {
                        let m = m.into_inner();
                        if m.scopes != scopes {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("minted {:?}", m.scopes));
                        }
                    }
                    Err(s)
                        if s.code() == Code::PermissionDenied
                            && s.message().contains("denied by policy") => {}
                    Err(s) => violations
                        .lock()
                        .unwrap()
                        .push(format!("mint: {}", show(&s))),
                }
                let _ = c
                    .close_task(pb::CloseTaskRequest { task_id: t.task_id })
                    .await;
            }
        }));
    }

    // Alternate the file between the two versions, reloading by RPC and by SIGHUP.
    let mut admin = b.admin().await;
    for i in 0..40 {
        let (text, ids) = if i % 2 == 0 {
            (&v2, "v2-write")
        } else {
            (&v1, "v1-read")
        };
        b.write_policy(text);
        if i % 4 < 2 {
            let r = admin
                .reload_policy(pb::ReloadPolicyRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.policy_ids, [ids]);
        } else {
            b.sighup();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // End on v1 by RPC, so the version in force is known.
    b.write_policy(&v1);
    admin
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let violations = violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    let seen = seen.lock().unwrap().clone();
    let reads = seen.iter().filter(|s| *s == "read").count();
    let writes = seen.len() - reads;
    assert!(
        reads > 0 && writes > 0,
        "both versions should have decided requests: read {reads}, write {writes}"
    );
    eprintln!(
        "{} tasks under reload: {reads} by v1, {writes} by v2",
        seen.len()
    );

    // A broken file is refused with its error; the old policy stays.
    let mut c = b.client().await;
    let auds_ref: Vec<&str> = auds.iter().map(String::as_str).collect();
    for (broken, expect) in [
        (
            "@id(\"half\")\npermit (principal, action, resource) when { context.scopes.containsAll( };\n",
            "policy does not parse",
        ),
        (
            "@id(\"typo\")\npermit (principal, action, resource) when { context.scops == 1 };\n",
            "policy does not validate",
        ),
    ] {
        b.write_policy(broken);
        let out = b.admin_cli("reload-policy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a broken policy was accepted");
        assert!(
            err.contains("policy reload refused, previous policy kept") && err.contains(expect),
            "{err}"
        );
        let t = c
            .open_task(open_req("after a broken reload", &auds_ref, &["read", "write"], 0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(uniform_grant(&t).unwrap(), ["read"], "v1 must still be in force");
        // SIGHUP with the broken file: also refused, also v1.
        b.sighup();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = c
            .open_task(open_req("after a broken SIGHUP", &auds_ref, &["write"], 0))
            .await;
        assert_status(t, Code::PermissionDenied, "nothing granted");
    }
    // Two broken files, each refused by RPC and by SIGHUP (the SIGHUP reload runs on its own
    // time, so wait for its record).
    let mut refused = Vec::new();
    for _ in 0..100 {
        refused = b
            .audit_records()
            .into_iter()
            .filter(|r| r["kind"] == "policy_reload" && r["ok"] == false)
            .collect();
        if refused.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused.len() >= 4, "refused reloads recorded: {refused:?}");
    assert!(refused[0]["error"]
        .as_str()
        .unwrap()
        .contains("does not parse"));
    assert_eq!(refused[0]["policy_ids"], serde_json::json!(["v1-read"]));
    // And the CLI check agrees with the daemon.
    let out = b.cli(&["policy", "check", b.policy.to_str().unwrap()]);
    assert!(!out.status.success());
}

const ADMIN_POLICY: &str = r#"
@id("agents")
permit (
  principal,
  action in [SvidBroker::Action::"OpenTask", SvidBroker::Action::"MintTaskToken"],
  resource
)
when { principal.trust_domain == "example.org" };
"#;

#[tokio::test(flavor = "multi_thread")]
async fn admin_socket_is_the_only_way_in_for_operators() {
    let b = Broker::start(Options::new(ADMIN_POLICY));
    let mode = std::fs::metadata(&b.admin_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    let public_mode = std::fs::metadata(&b.socket).unwrap().permissions().mode();
    assert_eq!(
        public_mode & 0o777,
        0o777,
        "public socket mode {public_mode:o}"
    );

    // Admin is not served on the public socket.
    let mut on_public = AdminClient::new(
        svid_broker::client::connect(b.socket.clone())
            .await
            .unwrap(),
    );
    let r = on_public
        .list_tasks(pb::ListTasksRequest {
            include_closed: true,
            ..Default::default()
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unimplemented);
    let r = on_public
        .revoke_task(pb::RevokeTaskRequest {
            task_id: "task_x".into(),
            reason: String::new(),
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Code::Unimplemented);
    let r = on_public.reload_policy(pb::ReloadPolicyRequest {}).await;
    assert_eq!(r.unwrap_err().code(), Code::Unimplemented);

    let mut c = b.client().await;
    let mine = c
        .open_task(open_req("mine", &[TOOL_X], &["read"], 0))
        .await
        .unwrap()
        .into_inner();
    let my_tok = c
        .mint_task_token(mint_req(&mine.task_id, TOOL_X, &[], 0, 0))
        .await
        .unwrap()
        .into_inner()
        .token;
    let theirs = b.agent_ok(
        "agent-b",
        &[
            "task",
            "open",
            "--purpose",
            "b's",
            "--audience",
            TOOL_X,
            "--scope",
            "read",
            "--id-only",
        ],
    );
    let their_tok = b.agent_ok(
        "agent-b",
        &[
            "task",
            "token",
            "--task",
            &theirs,
            "--audience",
            TOOL_X,
            "--token-only",
            "--max-uses",
            "2",
        ],
    );

    // ListTasks on the admin socket sees everyone's tasks; so does the CLI.
    let mut admin = b.admin().await;
    let owners: BTreeSet<(String, String)> = b
        .listed_tasks(false)
        .await
        .iter()
        .map(|t| (t.task_id.clone(), t.spiffe_id.clone()))
        .collect();
    assert!(
        owners.contains(&(mine.task_id.clone(), RUNNER.to_string())),
        "{owners:?}"
    );
    assert!(
        owners.contains(&(theirs.clone(), AGENT_B.to_string())),
        "{owners:?}"
    );
    let out = b.admin_cli("tasks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&theirs) && text.contains(AGENT_B),
        "{text}"
    );

    // TaskBroker on the admin socket: an operator, not a workload.
    let mut op = b.admin_broker().await;
    assert_status(
        op.open_task(open_req("operator", &[TOOL_X], &["read"], 0))
            .await,
        Code::FailedPrecondition,
        "operators cannot open tasks",
    );
    assert_status(
        op.mint_task_token(mint_req(&theirs, TOOL_X, &[], 0, 0))
            .await,
        Code::FailedPrecondition,
        "operators cannot open tasks or mint tokens",
    );
    // …who may introspect any token (this counts a use of an N-use token, like any
    // introspection)…
    let (active, claims) = introspect(&mut op, &their_tok).await;
    assert!(active);
    assert_eq!(claims["sub"], AGENT_B);
    assert_eq!(claims["uses_left"], 1);
    assert!(introspect(&mut op, &my_tok).await.0);
    // …and close any task.
    let closed = op
        .close_task(pb::CloseTaskRequest {
            task_id: theirs.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.closed_task_ids, std::slice::from_ref(&theirs));
    assert_eq!(closed.revoked_tokens, 1);
    assert!(!cli_active(&b.agent_ok(
        "tool-x",
        &["task", "introspect", "--token", &their_tok]
    )));
    let close = b
        .audit_records()
        .into_iter()
        .find(|r| r["kind"] == "task_close" && r["task_id"] == theirs.as_str())
        .expect("task_close record");
    assert_eq!(close["by"], "admin");
    assert_eq!(close["reason"], "closed by an operator");

    // RevokeTask with a reason, recorded as by admin.
    let revoked = admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: mine.task_id.clone(),
            reason: "incident 42".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.closed_task_ids, std::slice::from_ref(&mine.task_id));
    assert!(!introspect(&mut op, &my_tok).await.0);
    let close = b
        .audit_records()
        .into_iter()
        .find(|r| r["kind"] == "task_close" && r["task_id"] == mine.task_id.as_str())
        .expect("task_close record");
    assert_eq!(close["by"], "admin");
    assert_eq!(close["reason"], "incident 42");
    assert_status(
        admin
            .revoke_task(pb::RevokeTaskRequest {
                task_id: "task_00000000000000000000000000000000".into(),
                reason: String::new(),
            })
            .await,
        Code::PermissionDenied,
        "not found",
    );
    let listed = b.listed_tasks(false).await;
    assert!(listed.is_empty(), "{listed:?}");
}

/// `count` audiences under `prefix`, each padded to `bytes`.
fn padded_audiences(prefix: &str, count: usize, bytes: usize) -> Vec<String> {
    (0..count)
        .map(|a| {
            let mut s = format!("{prefix}/{a}/");
            s.extend(std::iter::repeat_n('x', bytes - s.len()));
            s
        })
        .collect()
}

/// A listing larger than one answer comes in pages (here because of the page's byte bound:
/// 60 tasks of 16 audiences of 1,500 bytes list as about 1.5 MiB), and the CLI follows them.
#[tokio::test(flavor = "multi_thread")]
async fn admin_listing_comes_in_pages_and_the_cli_reads_them_all() {
    let b = Broker::start(Options::new(&version("v1", "read")));
    let mut c = b.client().await;
    let mut opened = BTreeSet::new();
    for n in 0..60 {
        let auds = padded_audiences(&format!("spiffe://example.org/tool/{n}"), 16, 1_500);
        let auds: Vec<&str> = auds.iter().map(String::as_str).collect();
        let purpose = "p".repeat(1024);
        let t = c
            .open_task(open_req(&purpose, &auds, &["read"], 0))
            .await
            .unwrap()
            .into_inner();
        opened.insert(t.task_id);
    }

    let mut admin = b.admin().await;
    let first = admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        !first.next_page_token.is_empty() && first.tasks.len() < 60,
        "one answer held {} tasks",
        first.tasks.len()
    );
    let rest = admin
        .list_tasks(pb::ListTasksRequest {
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rest.next_page_token.is_empty());
    let paged: BTreeSet<String> = first
        .tasks
        .iter()
        .chain(&rest.tasks)
        .map(|t| t.task_id.clone())
        .collect();
    assert_eq!(paged, opened);

    let out = b.admin_cli("tasks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let printed: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert_eq!(printed, opened, "the CLI printed every page");

    let bad = admin
        .list_tasks(pb::ListTasksRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await;
    assert_status(bad, Code::InvalidArgument, "page_token");

    // Larger still, the task's own audit record would not fit: the caller is told to ask for
    // less, and the daemon stays up and keeps its log.
    let huge = padded_audiences("spiffe://example.org/tool/huge", 16, 2048);
    let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
    assert_status(
        c.open_task(open_req(&"p".repeat(1024), &huge, &["read"], 0))
            .await,
        Code::InvalidArgument,
        "cannot be recorded",
    );
    c.open_task(open_req("small", &[TOOL_X], &["read"], 0))
        .await
        .expect("the next task opens");
}
