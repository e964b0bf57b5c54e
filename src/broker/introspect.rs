//! IntrospectToken (RFC 7662 shape), for the token's audience, configured introspectors and
//! admins; counts a use of N-use tokens.

use serde_json::json;
use tonic::Status;

use super::limits;
use super::table::TaskState;
use super::token;
use super::who::Who;
use super::Broker;
use crate::audit::AuditEvent;
use crate::proto::svidbroker::v1 as pb;
use crate::svid::{jwt, unix_seconds};

impl Broker {
    /// IntrospectToken (RFC 7662 shape). Counts a use of N-use tokens.
    ///
    /// # Errors
    /// The caller is neither the token's audience, a configured introspector, nor an admin.
    pub async fn introspect(
        &self,
        who: &Who,
        token: &str,
    ) -> Result<pb::IntrospectTokenResponse, Status> {
        if token.is_empty() {
            return Err(Status::invalid_argument("token is required"));
        }
        limits::token("token", token)?;
        let inactive = pb::IntrospectTokenResponse {
            active: false,
            claims: None,
        };
        let by = who.label();
        let now = self.clock.now();
        let bundle = self.issuer.current_bundle();
        // Authorization needs the audience, so read it before trusting anything else.
        let Ok(parsed) = jwt::parse(token) else {
            self.audit(AuditEvent::Introspection {
                by,
                jti: None,
                active: false,
            })
            .await?;
            return Ok(inactive);
        };
        // SPIRE-minted task tokens also carry the task audience; the relying party is the other.
        let aud = parsed
            .audiences()
            .into_iter()
            .find(|a| crate::authority::spire::parse_task_audience(a).is_none())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let authorized = match who {
            Who::Admin => true,
            Who::Workload(c) => {
                c.identities.iter().any(|i| i.spiffe_id.to_string() == aud)
                    || c.identities
                        .iter()
                        .any(|i| self.config.introspectors.contains(&i.spiffe_id.to_string()))
            }
        };
        if !authorized {
            return Err(Status::permission_denied(
                "only the token's audience, a configured introspector or an admin may introspect it",
            ));
        }
        let verified = jwt::verify(token, &aud, now, |td| {
            (td == &bundle.trust_domain).then_some(bundle.as_ref())
        });
        let claims = verified
            .ok()
            .and_then(|v| token::read(&v.parsed).map(|c| (v, c)));
        let Some((verified, claims)) = claims else {
            self.audit(AuditEvent::Introspection {
                by,
                jti: None,
                active: false,
            })
            .await?;
            return Ok(inactive);
        };
        let now_secs = unix_seconds(now);
        // Check and count a use under one lock: two racing introspections of a single-use
        // token must not both see it unused.
        let (active, uses_left, counted) = {
            let mut table = self.lock();
            // The subject must own the task and the audience be granted: a SPIRE JWT-SVID that
            // merely names a task audience was not minted here.
            let task_open = table.get(&claims.task_id).is_some_and(|t| {
                t.state(now_secs) == TaskState::Open
                    && t.owner == verified.spiffe_id
                    && t.grants.contains_key(&claims.audience)
            });
            let (active, uses_left) = match table.token(&claims.jti) {
                Some(t) if task_open && t.task_id == claims.task_id && t.exp > now_secs => {
                    if t.max_uses == 0 {
                        (true, None)
                    } else if t.uses < t.max_uses {
                        (true, Some(t.max_uses - t.uses - 1))
                    } else {
                        (false, None)
                    }
                }
                _ => (false, None),
            };
            let counted = if active && uses_left.is_some() {
                table.use_token(&claims.jti)
            } else {
                None
            };
            (active, uses_left, counted)
        };
        if let Some(uses) = counted {
            self.audit(AuditEvent::TokenUsed {
                task_id: claims.task_id.clone(),
                jti: claims.jti.clone(),
                by: by.clone(),
                uses,
            })
            .await?;
        }
        self.audit(AuditEvent::Introspection {
            by,
            jti: Some(claims.jti.clone()),
            active,
        })
        .await?;
        if !active {
            return Ok(inactive);
        }
        let mut map = verified.parsed.claims;
        map.insert("active".into(), json!(true));
        map.entry("task_id")
            .or_insert_with(|| json!(claims.task_id.clone()));
        map.insert("token_type".into(), json!("jwt-svid"));
        if let Some(left) = uses_left {
            map.insert("uses_left".into(), json!(left));
        }
        Ok(pb::IntrospectTokenResponse {
            active: true,
            claims: Some(crate::proto::json_to_struct(map)),
        })
    }
}
