//! `[attestor.k8s]` settings. Every bound is a named default here and a key in the file; the
//! keys are listed on [`K8sAttestorConfig`].

use std::path::PathBuf;
use std::time::Duration;

/// Where `/proc` is read.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// The kubelet's authenticated port on this node; `{node_name}` is replaced at start.
pub const DEFAULT_KUBELET_URL: &str = "https://{node_name}:10250";
/// The environment variable that names this node when `node_name` is not set (the DaemonSet
/// fills it from the downward API, `spec.nodeName`).
pub const DEFAULT_NODE_NAME_ENV: &str = "NODE_NAME";
/// The pod's projected service-account token, sent as a bearer token over HTTPS.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The cluster CA that signs kubelet serving certificates in most clusters.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// One kubelet request, connect to last byte.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks for a container the kubelet does not list yet.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a container may take to appear in the kubelet's pod list before attestation fails.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);
/// How long one pod list answers every attestation.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);
/// The largest `/pods` answer read; a node with 110 large pods answers ≈ 3 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;

/// Ceilings that catch typos (`"5h"` for `"5s"`) at start instead of in production.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_MAX_WAIT: Duration = Duration::from_secs(300);
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(60);
pub const MAX_MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// Settings from `[attestor.k8s]`. All keys are optional.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `kubelet_url` | `"https://{node_name}:10250"` | base URL of the kubelet API; `/pods` is appended. `https://` (authenticated port, or the API server's `…/api/v1/nodes/{node_name}/proxy`) or `http://` (read-only port 10255). `{node_name}` is replaced by the node name. |
/// | `node_name` | from env `node_name_env` | this node; pods the kubelet places on another node are refused |
/// | `node_name_env` | `"NODE_NAME"` | environment variable read at start when `node_name` is unset |
/// | `proc_root` | `"/proc"` | where `/proc/<pid>/cgroup` and `mountinfo` are read |
/// | `token_path` | service-account token (HTTPS without client cert only) | bearer token file, re-read on every request (projected tokens rotate) |
/// | `ca_path` | service-account `ca.crt` | PEM roots that verify the kubelet's serving certificate |
/// | `client_cert_path`, `client_key_path` | unset | PEM client certificate and key for the kubelet (both or neither) |
/// | `kubelet_tls_name` | the URL's host | name the kubelet's certificate must carry, e.g. `"{node_name}"` when `kubelet_url` is `https://127.0.0.1:10250` (host network) and the certificate names the node |
/// | `skip_kubelet_verification` | `false` | accept any kubelet certificate; only for loopback or tests |
/// | `request_timeout` | `"5s"` (≤ 60s) | one kubelet request, connect to last byte |
/// | `poll_interval` | `"500ms"` (10ms–10s) | pause between looks for a container not listed yet |
/// | `max_wait` | `"10s"` (≤ 5m) | how long a container may take to appear; attestation then fails |
/// | `cache_ttl` | `"1s"` (≤ 1m) | how long one pod list answers all attestations |
/// | `max_response_bytes` | `8388608` (≤ 256 MiB) | largest `/pods` answer read |
/// | `disable_container_selectors` | `false` | emit pod-level selectors only, so a container need not be running (listed with its ID) yet |
///
/// One attestation takes at most `max_wait + request_timeout`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sAttestorConfig {
    pub kubelet_url: String,
    pub node_name: Option<String>,
    pub node_name_env: String,
    pub proc_root: PathBuf,
    pub token_path: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub client_cert_path: Option<PathBuf>,
    pub client_key_path: Option<PathBuf>,
    pub kubelet_tls_name: Option<String>,
    pub skip_kubelet_verification: bool,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    pub max_response_bytes: u64,
    pub disable_container_selectors: bool,
}

impl Default for K8sAttestorConfig {
    fn default() -> Self {
        Self {
            kubelet_url: DEFAULT_KUBELET_URL.to_string(),
            node_name: None,
            node_name_env: DEFAULT_NODE_NAME_ENV.to_string(),
            proc_root: PathBuf::from(DEFAULT_PROC_ROOT),
            token_path: None,
            ca_path: None,
            client_cert_path: None,
            client_key_path: None,
            kubelet_tls_name: None,
            skip_kubelet_verification: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_wait: DEFAULT_MAX_WAIT,
            cache_ttl: DEFAULT_CACHE_TTL,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            disable_container_selectors: false,
        }
    }
}

/// Why `[attestor.k8s]` cannot be used. Raised at start, never per request.
#[derive(Debug, thiserror::Error)]
pub enum K8sConfigError {
    #[error("attestor.k8s.{key} = {value:?} is out of range ({range})")]
    OutOfRange {
        key: &'static str,
        value: String,
        range: String,
    },
    #[error("attestor.k8s.kubelet_url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "attestor.k8s.kubelet_url needs the node name, but node_name is unset and environment \
         variable {env} is empty (set node_name, or {env} from the downward API spec.nodeName)"
    )]
    MissingNodeName { env: String },
    #[error("attestor.k8s.{key}: cannot read {path}: {source}")]
    ReadFile {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("attestor.k8s.{key}: {path} holds no {what}")]
    EmptyPem {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("attestor.k8s: client_cert_path and client_key_path go together; only one is set")]
    HalfClientCert,
    #[error(
        "attestor.k8s: {key} is set but kubelet_url is plain http://; credentials are only sent \
         over https"
    )]
    CredentialsOverHttp { key: &'static str },
    #[error("attestor.k8s: TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl K8sAttestorConfig {
    /// Checks every bound against its ceiling.
    ///
    /// # Errors
    /// The first key out of range.
    pub fn check_bounds(&self) -> Result<(), K8sConfigError> {
        let zero = Duration::ZERO;
        check_duration(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(1),
            MAX_REQUEST_TIMEOUT,
        )?;
        check_duration(
            "poll_interval",
            self.poll_interval,
            MIN_POLL_INTERVAL,
            MAX_POLL_INTERVAL,
        )?;
        check_duration("max_wait", self.max_wait, zero, MAX_MAX_WAIT)?;
        check_duration("cache_ttl", self.cache_ttl, zero, MAX_CACHE_TTL)?;
        if self.max_response_bytes == 0 || self.max_response_bytes > MAX_MAX_RESPONSE_BYTES {
            return Err(K8sConfigError::OutOfRange {
                key: "max_response_bytes",
                value: self.max_response_bytes.to_string(),
                range: format!("1..={MAX_MAX_RESPONSE_BYTES}"),
            });
        }
        Ok(())
    }
}

fn check_duration(
    key: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), K8sConfigError> {
    if value < min || value > max {
        return Err(K8sConfigError::OutOfRange {
            key,
            value: humantime::format_duration(value).to_string(),
            range: format!(
                "{} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<K8sAttestorConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_table_gives_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.kubelet_url, DEFAULT_KUBELET_URL);
        assert_eq!(cfg.proc_root, PathBuf::from("/proc"));
        assert_eq!(cfg.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(cfg.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(cfg.max_wait, DEFAULT_MAX_WAIT);
        assert_eq!(cfg.cache_ttl, DEFAULT_CACHE_TTL);
        assert_eq!(cfg.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
        assert!(!cfg.skip_kubelet_verification);
        assert!(!cfg.disable_container_selectors);
        cfg.check_bounds().unwrap();
    }

    #[test]
    fn durations_are_strings() {
        let cfg = parse(
            r#"
            kubelet_url = "http://127.0.0.1:10255"
            request_timeout = "90s"
            poll_interval = "250ms"
            max_wait = "2m"
            cache_ttl = "0s"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.request_timeout, Duration::from_secs(90));
        assert_eq!(cfg.poll_interval, Duration::from_millis(250));
        assert_eq!(cfg.max_wait, Duration::from_secs(120));
        assert_eq!(cfg.cache_ttl, Duration::ZERO);
        let err = parse(r#"max_wait = "soon""#).unwrap_err().to_string();
        assert!(err.contains("\"soon\", expected a duration"), "{err}");
        assert!(parse("max_wait = 5").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("kubelet_ulr = \"x\"").unwrap_err().to_string();
        assert!(err.contains("kubelet_ulr"), "{err}");
    }

    #[test]
    fn bounds_are_checked_at_their_edges() {
        type Set = fn(&mut K8sAttestorConfig, bool);
        // (key, set to the edge (true) or just past it (false))
        let cases: [(&str, Set); 8] = [
            ("request_timeout", |c, ok| {
                c.request_timeout = MAX_REQUEST_TIMEOUT
                    + if ok {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1)
                    }
            }),
            ("request_timeout", |c, ok| {
                c.request_timeout = if ok {
                    Duration::from_millis(1)
                } else {
                    Duration::ZERO
                }
            }),
            ("poll_interval", |c, ok| {
                c.poll_interval = if ok {
                    MIN_POLL_INTERVAL
                } else {
                    MIN_POLL_INTERVAL - Duration::from_millis(1)
                }
            }),
            ("poll_interval", |c, ok| {
                c.poll_interval = MAX_POLL_INTERVAL
                    + if ok {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1)
                    }
            }),
            ("max_wait", |c, ok| {
                c.max_wait = MAX_MAX_WAIT
                    + if ok {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1)
                    }
            }),
            ("cache_ttl", |c, ok| {
                c.cache_ttl = MAX_CACHE_TTL
                    + if ok {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1)
                    }
            }),
            ("max_response_bytes", |c, ok| {
                c.max_response_bytes = MAX_MAX_RESPONSE_BYTES + u64::from(!ok)
            }),
            ("max_response_bytes", |c, ok| {
                c.max_response_bytes = u64::from(ok)
            }),
        ];
        for (key, set) in cases {
            let mut cfg = K8sAttestorConfig::default();
            set(&mut cfg, true);
            cfg.check_bounds()
                .unwrap_or_else(|e| panic!("{key} at its edge: {e}"));
            set(&mut cfg, false);
            match cfg.check_bounds() {
                Err(K8sConfigError::OutOfRange { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key} past its edge: {other:?}"),
            }
        }
        let cfg = K8sAttestorConfig {
            max_wait: Duration::ZERO,
            cache_ttl: Duration::ZERO,
            ..Default::default()
        };
        cfg.check_bounds().unwrap();
    }
}
