//! The k8s attestor against the project's fixtures in `tests/fixtures/` (pod lists, cgroup files
//! and fake proc roots; `tests/fixtures/README.md` says what each models), a test kubelet over
//! HTTPS and plain HTTP, and a kubelet that misbehaves.

#[path = "support/kubelet.rs"]
mod kubelet;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubelet::{closed_port_url, fake_proc, Mode, Pki, TestKubelet};
use svid_broker::attest::k8s::cgroup::{locate, ContainerRef, LocateError};
use svid_broker::attest::k8s::{K8sAttestor, K8sAttestorConfig};
use svid_broker::attest::{AttestError, WorkloadAttestor};

const PID: i32 = 123;

const SET_A: &str = "
k8s:node-name:worker-3  k8s:ns:agents  k8s:sa:planner
k8s:pod-name:planner-7d9f8c6b5-x2k4q  k8s:pod-uid:deab2d6e-b6d9-4c91-b63f-79287c33d454
k8s:pod-label:app:planner  k8s:pod-label:pod-template-hash:7d9f8c6b5  k8s:pod-label:tier:agents
k8s:pod-owner:ReplicaSet:planner-7d9f8c6b5  k8s:pod-owner-uid:ReplicaSet:9fba7ac5-4ab0-4820-9df7-29373486d4ca
k8s:pod-image-count:2  k8s:pod-init-image-count:0
k8s:pod-image:docker-pullable://registry.example/agents/planner@sha256:0c39cd36f9aa6d5b6bc2cd34a71fa4b5825deac92cf127485d1c65f0d56e8070
k8s:pod-image:docker-pullable://registry.example/mesh/envoy-lite@sha256:cef4095521ab58242d14dab352714675535b57d7e0805c68b5173da6228c4a6a
k8s:pod-image:registry.example/agents/planner:1.4  k8s:pod-image:registry.example/mesh/envoy-lite:0.9
k8s:container-name:planner
k8s:container-image:docker-pullable://registry.example/agents/planner@sha256:0c39cd36f9aa6d5b6bc2cd34a71fa4b5825deac92cf127485d1c65f0d56e8070
k8s:container-image:registry.example/agents/planner:1.4
";

const SET_B: &str = "
k8s:node-name:worker-3  k8s:ns:search  k8s:sa:indexer
k8s:pod-name:indexer-0  k8s:pod-uid:1599dedc-5ff2-48ce-b7d9-ff547c2d3d45
k8s:pod-label:app:indexer  k8s:pod-label:apps.kubernetes.io/pod-index:0
k8s:pod-label:controller-revision-hash:indexer-6c4f9b8d7
k8s:pod-label:statefulset.kubernetes.io/pod-name:indexer-0
k8s:pod-owner:StatefulSet:indexer  k8s:pod-owner-uid:StatefulSet:20b5bb10-3c86-4b98-b4bd-a63a88107212
k8s:pod-image-count:1  k8s:pod-init-image-count:1
k8s:pod-image:docker-pullable://registry.example/search/indexer@sha256:e819b8bc8088a5f562e89d7d0e5c091c6eed9142e80b372ce662fd10dc3fbff8
k8s:pod-image:registry.example/search/indexer:3.0
k8s:pod-init-image:docker-pullable://registry.example/tools/fetcher@sha256:937f68427e036939245b78deaa075ce2f8f7e03bc4221293771aef2a1c94a735
k8s:pod-init-image:registry.example/tools/fetcher:2.1
k8s:container-name:fetch-model
k8s:container-image:docker-pullable://registry.example/tools/fetcher@sha256:937f68427e036939245b78deaa075ce2f8f7e03bc4221293771aef2a1c94a735
k8s:container-image:registry.example/tools/fetcher:2.1
";

const SET_C: &str = "
k8s:node-name:kind-worker  k8s:ns:demo  k8s:sa:echo-client
k8s:pod-name:echo-client-5b8d9f7c6-qz7wm  k8s:pod-uid:92babb63-047b-4532-b606-3d16d1eb6325
k8s:pod-label:app:echo-client  k8s:pod-label:pod-template-hash:5b8d9f7c6
k8s:pod-owner:ReplicaSet:echo-client-5b8d9f7c6  k8s:pod-owner-uid:ReplicaSet:320be162-ca60-4b1c-b02f-530dc4fa8c5a
k8s:pod-image-count:1  k8s:pod-init-image-count:0
k8s:pod-image:registry.example/demo/echo-client:0.3
k8s:pod-image:registry.example/demo/echo-client@sha256:b136dfc73680e09c8e9f513593e12606c3e60520079915ceb022e0ef34202196
k8s:container-name:echo-client
k8s:container-image:registry.example/demo/echo-client:0.3
k8s:container-image:registry.example/demo/echo-client@sha256:b136dfc73680e09c8e9f513593e12606c3e60520079915ceb022e0ef34202196
";

/// The container of `cgroups_pid_in_pod.txt` (`planner`, set A).
const PLANNER_CID: &str = "46966fa1f287c9131861afcdbf9cb567414a127e11f7cd834a4c5b5787cc68af";

fn set(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Set A without the container selectors.
fn pod_level(text: &str) -> BTreeSet<String> {
    set(text)
        .into_iter()
        .filter(|s| !s.starts_with("k8s:container-"))
        .collect()
}

/// The project's own fixtures (`tests/fixtures/README.md`).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn k8s(name: &str) -> PathBuf {
    fixtures().join("k8s").join(name)
}

fn read(name: &str) -> Vec<u8> {
    let path = k8s(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn config(url: &str, proc_root: &Path) -> K8sAttestorConfig {
    K8sAttestorConfig {
        kubelet_url: url.to_string(),
        proc_root: proc_root.to_path_buf(),
        request_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        max_wait: Duration::from_millis(500),
        ..Default::default()
    }
}

fn attestor(cfg: K8sAttestorConfig) -> K8sAttestor {
    K8sAttestor::with_env(cfg, |_| None).expect("attestor")
}

async fn attest(a: &K8sAttestor) -> Result<BTreeSet<String>, AttestError> {
    assert_eq!(a.name(), "k8s");
    let sel = a.attest(PID).await?;
    Ok(sel.into_iter().map(|s| s.to_string()).collect())
}

fn failed_reason(r: Result<BTreeSet<String>, AttestError>) -> String {
    match r {
        Err(AttestError::Failed { attestor, reason }) => {
            assert_eq!(attestor, "k8s");
            reason
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

const CASES: [(&str, &str, &str); 4] = [
    ("cgroups_pid_in_pod.txt", "pod_list.json", SET_A),
    ("systemd_cgroups_pid_in_pod.txt", "pod_list.json", SET_A),
    ("cgroups_init_pid_in_pod.txt", "pod_list.json", SET_B),
    ("cgroups_pid_in_kind_pod.txt", "kind_pod_list.json", SET_C),
];

#[tokio::test]
async fn fixtures_over_https_with_token_give_spire_selector_sets() {
    let pki = Pki::new();
    for (cgroup, pods, want) in CASES {
        let kubelet = TestKubelet::https(read(pods), &pki, false).await;
        kubelet.require_token("kubelet-token");
        let proc = fake_proc(PID, Some(&k8s(cgroup)), None);
        let cfg = K8sAttestorConfig {
            ca_path: Some(pki.ca_path.clone()),
            token_path: Some(pki.token_file("kubelet-token")),
            ..config(&kubelet.url, proc.path())
        };
        let got = attest(&attestor(cfg))
            .await
            .unwrap_or_else(|e| panic!("{cgroup}: {e}"));
        assert_eq!(got, set(want), "{cgroup} + {pods}");
        assert_eq!(
            kubelet.last_authorization().as_deref(),
            Some("Bearer kubelet-token")
        );
    }
}

#[tokio::test]
async fn fixtures_over_plain_http_give_spire_selector_sets() {
    for (cgroup, pods, want) in CASES {
        let kubelet = TestKubelet::http(read(pods)).await;
        kubelet.set_mode(Mode::ServeChunked);
        let proc = fake_proc(PID, Some(&k8s(cgroup)), None);
        let got = attest(&attestor(config(&kubelet.url, proc.path())))
            .await
            .unwrap_or_else(|e| panic!("{cgroup}: {e}"));
        assert_eq!(got, set(want), "{cgroup} + {pods}");
        assert_eq!(kubelet.last_authorization(), None, "no token over http");
    }
}

#[tokio::test]
async fn client_certificate_authenticates_to_the_kubelet() {
    let pki = Pki::new();
    let kubelet = TestKubelet::https(read("pod_list.json"), &pki, true).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        ca_path: Some(pki.ca_path.clone()),
        client_cert_path: Some(pki.client_cert_path.clone()),
        client_key_path: Some(pki.client_key_path.clone()),
        ..config(&kubelet.url, proc.path())
    };
    assert_eq!(attest(&attestor(cfg)).await.unwrap(), set(SET_A));
    assert_eq!(
        kubelet.last_authorization(),
        None,
        "the certificate replaces the token"
    );
}

#[tokio::test]
async fn kubelet_certificate_is_verified_unless_skipping_is_configured() {
    let pki = Pki::new();
    let kubelet = TestKubelet::https(read("pod_list.json"), &pki, false).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let token = pki.token_file("t");
    let wrong_ca = K8sAttestorConfig {
        ca_path: Some(pki.other_ca()),
        token_path: Some(token.clone()),
        ..config(&kubelet.url, proc.path())
    };
    let reason = failed_reason(attest(&attestor(wrong_ca)).await);
    assert!(
        reason.contains("TLS handshake") && reason.contains("ca_path"),
        "{reason}"
    );

    let skip = K8sAttestorConfig {
        skip_kubelet_verification: true,
        token_path: Some(token),
        ..config(&kubelet.url, proc.path())
    };
    assert_eq!(attest(&attestor(skip)).await.unwrap(), set(SET_A));
}

#[tokio::test]
async fn kubelet_certificate_can_be_checked_for_another_name() {
    let pki = Pki::new();
    let kubelet = TestKubelet::https(read("pod_list.json"), &pki, false).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    // The certificate names 127.0.0.1 and node-a.test.
    let named = |name: &str| K8sAttestorConfig {
        ca_path: Some(pki.ca_path.clone()),
        token_path: Some(pki.token_file("t")),
        kubelet_tls_name: Some(name.to_string()),
        ..config(&kubelet.url, proc.path())
    };
    assert_eq!(
        attest(&attestor(named("node-a.test"))).await.unwrap(),
        set(SET_A)
    );
    let reason = failed_reason(attest(&attestor(named("node-b.test"))).await);
    assert!(reason.contains("TLS handshake"), "{reason}");
    // `{node_name}` in the name is filled like in the URL.
    let a = K8sAttestor::with_env(named("{node_name}.test"), |k| {
        (k == "NODE_NAME").then(|| "node-b".into())
    })
    .unwrap();
    let reason = failed_reason(attest(&a).await);
    assert!(reason.contains("TLS handshake"), "{reason}");
    assert!(K8sAttestor::with_env(named("{node_name}.test"), |_| None).is_err());
}

#[tokio::test]
async fn rejected_token_says_what_to_check() {
    let pki = Pki::new();
    let kubelet = TestKubelet::https(read("pod_list.json"), &pki, false).await;
    kubelet.require_token("right");
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        ca_path: Some(pki.ca_path.clone()),
        token_path: Some(pki.token_file("wrong")),
        ..config(&kubelet.url, proc.path())
    };
    let reason = failed_reason(attest(&attestor(cfg)).await);
    assert!(
        reason.contains("401") && reason.contains("token_path"),
        "{reason}"
    );
}

#[tokio::test]
async fn process_outside_any_pod_gets_no_selectors_and_no_request() {
    let kubelet = TestKubelet::http(read("pod_list.json")).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_not_in_pod.txt")), None);
    let a = attestor(config(&kubelet.url, proc.path()));
    assert_eq!(attest(&a).await.unwrap(), BTreeSet::new());
    assert_eq!(kubelet.requests(), 0);
    // Even with no kubelet at all.
    let a = attestor(config(&closed_port_url().await, proc.path()));
    assert_eq!(attest(&a).await.unwrap(), BTreeSet::new());
}

#[tokio::test]
async fn vanished_process_is_reported_as_gone() {
    let proc = tempfile::tempdir().unwrap();
    let a = attestor(config(&closed_port_url().await, proc.path()));
    assert!(matches!(
        a.attest(PID).await,
        Err(AttestError::ProcessGone { pid: PID })
    ));
}

#[tokio::test]
async fn not_running_container_with_container_selectors_disabled_gets_pod_selectors() {
    let kubelet = TestKubelet::http(read("pod_list_not_running.json")).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        disable_container_selectors: true,
        ..config(&kubelet.url, proc.path())
    };
    assert_eq!(attest(&attestor(cfg)).await.unwrap(), pod_level(SET_A));
    assert_eq!(kubelet.requests(), 1);
}

#[tokio::test]
async fn not_running_container_is_polled_then_fails_clearly_within_max_wait() {
    let kubelet = TestKubelet::http(read("pod_list_not_running.json")).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        poll_interval: Duration::from_millis(100),
        max_wait: Duration::from_secs(1),
        ..config(&kubelet.url, proc.path())
    };
    let started = Instant::now();
    let reason = failed_reason(attest(&attestor(cfg)).await);
    let elapsed = started.elapsed();
    assert!(
        reason.contains(PLANNER_CID)
            && reason.contains("not in the kubelet's pod list")
            && reason.contains("max_wait")
            && reason.contains("disable_container_selectors"),
        "{reason}"
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "gave up early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(1) + Duration::from_secs(2),
        "{elapsed:?}"
    );
    // Each look asked the kubelet afresh (a cached miss is never reused).
    assert!(kubelet.requests() >= 5, "{} requests", kubelet.requests());
}

#[tokio::test]
async fn container_that_starts_while_polling_is_attested() {
    let kubelet = Arc::new(TestKubelet::http(read("pod_list_not_running.json")).await);
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        max_wait: Duration::from_secs(5),
        ..config(&kubelet.url, proc.path())
    };
    let k = kubelet.clone();
    let flip = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        k.set_body(read("pod_list.json"));
    });
    assert_eq!(attest(&attestor(cfg)).await.unwrap(), set(SET_A));
    flip.await.unwrap();
    assert!(kubelet.requests() >= 2);
}

#[tokio::test]
async fn max_wait_zero_looks_exactly_once() {
    let kubelet = TestKubelet::http(read("pod_list_not_running.json")).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        max_wait: Duration::ZERO,
        ..config(&kubelet.url, proc.path())
    };
    failed_reason(attest(&attestor(cfg)).await);
    assert_eq!(kubelet.requests(), 1);
}

/// Each misbehaving kubelet gives a clear `Failed` well within `request_timeout + 2s`.
#[tokio::test]
async fn misbehaving_kubelet_fails_clearly_within_the_bound() {
    let timeout = Duration::from_millis(500);
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let ten_mib = 10 * 1024 * 1024;
    let cases: Vec<(Option<Mode>, &[&str])> = vec![
        (None, &["cannot connect", "kubelet_url"]),
        (
            Some(Mode::Slow(Duration::from_secs(5))),
            &["did not answer within 500ms", "request_timeout"],
        ),
        (Some(Mode::Status(500)), &["500", "internal error"]),
        (Some(Mode::Status(403)), &["403", "nodes/proxy"]),
        (Some(Mode::GarbageBody), &["not a pod list"]),
        (Some(Mode::GarbageWire), &["HTTP exchange"]),
        (
            Some(Mode::Oversize(ten_mib)),
            &["more than", "max_response_bytes"],
        ),
        (
            Some(Mode::OversizeChunked(ten_mib)),
            &["more than", "max_response_bytes"],
        ),
    ];
    for (mode, needles) in cases {
        let kubelet = TestKubelet::http(read("pod_list.json")).await;
        let url = match &mode {
            None => closed_port_url().await,
            Some(m) => {
                kubelet.set_mode(m.clone());
                kubelet.url.clone()
            }
        };
        let cfg = K8sAttestorConfig {
            request_timeout: timeout,
            ..config(&url, proc.path())
        };
        let started = Instant::now();
        let reason = failed_reason(attest(&attestor(cfg)).await);
        let elapsed = started.elapsed();
        for needle in needles {
            assert!(
                reason.contains(needle),
                "{mode:?}: {reason:?} lacks {needle:?}"
            );
        }
        assert!(
            elapsed < timeout + Duration::from_secs(2),
            "{mode:?} took {elapsed:?}"
        );
        // A kubelet error is not retried: the caller's client retries on Unavailable.
        assert!(kubelet.requests() <= 1, "{mode:?}");
    }
}

#[tokio::test]
async fn max_response_bytes_is_exact() {
    let body = read("pod_list.json");
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    for mode in [Mode::Serve, Mode::ServeChunked] {
        let kubelet = TestKubelet::http(body.clone()).await;
        kubelet.set_mode(mode.clone());
        let at_limit = K8sAttestorConfig {
            max_response_bytes: body.len() as u64,
            ..config(&kubelet.url, proc.path())
        };
        assert_eq!(
            attest(&attestor(at_limit)).await.unwrap(),
            set(SET_A),
            "{mode:?}"
        );
        let below = K8sAttestorConfig {
            max_response_bytes: body.len() as u64 - 1,
            ..config(&kubelet.url, proc.path())
        };
        let reason = failed_reason(attest(&attestor(below)).await);
        assert!(reason.contains("max_response_bytes"), "{mode:?}: {reason}");
    }
}

#[tokio::test]
async fn request_timeout_edge() {
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let kubelet = TestKubelet::http(read("pod_list.json")).await;
    kubelet.set_mode(Mode::Slow(Duration::from_millis(300)));
    let ok = K8sAttestorConfig {
        request_timeout: Duration::from_millis(1500),
        ..config(&kubelet.url, proc.path())
    };
    assert_eq!(attest(&attestor(ok)).await.unwrap(), set(SET_A));
    let short = K8sAttestorConfig {
        request_timeout: Duration::from_millis(100),
        ..config(&kubelet.url, proc.path())
    };
    let reason = failed_reason(attest(&attestor(short)).await);
    assert!(reason.contains("did not answer within 100ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attestations_share_one_request_and_the_cache() {
    let kubelet = TestKubelet::http(read("pod_list.json")).await;
    kubelet.set_mode(Mode::Slow(Duration::from_millis(300)));
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        cache_ttl: Duration::from_millis(1500),
        ..config(&kubelet.url, proc.path())
    };
    let a = Arc::new(attestor(cfg));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { attest(&a).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), set(SET_A));
    }
    assert_eq!(
        kubelet.requests(),
        1,
        "one request for 20 concurrent callers"
    );
    assert_eq!(a.kubelet_requests(), 1);
    // Within cache_ttl: answered from the cache.
    kubelet.set_mode(Mode::Serve);
    assert_eq!(attest(&a).await.unwrap(), set(SET_A));
    assert_eq!(kubelet.requests(), 1);
    // After it: asked again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(attest(&a).await.unwrap(), set(SET_A));
    assert_eq!(kubelet.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attestations_share_one_failure() {
    let kubelet = TestKubelet::http(Vec::new()).await;
    kubelet.set_mode(Mode::Slow(Duration::from_secs(10)));
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        request_timeout: Duration::from_millis(400),
        ..config(&kubelet.url, proc.path())
    };
    let a = Arc::new(attestor(cfg));
    let started = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { attest(&a).await })
        })
        .collect();
    for call in calls {
        let reason = failed_reason(call.await.unwrap());
        assert!(reason.contains("did not answer"), "{reason}");
    }
    assert!(started.elapsed() < Duration::from_millis(400) + Duration::from_secs(2));
    assert_eq!(
        kubelet.requests(),
        1,
        "a slow kubelet is asked once, not once per caller"
    );
}

#[tokio::test]
async fn pod_on_another_node_is_refused() {
    let kubelet = TestKubelet::http(read("pod_list.json")).await;
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        node_name: Some("other-node".into()),
        ..config(&kubelet.url, proc.path())
    };
    match attest(&attestor(cfg)).await {
        Err(AttestError::Refused { reason, .. }) => {
            assert!(
                reason.contains("other-node") && reason.contains("worker-3"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let same = K8sAttestorConfig {
        node_name: Some("worker-3".into()),
        ..config(&kubelet.url, proc.path())
    };
    assert_eq!(attest(&attestor(same)).await.unwrap(), set(SET_A));
}

#[tokio::test]
async fn node_name_fills_the_url_from_config_or_environment() {
    let kubelet = TestKubelet::http(read("pod_list.json")).await;
    let port = kubelet.url.rsplit(':').next().unwrap().to_string();
    let proc = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let cfg = K8sAttestorConfig {
        kubelet_url: format!("http://{{node_name}}:{port}"),
        node_name_env: "TEST_NODE".into(),
        ..config("unused", proc.path())
    };
    let a = K8sAttestor::with_env(cfg.clone(), |k| {
        (k == "TEST_NODE").then(|| "127.0.0.1".into())
    })
    .unwrap();
    assert_eq!(a.kubelet_url(), format!("http://127.0.0.1:{port}/pods"));
    assert!(K8sAttestor::with_env(cfg, |_| None).is_err());
}

// --- containerinfo: fake proc roots with a cgroup and a mountinfo file ---

fn containerinfo(folder: &str) -> PathBuf {
    fixtures().join("containerinfo").join(folder).join("proc")
}

const UID: &str = "a0a7d7ec-183d-474f-b09e-00866359f524";
const CID: &str = "2aa22cc3ecfabd8550e94e9eae74fef8ec42e80d468b941af21e95adfc457d41";
/// The pod and container that `other/mountinfo-impersonation`'s mount table claims.
const VICTIM_UID: &str = "1f9f8aba-0f6a-42e8-aaf1-2ff225055c5b";
const VICTIM_CID: &str = "dc8527b2addab03eef0debdfeae42ca84e1f25411afc766b455fc91e8e68c7e9";

#[test]
fn containerinfo_fixtures_locate_the_right_container() {
    let cases: [(&str, Option<&str>); 5] = [
        ("k8s/v1", Some(UID)),
        ("k8s/v2", Some(UID)),
        ("other/mountinfo-fallback", Some(UID)),
        ("other/cgroup-primary", None),
        ("other/mountinfo-impersonation", None),
    ];
    for (folder, uid) in cases {
        let got = locate(&containerinfo(folder), PID).unwrap_or_else(|e| panic!("{folder}: {e}"));
        assert_eq!(
            got,
            Some(ContainerRef {
                pod_uid: uid.map(str::to_string),
                container_id: CID.to_string()
            }),
            "{folder}"
        );
    }
    assert!(matches!(
        locate(&containerinfo("k8s/pod-uid-conflict"), PID),
        Err(LocateError::PodConflict { .. })
    ));
    assert!(matches!(
        locate(&containerinfo("k8s/container-id-conflict"), PID),
        Err(LocateError::ContainerConflict { .. })
    ));
}

/// A pod list holding both the real container ([`CID`]) and the one the mountinfo claims
/// ([`VICTIM_CID`], in pod [`VICTIM_UID`]).
fn impersonation_pod_list() -> Vec<u8> {
    let pod = |name: &str, uid: &str, id: &str| {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"serviceAccountName": name, "nodeName": "n1"},
            "status": {"containerStatuses": [
                {"name": "main", "image": "img", "imageID": "", "containerID": format!("containerd://{id}")}
            ]}
        })
    };
    serde_json::to_vec(&serde_json::json!({"kind": "PodList", "items": [
        pod("victim", VICTIM_UID, VICTIM_CID),
        pod("caller", "bd5cc08c-76ec-469a-b4ca-e96646c1128f", CID),
    ]}))
    .unwrap()
}

#[tokio::test]
async fn mountinfo_impersonation_is_not_believed() {
    let kubelet = TestKubelet::http(impersonation_pod_list()).await;
    let cfg = config(
        &kubelet.url,
        &containerinfo("other/mountinfo-impersonation"),
    );
    let got = attest(&attestor(cfg)).await.unwrap();
    assert!(got.contains("k8s:pod-name:caller"), "{got:?}");
    assert!(!got.iter().any(|s| s.contains("victim")), "{got:?}");
}

#[tokio::test]
async fn conflicting_fixtures_are_refused_without_asking_the_kubelet() {
    let kubelet = TestKubelet::http(read("pod_list.json")).await;
    for folder in ["k8s/pod-uid-conflict", "k8s/container-id-conflict"] {
        let a = attestor(config(&kubelet.url, &containerinfo(folder)));
        match a.attest(PID).await {
            Err(AttestError::Refused { attestor, reason }) => {
                assert_eq!(attestor, "k8s");
                assert!(reason.contains("refusing to guess"), "{reason}");
            }
            other => panic!("{folder}: {other:?}"),
        }
    }
    assert_eq!(kubelet.requests(), 0);
}

#[tokio::test]
async fn debug_entry_point_reads_another_proc_root() {
    let kubelet = TestKubelet::http(read("kind_pod_list.json")).await;
    let configured = tempfile::tempdir().unwrap();
    let a = attestor(config(&kubelet.url, configured.path()));
    let fake = fake_proc(PID, Some(&k8s("cgroups_pid_in_kind_pod.txt")), None);
    let got: BTreeSet<String> = a
        .attest_with_proc_root(fake.path(), PID)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, set(SET_C));
    let container = K8sAttestor::container_of(fake.path(), PID)
        .unwrap()
        .unwrap();
    assert_eq!(
        container.pod_uid.as_deref(),
        Some("92babb63-047b-4532-b606-3d16d1eb6325")
    );
    assert_eq!(
        container.container_id,
        "98bf867ba41507abd8e7c4e5664d2e8c6ee3d7212a6517c233c31fdf2b470b3c"
    );
}

/// The `[attestor.k8s]` table shipped in deploy/k8s/configmap.yaml is a valid attestor config.
#[test]
fn shipped_configmap_attestor_table_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/configmap.yaml");
    let yaml = std::fs::read_to_string(&path).expect("read configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "config.toml: |");
    lines
        .next()
        .expect("configmap.yaml has a config.toml block");
    let toml_text: String = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let doc: toml::Table = toml::from_str(&toml_text).expect("config.toml is TOML");
    let table = doc
        .get("attestor")
        .and_then(|a| a.get("k8s"))
        .cloned()
        .expect("[attestor.k8s] present");
    let cfg: K8sAttestorConfig = table.try_into().expect("[attestor.k8s] parses");
    cfg.check_bounds().expect("bounds");
    assert!(cfg.kubelet_url.contains("{node_name}"));
    // It resolves with a node name (TLS files are the pod's; here verification is skipped).
    let cfg = K8sAttestorConfig {
        skip_kubelet_verification: true,
        ..cfg
    };
    let a = K8sAttestor::with_env(cfg, |k| (k == "NODE_NAME").then(|| "node-a".into())).unwrap();
    assert_eq!(
        a.kubelet_url(),
        "https://kubernetes.default.svc/api/v1/nodes/node-a/proxy/pods"
    );
}

/// `svid-broker debug selectors` with a fake proc root: the k8s selectors of set A come through
/// the real CLI, the unix attestor's failure on the fake root is shown but does not hide them,
/// and an entry written with k8s selectors matches.
#[tokio::test(flavor = "multi_thread")]
async fn debug_selectors_cli_on_a_fake_proc_root() {
    let kubelet = TestKubelet::http(std::fs::read(k8s("pod_list.json")).unwrap()).await;
    let fake = fake_proc(PID, Some(&k8s("cgroups_pid_in_pod.txt")), None);
    let config = fake.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
trust_domain = "example.org"
[attestor.unix]
proc_root = "{root}"
[attestor.k8s]
kubelet_url = "{url}"
proc_root = "{root}"
node_name = "worker-3"
[[entry]]
spiffe_id = "spiffe://example.org/ns/{{k8s:ns}}/sa/{{k8s:sa}}"
selectors = ["k8s:pod-label:app:planner", "k8s:container-name:planner"]
[[entry]]
spiffe_id = "spiffe://example.org/other"
selectors = ["k8s:ns:search"]
"#,
            root = fake.path().display(),
            url = kubelet.url,
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_svid-broker"))
            .args(["debug", "selectors", "--pid", &PID.to_string(), "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [
        "k8s:ns:agents",
        "k8s:sa:planner",
        "k8s:pod-name:planner-7d9f8c6b5-x2k4q",
        "k8s:container-name:planner",
    ] {
        assert!(text.contains(s), "missing {s}:\n{text}");
    }
    assert!(
        text.contains("attestor failure"),
        "unix failure shown:\n{text}"
    );
    assert!(
        text.contains("spiffe://example.org/ns/agents/sa/planner (default)"),
        "{text}"
    );
    assert!(
        text.contains("spiffe://example.org/other  missing: k8s:ns:search"),
        "{text}"
    );
}
