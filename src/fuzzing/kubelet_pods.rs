//! The kubelet's `/pods` answer ([`crate::attest::k8s::selectors`]), parsed as
//! [`crate::attest::k8s::kubelet`] parses it, then every container it lists looked up and turned
//! into selectors.

use crate::attest::k8s::cgroup::ContainerRef;
use crate::attest::k8s::selectors::{find, selectors, Lookup, PodList};
use crate::attest::selector::MAX_SELECTOR_LEN;
use crate::attest::Selector;

pub fn check(data: &[u8]) {
    let Ok(pods) = serde_json::from_slice::<PodList>(data) else {
        return;
    };
    for pod in &pods.items {
        selectors_ok(&selectors(pod, None));
        let statuses = pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
            .chain(&pod.status.ephemeral_container_statuses);
        for status in statuses {
            let id = runtime_id(&status.container_id);
            let Some(id) = id else { continue };
            let uid = Some(pod.metadata.uid.clone());
            for (pod_uid, pod_only) in [(None, false), (uid.clone(), false), (uid, true)] {
                let target = ContainerRef {
                    pod_uid,
                    container_id: id.to_string(),
                };
                lookup(&pods, &target, pod_only);
            }
        }
    }
}

fn runtime_id(container_id: &str) -> Option<&str> {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

fn lookup(pods: &PodList, target: &ContainerRef, pod_only: bool) {
    match find(pods, target, pod_only) {
        Lookup::Found { pod, container } => {
            if let Some(uid) = &target.pod_uid {
                assert_eq!(&pod.metadata.uid, uid, "found a pod with another uid");
            }
            match container {
                Some(c) => {
                    assert!(!pod_only, "a container for a pod-only lookup");
                    assert_eq!(runtime_id(&c.container_id), Some(&*target.container_id));
                }
                None => assert!(pod_only, "no container for a container lookup"),
            }
            selectors_ok(&selectors(pod, container));
        }
        // Every target comes from the list itself.
        Lookup::NotFound => panic!("{target:?} is listed but not found"),
        Lookup::Conflict(_) => {}
    }
}

/// Sorted, distinct, `k8s:<type>:<value>` with a value, within the length limit, and each
/// reads back as itself.
fn selectors_ok(list: &[Selector]) {
    assert!(
        list.windows(2).all(|w| w[0] < w[1]),
        "not sorted or repeated"
    );
    for s in list {
        let text = s.to_string();
        assert_eq!(s.kind(), "k8s");
        assert!(text.len() <= MAX_SELECTOR_LEN, "{} bytes", text.len());
        assert_eq!(text.parse::<Selector>().as_ref(), Ok(s), "{text:?}");
        let (ty, value) = s.value().split_once(':').expect("type:value");
        assert!(!ty.is_empty() && !value.is_empty(), "{text:?}");
    }
}
