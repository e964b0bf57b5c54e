//! OpenTask: the grant is request ∩ policy ∩ parent, and a delegation token must be
//! addressed to the caller.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use spiffe::SpiffeId;
use tonic::Status;

use super::events::{decision_event, task_open_event};
use super::grant::{self, GrantContext, ParentLimit};
use super::limits;
use super::slot::Slot;
use super::table::{Grants, Task, TaskState, TaskTable};
use super::token;
use super::who::choose_identity;
use super::Broker;
use crate::audit::AuditEvent;
use crate::caller::Caller;
use crate::policy::{Action, PolicyRequest, Principal};
use crate::proto::svidbroker::v1 as pb;
use crate::svid::{jwt, random_hex, unix_seconds};

impl Broker {
    /// OpenTask: the grant is request ∩ policy ∩ parent.
    ///
    /// # Errors
    /// Bad input, no identity, an invalid delegation or subject token, or nothing granted.
    pub async fn open_task(
        &self,
        caller: &Arc<Caller>,
        req: pb::OpenTaskRequest,
    ) -> Result<pb::OpenTaskResponse, Status> {
        limits::purpose(&req.purpose)?;
        limits::audiences(&req.audiences)?;
        limits::scopes(&req.scopes)?;
        limits::token("parent_token", &req.parent_token)?;
        limits::token("subject_token", &req.subject_token)?;
        let owner = choose_identity(caller, &req.spiffe_id)?;
        // A place in the table first: an OpenTask past `max_open_tasks`, or past its owner's
        // share of the table, is refused before policy runs, and a task the log records as
        // opened always fits the table. The issuance rate policy sees is read under the same
        // lock.
        let rate = {
            let now_secs = self.clock.unix_seconds();
            let mut table = self.lock();
            table
                .reserve_open(&owner, &self.config.table_bounds(), now_secs)
                .map_err(|e| self.refused_at(&e))?;
            table.rate(&owner, now_secs)
        };
        let reserved_for = owner.clone();
        let slot = Slot::taken(self, move |t: &mut TaskTable| t.release_open(&reserved_for));
        let mut records = Vec::new();
        let decided = self.decide_task(caller, &req, owner, rate, &mut records);
        // Every record of the request goes to disk in one write (a spent use of the delegation
        // token, the Delegate decision, each grant decision, the task), allowed or not, before
        // the caller learns the outcome: one disk wait per OpenTask, not one per record.
        self.audit_all(records).await?;
        let Decided {
            task,
            owner,
            narrowed,
        } = decided?;
        // The answer is built before the task moves into the table, so the task is not copied.
        let answer = pb::OpenTaskResponse {
            task_id: task.id.clone(),
            spiffe_id: owner,
            grants: task
                .grants
                .iter()
                .map(|(a, s)| pb::AudienceGrant {
                    audience: a.clone(),
                    scopes: s.iter().cloned().collect(),
                })
                .collect(),
            expires_at: task.expires_at,
            narrowed,
            delegation_depth: task.depth,
            parent_task_id: task.parent.clone().unwrap_or_default(),
        };
        let now_secs = task.created_at;
        let closed_meanwhile = {
            let mut table = self.lock();
            table.insert_reserved(task, &self.config.table_bounds(), now_secs);
            slot.fill();
            table
                .get(&answer.task_id)
                .is_some_and(|t| t.closed_at.is_some())
        };
        if closed_meanwhile {
            // The parent was closed after its token was checked: the child went in closed
            // with it (as a replay of the log would have it), and nothing is handed out.
            self.audit(AuditEvent::Revocation {
                task_id: answer.task_id.clone(),
                reason: "its parent task was closed while it was being opened".into(),
                cause_task_id: Some(answer.parent_task_id.clone()),
            })
            .await?;
            return Err(Status::permission_denied(format!(
                "parent_token rejected: its task {} was closed while this task was being opened",
                answer.parent_task_id
            )));
        }
        Ok(answer)
    }

    /// Everything OpenTask decides for `owner`, whose issuance rate is `rate`, before it
    /// writes: the task, or why not. Pushes onto `records` what must be on disk before the
    /// caller hears either.
    fn decide_task(
        &self,
        caller: &Arc<Caller>,
        req: &pb::OpenTaskRequest,
        owner: SpiffeId,
        rate: u32,
        records: &mut Vec<AuditEvent>,
    ) -> Result<Decided, Status> {
        // One policy version for every decision of this request (Delegate and each pair).
        let policy = self.policy_or_deny()?.pin();
        let now = self.clock.now();
        let now_secs = unix_seconds(now);

        // Delegation: the parent token must be addressed to this caller's identity.
        let parent = if req.parent_token.is_empty() {
            None
        } else {
            Some(self.check_parent(&req.parent_token, &owner, now)?)
        };
        if let Some((task_id, jti, uses)) = parent.as_ref().and_then(|p| p.used.clone()) {
            records.push(AuditEvent::TokenUsed {
                task_id,
                jti,
                by: owner.to_string(),
                uses,
            });
        }
        let obo = if req.subject_token.is_empty() {
            parent.as_ref().and_then(|p| p.task.obo.clone())
        } else {
            Some(self.oidc.verify(&req.subject_token, now)?)
        };
        let depth = parent.as_ref().map_or(0, |p| p.task.depth + 1);
        if depth > self.config.max_delegation_depth {
            return Err(Status::permission_denied(format!(
                "delegation depth {depth} exceeds broker.max_delegation_depth {}",
                self.config.max_delegation_depth
            )));
        }

        let mut narrowed = Vec::new();
        let requested_ttl = if req.ttl_seconds == 0 {
            self.config.default_task_ttl
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds))
        };
        let mut ttl = requested_ttl.min(self.config.max_task_ttl);
        if ttl < requested_ttl {
            narrowed.push(format!(
                "ttl capped at {}s by broker.max_task_ttl",
                ttl.as_secs()
            ));
        }
        if let Some(p) = &parent {
            let left = Duration::from_secs((p.task.expires_at - now_secs).max(0) as u64);
            if left < ttl {
                ttl = left;
                narrowed.push(format!(
                    "ttl capped at {}s: the parent task ends then",
                    ttl.as_secs()
                ));
            }
        }
        if ttl < self.config.min_token_ttl {
            return Err(Status::failed_precondition(format!(
                "task would live {}s, less than broker.min_token_ttl",
                ttl.as_secs()
            )));
        }

        let selectors = caller.selector_strings();
        let owner_str = owner.to_string();
        let principal = Principal {
            spiffe_id: &owner_str,
            trust_domain: owner.trust_domain_name(),
            selectors,
        };
        let obo_text = obo.as_ref().map(Value::to_string).unwrap_or_default();

        if let Some(p) = &parent {
            let d = policy.decide(&PolicyRequest {
                principal: Principal { ..principal },
                action: Action::Delegate,
                audience: &p.task.owner.to_string(),
                purpose: &req.purpose,
                scopes: &p.token_scopes.iter().cloned().collect::<Vec<_>>(),
                ttl_seconds: ttl.as_secs(),
                delegation_depth: depth,
                issuance_rate: rate,
                on_behalf_of: &obo_text,
            });
            records.push(decision_event(
                &owner_str,
                Action::Delegate,
                &p.task.owner.to_string(),
                &[],
                ttl.as_secs(),
                depth,
                &d,
                Some(&p.task.id),
            ));
            if !d.allowed {
                return Err(Status::permission_denied(format!(
                    "delegation from {} {}",
                    p.task.owner,
                    grant::why(&d)
                )));
            }
        }

        let ctx = GrantContext {
            principal,
            purpose: &req.purpose,
            ttl_seconds: ttl.as_secs(),
            delegation_depth: depth,
            issuance_rate: rate,
            on_behalf_of: &obo_text,
        };
        let limit = parent.as_ref().map(|p| ParentLimit {
            grants: &p.task.grants,
            token_scopes: &p.token_scopes,
        });
        let outcome = grant::compute(&policy, &ctx, &req.audiences, &req.scopes, limit.as_ref());
        narrowed.extend(outcome.narrowed);
        let task_id = format!("task_{}", random_hex(16));
        let first_decision = records.len();
        records.extend(outcome.decisions);
        for d in &mut records[first_decision..] {
            if let AuditEvent::Decision { task_id: t, .. } = d {
                *t = Some(task_id.clone());
            }
        }
        if outcome.grants.is_empty() {
            return Err(Status::permission_denied(format!(
                "nothing granted: {}",
                narrowed.join("; ")
            )));
        }
        let task = Task {
            id: task_id.clone(),
            owner,
            purpose: req.purpose.clone(),
            grants: outcome.grants,
            created_at: now_secs,
            expires_at: now_secs + ttl.as_secs() as i64,
            parent: parent.as_ref().map(|p| p.task.id.clone()),
            depth,
            children: Vec::new(),
            closed_at: None,
            tokens_issued: 0,
            obo,
        };
        records.push(task_open_event(&task));
        Ok(Decided {
            task,
            owner: owner_str,
            narrowed,
        })
    }

    fn check_parent(
        &self,
        token: &str,
        owner: &SpiffeId,
        now: SystemTime,
    ) -> Result<ParentInfo, Status> {
        let denied =
            |why: String| Status::permission_denied(format!("parent_token rejected: {why}"));
        let parsed = jwt::parse(token).map_err(|e| denied(e.to_string()))?;
        let owner_str = owner.to_string();
        if !parsed.audiences().contains(&owner_str.as_str()) {
            return Err(denied(format!(
                "it is addressed to {}, not to {owner_str}",
                parsed.audiences().join(", ")
            )));
        }
        // A delegation token is one this broker minted moments ago: when its bytes are the
        // ones that left, the signature check (most of a delegated open's CPU) is skipped.
        let verified = self
            .verify_token(token, parsed, &owner_str, now)
            .map_err(|e| denied(e.to_string()))?;
        let claims =
            token::read(&verified.parsed).ok_or_else(|| denied("not a task token".into()))?;
        let mut table = self.lock();
        let task = table
            .get(&claims.task_id)
            .ok_or_else(|| denied("its task is unknown".into()))?;
        if task.state(unix_seconds(now)) != TaskState::Open {
            return Err(denied(format!(
                "its task is {}",
                task.state(unix_seconds(now)).as_str()
            )));
        }
        if task.owner != verified.spiffe_id {
            return Err(denied("its subject does not own its task".into()));
        }
        let token_state = table
            .token(&claims.jti)
            .ok_or_else(|| denied("unknown token".into()))?;
        if token_state.task_id != claims.task_id || !task.grants.contains_key(&claims.audience) {
            return Err(denied("it was not minted in its task".into()));
        }
        if token_state.max_uses > 0 && token_state.uses >= token_state.max_uses {
            return Err(denied("it is used up".into()));
        }
        // A SPIRE-minted token carries no scopes: the task's grant for its audience bounds them.
        let token_scopes = if claims.scopes.is_empty() {
            task.grants
                .get(&claims.audience)
                .cloned()
                .unwrap_or_default()
        } else {
            claims.scopes.into_iter().collect()
        };
        let counted = token_state.max_uses > 0;
        // Only what the child needs, not the whole task: its list of children grows with every
        // child opened from it, and copying it here, under the table's lock, made each
        // delegated open cost more than the one before.
        let task = Parent {
            id: task.id.clone(),
            owner: task.owner.clone(),
            grants: task.grants.clone(),
            expires_at: task.expires_at,
            depth: task.depth,
            obo: task.obo.clone(),
        };
        // Opening a child spends a use of an N-use delegation token, under the same lock
        // as the check, so two children cannot share a single-use token.
        let used = if counted {
            table
                .use_token(&claims.jti)
                .map(|uses| (claims.task_id.clone(), claims.jti.clone(), uses))
        } else {
            None
        };
        Ok(ParentInfo {
            task,
            token_scopes,
            used,
        })
    }
}

/// What a child task takes from its parent task.
struct Parent {
    id: String,
    owner: SpiffeId,
    grants: Grants,
    expires_at: i64,
    depth: u32,
    obo: Option<Value>,
}

/// A task OpenTask decided to open, and what the answer says about it.
struct Decided {
    task: Task,
    /// The identity it was opened for, as text.
    owner: String,
    /// How the request was narrowed to the grant.
    narrowed: Vec<String>,
}

pub(super) struct ParentInfo {
    task: Parent,
    token_scopes: BTreeSet<String>,
    /// (task, jti, uses) when opening this child spent a use of the delegation token.
    used: Option<(String, String, u32)>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::super::testkit::{
        caller, kinds, kit, kit_with, mint_request, open_request, padded_audiences, with_payload,
        AGENT, OTHER, TOOL,
    };
    use crate::broker::{BrokerConfig, Who};

    /// A task of AGENT that may delegate to OTHER, and a token for OTHER good for `uses`.
    async fn delegation_token(k: &super::super::testkit::Kit, uses: u32) -> (String, String) {
        let parent = k
            .broker
            .open_task(&caller(AGENT), open_request(&[OTHER], &[], 300))
            .await
            .unwrap();
        let mut req = mint_request(&parent.task_id, OTHER, &[]);
        req.max_uses = uses;
        let token = k.broker.mint(&caller(AGENT), req).await.unwrap();
        (parent.task_id, token.token)
    }

    #[tokio::test]
    async fn a_delegated_open_waits_for_the_disk_once_for_all_its_records() {
        let k = kit();
        let (parent_id, token) = delegation_token(&k, 2).await;
        let (appends, records) = (k.sink.appends(), k.sink.records().len());
        let mut req = open_request(&[OTHER], &[], 60);
        req.parent_token = token.clone();
        let child = k.broker.open_task(&caller(OTHER), req).await.unwrap();
        assert_eq!(child.parent_task_id, parent_id);
        assert_eq!(
            k.sink.appends(),
            appends + 1,
            "one write for the whole call"
        );
        assert_eq!(
            kinds(&k.sink.records()[records..]),
            ["token_used", "decision", "decision", "task_open"],
            "the spent use, the Delegate decision, the grant decision, the task, in order"
        );

        // Refused (nothing of the parent's grant asked for): the spent use and the decisions
        // are still written, once, before the refusal.
        let (appends, records) = (k.sink.appends(), k.sink.records().len());
        let mut req = open_request(&[TOOL], &[], 60);
        req.parent_token = token;
        let err = k.broker.open_task(&caller(OTHER), req).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert_eq!(k.sink.appends(), appends + 1);
        let written = kinds(&k.sink.records()[records..]);
        assert_eq!(written[..2], ["token_used", "decision"], "{written:?}");
        assert!(!written.contains(&"task_open".to_string()), "{written:?}");
    }

    #[tokio::test]
    async fn a_delegation_token_with_a_rewritten_payload_is_refused() {
        let k = kit();
        let (_, token) = delegation_token(&k, 2).await;
        // Its jti is one the broker issued, so only the signature check can catch it: a
        // later expiry and a wider scope written in, header and signature kept.
        let tampered = with_payload(&token, |c| {
            c["exp"] = serde_json::json!(c["exp"].as_i64().unwrap() + 3600);
            c["scope"] = "read write admin".into();
        });
        let mut req = open_request(&[OTHER], &[], 60);
        req.parent_token = tampered;
        let err = k.broker.open_task(&caller(OTHER), req).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("parent_token rejected: signature does not verify"),
            "{err:?}"
        );
        // The bytes as minted still open a child.
        let mut req = open_request(&[OTHER], &[], 60);
        req.parent_token = token;
        assert!(k.broker.open_task(&caller(OTHER), req).await.is_ok());
    }

    #[tokio::test]
    async fn a_delegated_open_whose_records_the_log_refuses_opens_nothing() {
        let k = kit();
        let (_, token) = delegation_token(&k, 1).await;
        k.sink.fail_from_now(true);
        let mut req = open_request(&[OTHER], &[], 60);
        req.parent_token = token.clone();
        let err = k.broker.open_task(&caller(OTHER), req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "no record, no task: {err:?}");
        assert!(
            k.broker.list(true).iter().all(|t| t.delegation_depth == 0),
            "no child"
        );
    }

    /// `max_open_tasks` at its edge, through OpenTask: a task stops counting when it expires
    /// (though the table keeps it) or closes.
    #[tokio::test]
    async fn the_open_task_bound_counts_only_tasks_still_open() {
        let k = kit_with(BrokerConfig {
            max_open_tasks: 2,
            max_open_tasks_per_owner: Some(2),
            ..BrokerConfig::default()
        });
        let agent = caller(AGENT);
        let open = |ttl| k.broker.open_task(&agent, open_request(&[TOOL], &[], ttl));
        // A refused OpenTask gives its place back.
        for _ in 0..3 {
            let mut bad = open_request(&[TOOL], &[], 60);
            bad.parent_token = "not.a.token".into();
            let err = k.broker.open_task(&agent, bad).await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        }
        open(60).await.unwrap();
        let long = open(600).await.unwrap();
        let before = k.sink.records().len();
        let err = open(600).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert_eq!(
            k.sink.records().len(),
            before,
            "refused before policy: no decision, and no task_open for a task never opened"
        );
        assert!(
            err.message().contains("too many open tasks (2)")
                && err.message().contains("broker.max_open_tasks"),
            "{err:?}"
        );
        k.clock.advance(Duration::from_secs(60));
        assert_eq!(
            k.broker.list(true).len(),
            2,
            "the expired task is still listed"
        );
        open(600).await.expect("the expired task no longer counts");
        assert_eq!(open(600).await.unwrap_err().code(), Code::ResourceExhausted);
        k.broker
            .close(&Who::Workload(agent.clone()), &long.task_id, "")
            .await
            .unwrap();
        open(600).await.expect("the closed task no longer counts");
        assert_eq!(open(600).await.unwrap_err().code(), Code::ResourceExhausted);
    }

    /// `max_task_bytes` at its edge, through OpenTask: once the open tasks weigh the bound,
    /// OpenTask is refused before policy runs and writes nothing; a closed task makes room.
    #[tokio::test]
    async fn the_byte_bound_refuses_opens_until_a_task_ends() {
        let k = kit_with(BrokerConfig {
            max_task_bytes: crate::broker::settings::MIN_TASK_BYTES,
            ..BrokerConfig::default()
        });
        let agent = caller(AGENT);
        let heavy = || {
            let mut req = open_request(&[TOOL], &[], 600);
            req.purpose = "summarise the quarterly report ".repeat(32);
            k.broker.open_task(&agent, req)
        };
        let mut opened = Vec::new();
        let err = loop {
            match heavy().await {
                Ok(t) => opened.push(t.task_id),
                Err(e) => break e,
            }
            assert!(opened.len() < 2_000, "the byte bound never refused");
        };
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("broker.max_task_bytes"), "{err:?}");
        // About 3.5 KiB a task against 1 MiB: hundreds fit, not thousands.
        assert!((200..500).contains(&opened.len()), "{}", opened.len());
        let before = k.sink.records().len();
        assert_eq!(heavy().await.unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(k.sink.records().len(), before, "refused before policy");
        k.broker
            .close(&Who::Workload(agent.clone()), &opened[0], "")
            .await
            .unwrap();
        heavy().await.expect("the closed task made room");
        assert_eq!(heavy().await.unwrap_err().code(), Code::ResourceExhausted);
    }

    /// `max_open_tasks_per_owner` at its edge, through OpenTask: one workload at its share is
    /// refused before policy runs, writes nothing and is told which key binds, while another
    /// workload still opens tasks in the room the table has left; a close gives the place
    /// back.
    #[tokio::test]
    async fn a_workload_at_its_share_does_not_starve_the_others() {
        let k = kit_with(BrokerConfig {
            max_open_tasks: 10,
            max_open_tasks_per_owner: Some(3),
            ..BrokerConfig::default()
        });
        let (agent, other) = (caller(AGENT), caller(OTHER));
        let open = |c| k.broker.open_task(c, open_request(&[TOOL], &[], 600));
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(open(&agent).await.unwrap().task_id);
        }
        let before = k.sink.records().len();
        let err = open(&agent).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains(AGENT)
                && err
                    .message()
                    .contains("broker.max_open_tasks_per_owner = 3"),
            "{err:?}"
        );
        assert_eq!(k.sink.records().len(), before, "refused before policy");
        for _ in 0..3 {
            open(&other).await.expect("another workload still opens");
        }
        assert_eq!(
            open(&other).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
        k.broker
            .close(&Who::Workload(agent.clone()), &mine[0], "")
            .await
            .unwrap();
        open(&agent)
            .await
            .expect("the closed task gave its place back");
    }

    /// By default each workload may hold a quarter of the table: the default bounds let
    /// four workloads fill their shares before the table is full.
    #[test]
    fn the_default_share_is_a_quarter_of_the_table() {
        let b = BrokerConfig::default().table_bounds();
        assert_eq!(b.owner_open_tasks * 4, b.open_tasks);
        assert_eq!(b.owner_task_bytes * 4, b.task_bytes);
        assert_eq!(b.owner_live_tokens * 4, b.live_tokens);
        let small = BrokerConfig {
            max_open_tasks: 2,
            max_task_bytes: crate::broker::settings::MIN_TASK_BYTES,
            ..BrokerConfig::default()
        }
        .table_bounds();
        assert_eq!(
            (small.owner_open_tasks, small.owner_task_bytes),
            (1, crate::broker::settings::MIN_TASK_BYTES),
            "never below one task or the largest task's record"
        );
        let never_validated = BrokerConfig {
            max_open_tasks: 0,
            max_task_bytes: 0,
            ..BrokerConfig::default()
        }
        .table_bounds();
        assert_eq!(
            (
                never_validated.owner_open_tasks,
                never_validated.owner_task_bytes
            ),
            (0, 0),
            "never above the whole, and no panic on bounds start-up would refuse"
        );
    }

    /// Every field within its own bound, but together more than one audit record holds: the
    /// caller asked for too much (`InvalidArgument`, saying what to cut), the log is not at
    /// fault (`Unavailable`), and nothing is opened or recorded.
    #[tokio::test]
    async fn a_task_too_large_to_record_is_refused_as_the_callers_fault() {
        use super::super::limits::{
            MAX_AUDIENCE_BYTES, MAX_PURPOSE_BYTES, MAX_SCOPES, MAX_SCOPE_BYTES, MAX_TASK_AUDIENCES,
        };
        let k = kit();
        let mut req = open_request(&[], &[], 600);
        req.purpose = "p".repeat(MAX_PURPOSE_BYTES);
        req.audiences = padded_audiences(
            "https://tool.example",
            MAX_TASK_AUDIENCES,
            MAX_AUDIENCE_BYTES,
        );
        req.scopes = (0..MAX_SCOPES)
            .map(|i| format!("{i:0>width$}", width = MAX_SCOPE_BYTES))
            .collect();
        let err = k.broker.open_task(&caller(AGENT), req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("cannot be recorded")
                && err.message().contains("audit event is")
                && err.message().contains("fewer or shorter audiences"),
            "{err:?}"
        );
        assert!(k.sink.records().is_empty(), "nothing recorded");
        assert!(k.broker.list(true).is_empty(), "nothing opened");
    }

    #[tokio::test]
    async fn a_task_is_recorded_before_it_is_answered() {
        let k = kit();
        let resp = k
            .broker
            .open_task(&caller(AGENT), open_request(&[TOOL], &["read"], 120))
            .await
            .unwrap();
        assert_eq!(resp.spiffe_id, AGENT);
        let now = crate::clock::Clock::unix_seconds(&k.clock);
        assert_eq!(
            resp.expires_at,
            now + 120,
            "the task's end is read from the clock"
        );
        assert_eq!(kinds(&k.sink.records()).last().unwrap(), "task_open");
    }

    #[tokio::test]
    async fn no_task_when_the_audit_log_refuses_it() {
        let k = kit();
        k.sink.fail_from_now(true);
        let err = k
            .broker
            .open_task(&caller(AGENT), open_request(&[TOOL], &[], 120))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            k.broker.list(true).is_empty(),
            "nothing in the table either"
        );
    }

    #[tokio::test]
    async fn a_caller_cannot_speak_for_an_identity_it_does_not_hold() {
        let k = kit();
        let mut req = open_request(&[TOOL], &[], 120);
        req.spiffe_id = OTHER.into();
        let err = k.broker.open_task(&caller(AGENT), req).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().starts_with("no identity issued"), "{err:?}");
        assert_eq!(k.sink.appends(), 0, "refused before deciding: no disk wait");
    }

    #[tokio::test]
    async fn a_delegation_token_addressed_to_someone_else_is_refused() {
        let k = kit();
        let parent = k
            .broker
            .open_task(&caller(AGENT), open_request(&[OTHER], &[], 300))
            .await
            .unwrap();
        let token = k
            .broker
            .mint(&caller(AGENT), mint_request(&parent.task_id, OTHER, &[]))
            .await
            .unwrap();
        // Addressed to agent/b: agent/a presenting it gets nothing.
        let mut req = open_request(&[TOOL], &[], 60);
        req.parent_token = token.token.clone();
        let err = k.broker.open_task(&caller(AGENT), req).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("parent_token rejected"), "{err:?}");
        // agent/b opens a child task with it, and the child's grant cannot exceed the parent's.
        let mut req = open_request(&[OTHER], &[], 60);
        req.parent_token = token.token;
        let child = k.broker.open_task(&caller(OTHER), req).await.unwrap();
        assert_eq!(child.parent_task_id, parent.task_id);
        assert_eq!(child.delegation_depth, 1);
    }
}
