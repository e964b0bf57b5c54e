//! The Kubernetes attestor: the caller's container from its cgroup ([`cgroup`]), its pod from
//! the kubelet's pod list ([`kubelet`], shared through [`cache`]), and the selectors SPIRE users
//! already write ([`selectors`]): `k8s:ns`, `k8s:sa`, `k8s:pod-label:<k>:<v>`, ….
//!
//! Configuration is [`K8sAttestorConfig`] (`[attestor.k8s]`); its doc lists every key.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::{AttestError, BoxFuture, Selector, WorkloadAttestor};

pub mod cache;
pub mod cgroup;
pub mod config;
pub mod kubelet;
pub mod selectors;

pub use cgroup::{ContainerRef, LocateError};
pub use config::{K8sAttestorConfig, K8sConfigError};
pub use kubelet::KubeletError;

use cache::PodCache;
use kubelet::{Endpoint, KubeletClient};
use selectors::Lookup;

pub(crate) const NAME: &str = "k8s";

/// Attests processes that run in pods on this node.
pub struct K8sAttestor {
    config: K8sAttestorConfig,
    node_name: Option<String>,
    pods: PodCache,
}

impl std::fmt::Debug for K8sAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sAttestor")
            .field("kubelet", self.pods.client())
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl K8sAttestor {
    /// Builds the attestor; the node name comes from `node_name` or the environment variable
    /// `node_name_env`. Reads the CA and client certificate files now.
    ///
    /// # Errors
    /// A bound out of range, a bad `kubelet_url`, unreadable PEM files, credentials over HTTP.
    pub fn new(config: K8sAttestorConfig) -> Result<Self, K8sConfigError> {
        Self::with_env(config, |name| std::env::var(name).ok())
    }

    /// As [`new`](Self::new), with the environment given as a lookup function.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_env(
        config: K8sAttestorConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, K8sConfigError> {
        config.check_bounds()?;
        let node_name = config
            .node_name
            .clone()
            .or_else(|| env(&config.node_name_env))
            .filter(|n| !n.is_empty());
        let env_name = &config.node_name_env;
        let endpoint = Endpoint::parse(&config.kubelet_url, node_name.as_deref(), env_name)?
            .with_tls_name(
                config.kubelet_tls_name.as_deref(),
                node_name.as_deref(),
                env_name,
            )?;
        let client = KubeletClient::new(&config, endpoint)?;
        let pods = PodCache::new(client, config.cache_ttl);
        Ok(Self {
            config,
            node_name,
            pods,
        })
    }

    /// The kubelet URL asked, `…/pods` (for logs and `debug selectors`).
    pub fn kubelet_url(&self) -> &str {
        self.pods.client().endpoint().as_str()
    }

    /// Requests sent to the kubelet so far.
    pub fn kubelet_requests(&self) -> u64 {
        self.pods.requests()
    }

    /// Attests `pid` as seen under `proc_root` instead of the configured one (the `debug
    /// selectors` command runs this against a fake proc tree).
    ///
    /// # Errors
    /// As [`WorkloadAttestor::attest`]: `Refused` for contradictions, `Failed` for a kubelet
    /// that cannot answer or a container that does not show up within `max_wait`.
    pub async fn attest_with_proc_root(
        &self,
        proc_root: &Path,
        pid: i32,
    ) -> Result<Vec<Selector>, AttestError> {
        match Self::container_of(proc_root, pid)? {
            Some(target) => self.selectors_for(&target).await,
            None => Ok(Vec::new()),
        }
    }

    /// The container (and pod UID, where the cgroup names it) that `pid` runs in, without
    /// asking the kubelet; `None` outside containers. For `debug selectors`.
    ///
    /// # Errors
    /// `ProcessGone`, `Refused` for contradicting cgroup lines, `Failed` for unreadable files.
    pub fn container_of(proc_root: &Path, pid: i32) -> Result<Option<ContainerRef>, AttestError> {
        cgroup::locate(proc_root, pid).map_err(|e| match e {
            LocateError::Gone { pid } => AttestError::ProcessGone { pid },
            LocateError::ContainerConflict { .. } | LocateError::PodConflict { .. } => {
                refused(format!("process {pid}: {e}"))
            }
            LocateError::Io { .. } | LocateError::TooLarge { .. } => {
                failed(format!("process {pid}: {e}"))
            }
        })
    }

    /// Polls the pod list until `target` shows up, at most `max_wait` (plus the request in
    /// flight at that moment).
    async fn selectors_for(&self, target: &ContainerRef) -> Result<Vec<Selector>, AttestError> {
        let pod_only = self.config.disable_container_selectors;
        let started = Instant::now();
        let deadline = started + self.config.max_wait;
        let mut seen = None;
        loop {
            let snap = self
                .pods
                .get(seen)
                .await
                .map_err(|e| failed(e.to_string()))?;
            match selectors::find(&snap.pods, target, pod_only) {
                Lookup::Found { pod, container } => {
                    self.check_node(&pod.spec.node_name, &pod.metadata.name)?;
                    return Ok(selectors::selectors(pod, container));
                }
                Lookup::Conflict(reason) => return Err(refused(reason)),
                Lookup::NotFound => {}
            }
            seen = Some(snap.generation);
            let now = Instant::now();
            if now + self.config.poll_interval > deadline {
                return Err(failed(self.not_found_message(target, now - started)));
            }
            tracing::debug!(
                container_id = %target.container_id,
                pod_uid = target.pod_uid.as_deref().unwrap_or(""),
                "container not in the kubelet's pod list yet; polling"
            );
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// The kubelet only lists its own node's pods; another node's pod means `kubelet_url`
    /// points at the wrong kubelet.
    fn check_node(&self, pod_node: &str, pod_name: &str) -> Result<(), AttestError> {
        match &self.node_name {
            Some(node) if !pod_node.is_empty() && pod_node != node => Err(refused(format!(
                "pod {pod_name} runs on node {pod_node}, but this broker serves node {node}; \
                 kubelet_url ({}) points at another node's kubelet",
                self.kubelet_url()
            ))),
            _ => Ok(()),
        }
    }

    fn not_found_message(&self, target: &ContainerRef, waited: Duration) -> String {
        let pod = target
            .pod_uid
            .as_deref()
            .map(|uid| format!(" of pod uid {uid}"))
            .unwrap_or_default();
        let hint = if self.config.disable_container_selectors {
            "is the pod on this node?"
        } else {
            "is it running on this node? (a container is listed with its ID once it runs; \
             disable_container_selectors = true attests by pod alone)"
        };
        format!(
            "container {}{pod} is not in the kubelet's pod list at {} after {} \
             (attestor.k8s.max_wait); {hint}",
            target.container_id,
            self.kubelet_url(),
            humantime::format_duration(round_ms(waited)),
        )
    }
}

impl WorkloadAttestor for K8sAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestError>> {
        Box::pin(async move {
            self.attest_with_proc_root(&self.config.proc_root, pid)
                .await
        })
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

fn refused(reason: String) -> AttestError {
    AttestError::Refused {
        attestor: NAME,
        reason,
    }
}

fn failed(reason: String) -> AttestError {
    AttestError::Failed {
        attestor: NAME,
        reason,
    }
}
