//! go-spiffe (v2, from the Go module proxy, built by scripts/install-go-peers.sh) against the
//! real daemon in its embedded mode: the X.509 context, a JWT-SVID, its validation through the
//! Workload API and offline with the fetched JWT bundle, and a task token validated offline.

#[path = "support/daemon.rs"]
mod daemon;

use daemon::{Daemon, DaemonConfig};
use svid_broker_test_support::spire::{peer_bins, spire_available};

const ID: &str = "spiffe://example.org/test/go-peer";
const AUDIENCE: &str = "spiffe://example.org/relying-party";

fn spiffeclient(endpoint: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(peer_bins().spiffeclient)
        .args(["-socket", endpoint])
        .args(args)
        .output()
        .expect("run spiffeclient")
}

#[test]
fn go_spiffe_fetches_and_validates_from_our_socket() {
    if !spire_available() {
        return;
    }
    let d = Daemon::start(DaemonConfig::new().entry_for_me(ID));
    let out = spiffeclient(&d.endpoint(), &["-audience", AUDIENCE]);
    assert!(
        out.status.success(),
        "spiffeclient failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["x509"]["spiffe_id"], ID);
    assert_eq!(
        report["x509"]["bundle_trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert_eq!(report["jwt"]["spiffe_id"], ID);
    // Both validations return the claims they accepted.
    for how in ["validated_by_api", "validated_offline"] {
        let v = &report["jwt"][how];
        assert_eq!(v["spiffe_id"], ID, "{how}: {v}");
        assert_eq!(
            v["claims"]["aud"],
            serde_json::json!([AUDIENCE]),
            "{how}: {v}"
        );
    }
    assert_eq!(report["jwt"]["header"]["alg"], "ES256");

    // A token from our CLI, validated by go-spiffe with our JWT bundle; a wrong audience fails.
    let token = d.fetch_jwt(AUDIENCE);
    let ok = spiffeclient(
        &d.endpoint(),
        &["-validate-token", &token, "-audience", AUDIENCE],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = spiffeclient(
        &d.endpoint(),
        &["-validate-token", &token, "-audience", "other"],
    );
    assert_eq!(bad.status.code(), Some(3), "wrong audience must be refused");
}
