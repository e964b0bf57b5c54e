//! The kubelet's `PodList`, reduced to what attestation reads, and the selectors SPIRE derives
//! from it (`k8s:ns:default`, `k8s:pod-label:app:web`, …).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer};

use super::cgroup::ContainerRef;
use crate::attest::selector::MAX_SELECTOR_LEN;
use crate::attest::Selector;

use super::NAME;

#[derive(Debug, Default, Deserialize)]
pub struct PodList {
    #[serde(default, deserialize_with = "nullable")]
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: PodSpec,
    #[serde(default, deserialize_with = "nullable")]
    pub status: PodStatus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OwnerReference {
    #[serde(default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub uid: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub service_account_name: String,
    /// Deprecated alias of `serviceAccountName`, still filled by old API servers.
    #[serde(default, deserialize_with = "nullable")]
    pub service_account: String,
    #[serde(default, deserialize_with = "nullable")]
    pub node_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerStatus {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub image: String,
    #[serde(default, rename = "imageID", deserialize_with = "nullable")]
    pub image_id: String,
    /// `<runtime>://<id>`; empty until the container is created.
    #[serde(default, rename = "containerID", deserialize_with = "nullable")]
    pub container_id: String,
}

/// `null` reads as the default, as Go writes it for empty slices and maps.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ContainerStatus {
    /// The runtime's ID, without the `docker://` / `containerd://` / `cri-o://` scheme.
    fn runtime_id(&self) -> Option<&str> {
        let id = self
            .container_id
            .split_once("://")
            .map_or(self.container_id.as_str(), |(_, id)| id);
        (!id.is_empty()).then_some(id)
    }
}

impl Pod {
    fn statuses(&self) -> impl Iterator<Item = &ContainerStatus> {
        self.status
            .container_statuses
            .iter()
            .chain(&self.status.init_container_statuses)
            .chain(&self.status.ephemeral_container_statuses)
    }
}

/// What the pod list says about a container.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The pod, and the container's status unless only pod selectors are wanted.
    Found {
        pod: &'a Pod,
        container: Option<&'a ContainerStatus>,
    },
    /// Not listed (yet): poll again.
    NotFound,
    /// The list contradicts itself or the cgroup: refuse.
    Conflict(String),
}

/// Finds `target` in `pods`. With `pod_only` and a pod UID from the cgroup, the pod suffices:
/// its container need not be listed with an ID yet.
pub fn find<'a>(pods: &'a PodList, target: &ContainerRef, pod_only: bool) -> Lookup<'a> {
    let mut hit: Option<(&Pod, &ContainerStatus)> = None;
    for pod in &pods.items {
        for status in pod.statuses() {
            if status.runtime_id() != Some(target.container_id.as_str()) {
                continue;
            }
            if let Some((first, _)) = hit {
                return Lookup::Conflict(format!(
                    "the kubelet lists container {} in two places (pods {}/{} and {}/{})",
                    target.container_id,
                    first.metadata.namespace,
                    first.metadata.name,
                    pod.metadata.namespace,
                    pod.metadata.name
                ));
            }
            hit = Some((pod, status));
        }
    }
    if let Some((pod, status)) = hit {
        if let Some(uid) = &target.pod_uid {
            if pod.metadata.uid != *uid {
                return Lookup::Conflict(format!(
                    "the kubelet places container {} in pod {}/{} (uid {}), but its cgroup names pod uid {uid}",
                    target.container_id, pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
                ));
            }
        }
        let container = (!pod_only).then_some(status);
        return Lookup::Found { pod, container };
    }
    if let (true, Some(uid)) = (pod_only, &target.pod_uid) {
        let mut same_uid = pods.items.iter().filter(|p| p.metadata.uid == *uid);
        if let Some(pod) = same_uid.next() {
            if same_uid.next().is_some() {
                return Lookup::Conflict(format!("the kubelet lists pod uid {uid} twice"));
            }
            return Lookup::Found {
                pod,
                container: None,
            };
        }
    }
    Lookup::NotFound
}

/// The selectors SPIRE's k8s workload attestor derives, sorted and without duplicates.
/// Values longer than [`MAX_SELECTOR_LEN`] are left out (and logged), never truncated.
pub fn selectors(pod: &Pod, container: Option<&ContainerStatus>) -> Vec<Selector> {
    let meta = &pod.metadata;
    let spec = &pod.spec;
    let status = &pod.status;
    let sa = if spec.service_account_name.is_empty() {
        &spec.service_account
    } else {
        &spec.service_account_name
    };
    let mut values = BTreeSet::new();
    // An unknown (empty) value yields no selector rather than `k8s:sa:`.
    let mut add = |ty: &str, value: &str| {
        if !value.is_empty() {
            values.insert(format!("{ty}:{value}"));
        }
    };
    add("ns", &meta.namespace);
    add("sa", sa);
    add("node-name", &spec.node_name);
    add("pod-name", &meta.name);
    add("pod-uid", &meta.uid);
    add(
        "pod-image-count",
        &status.container_statuses.len().to_string(),
    );
    add(
        "pod-init-image-count",
        &status.init_container_statuses.len().to_string(),
    );
    for (key, value) in &meta.labels {
        add("pod-label", &format!("{key}:{value}"));
    }
    for owner in &meta.owner_references {
        add("pod-owner", &format!("{}:{}", owner.kind, owner.name));
        add("pod-owner-uid", &format!("{}:{}", owner.kind, owner.uid));
    }
    for (ty, list) in [
        ("pod-image", &status.container_statuses),
        ("pod-init-image", &status.init_container_statuses),
    ] {
        for image in list.iter().flat_map(images) {
            add(ty, image);
        }
    }
    if let Some(c) = container {
        add("container-name", &c.name);
        for image in images(c) {
            add("container-image", image);
        }
    }
    values
        .into_iter()
        .filter(|v| {
            let ok = NAME.len() + 1 + v.len() <= MAX_SELECTOR_LEN;
            if !ok {
                tracing::warn!(
                    selector_type = v.split(':').next().unwrap_or(""),
                    len = v.len(),
                    "k8s selector longer than the selector limit left out"
                );
            }
            ok
        })
        .map(|v| Selector::new(NAME, v))
        .collect()
}

/// The tag form (`image`) and the digest form (`imageID`), whichever are known.
fn images(c: &ContainerStatus) -> impl Iterator<Item = &str> {
    [c.image.as_str(), c.image_id.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str) -> PodList {
        serde_json::from_str(json).unwrap()
    }

    const TWO: &str = r#"{"items":[
        {"metadata":{"name":"a","namespace":"ns1","uid":"u-a","labels":null},
         "spec":{"serviceAccount":"old-sa","nodeName":"n1"},
         "status":{"containerStatuses":[{"name":"c","image":"img:1","imageID":"","containerID":"containerd://aaa"}],
                   "initContainerStatuses":null}},
        {"metadata":{"name":"b","namespace":"ns1","uid":"u-b"},
         "spec":{"serviceAccountName":"sa-b","nodeName":"n1"},
         "status":{"ephemeralContainerStatuses":[{"name":"debug","image":"busybox","containerID":"cri-o://bbb"}]}}
    ]}"#;

    fn target(pod: Option<&str>, id: &str) -> ContainerRef {
        ContainerRef {
            pod_uid: pod.map(str::to_string),
            container_id: id.to_string(),
        }
    }

    fn strings(sel: Vec<Selector>) -> Vec<String> {
        sel.into_iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nulls_and_missing_fields_read_as_empty() {
        let pods = list(TWO);
        let Lookup::Found { pod, container } = find(&pods, &target(None, "aaa"), false) else {
            panic!("not found")
        };
        let got = strings(selectors(pod, container));
        assert_eq!(
            got,
            [
                "k8s:container-image:img:1",
                "k8s:container-name:c",
                "k8s:node-name:n1",
                "k8s:ns:ns1",
                "k8s:pod-image-count:1",
                "k8s:pod-image:img:1",
                "k8s:pod-init-image-count:0",
                "k8s:pod-name:a",
                "k8s:pod-uid:u-a",
                "k8s:sa:old-sa",
            ]
        );
        assert!(list("{}").items.is_empty());
        assert!(list(r#"{"items":null}"#).items.is_empty());
    }

    #[test]
    fn ephemeral_containers_are_found() {
        let pods = list(TWO);
        let Lookup::Found { pod, container } = find(&pods, &target(Some("u-b"), "bbb"), false)
        else {
            panic!("not found")
        };
        assert_eq!(pod.metadata.name, "b");
        assert_eq!(container.map(|c| c.name.as_str()), Some("debug"));
    }

    #[test]
    fn contradictions_are_conflicts() {
        let pods = list(TWO);
        assert!(matches!(
            find(&pods, &target(Some("u-b"), "aaa"), false),
            Lookup::Conflict(_)
        ));
        let dup = list(
            r#"{"items":[
            {"metadata":{"uid":"1"},"status":{"containerStatuses":[{"containerID":"docker://x"}]}},
            {"metadata":{"uid":"2"},"status":{"initContainerStatuses":[{"containerID":"docker://x"}]}}]}"#,
        );
        assert!(matches!(
            find(&dup, &target(None, "x"), false),
            Lookup::Conflict(_)
        ));
    }

    #[test]
    fn pod_only_needs_no_container_id() {
        let pods = list(TWO);
        assert!(matches!(
            find(&pods, &target(Some("u-a"), "zzz"), false),
            Lookup::NotFound
        ));
        assert!(matches!(
            find(&pods, &target(Some("u-a"), "zzz"), true),
            Lookup::Found {
                container: None,
                ..
            }
        ));
        // Without a pod UID the container must be listed even for pod selectors.
        assert!(matches!(
            find(&pods, &target(None, "zzz"), true),
            Lookup::NotFound
        ));
    }

    #[test]
    fn oversize_values_are_left_out() {
        let long = "x".repeat(MAX_SELECTOR_LEN);
        let json = format!(
            r#"{{"items":[{{"metadata":{{"name":"p","uid":"u","labels":{{"big":"{long}","ok":""}}}},
              "status":{{"containerStatuses":[{{"containerID":"docker://c"}}]}}}}]}}"#
        );
        let pods = list(&json);
        let Lookup::Found { pod, container } = find(&pods, &target(None, "c"), false) else {
            panic!("not found")
        };
        let got = strings(selectors(pod, container));
        assert!(got.iter().all(|s| s.len() <= MAX_SELECTOR_LEN), "{got:?}");
        assert!(got.contains(&"k8s:pod-label:ok:".to_string()), "{got:?}");
        assert!(!got.iter().any(|s| s.starts_with("k8s:pod-label:big")));
    }

    /// A registration entry can name every selector this attestor emits.
    #[test]
    fn every_emitted_selector_is_registrable() {
        let pods = list(
            r#"{"items":[{"metadata":{"name":"p","namespace":"n","uid":"u",
                "labels":{"app":"web","empty":""},
                "ownerReferences":[{"kind":"ReplicaSet","name":"web-1","uid":"o-1"}]},
              "spec":{"serviceAccountName":"sa","nodeName":"node"},
              "status":{"containerStatuses":[{"name":"c","image":"nginx:1","imageID":"docker.io/nginx@sha256:ab","containerID":"docker://c"}],
                        "initContainerStatuses":[{"name":"i","image":"busybox","containerID":"docker://i"}]}}]}"#,
        );
        let Lookup::Found { pod, container } = find(&pods, &target(None, "c"), false) else {
            panic!("not found")
        };
        let emitted = selectors(pod, container);
        let types: BTreeSet<&str> = emitted.iter().map(|s| s.type_name()).collect();
        assert_eq!(types.len(), 14, "{types:?}");
        for s in &emitted {
            crate::attest::catalog::parse_registered(&s.to_string()).unwrap();
        }
    }
}
