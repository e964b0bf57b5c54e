//! `[authority]`: where keys come from and how long they live. Read by the config, used by
//! the issuers; it imports nothing above the issuer folders.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default lifetime of a self-signed CA.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of a JWT signing key.
pub const DEFAULT_JWT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where keys come from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityKind {
    /// Our own CA and JWT keys.
    #[default]
    Embedded,
    /// An upstream SPIRE agent.
    Spire,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    #[serde(default)]
    pub kind: AuthorityKind,
    /// Lifetime of a self-signed CA; it rotates at half-life with overlap.
    #[serde(default = "default_ca_ttl", with = "humantime_serde")]
    pub ca_ttl: Duration,
    /// Lifetime of a JWT signing key; rotates like the CA.
    #[serde(default = "default_jwt_key_ttl", with = "humantime_serde")]
    pub jwt_key_ttl: Duration,
    /// Operator-provided CA certificate (PEM; the signing CA first, then its chain upward).
    pub ca_cert_path: Option<PathBuf>,
    /// Its PKCS#8 private key (PEM).
    pub ca_key_path: Option<PathBuf>,
    /// Roots to publish in the bundle with an operator CA (default: the last cert of the chain).
    pub ca_bundle_path: Option<PathBuf>,
    /// `[authority.spire]`: the SPIRE agent, required with `kind = "spire"`.
    #[serde(default)]
    pub spire: Option<crate::authority::spire::SpireAuthorityConfig>,
}

fn default_ca_ttl() -> Duration {
    DEFAULT_CA_TTL
}
fn default_jwt_key_ttl() -> Duration {
    DEFAULT_JWT_KEY_TTL
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            kind: AuthorityKind::Embedded,
            ca_ttl: DEFAULT_CA_TTL,
            jwt_key_ttl: DEFAULT_JWT_KEY_TTL,
            ca_cert_path: None,
            ca_key_path: None,
            ca_bundle_path: None,
            spire: None,
        }
    }
}

impl AuthorityConfig {
    /// Whether registration entries are ours (the config's `[[entry]]`) rather than kept by
    /// an upstream issuer.
    pub fn entries_are_local(&self) -> bool {
        self.kind == AuthorityKind::Embedded
    }
}
