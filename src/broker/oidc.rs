//! Users' tokens from configured OIDC issuers, for tasks that act on behalf of a user. The
//! issuer's JWKS is read from a file at start (fetching it over the network is not built in:
//! keep the file fresh with the provider's tooling).

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Status;

use crate::svid::bundle::{parse_oidc_jwks, JwtAuthority};
use crate::svid::jwt;

/// `[[oidc_issuer]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The `iss` the tokens carry.
    pub issuer: String,
    /// The `aud` the tokens must carry for the broker to accept them.
    pub audience: String,
    /// The issuer's JWKS document.
    pub jwks_path: PathBuf,
}

struct Issuer {
    issuer: String,
    audience: String,
    keys: Vec<JwtAuthority>,
}

pub struct OidcIssuers {
    issuers: Vec<Issuer>,
}

impl OidcIssuers {
    /// # Errors
    /// A JWKS file that cannot be read or parsed.
    pub fn load(configs: &[OidcIssuerConfig]) -> anyhow::Result<Self> {
        let mut issuers = Vec::new();
        for c in configs {
            let bytes = std::fs::read(&c.jwks_path).map_err(|e| {
                anyhow::anyhow!("oidc_issuer {}: {}: {e}", c.issuer, c.jwks_path.display())
            })?;
            let keys = parse_oidc_jwks(&bytes).map_err(|e| {
                anyhow::anyhow!("oidc_issuer {}: {}: {e}", c.issuer, c.jwks_path.display())
            })?;
            issuers.push(Issuer {
                issuer: c.issuer.clone(),
                audience: c.audience.clone(),
                keys,
            });
        }
        Ok(Self { issuers })
    }

    /// Verifies a user's token; returns `{"iss": …, "sub": …}`.
    ///
    /// # Errors
    /// `PermissionDenied` for an unknown issuer or an invalid token, with the reason.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Value, Status> {
        let denied =
            |why: String| Status::permission_denied(format!("subject_token rejected: {why}"));
        let parsed = jwt::parse_jws(token).map_err(|e| denied(e.to_string()))?;
        let iss = parsed
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| {
                denied(format!(
                    "issuer {iss:?} is not configured ([[oidc_issuer]])"
                ))
            })?;
        jwt::verify_signature(token, &parsed, &issuer.keys).map_err(|e| denied(e.to_string()))?;
        jwt::check_times(&parsed, now).map_err(|e| denied(e.to_string()))?;
        if !parsed.audiences().contains(&issuer.audience.as_str()) {
            return Err(denied(format!(
                "aud does not contain {:?}",
                issuer.audience
            )));
        }
        let sub = parsed
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if sub.is_empty() || sub.len() > 256 {
            return Err(denied("sub missing or longer than 256 bytes".into()));
        }
        Ok(json!({"iss": iss, "sub": sub}))
    }
}
