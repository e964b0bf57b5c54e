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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Map;

    use super::*;
    use crate::svid::bundle::{JwtAuthority, JwtPublicKey, TrustBundle};
    use crate::svid::keys::EcKey;

    const ISS: &str = "https://login.example.com";
    const AUD: &str = "svid-broker";

    fn setup() -> (EcKey, OidcIssuers, tempfile::TempDir) {
        let key = EcKey::generate().unwrap();
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let jwks = TrustBundle::new(
            td,
            1,
            Duration::from_secs(60),
            vec![],
            vec![JwtAuthority {
                kid: "user-key".into(),
                key: JwtPublicKey::P256(key.public_point().to_vec()),
            }],
        )
        .jwks;
        // An IdP's JWKS marks keys "sig" (or nothing), not "jwt-svid".
        let jwks = String::from_utf8(jwks).unwrap().replace("jwt-svid", "sig");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks).unwrap();
        let issuers = OidcIssuers::load(&[OidcIssuerConfig {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks_path: path,
        }])
        .unwrap();
        (key, issuers, dir)
    }

    fn user_token(key: &EcKey, kid: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let now = crate::svid::unix_seconds(SystemTime::now());
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(ISS));
        claims.insert("aud".into(), json!(AUD));
        claims.insert("sub".into(), json!("alice"));
        claims.insert("exp".into(), json!(now + 300));
        edit(&mut claims);
        jwt::sign_es256(key, kid, &claims).unwrap()
    }

    #[test]
    fn accepts_a_valid_user_token() {
        let (key, issuers, _dir) = setup();
        let obo = issuers
            .verify(&user_token(&key, "user-key", |_| {}), SystemTime::now())
            .unwrap();
        assert_eq!(obo, json!({"iss": ISS, "sub": "alice"}));
    }

    #[test]
    fn refuses_every_way_to_pass_off_a_user() {
        let (key, issuers, _dir) = setup();
        let other = EcKey::generate().unwrap();
        let past = crate::svid::unix_seconds(SystemTime::now()) - 3600;
        let cases: Vec<(&str, String)> = vec![
            (
                "unconfigured issuer",
                user_token(&key, "user-key", |c| {
                    c.insert("iss".into(), json!("https://evil.example"));
                }),
            ),
            (
                "wrong audience",
                user_token(&key, "user-key", |c| {
                    c.insert("aud".into(), json!("someone-else"));
                }),
            ),
            (
                "expired",
                user_token(&key, "user-key", |c| {
                    c.insert("exp".into(), json!(past));
                }),
            ),
            ("another key", user_token(&other, "user-key", |_| {})),
            ("unknown kid", user_token(&key, "nope", |_| {})),
            (
                "no subject",
                user_token(&key, "user-key", |c| {
                    c.remove("sub");
                }),
            ),
            ("not a JWS", "garbage".to_string()),
        ];
        for (why, token) in cases {
            let err = issuers.verify(&token, SystemTime::now()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{why}");
            assert!(
                err.message().starts_with("subject_token rejected"),
                "{why}: {}",
                err.message()
            );
        }
    }
}
