//! MintTaskToken: one audience of the grant, scopes ⊆ grant, bounded lifetime; the record
//! is on disk before the token leaves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use spiffe::SpiffeId;
use tonic::Status;

use super::events::decision_event;
use super::grant;
use super::limits;
use super::slot::Slot;
use super::table::{Task, TaskState, TaskTable, TokenState};
use super::token::{self, TaskTokenSpec};
use super::who::Who;
use super::Broker;
use crate::audit::AuditEvent;
use crate::caller::Caller;
use crate::policy::{Action, PolicyRequest, Principal};
use crate::proto::svidbroker::v1 as pb;
use crate::svid::{jwt, random_hex, unix_seconds};

impl Broker {
    /// MintTaskToken: one audience of the grant, scopes ⊆ grant, bounded lifetime.
    ///
    /// # Errors
    /// Not the owner, a closed or expired task, anything beyond the grant, or a policy deny.
    pub async fn mint(
        &self,
        caller: &Arc<Caller>,
        req: pb::MintTaskTokenRequest,
    ) -> Result<pb::MintTaskTokenResponse, Status> {
        limits::task_id(&req.task_id)?;
        limits::audience(&req.audience)?;
        limits::scopes(&req.scopes)?;
        limits::max_uses(req.max_uses)?;
        let policy = self.policy_or_deny()?;
        let now = self.clock.now();
        let now_secs = unix_seconds(now);
        let task = self.mint_view(caller, &req, now_secs)?;
        // mint_view took a slot in the token table; every way out below gives it back,
        // unless the token is added into it.
        let slot = Slot::taken(self, |t: &mut TaskTable| t.release_token(&task.owner));
        let scopes = task.scopes;
        let ttl = self.token_ttl(req.ttl_seconds, task.expires_at - now_secs)?;
        let rate = task.rate;
        let owner_str = task.owner.to_string();
        let selectors = caller.selector_strings();
        let obo_text = task.obo.as_ref().map(Value::to_string).unwrap_or_default();
        let d = policy.decide(&PolicyRequest {
            principal: Principal {
                spiffe_id: &owner_str,
                trust_domain: task.owner.trust_domain_name(),
                selectors,
            },
            action: Action::MintTaskToken,
            audience: &req.audience,
            purpose: &task.purpose,
            scopes: &scopes,
            ttl_seconds: ttl.as_secs(),
            delegation_depth: task.depth,
            issuance_rate: rate,
            on_behalf_of: &obo_text,
        });
        let decision = decision_event(
            &owner_str,
            Action::MintTaskToken,
            &req.audience,
            &scopes,
            ttl.as_secs(),
            task.depth,
            &d,
            Some(&task.id),
        );
        if !d.allowed {
            self.audit(decision).await?;
            return Err(Status::permission_denied(format!(
                "token for {} {}",
                req.audience,
                grant::why(&d)
            )));
        }
        let jti = random_hex(16);
        let claims = token::claims(
            &TaskTokenSpec {
                sub: &task.owner,
                audience: &req.audience,
                scopes: &scopes,
                ttl,
                jti: &jti,
                task_id: &task.id,
                act: task.act.as_ref(),
                obo: task.obo.as_ref(),
            },
            now,
        );
        let signed = self.issuer.task_token(caller, &claims).await?;
        // An upstream issuer may cut the lifetime we asked for (SPIRE sets its own `exp`): the
        // token dies at the earlier of the two.
        let ours = now_secs + ttl.as_secs() as i64;
        let expires_at = if signed.expires_at > 0 {
            signed.expires_at.min(ours)
        } else {
            ours
        };
        let token = signed.token;
        let digest = jwt::digest(&token);
        // On disk before the token leaves: a crash after this line loses a token nobody saw,
        // never a token without its record.
        let issued = AuditEvent::TokenIssued {
            task_id: task.id.clone(),
            jti: jti.clone(),
            spiffe_id: owner_str,
            audience: req.audience.clone(),
            scopes: scopes.clone(),
            expires_at: expires_at as u64,
            max_uses: (req.max_uses > 0).then_some(req.max_uses),
        };
        self.audit_all(vec![decision, issued]).await?;
        {
            let mut table = self.lock();
            table.record_issue(&task.owner, now_secs);
            table.add_token(
                jti.clone(),
                TokenState {
                    task_id: task.id.clone(),
                    exp: expires_at,
                    max_uses: req.max_uses,
                    uses: 0,
                    digest: Some(digest),
                },
                &task.owner,
            );
            slot.fill();
        }
        self.metrics.task_token_issued();
        Ok(pb::MintTaskTokenResponse {
            token,
            jti,
            expires_at,
            audience: req.audience,
            scopes,
        })
    }

    fn token_ttl(&self, requested: u32, task_left: i64) -> Result<Duration, Status> {
        let c = &self.config;
        let ttl = if requested == 0 {
            c.default_token_ttl
        } else {
            Duration::from_secs(u64::from(requested))
        };
        if ttl > c.max_token_ttl {
            return Err(Status::invalid_argument(format!(
                "ttl {}s is above broker.max_token_ttl {}s",
                ttl.as_secs(),
                c.max_token_ttl.as_secs()
            )));
        }
        if ttl < c.min_token_ttl {
            return Err(Status::invalid_argument(format!(
                "ttl {}s is below broker.min_token_ttl {}s",
                ttl.as_secs(),
                c.min_token_ttl.as_secs()
            )));
        }
        let left = Duration::from_secs(task_left.max(0) as u64);
        if left < c.min_token_ttl {
            return Err(Status::failed_precondition(format!(
                "the task ends in {}s, too soon for a token (minimum {}s)",
                left.as_secs(),
                c.min_token_ttl.as_secs()
            )));
        }
        Ok(ttl.min(left))
    }

    /// What a mint needs from its task, read under one lock: the caller must own it, it must
    /// be open, and the audience and scopes must be within its grant. Only those fields are
    /// copied, not the task (its grants for every audience, its children).
    fn mint_view(
        &self,
        caller: &Arc<Caller>,
        req: &pb::MintTaskTokenRequest,
        now_secs: i64,
    ) -> Result<MintView, Status> {
        let mut table = self.lock();
        let task = table
            .get(&req.task_id)
            .filter(|t| Who::Workload(caller.clone()).holds(&t.owner))
            .ok_or_else(|| {
                Status::permission_denied(format!("task {} not found or not yours", req.task_id))
            })?;
        let state = task.state(now_secs);
        if state != TaskState::Open {
            return Err(Status::failed_precondition(format!(
                "task {} is {}",
                req.task_id,
                state.as_str()
            )));
        }
        let granted = task.grants.get(&req.audience).ok_or_else(|| {
            Status::permission_denied(format!(
                "audience {} is not in task {}'s grant",
                req.audience, task.id
            ))
        })?;
        let scopes: Vec<String> = if req.scopes.is_empty() {
            granted.iter().cloned().collect()
        } else {
            if let Some(extra) = req.scopes.iter().find(|s| !granted.contains(*s)) {
                return Err(Status::permission_denied(format!(
                    "scope {extra} is not granted for {} in task {}",
                    req.audience, task.id
                )));
            }
            req.scopes
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let view = MintView {
            id: task.id.clone(),
            owner: task.owner.clone(),
            purpose: task.purpose.clone(),
            scopes,
            expires_at: task.expires_at,
            depth: task.depth,
            obo: task.obo.clone(),
            act: act_of(&table, task),
            rate: table.rate(&task.owner, now_secs),
        };
        // Last, so that no refusal above leaves a slot taken.
        table
            .reserve_token(&view.owner, &self.config.table_bounds(), now_secs)
            .map_err(|e| self.refused_at(&e))?;
        Ok(view)
    }
}

/// What [`Broker::mint`] reads from its task and the table, in one look.
struct MintView {
    id: String,
    owner: SpiffeId,
    purpose: String,
    /// The scopes the token will carry: the request's (each granted), or the whole grant for
    /// its audience; sorted, each once.
    scopes: Vec<String>,
    expires_at: i64,
    depth: u32,
    obo: Option<Value>,
    /// The `act` chain of tokens minted in this task.
    act: Option<Value>,
    /// The owner's issuance rate, for policy.
    rate: u32,
}

/// The `act` chain of tokens minted in `task`: its ancestors' owners, the nearest outermost.
fn act_of(table: &TaskTable, task: &Task) -> Option<Value> {
    let mut owners = Vec::new();
    let mut next = task.parent.as_deref();
    while let Some(id) = next {
        let Some(p) = table.get(id) else { break };
        owners.push(&p.owner);
        next = p.parent.as_deref();
    }
    owners.iter().rev().fold(None, |inner, owner| {
        Some(token::act_chain(owner, inner.as_ref()))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::super::testkit::{
        caller, kinds, kit, kit_with, mint_request, open_request, open_task, AGENT, OTHER, TOOL,
    };
    use super::super::{BrokerConfig, Who};
    use crate::caller::IssueError;

    #[tokio::test]
    async fn a_token_leaves_only_after_its_record() {
        let k = kit();
        let task = open_task(&k).await;
        let resp = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &["read"]))
            .await
            .unwrap();
        assert_eq!(resp.audience, TOOL);
        assert_eq!(resp.scopes, vec!["read".to_string()]);
        let records = k.sink.records();
        let last = kinds(&records);
        assert_eq!(last[last.len() - 2..], ["decision", "token_issued"]);
        let issued = format!("{:?}", records.last().unwrap());
        assert!(issued.contains(&resp.jti), "{issued}");
        assert!(
            !issued.contains(&resp.token),
            "a token must never be in the audit log"
        );
    }

    #[tokio::test]
    async fn no_token_when_the_audit_log_refuses_its_record() {
        let k = kit();
        let task = open_task(&k).await;
        k.sink.fail_from_now(true);
        let err = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("nothing issued"), "{err:?}");
    }

    #[tokio::test]
    async fn more_than_the_grant_is_refused() {
        let k = kit();
        let task = open_task(&k).await;
        let a = caller(AGENT);
        let other_audience = k
            .broker
            .mint(&a, mint_request(&task.task_id, "https://elsewhere", &[]))
            .await
            .unwrap_err();
        assert_eq!(other_audience.code(), Code::PermissionDenied);
        let extra_scope = k
            .broker
            .mint(&a, mint_request(&task.task_id, TOOL, &["admin"]))
            .await
            .unwrap_err();
        assert_eq!(extra_scope.code(), Code::PermissionDenied);
        assert!(
            extra_scope.message().contains("scope admin"),
            "{extra_scope:?}"
        );
        let not_owner = k
            .broker
            .mint(&caller(OTHER), mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap_err();
        assert_eq!(not_owner.code(), Code::PermissionDenied);
        assert_eq!(k.issuer.signed(), 0, "nothing was signed");
    }

    #[tokio::test]
    async fn an_expired_task_mints_nothing() {
        let k = kit();
        let task = open_task(&k).await;
        k.clock.advance(Duration::from_secs(601));
        let err = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("expired"), "{err:?}");
    }

    #[tokio::test]
    async fn tokens_end_with_their_task_and_at_the_issuers_earlier_expiry() {
        let k = kit();
        let task = open_task(&k).await;
        k.clock.advance(Duration::from_secs(590));
        let resp = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap();
        // 10 s left in the task: the token is cut to end with it.
        assert_eq!(resp.expires_at, task.expires_at);
        let k = kit();
        let task = open_task(&k).await;
        k.issuer.shift_expiry(-30);
        let now0 = crate::clock::Clock::unix_seconds(&k.clock);
        let resp = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap();
        let asked = now0 + k.broker.config.default_token_ttl.as_secs() as i64;
        assert_eq!(resp.expires_at, asked - 30);
    }

    #[tokio::test]
    async fn an_issuer_failure_is_the_callers_error_and_writes_no_token_record() {
        let k = kit();
        let task = open_task(&k).await;
        k.issuer
            .fail_next(IssueError::Unavailable("upstream down".into()));
        let before = k.sink.records().len();
        let err = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "upstream down");
        assert!(!kinds(&k.sink.records()[before..]).contains(&"token_issued".to_string()));
    }

    /// `max_live_tokens` at its edge, through MintTaskToken: the mint past it is refused
    /// before anything is signed or recorded; a failed mint gives its slot back; expiry and
    /// a close free slots.
    #[tokio::test]
    async fn the_live_token_bound_at_its_edge() {
        let k = kit_with(BrokerConfig {
            max_live_tokens: 2,
            max_live_tokens_per_owner: Some(2),
            ..BrokerConfig::default()
        });
        let agent = caller(AGENT);
        let first = open_task(&k).await;
        let mint = |task_id: String| k.broker.mint(&agent, mint_request(&task_id, TOOL, &[]));
        k.issuer
            .fail_next(IssueError::Unavailable("upstream down".into()));
        mint(first.task_id.clone()).await.unwrap_err();
        mint(first.task_id.clone()).await.unwrap();
        mint(first.task_id.clone()).await.unwrap();
        let before = k.sink.records().len();
        let err = mint(first.task_id.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains("too many live task tokens (2)")
                && err.message().contains("broker.max_live_tokens"),
            "{err:?}"
        );
        assert_eq!(k.sink.records().len(), before, "nothing decided or issued");

        k.clock.advance(k.broker.config.default_token_ttl);
        mint(first.task_id.clone())
            .await
            .expect("the two tokens expired");
        let second = k
            .broker
            .open_task(&agent, open_request(&[TOOL], &[], 600))
            .await
            .unwrap();
        mint(second.task_id.clone()).await.unwrap();
        assert_eq!(
            mint(first.task_id.clone()).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
        let closed = k
            .broker
            .close(&Who::Workload(agent.clone()), &second.task_id, "")
            .await
            .unwrap();
        assert_eq!(closed.revoked_tokens, 1);
        mint(first.task_id.clone())
            .await
            .expect("the closed task's token no longer holds a slot");
    }

    /// `max_live_tokens_per_owner` at its edge, through MintTaskToken: a workload at its
    /// share is refused before anything is signed or recorded, naming it and the key, while
    /// another workload still mints; its tokens' expiry gives the share back.
    #[tokio::test]
    async fn a_workload_at_its_token_share_does_not_starve_the_others() {
        let k = kit_with(BrokerConfig {
            max_live_tokens: 10,
            max_live_tokens_per_owner: Some(2),
            ..BrokerConfig::default()
        });
        let (agent, other) = (caller(AGENT), caller(OTHER));
        let mine = open_task(&k).await.task_id;
        let theirs = k
            .broker
            .open_task(&other, open_request(&[TOOL], &[], 600))
            .await
            .unwrap()
            .task_id;
        for _ in 0..2 {
            k.broker
                .mint(&agent, mint_request(&mine, TOOL, &[]))
                .await
                .unwrap();
        }
        let before = k.sink.records().len();
        let err = k
            .broker
            .mint(&agent, mint_request(&mine, TOOL, &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains(AGENT)
                && err
                    .message()
                    .contains("broker.max_live_tokens_per_owner = 2"),
            "{err:?}"
        );
        assert_eq!(k.sink.records().len(), before, "nothing decided or issued");
        for _ in 0..2 {
            k.broker
                .mint(&other, mint_request(&theirs, TOOL, &[]))
                .await
                .expect("another workload still mints");
        }
        k.clock.advance(k.broker.config.default_token_ttl);
        k.broker
            .mint(&agent, mint_request(&mine, TOOL, &[]))
            .await
            .expect("its tokens expired");
    }
}
