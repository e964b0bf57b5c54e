//! TOML → validated [`Config`]. No side effects: reading the file is the only I/O.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spiffe::TrustDomain;

use crate::attest::unix::UnixAttestorConfig;
use crate::registry::{EntryConfig, Registry, RegistryError};

/// The socket every workload connects to unless configured otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/svid-broker/api.sock";
/// The trust domain of the embedded default.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";
/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

pub use crate::authority::settings::DEFAULT_CA_TTL;
pub use crate::authority::settings::DEFAULT_JWT_KEY_TTL;
pub use crate::registry::{DEFAULT_JWT_TTL, DEFAULT_X509_TTL};
/// Shortest lifetime accepted for any SVID or key: below this, rotation at half-life would
/// churn faster than clients can follow.
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// Longest SVID lifetime accepted.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
    /// The registry's message is already complete: not a `source` too, or `{:#}` prints it
    /// twice.
    #[error("config: {0}")]
    Registry(RegistryError),
}

impl From<RegistryError> for ConfigError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

pub use crate::authority::settings::{AuthorityConfig, AuthorityKind};

pub use crate::telemetry::LogFormat;

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics at `http://<addr>/metrics`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AttestorConfig {
    #[serde(default)]
    pub unix: UnixAttestorConfig,
    /// Kubernetes selectors from cgroups and the kubelet; off unless configured.
    #[serde(default)]
    pub k8s: Option<crate::attest::k8s::K8sAttestorConfig>,
}

/// `[policy]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Cedar policy file; reloaded on SIGHUP and Admin.ReloadPolicy.
    pub file: PathBuf,
    /// Also decide the Workload API's FetchJWTSVID audiences (action FetchJWTSVID). SPIRE
    /// allows any audience; off by default for compatibility.
    #[serde(default)]
    pub workload_api_jwt: bool,
}

/// `[audit]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The hash-chained JSON-lines log.
    pub path: PathBuf,
    /// Rotate the log when it would grow past this many bytes (integer bytes, default 64 MiB,
    /// from 1 MiB to 1 TiB); 0 never rotates. Rotated files are kept, never deleted.
    #[serde(default = "default_audit_max_file_bytes")]
    pub max_file_bytes: u64,
}

fn default_audit_max_file_bytes() -> u64 {
    crate::audit::DEFAULT_MAX_FILE_BYTES
}

impl AuditConfig {
    /// `max_file_bytes` as the log takes it: `None` never rotates.
    pub fn rotate_at(&self) -> Option<u64> {
        (self.max_file_bytes != 0).then_some(self.max_file_bytes)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        use crate::audit::{MAX_MAX_FILE_BYTES, MIN_MAX_FILE_BYTES};
        let n = self.max_file_bytes;
        if n != 0 && !(MIN_MAX_FILE_BYTES..=MAX_MAX_FILE_BYTES).contains(&n) {
            return Err(ConfigError::Invalid(format!(
                "audit.max_file_bytes = {n}: must be 0 (never rotate) or between \
                 {MIN_MAX_FILE_BYTES} and {MAX_MAX_FILE_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    #[serde(default)]
    socket_path: Option<PathBuf>,
    #[serde(default)]
    admin_socket_path: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde::option")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    authority: AuthorityConfig,
    #[serde(default)]
    attestor: AttestorConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default, rename = "entry")]
    entries: Vec<EntryConfig>,
    #[serde(default)]
    broker: crate::broker::BrokerConfig,
    #[serde(default)]
    policy: Option<PolicyConfig>,
    #[serde(default)]
    audit: Option<AuditConfig>,
    #[serde(default, rename = "oidc_issuer")]
    oidc_issuers: Vec<crate::broker::oidc::OidcIssuerConfig>,
    #[serde(default, rename = "audience")]
    audiences: crate::policy::AudienceAttributes,
    #[serde(default)]
    limits: crate::server::limits::ConnectionLimits,
    #[serde(default)]
    oauth: Option<crate::oauth::OAuthConfig>,
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub trust_domain: TrustDomain,
    pub socket_path: PathBuf,
    /// The admin socket (mode 0600); `None` disables the admin service.
    pub admin_socket_path: Option<PathBuf>,
    /// Where keys persist; `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    pub shutdown_grace: Duration,
    pub authority: AuthorityConfig,
    pub attestor: AttestorConfig,
    pub telemetry: TelemetryConfig,
    pub registry: Registry,
    pub broker: crate::broker::BrokerConfig,
    pub policy: Option<PolicyConfig>,
    pub audit: Option<AuditConfig>,
    pub oidc_issuers: Vec<crate::broker::oidc::OidcIssuerConfig>,
    /// Attributes of audiences, for policy (`[audience."<aud>"]`).
    pub audiences: crate::policy::AudienceAttributes,
    /// True for the built-in development profile (no config file).
    pub development_profile: bool,
    /// `[limits]`: what a caller may hold before and after attestation.
    pub limits: crate::server::limits::ConnectionLimits,
    /// `[oauth]`: the OAuth 2.1 listener, off unless configured.
    pub oauth: Option<crate::oauth::OAuthConfig>,
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// Unreadable, oversize, malformed or invalid configuration, with the reason.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses config text.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        let trust_domain =
            crate::spiffe_id::parse_trust_domain(&raw.trust_domain).map_err(|e| {
                ConfigError::Invalid(format!("trust_domain {:?}: {e}", raw.trust_domain))
            })?;
        check_ttl("authority.ca_ttl", raw.authority.ca_ttl, Duration::MAX)?;
        check_ttl(
            "authority.jwt_key_ttl",
            raw.authority.jwt_key_ttl,
            Duration::MAX,
        )?;
        if raw.authority.ca_cert_path.is_some() != raw.authority.ca_key_path.is_some() {
            return Err(ConfigError::Invalid(
                "authority.ca_cert_path and authority.ca_key_path go together".into(),
            ));
        }
        let spire = raw.authority.kind == AuthorityKind::Spire;
        match (&raw.authority.spire, spire) {
            (None, true) => {
                return Err(ConfigError::Invalid(
                    "authority.kind = \"spire\" needs [authority.spire] workload_socket and admin_socket".into(),
                ))
            }
            (Some(_), false) => {
                return Err(ConfigError::Invalid(
                    "[authority.spire] is only read with authority.kind = \"spire\"".into(),
                ))
            }
            (Some(s), true) => s.validate().map_err(ConfigError::Invalid)?,
            (None, false) => {}
        }
        if spire && (raw.authority.ca_cert_path.is_some() || !raw.entries.is_empty()) {
            return Err(ConfigError::Invalid(
                "with authority.kind = \"spire\", SPIRE issues every SVID: registration entries live in SPIRE (spire-server entry create) and there is no ca_cert_path; remove [[entry]] and the CA keys".into(),
            ));
        }
        if raw.entries.is_empty() && !spire {
            return Err(ConfigError::Invalid(
                "no [[entry]]: with no registration entries no workload can get an identity".into(),
            ));
        }
        for e in &raw.entries {
            if let Some(t) = e.x509_ttl {
                check_ttl("entry.x509_ttl", t, MAX_SVID_TTL)?;
            }
            if let Some(t) = e.jwt_ttl {
                check_ttl("entry.jwt_ttl", t, MAX_SVID_TTL)?;
            }
        }
        let registry = Registry::new(&trust_domain, raw.entries)?;
        raw.broker.validate().map_err(ConfigError::Invalid)?;
        raw.limits.validate().map_err(ConfigError::Invalid)?;
        if let Some(a) = &raw.audit {
            a.validate()?;
        }
        if let Some(o) = &raw.oauth {
            o.validate().map_err(ConfigError::Invalid)?;
            if spire {
                return Err(ConfigError::Invalid(
                    crate::oauth::config::SPIRE_REFUSAL.into(),
                ));
            }
        }
        let socket_path = raw
            .socket_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
        Ok(Self {
            trust_domain,
            socket_path,
            admin_socket_path: raw.admin_socket_path,
            data_dir: raw.data_dir,
            shutdown_grace: raw.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            authority: raw.authority,
            attestor: raw.attestor,
            telemetry: raw.telemetry,
            registry,
            broker: raw.broker,
            policy: raw.policy,
            audit: raw.audit,
            oidc_issuers: raw.oidc_issuers,
            audiences: raw.audiences,
            development_profile: false,
            limits: raw.limits,
            oauth: raw.oauth,
        })
    }

    /// The embedded default: own in-memory CA, the default socket, and every local uid
    /// gets `spiffe://<td>/uid/<uid>`. For development only.
    ///
    /// # Errors
    /// An invalid trust domain.
    pub fn development(trust_domain: &str) -> Result<Self, ConfigError> {
        let text = format!(
            r#"
trust_domain = "{trust_domain}"
admin_socket_path = "/tmp/svid-broker/admin.sock"

[[entry]]
spiffe_id = "spiffe://{trust_domain}/uid/{{unix:uid}}"
selectors = []
hint = "development"
"#
        );
        let mut cfg = Self::parse(&text)?;
        cfg.development_profile = true;
        Ok(cfg)
    }
}

fn check_ttl(name: &str, ttl: Duration, max: Duration) -> Result<(), ConfigError> {
    if ttl < MIN_TTL {
        return Err(ConfigError::Invalid(format!(
            "{name} = {} is below the minimum {}",
            humantime::format_duration(ttl),
            humantime::format_duration(MIN_TTL)
        )));
    }
    if ttl > max {
        return Err(ConfigError::Invalid(format!(
            "{name} = {} is above the maximum {}",
            humantime::format_duration(ttl),
            humantime::format_duration(max)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
trust_domain = "example.org"
[[entry]]
spiffe_id = "spiffe://example.org/agent"
selectors = ["unix:uid:1000"]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(c.authority.kind, AuthorityKind::Embedded);
        assert_eq!(c.authority.ca_ttl, DEFAULT_CA_TTL);
        assert!(c.data_dir.is_none());
    }

    #[test]
    fn audit_rotation_size_defaults_and_is_bounded() {
        use crate::audit::{DEFAULT_MAX_FILE_BYTES, MAX_MAX_FILE_BYTES, MIN_MAX_FILE_BYTES};
        let with =
            |extra: &str| Config::parse(&format!("{MINIMAL}[audit]\npath = \"/a.log\"\n{extra}"));
        let audit = |extra: &str| with(extra).unwrap().audit.unwrap();
        assert_eq!(audit("").max_file_bytes, DEFAULT_MAX_FILE_BYTES);
        assert_eq!(audit("").rotate_at(), Some(DEFAULT_MAX_FILE_BYTES));
        assert_eq!(audit("max_file_bytes = 0").rotate_at(), None);
        for ok in [MIN_MAX_FILE_BYTES, MAX_MAX_FILE_BYTES] {
            assert_eq!(
                audit(&format!("max_file_bytes = {ok}")).rotate_at(),
                Some(ok)
            );
        }
        for bad in [1, MIN_MAX_FILE_BYTES - 1, MAX_MAX_FILE_BYTES + 1] {
            let err = with(&format!("max_file_bytes = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("audit.max_file_bytes"), "{err}");
        }
        assert!(with("max_file_bytes = \"64MiB\"").is_err());
    }

    #[test]
    fn broker_table_bounds_default_and_are_bounded_at_their_edges() {
        use crate::broker::settings::{
            DEFAULT_MAX_FINISHED_TASKS, DEFAULT_MAX_LIVE_TOKENS, MAX_FINISHED_TASKS,
            MAX_LIVE_TOKENS, MAX_OPEN_TASKS,
        };
        let with = |extra: &str| Config::parse(&format!("{MINIMAL}[broker]\n{extra}"));
        let broker = with("").unwrap().broker;
        assert_eq!(broker.max_finished_tasks, DEFAULT_MAX_FINISHED_TASKS);
        assert_eq!(broker.max_live_tokens, DEFAULT_MAX_LIVE_TOKENS);
        for (key, ceiling) in [
            ("max_open_tasks", MAX_OPEN_TASKS),
            ("max_finished_tasks", MAX_FINISHED_TASKS),
            ("max_live_tokens", MAX_LIVE_TOKENS),
        ] {
            for ok in [1, ceiling] {
                assert!(with(&format!("{key} = {ok}")).is_ok(), "{key} = {ok}");
            }
            for bad in [0, ceiling + 1] {
                let err = with(&format!("{key} = {bad}")).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("broker.{key} must be 1..={ceiling}")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn broker_task_bytes_defaults_and_is_bounded_at_its_edges() {
        use crate::broker::settings::{DEFAULT_MAX_TASK_BYTES, MAX_TASK_BYTES, MIN_TASK_BYTES};
        let with = |extra: &str| Config::parse(&format!("{MINIMAL}[broker]\n{extra}"));
        assert_eq!(
            with("").unwrap().broker.max_task_bytes,
            DEFAULT_MAX_TASK_BYTES
        );
        for ok in [MIN_TASK_BYTES, MAX_TASK_BYTES] {
            let broker = with(&format!("max_task_bytes = {ok}")).unwrap().broker;
            assert_eq!(broker.table_bounds().task_bytes, ok);
        }
        for bad in [0, MIN_TASK_BYTES - 1, MAX_TASK_BYTES + 1] {
            let err = with(&format!("max_task_bytes = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "broker.max_task_bytes must be {MIN_TASK_BYTES}..={MAX_TASK_BYTES}"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn broker_owner_shares_default_to_a_quarter_and_are_bounded_by_the_table() {
        use crate::broker::settings::{DEFAULT_MAX_TASK_BYTES, MIN_TASK_BYTES};
        let with = |extra: &str| Config::parse(&format!("{MINIMAL}[broker]\n{extra}"));
        let bounds = with("").unwrap().broker.table_bounds();
        assert_eq!(
            (bounds.owner_open_tasks, bounds.owner_task_bytes),
            (2_500, DEFAULT_MAX_TASK_BYTES / 4)
        );
        let bounds = with("max_open_tasks = 400\nmax_task_bytes = 8388608")
            .unwrap()
            .broker
            .table_bounds();
        assert_eq!(
            (bounds.owner_open_tasks, bounds.owner_task_bytes),
            (100, 2 << 20),
            "a quarter of the table as configured"
        );
        let set = with(&format!(
            "max_open_tasks = 400\nmax_open_tasks_per_owner = 400\nmax_task_bytes_per_owner = {MIN_TASK_BYTES}"
        ))
        .unwrap()
        .broker
        .table_bounds();
        assert_eq!(
            (set.owner_open_tasks, set.owner_task_bytes),
            (400, MIN_TASK_BYTES)
        );
        let tokens = |extra: &str| with(extra).map(|c| c.broker.table_bounds().owner_live_tokens);
        assert_eq!(tokens("").unwrap(), 25_000);
        assert_eq!(tokens("max_live_tokens = 8").unwrap(), 2);
        assert_eq!(
            tokens("max_live_tokens = 8\nmax_live_tokens_per_owner = 8").unwrap(),
            8
        );
        let finished =
            |extra: &str| with(extra).map(|c| c.broker.table_bounds().owner_finished_tasks);
        assert_eq!(finished("").unwrap(), 2_500);
        assert_eq!(finished("max_finished_tasks = 3").unwrap(), 1);
        assert_eq!(
            finished("max_finished_tasks = 3\nmax_finished_tasks_per_owner = 3").unwrap(),
            3
        );
        for (bad, message) in [
            (
                "max_finished_tasks = 3\nmax_finished_tasks_per_owner = 4".to_string(),
                "broker.max_finished_tasks_per_owner must be 1..=broker.max_finished_tasks (3)",
            ),
            (
                "max_finished_tasks_per_owner = 0".to_string(),
                "broker.max_finished_tasks_per_owner must be 1..=broker.max_finished_tasks (10000)",
            ),
            (
                "max_live_tokens = 8\nmax_live_tokens_per_owner = 9".to_string(),
                "broker.max_live_tokens_per_owner must be 1..=broker.max_live_tokens (8)",
            ),
            (
                "max_live_tokens_per_owner = 0".to_string(),
                "broker.max_live_tokens_per_owner must be 1..=broker.max_live_tokens (100000)",
            ),
            (
                "max_open_tasks = 400\nmax_open_tasks_per_owner = 401".to_string(),
                "broker.max_open_tasks_per_owner must be 1..=broker.max_open_tasks (400)",
            ),
            (
                "max_open_tasks_per_owner = 0".to_string(),
                "broker.max_open_tasks_per_owner must be 1..=broker.max_open_tasks (10000)",
            ),
            (
                format!("max_task_bytes_per_owner = {}", MIN_TASK_BYTES - 1),
                "broker.max_task_bytes_per_owner must be 1048576..=broker.max_task_bytes (67108864)",
            ),
            (
                format!("max_task_bytes_per_owner = {}", DEFAULT_MAX_TASK_BYTES + 1),
                "broker.max_task_bytes_per_owner must be 1048576..=broker.max_task_bytes (67108864)",
            ),
        ] {
            let err = with(&bad).unwrap_err().to_string();
            assert!(err.contains(message), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_parse_and_are_bounded() {
        let ok = MINIMAL.replace(
            "selectors",
            "x509_ttl = \"10s\"\njwt_ttl = \"5m\"\nselectors",
        );
        assert!(Config::parse(&ok).is_ok());
        let low = MINIMAL.replace("selectors", "x509_ttl = \"9s\"\nselectors");
        let err = Config::parse(&low).unwrap_err().to_string();
        assert!(err.contains("below the minimum"), "{err}");
        let bad = MINIMAL.replace("selectors", "x509_ttl = \"soon\"\nselectors");
        let err = Config::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("\"soon\", expected a duration"), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_trust_domain() {
        let unknown = format!("{MINIMAL}\nsurprise = 1\n");
        assert!(Config::parse(&unknown).is_err());
        let bad_td = MINIMAL.replace(
            "trust_domain = \"example.org\"",
            "trust_domain = \"Bad Domain\"",
        );
        assert!(Config::parse(&bad_td).is_err());
        let no_entries = "trust_domain = \"example.org\"\n";
        assert!(Config::parse(no_entries)
            .unwrap_err()
            .to_string()
            .contains("no [[entry]]"));
    }

    const SPIRE: &str = r#"
trust_domain = "example.org"
[authority]
kind = "spire"
[authority.spire]
workload_socket = "unix:///run/spire/agent/public/api.sock"
admin_socket = "unix:///run/spire/agent/admin/admin.sock"
"#;

    #[test]
    fn spire_authority_needs_its_sockets_and_no_entries() {
        let c = Config::parse(SPIRE).unwrap();
        assert_eq!(c.authority.kind, AuthorityKind::Spire);
        let s = c.authority.spire.unwrap();
        assert_eq!(s.startup_wait, Duration::from_secs(10));
        let missing = "trust_domain = \"example.org\"\n[authority]\nkind = \"spire\"\n";
        assert!(Config::parse(missing)
            .unwrap_err()
            .to_string()
            .contains("[authority.spire]"));
        let with_entry = format!(
            "{SPIRE}\n[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:1\"]\n"
        );
        assert!(Config::parse(&with_entry)
            .unwrap_err()
            .to_string()
            .contains("entries live in SPIRE"));
        let unknown = SPIRE.replace("admin_socket =", "surprise = 1\nadmin_socket =");
        assert!(Config::parse(&unknown).is_err());
        let tcp = SPIRE.replace("unix:///run/spire/agent/admin", "tcp://127.0.0.1:1/x");
        assert!(Config::parse(&tcp)
            .unwrap_err()
            .to_string()
            .contains("admin_socket"));
        let embedded = SPIRE.replace("kind = \"spire\"", "kind = \"embedded\"");
        assert!(Config::parse(&embedded).is_err());
    }

    #[test]
    fn spire_deploy_example_parses() {
        let c = Config::parse(include_str!("../deploy/spire/svid-broker.toml")).unwrap();
        assert_eq!(c.authority.kind, AuthorityKind::Spire);
    }

    #[test]
    fn development_profile_parses() {
        let c = Config::development("example.org").unwrap();
        assert!(c.development_profile);
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                Config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 3, "examples missing from {}", dir.display());
    }
}
