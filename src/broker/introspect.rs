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
        let introspectors = &self.config.introspectors;
        let may_see = |aud: &str| match who {
            Who::Admin => true,
            Who::Workload(c) => c.identities.iter().any(|i| {
                crate::spiffe_id::is(&i.spiffe_id, aud)
                    || introspectors
                        .iter()
                        .any(|x| crate::spiffe_id::is(&i.spiffe_id, x))
            }),
        };
        self.introspect_by(who.label(), may_see, token).await
    }

    /// IntrospectToken for a relying party that is neither a workload nor an admin (an OAuth
    /// resource server authenticated by its client secret): it may see only tokens whose
    /// audience is one of `audiences`. `by` names it in the audit log.
    ///
    /// # Errors
    /// The token's audience is not one of `audiences`.
    pub async fn introspect_for_audiences(
        &self,
        by: String,
        audiences: &[String],
        token: &str,
    ) -> Result<pb::IntrospectTokenResponse, Status> {
        self.introspect_by(by, |aud| audiences.iter().any(|a| a == aud), token)
            .await
    }

    async fn introspect_by(
        &self,
        by: String,
        may_see: impl FnOnce(&str) -> bool,
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
        let now = self.clock.now();
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
            .find(|a| crate::svid::task_audience::parse(a).is_none())
            .map(|s| s.to_string())
            .unwrap_or_default();
        if !may_see(&aud) {
            return Err(Status::permission_denied(
                "only the token's audience, a configured introspector or an admin may introspect it",
            ));
        }
        // A token whose exact bytes this broker handed out needs no signature check: the
        // check costs more than the rest of introspection, and the bytes are ours.
        let verified = self.verify_token(token, parsed, &aud, now);
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
        // The counted use and the answer go to disk together: one disk wait, not two.
        let mut records = Vec::with_capacity(2);
        if let Some(uses) = counted {
            records.push(AuditEvent::TokenUsed {
                task_id: claims.task_id.clone(),
                jti: claims.jti.clone(),
                by: by.clone(),
                uses,
            });
        }
        records.push(AuditEvent::Introspection {
            by,
            jti: Some(claims.jti.clone()),
            active,
        });
        self.audit_all(records).await?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::super::testkit::{
        caller, kit, mint_request, open_task, with_payload, Kit, AGENT, OTHER, TOOL,
    };
    use super::Who;
    use crate::proto::svidbroker::v1 as pb;

    async fn minted(k: &Kit) -> (pb::OpenTaskResponse, pb::MintTaskTokenResponse) {
        let task = open_task(k).await;
        let token = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &["read"]))
            .await
            .unwrap();
        (task, token)
    }

    #[tokio::test]
    async fn counting_a_use_and_answering_wait_for_the_disk_once() {
        let k = kit();
        let task = open_task(&k).await;
        let mut req = mint_request(&task.task_id, TOOL, &["read"]);
        req.max_uses = 2;
        let token = k.broker.mint(&caller(AGENT), req).await.unwrap();
        let (appends, records) = (k.sink.appends(), k.sink.records().len());
        let r = introspected_by_admin(&k, &token.token).await;
        assert!(active(&r));
        assert_eq!(k.sink.appends(), appends + 1);
        assert_eq!(
            super::super::testkit::kinds(&k.sink.records()[records..]),
            ["token_used", "introspection"]
        );
    }

    async fn introspected_by_admin(k: &Kit, token: &str) -> pb::IntrospectTokenResponse {
        k.broker.introspect(&Who::Admin, token).await.unwrap()
    }

    fn active(r: &pb::IntrospectTokenResponse) -> bool {
        r.active
    }

    #[tokio::test]
    async fn a_live_token_is_active_until_its_expiry_on_the_clock() {
        let k = kit();
        let (_, token) = minted(&k).await;
        let r = introspected_by_admin(&k, &token.token).await;
        assert!(active(&r));
        let claims = r.claims.unwrap().fields;
        assert_eq!(
            claims["jti"].kind,
            Some(prost_types::value::Kind::StringValue(token.jti.clone()))
        );
        let left = token.expires_at - crate::clock::Clock::unix_seconds(&k.clock);
        k.clock.advance(Duration::from_secs(left as u64 + 1));
        let r = introspected_by_admin(&k, &token.token).await;
        assert!(!active(&r), "expired by the clock, no sleeping");
    }

    #[tokio::test]
    async fn closing_the_task_deactivates_its_tokens() {
        let k = kit();
        let (task, token) = minted(&k).await;
        k.broker
            .close(&Who::Admin, &task.task_id, "done")
            .await
            .unwrap();
        let r = introspected_by_admin(&k, &token.token).await;
        assert!(!active(&r));
    }

    #[tokio::test]
    async fn a_workload_that_is_not_the_audience_may_not_introspect() {
        let k = kit();
        let (_, token) = minted(&k).await;
        let err = k
            .broker
            .introspect(&Who::Workload(caller(OTHER)), &token.token)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn a_token_from_another_signer_is_inactive() {
        let k = kit();
        let (_, token) = minted(&k).await;
        // Same claims, signed by a different fake issuer: the signature does not verify.
        let other = crate::authority::fake::FakeIssuer::new("example.org");
        let parsed = crate::svid::jwt::parse(&token.token).unwrap();
        let forged = other.sign(&parsed.claims);
        let r = k.broker.introspect(&Who::Admin, &forged).await.unwrap();
        assert!(!active(&r));
    }

    #[tokio::test]
    async fn our_jti_on_other_bytes_gets_the_signature_check() {
        let k = kit();
        let (_, token) = minted(&k).await;
        // A longer lifetime written into the payload, header and signature kept.
        let tampered = with_payload(&token.token, |c| {
            c["exp"] = serde_json::json!(c["exp"].as_i64().unwrap() + 3600);
        });
        let r = k.broker.introspect(&Who::Admin, &tampered).await.unwrap();
        assert!(
            !active(&r),
            "a rewritten payload must fail the signature check"
        );
        // The genuine bytes are still active.
        let r = introspected_by_admin(&k, &token.token).await;
        assert!(active(&r));
    }
}
