//! svid-broker with `[authority] kind = "spire"` under a real SPIRE server and agent, and SPIRE's
//! own CLI as a client of our socket in both authority modes.
//!
//! The daemon runs as its own process (the built `svid-broker` binary), so the SPIRE agent
//! attests it by `unix:path` as `spiffe://example.org/svid-broker`, the authorized delegate.
//! Workloads: `spire-agent api …` (the CLI, registered in SPIRE by our `unix:path` selector), this
//! test process (registered the same way; it opens tasks), and `spiffeclient` (not registered).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use svid_broker::client::{connect, with_header};
use svid_broker::proto::svidbroker::v1 as pb;
use svid_broker::proto::svidbroker::v1::task_broker_client::TaskBrokerClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use svid_broker_test_support::daemon::{Daemon, DaemonConfig, Ready};
use svid_broker_test_support::spire::{
    expect_success, peer_bins, retry, spire_available, Spire, SpireConfig,
};

const AUDIENCE: &str = "spiffe://example.org/relying-party";
const BROKER_ID: &str = "spiffe://example.org/svid-broker";
const CLI_ID: &str = "spiffe://example.org/spire-cli";
const AGENT_ID: &str = "spiffe://example.org/agent";

fn broker_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_svid-broker"))
}

/// Starts the daemon on `config` (socket lines are added; `@DIR@` is the daemon's temp dir,
/// which also holds the development policy as `policy.cedar`); killed on drop, its log printed
/// when the test panics.
fn start_daemon(config: &str) -> Daemon {
    let (trust_domain, rest) = config
        .split_once('\n')
        .and_then(|(first, rest)| {
            let td = first.strip_prefix("trust_domain = \"")?.strip_suffix('"')?;
            Some((td, rest))
        })
        .expect("the config starts with trust_domain");
    let config = DaemonConfig::new()
        .binary(broker_exe())
        .trust_domain(trust_domain)
        .admin_socket(true)
        .extra_toml(rest)
        .file("policy.cedar", svid_broker::app::DEVELOPMENT_POLICY)
        .rust_log("svid_broker=debug,info")
        .no_color(false)
        .dir_prefix("sb-")
        .log_name("broker.log")
        .ready(Ready::default())
        .start_timeout(Duration::from_secs(60))
        .kill_on_drop(true);
    tokio::task::block_in_place(|| config.start())
}

async fn run(program: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JWT in `spire-agent api fetch jwt` output (the indented line under `token(<id>):`).
fn jwt_in(out: &str) -> String {
    out.lines()
        .map(str::trim)
        .find(|l| l.starts_with("eyJ") && l.matches('.').count() == 2)
        .unwrap_or_else(|| panic!("no token in:\n{out}"))
        .to_string()
}

fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `spire-agent api fetch x509`, `api fetch jwt`, `api validate jwt` against `socket`, asserting
/// `id`; returns the JWT-SVID.
async fn spire_cli_round(spire_agent: &Path, socket: &str, id: &str) -> String {
    let fetch = ["api", "fetch", "x509", "-socketPath", socket];
    let x509 = retry(Duration::from_secs(30), || run(spire_agent, &fetch)).await;
    expect_success("spire-agent", &fetch, &x509);
    assert!(stdout(&x509).contains(id), "{}", stdout(&x509));

    let fetch_jwt = [
        "api",
        "fetch",
        "jwt",
        "-audience",
        AUDIENCE,
        "-socketPath",
        socket,
    ];
    let jwt = run(spire_agent, &fetch_jwt).await;
    expect_success("spire-agent", &fetch_jwt, &jwt);
    let token = jwt_in(&stdout(&jwt));
    assert_eq!(claims_of(&token)["sub"], id);

    let validate = [
        "api",
        "validate",
        "jwt",
        "-audience",
        AUDIENCE,
        "-svid",
        &token,
        "-socketPath",
        socket,
    ];
    let ok = run(spire_agent, &validate).await;
    expect_success("spire-agent", &validate, &ok);
    assert!(stdout(&ok).contains("SVID is valid"), "{}", stdout(&ok));
    assert!(stdout(&ok).contains(id), "{}", stdout(&ok));

    let wrong = [
        "api",
        "validate",
        "jwt",
        "-audience",
        "spiffe://example.org/other",
        "-svid",
        &token,
        "-socketPath",
        socket,
    ];
    let bad = run(spire_agent, &wrong).await;
    assert!(
        !bad.status.success(),
        "a JWT-SVID validated for the wrong audience: {}",
        stdout(&bad)
    );
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_cli_is_a_client_of_the_embedded_authority() {
    if !spire_available() {
        return;
    }
    let bins = peer_bins();
    let config = format!(
        r#"trust_domain = "example.org"
[[entry]]
spiffe_id = "{CLI_ID}"
selectors = ["unix:path:{}"]
"#,
        bins.spire_agent.display()
    );
    let daemon = start_daemon(&config);
    spire_cli_round(
        &bins.spire_agent,
        &daemon.socket_path().display().to_string(),
        CLI_ID,
    )
    .await;
}

async fn health(socket: &Path, service: &str) -> i32 {
    let channel = connect(socket.to_path_buf()).await.unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

async fn wait_health(socket: &Path, want: ServingStatus, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = health(socket, "").await;
        if got == want as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health is {got}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_and_task_tokens_come_from_spire() {
    if !spire_available() {
        return;
    }
    let mut spire = Spire::start(SpireConfig::default()).await;
    let bins = spire.bins().clone();
    let node = spire.node_id();
    // The broker itself, by the path of its binary: the authorized delegate.
    let broker_sel = format!("unix:path:{}", broker_exe().display());
    spire.create_entry(BROKER_ID, &node, &[&broker_sel]).await;
    // Workloads, registered in SPIRE by selectors svid-broker's own attestor produces.
    let cli_sel = format!("unix:path:{}", bins.spire_agent.display());
    spire
        .create_entry_with(CLI_ID, &node, &[&cli_sel], &["-x509SVIDTTL", "30"])
        .await;
    // The relying party: its own program (a copy of spiffeclient), registered in SPIRE, that
    // validates with the bundle of the SPIRE agent. The original spiffeclient stays unregistered.
    let rp_dir = tempfile::Builder::new().prefix("rp-").tempdir().unwrap();
    let relying_party = rp_dir.path().join("relying-party");
    std::fs::copy(&bins.spiffeclient, &relying_party).unwrap();
    let rp_sel = format!("unix:path:{}", relying_party.display());
    spire.create_entry(AUDIENCE, &node, &[&rp_sel]).await;
    let me = std::env::current_exe().unwrap();
    let me_sel = format!("unix:path:{}", me.display());
    spire
        .create_entry_with(AGENT_ID, &node, &[&me_sel], &["-x509SVIDTTL", "30"])
        .await;

    let config = format!(
        r#"trust_domain = "example.org"
[authority]
kind = "spire"
[authority.spire]
workload_socket = "{}"
admin_socket = "{}"
startup_wait = "30s"
[policy]
file = "@DIR@/policy.cedar"
[audit]
path = "@DIR@/audit.jsonl"
"#,
        spire.workload_endpoint(),
        spire.admin_endpoint(),
    );
    let daemon = start_daemon(&config);
    let socket = daemon.socket_path().display().to_string();

    // 1. SPIRE's CLI through our socket gets SPIRE's SVID and JWT-SVID.
    let token = spire_cli_round(&bins.spire_agent, &socket, CLI_ID).await;
    // That JWT-SVID is SPIRE's: go-spiffe validates it with the bundle of the SPIRE agent alone.
    let spire_endpoint = spire.workload_endpoint();
    let validate = |t: String| {
        let rp = relying_party.clone();
        let endpoint = spire_endpoint.clone();
        async move {
            let args = [
                "-socket",
                &endpoint,
                "-audience",
                AUDIENCE,
                "-validate-token",
                &t,
            ];
            retry(Duration::from_secs(20), || run(&rp, &args)).await
        }
    };
    let v = validate(token.clone()).await;
    expect_success("spiffeclient -validate-token (SPIRE bundle)", &[], &v);

    // The X.509 bundle we serve is SPIRE's.
    let out_dir = daemon.dir().join("x509");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_dir_s = out_dir.display().to_string();
    let write = [
        "api",
        "fetch",
        "x509",
        "-socketPath",
        &socket,
        "-write",
        &out_dir_s,
    ];
    let w = run(&bins.spire_agent, &write).await;
    expect_success("spire-agent api fetch x509 -write", &write, &w);
    let served = std::fs::read_to_string(out_dir.join("bundle.0.pem")).unwrap();
    let spire_bundle = spire.bundle_pem().await;
    assert_eq!(
        pem_bodies(&served),
        pem_bodies(&spire_bundle),
        "served bundle differs from SPIRE's"
    );

    // 2. A workload SPIRE has no entry for: PermissionDenied "no identity issued".
    let endpoint = daemon.endpoint();
    let denied = spire
        .spiffeclient_output(&["-socket", &endpoint, "-audience", AUDIENCE])
        .await;
    assert!(!denied.status.success(), "{}", stdout(&denied));
    let err = stderr(&denied);
    assert!(
        err.contains("PermissionDenied") && err.contains("no identity issued"),
        "{err}"
    );

    // This test process holds the SPIRE identity AGENT_ID through svid-broker.
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), AGENT_ID);

    // 3. A task token minted in spire mode verifies with SPIRE's bundle alone (go-spiffe).
    let channel = connect(daemon.socket_path().to_path_buf()).await.unwrap();
    let mut broker = TaskBrokerClient::new(with_header(channel));
    let task = broker
        .open_task(pb::OpenTaskRequest {
            purpose: "read the report".into(),
            audiences: vec![AUDIENCE.into()],
            scopes: vec!["read".into()],
            ttl_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("OpenTask: {e}\n{}", daemon.log()))
        .into_inner();
    assert_eq!(task.spiffe_id, AGENT_ID);
    let minted = broker
        .mint_task_token(pb::MintTaskTokenRequest {
            task_id: task.task_id.clone(),
            audience: AUDIENCE.into(),
            ttl_seconds: 120,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("MintTaskToken: {e}\n{}", daemon.log()))
        .into_inner();
    let claims = claims_of(&minted.token);
    assert_eq!(claims["sub"], AGENT_ID);
    let task_aud = format!("urn:svid-broker:task:{}:{}", task.task_id, minted.jti);
    let auds: Vec<&str> = claims["aud"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        auds.contains(&AUDIENCE) && auds.contains(&task_aud.as_str()),
        "{claims}"
    );
    let v = validate(minted.token.clone()).await;
    expect_success("spiffeclient -validate-token (task token)", &[], &v);
    // Each mint is a distinct token.
    let again = broker
        .mint_task_token(pb::MintTaskTokenRequest {
            task_id: task.task_id.clone(),
            audience: AUDIENCE.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.token, minted.token);
    // Tracked by the task table: active until the task closes.
    let admin = connect(daemon.admin_socket_path()).await.unwrap();
    let mut admin = TaskBrokerClient::new(with_header(admin));
    let intro = |t: String| pb::IntrospectTokenRequest { token: t };
    let r = admin
        .introspect_token(intro(minted.token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(r.active, "fresh task token not active");
    broker
        .close_task(pb::CloseTaskRequest {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap();
    let r = admin
        .introspect_token(intro(minted.token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.active, "task token still active after CloseTask");

    // 4. Outage: an open X.509 stream and cached SVIDs survive the agent; rotation resumes.
    wait_health(
        daemon.socket_path(),
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let mut seen = vec![leaf_of(&first)];
    spire.stop_agent();
    wait_health(
        daemon.socket_path(),
        ServingStatus::NotServing,
        Duration::from_secs(15),
    )
    .await;
    let fetch = ["api", "fetch", "x509", "-socketPath", &socket];
    let cached = run(&bins.spire_agent, &fetch).await;
    expect_success("spire-agent api fetch x509 (agent down)", &fetch, &cached);
    assert!(stdout(&cached).contains(CLI_ID));
    let during = client.fetch_x509_svid().await.unwrap();
    assert_eq!(during.spiffe_id().to_string(), AGENT_ID);
    // Drain what the stream delivered before the agent went away.
    while let Ok(Some(Ok(ctx))) =
        tokio::time::timeout(Duration::from_millis(200), stream.next()).await
    {
        seen.push(leaf_of(&ctx));
    }

    spire.start_agent().await;
    wait_health(
        daemon.socket_path(),
        ServingStatus::Serving,
        Duration::from_secs(60),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, stream.next())
            .await
            .expect("no new X.509-SVID on the open stream after the agent came back")
            .expect("stream ended")
            .expect("stream error");
        if !seen.contains(&leaf_of(&next)) {
            assert_eq!(
                next.default_svid().unwrap().spiffe_id().to_string(),
                AGENT_ID
            );
            seen.push(leaf_of(&next));
            break;
        }
    }
    // And rotation goes on (x509SVIDTTL 30: the agent renews at about half-life).
    let next = tokio::time::timeout(Duration::from_secs(45), async {
        loop {
            let ctx = stream.next().await.unwrap().unwrap();
            if !seen.contains(&leaf_of(&ctx)) {
                return ctx;
            }
        }
    })
    .await
    .expect("no rotation after the agent came back");
    assert_eq!(
        next.default_svid().unwrap().spiffe_id().to_string(),
        AGENT_ID
    );
    assert_eq!(
        health(daemon.socket_path(), "svid-broker.spire").await,
        ServingStatus::Serving as i32
    );
    let after = run(&bins.spire_agent, &fetch).await;
    expect_success("spire-agent api fetch x509 (agent back)", &fetch, &after);

    // 5. An entry added in SPIRE reaches the open stream, as it would from a SPIRE agent.
    let second = "spiffe://example.org/agent-second";
    spire.create_entry(second, &node, &[&me_sel]).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ctx = stream.next().await.unwrap().unwrap();
            let ids: Vec<String> = ctx
                .svids()
                .iter()
                .map(|s| s.spiffe_id().to_string())
                .collect();
            if ids.iter().any(|i| i == second) {
                assert!(ids.iter().any(|i| i == AGENT_ID), "{ids:?}");
                return;
            }
        }
    })
    .await
    .expect("the new SPIRE entry never reached the open stream");
}

fn leaf_of(ctx: &spiffe::X509Context) -> Vec<u8> {
    ctx.default_svid().unwrap().leaf().as_bytes().to_vec()
}

fn pem_bodies(pem: &str) -> Vec<String> {
    let mut out: Vec<String> = pem
        .split("-----END CERTIFICATE-----")
        .filter_map(|b| b.split("-----BEGIN CERTIFICATE-----").nth(1))
        .map(|b| b.split_whitespace().collect())
        .collect();
    out.sort();
    out
}
