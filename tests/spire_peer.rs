//! Proves the SPIRE test helper and our go-spiffe client against SPIRE itself, before either is
//! pointed at svid-broker: a real server and agent, an entry for this test's uid, an X.509-SVID
//! through `spire-agent api fetch x509`, the full go-spiffe check through `spiffeclient`, the
//! Delegated Identity API through `delegatedclient` (denied, then allowed as an authorized
//! delegate), and an agent outage and restart.

use std::time::Duration;

use svid_broker_test_support::spire::{expect_success, retry, spire_available, Spire, SpireConfig};

const AUDIENCE: &str = "spiffe://example.org/relying-party";

fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_serves_the_go_peers() {
    if !spire_available() {
        return;
    }
    let mut spire = Spire::start(SpireConfig::default()).await;
    let workload_id = "spiffe://example.org/test/workload";
    let selector = format!("unix:uid:{}", uid());
    spire
        .create_entry(workload_id, &spire.node_id(), &[&selector])
        .await;

    // SPIRE's own CLI, retried while the entry propagates to the agent.
    let x509 = spire
        .wait_for_x509(&spire.workload_socket(), Duration::from_secs(20))
        .await;
    assert!(
        x509.contains(workload_id),
        "spire-agent api fetch x509 output:\n{x509}"
    );

    // go-spiffe: X.509 context, JWT-SVID, validation through the API and offline.
    let endpoint = spire.workload_endpoint();
    let out = spire
        .spiffeclient_output(&["-socket", &endpoint, "-audience", AUDIENCE])
        .await;
    expect_success("spiffeclient", &["-socket", &endpoint], &out);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("spiffeclient prints JSON");
    assert_eq!(report["x509"]["spiffe_id"], workload_id);
    assert!(report["x509"]["chain_length"].as_u64().unwrap() >= 1);
    assert_eq!(
        report["x509"]["bundle_trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert_eq!(report["jwt"]["spiffe_id"], workload_id);
    assert_eq!(report["jwt"]["validated_by_api"]["spiffe_id"], workload_id);
    assert_eq!(report["jwt"]["validated_offline"]["spiffe_id"], workload_id);
    assert_eq!(
        report["jwt_bundle_trust_domains"],
        serde_json::json!(["example.org"])
    );
    let header = report["jwt"]["header"].as_object().unwrap();
    let mut keys: Vec<&str> = header.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["alg", "kid", "typ"],
        "JWT-SVID header from SPIRE: {header:?}"
    );

    // Token mode: the JWT-SVID verifies offline for its audience and not for another.
    let token = report["jwt"]["token"].as_str().unwrap();
    let ok = spire
        .spiffeclient_output(&[
            "-socket",
            &endpoint,
            "-audience",
            AUDIENCE,
            "-validate-token",
            token,
            "-validate-online",
        ])
        .await;
    expect_success("spiffeclient -validate-token", &[], &ok);
    let wrong = spire
        .spiffeclient_output(&[
            "-socket",
            &endpoint,
            "-audience",
            "spiffe://example.org/other",
            "-validate-token",
            token,
        ])
        .await;
    assert_eq!(
        wrong.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // Delegated Identity API on the admin socket. The caller (delegatedclient) is attested by the
    // agent itself; only an entry of its own whose ID is in authorized_delegates lets it in.
    let delegated_id = "spiffe://example.org/test/delegated";
    spire
        .create_entry(delegated_id, &spire.node_id(), &["unix:uid:4242"])
        .await;
    let by_selectors = ["-selectors", "unix:uid:4242", "-audience", AUDIENCE];
    let denied = spire.delegatedclient_output(&by_selectors).await;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && stderr.contains("PermissionDenied"),
        "a caller that is not an authorized delegate was let in: {stderr}"
    );
    let client_path = format!("unix:path:{}", spire.bins().delegatedclient.display());
    let delegate = &spire.config().authorized_delegates[0];
    spire
        .create_entry(delegate, &spire.node_id(), &[&client_path])
        .await;
    let granted = retry(Duration::from_secs(20), || {
        spire.delegatedclient_output(&by_selectors)
    })
    .await;
    expect_success("delegatedclient", &by_selectors, &granted);
    let report: serde_json::Value = serde_json::from_slice(&granted.stdout).unwrap();
    assert_eq!(
        report["x509_svids"][0]["spiffe_id"], delegated_id,
        "{report}"
    );
    assert_eq!(
        report["jwt_svids"][0]["spiffe_id"], delegated_id,
        "{report}"
    );
    assert_eq!(
        report["x509_bundle_trust_domains"],
        serde_json::json!(["spiffe://example.org"])
    );
    assert_eq!(
        report["jwt_bundle_trust_domains"],
        serde_json::json!(["spiffe://example.org"])
    );
    // By PID instead of selectors: the SPIRE agent attests this test process itself.
    let pid = std::process::id().to_string();
    let by_pid = spire.delegatedclient_output(&["-pid", &pid]).await;
    expect_success("delegatedclient -pid", &["-pid", &pid], &by_pid);
    let report_pid: serde_json::Value = serde_json::from_slice(&by_pid.stdout).unwrap();
    let ids: Vec<&str> = report_pid["x509_svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [workload_id], "{report_pid}");

    // Selectors matching no entry: SPIRE streams an empty X.509 list (no error); FetchJWTSVIDs
    // says PermissionDenied.
    let none = spire
        .delegatedclient_output(&["-selectors", "unix:uid:4343"])
        .await;
    expect_success("delegatedclient (no match)", &[], &none);
    let report_none: serde_json::Value = serde_json::from_slice(&none.stdout).unwrap();
    assert_eq!(
        report_none["x509_svids"],
        serde_json::json!([]),
        "{report_none}"
    );
    let none_jwt = spire
        .delegatedclient_output(&["-selectors", "unix:uid:4343", "-audience", AUDIENCE])
        .await;
    let stderr = String::from_utf8_lossy(&none_jwt.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("no identity issued"),
        "{stderr}"
    );

    // The delegated JWT-SVID verifies offline with the bundle from the Workload API.
    let delegated_token = report["jwt_svids"][0]["token"].as_str().unwrap();
    let ok = spire
        .spiffeclient_output(&[
            "-socket",
            &endpoint,
            "-audience",
            AUDIENCE,
            "-validate-token",
            delegated_token,
        ])
        .await;
    expect_success(
        "spiffeclient -validate-token (delegated JWT-SVID)",
        &[],
        &ok,
    );

    // Outage: the agent is gone, then back with the same data dir and no new join token.
    spire.stop_agent();
    let socket = spire.workload_socket();
    let socket = socket.to_str().unwrap();
    let down = spire
        .agent_cli_output(&[
            "api",
            "fetch",
            "x509",
            "-socketPath",
            socket,
            "-timeout",
            "2s",
        ])
        .await;
    assert!(
        !down.status.success(),
        "fetch succeeded with the agent stopped"
    );
    spire.start_agent().await;
    let fetch = ["api", "fetch", "x509", "-socketPath", socket];
    let again = retry(Duration::from_secs(20), || spire.agent_cli_output(&fetch)).await;
    expect_success("spire-agent api fetch x509 (after restart)", &[], &again);
    assert!(String::from_utf8_lossy(&again.stdout).contains(workload_id));
}
