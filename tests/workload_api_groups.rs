//! A caller that drops a supplementary group on a live connection loses what the group gave it,
//! through the whole daemon: its config's policy reads `principal.selectors`, so each call
//! compares the caller's groups with those it was attested with. The client is py-spiffe, run as
//! root (it calls `setgroups`); `scripts/install-peers.sh` installs it.

#[path = "support/daemon.rs"]
mod daemon;

use daemon::{Daemon, DaemonConfig};

const ID: &str = "spiffe://example.org/test/grouped";
const AUDIENCE: &str = "spiffe://example.org/needs-group";
const KEPT: u32 = 4242;
const DROPPED: u32 = 4243;

#[test]
fn a_jwt_svid_the_policy_ties_to_a_group_is_refused_once_the_caller_drops_it() {
    if !svid_broker_test_support::root_or_opt_out("runs a client that calls setgroups") {
        return;
    }
    let policy = format!(
        r#"@id("jwt-while-in-group")
permit (principal, action == SvidBroker::Action::"FetchJWTSVID", resource)
when {{ principal.selectors.contains("unix:supplementary_gid:{DROPPED}") }};"#
    );
    let d = Daemon::start(
        DaemonConfig::new()
            .entry_for_me(ID)
            .audit("audit.jsonl")
            .file("groups.cedar", &policy)
            .extra_toml("[policy]\nfile = \"@DIR@/groups.cedar\"\nworkload_api_jwt = true"),
    );
    let (kept, dropped) = (KEPT.to_string(), DROPPED.to_string());
    let v = daemon::python_peer(
        "drop_group_client.py",
        &[AUDIENCE, &kept, &dropped],
        &d.endpoint(),
    );
    assert_eq!(v["before"], serde_json::json!([ID, ID]), "{v}");
    assert_eq!(v["groups_now"], serde_json::json!([KEPT]), "{v}");
    let after = v["after"].as_str().unwrap();
    assert_ne!(
        after, "issued",
        "a dropped group still granted the JWT-SVID: {v}"
    );
    assert!(
        after.contains("PERMISSION_DENIED") && after.contains("denied by policy"),
        "{v}"
    );

    // Two attestations: the connection's first, and the one its changed groups forced (a
    // client that opened a connection per call would show three).
    let text = std::fs::read_to_string(d.dir().join("audit.jsonl")).unwrap();
    let attestations: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "attestation")
        .collect();
    assert_eq!(attestations.len(), 2, "{text}");
    let has =
        |r: &serde_json::Value, s: &str| r["selectors"].as_array().unwrap().iter().any(|x| x == s);
    let dropped = format!("unix:supplementary_gid:{DROPPED}");
    assert!(has(&attestations[0], &dropped), "{text}");
    assert!(!has(&attestations[1], &dropped), "{text}");
    assert!(
        has(&attestations[1], &format!("unix:supplementary_gid:{KEPT}")),
        "{text}"
    );
    assert_eq!(attestations[0]["pid"], attestations[1]["pid"], "{text}");
}
