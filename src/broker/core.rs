//! The broker's operations. Every path that grants authority checks the caller's attested
//! identity, the task's state, the grant, and policy — in that order — and writes its audit
//! record (synced) before anything leaves.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use spiffe::SpiffeId;
use tonic::Status;

use super::grant::{self, GrantContext, ParentLimit};
use super::limits;
use super::oidc::OidcIssuers;
use super::settings::{BrokerConfig, CLOSED_TASK_RETENTION};
use super::table::{TableError, Task, TaskState, TaskTable, TokenState};
use super::token::{self, TaskTokenSpec};
use crate::audit::{AuditEvent, AuditLog};
use crate::identity::IdentityManager;
use crate::policy::{Action, PolicyEngine, PolicyRequest, Principal};
use crate::proto::svidbroker::v1 as pb;
use crate::server::caller::Caller;
use crate::svid::{jwt, random_hex, unix_seconds};
use crate::telemetry::Metrics;

/// Who is asking: an attested workload, or an operator on the admin socket.
#[derive(Clone)]
pub enum Who {
    Workload(Arc<Caller>),
    Admin,
}

impl Who {
    fn label(&self) -> String {
        match self {
            Who::Workload(c) => c
                .identities
                .first()
                .map_or_else(|| format!("pid:{}", c.pid), |i| i.spiffe_id.to_string()),
            Who::Admin => "admin".to_string(),
        }
    }

    fn holds(&self, id: &SpiffeId) -> bool {
        match self {
            Who::Workload(c) => c.identities.iter().any(|i| &i.spiffe_id == id),
            Who::Admin => false,
        }
    }
}

pub struct Broker {
    config: BrokerConfig,
    identities: Arc<IdentityManager>,
    policy: Option<Arc<PolicyEngine>>,
    audit: Option<AuditLog>,
    oidc: OidcIssuers,
    table: Mutex<TaskTable>,
    metrics: Arc<Metrics>,
}

fn now_s() -> i64 {
    unix_seconds(SystemTime::now())
}

impl Broker {
    pub fn new(
        config: BrokerConfig,
        identities: Arc<IdentityManager>,
        policy: Option<Arc<PolicyEngine>>,
        audit: Option<AuditLog>,
        oidc: OidcIssuers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            identities,
            policy,
            audit,
            oidc,
            table: Mutex::new(TaskTable::default()),
            metrics,
        }
    }

    pub fn policy(&self) -> Option<&Arc<PolicyEngine>> {
        self.policy.as_ref()
    }

    pub fn audit_log(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    /// Replaces the task table (state rebuilt from the audit log at start).
    pub fn restore(&self, table: TaskTable) {
        *self.lock() = table;
    }

    fn lock(&self) -> MutexGuard<'_, TaskTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn policy_or_deny(&self) -> Result<&PolicyEngine, Status> {
        self.policy.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "no [policy] configured: the TaskBroker denies every request (default deny); set [policy] file",
            )
        })
    }

    /// Writes one audit record and waits until it is on disk.
    ///
    /// # Errors
    /// `Unavailable` when the log cannot take it: the caller must not hand anything out.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), Status> {
        self.audit_all(vec![event]).await
    }

    /// Writes records in order and waits until all are on disk (usually one fsync).
    ///
    /// # Errors
    /// As [`Broker::audit`].
    pub async fn audit_all(&self, events: Vec<AuditEvent>) -> Result<(), Status> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        log.append_all(events).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed; refusing the request");
            Status::unavailable(format!("audit log unavailable, nothing issued: {e}"))
        })
    }

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
        // One policy version for every decision of this request (Delegate and each pair).
        let policy = self.policy_or_deny()?.pin();
        let owner = choose_identity(caller, &req.spiffe_id)?;
        let now = SystemTime::now();
        let now_secs = unix_seconds(now);

        // Delegation: the parent token must be addressed to this caller's identity.
        let parent = if req.parent_token.is_empty() {
            None
        } else {
            Some(self.check_parent(&req.parent_token, &owner, now)?)
        };
        if let Some((task_id, jti, uses)) = parent.as_ref().and_then(|p| p.used.clone()) {
            self.audit(AuditEvent::TokenUsed {
                task_id,
                jti,
                by: owner.to_string(),
                uses,
            })
            .await?;
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
        let td = owner.trust_domain_name().to_string();
        let principal = Principal {
            spiffe_id: &owner_str,
            trust_domain: &td,
            selectors: &selectors,
        };
        let obo_text = obo.as_ref().map(Value::to_string).unwrap_or_default();
        let rate = self.lock().rate(&owner, now_secs);

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
            self.audit(decision_event(
                &owner_str,
                Action::Delegate,
                &p.task.owner.to_string(),
                &[],
                ttl.as_secs(),
                depth,
                &d,
                Some(&p.task.id),
            ))
            .await?;
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
        let mut records = outcome.decisions;
        for d in &mut records {
            if let AuditEvent::Decision { task_id: t, .. } = d {
                *t = Some(task_id.clone());
            }
        }
        if outcome.grants.is_empty() {
            self.audit_all(records).await?;
            return Err(Status::permission_denied(format!(
                "nothing granted: {}",
                narrowed.join("; ")
            )));
        }
        let task = Task {
            id: task_id.clone(),
            owner: owner.clone(),
            purpose: req.purpose.clone(),
            grants: outcome.grants,
            created_at: now_secs,
            expires_at: now_secs + ttl.as_secs() as i64,
            parent: parent.as_ref().map(|p| p.task.id.clone()),
            depth,
            children: Vec::new(),
            closed: false,
            tokens_issued: 0,
            obo,
        };
        records.push(task_open_event(&task));
        self.audit_all(records).await?;
        let closed_meanwhile = {
            let mut table = self.lock();
            table
                .insert(task.clone(), self.config.max_open_tasks, now_secs)
                .map_err(|e: TableError| Status::resource_exhausted(e.to_string()))?;
            table.get(&task_id).is_some_and(|t| t.closed)
        };
        if closed_meanwhile {
            // The parent was closed after its token was checked: the child went in closed
            // with it (as a replay of the log would have it), and nothing is handed out.
            let parent_id = task.parent.clone().unwrap_or_default();
            self.audit(AuditEvent::Revocation {
                task_id: task_id.clone(),
                reason: "its parent task was closed while it was being opened".into(),
                cause_task_id: task.parent.clone(),
            })
            .await?;
            return Err(Status::permission_denied(format!(
                "parent_token rejected: its task {parent_id} was closed while this task was being opened"
            )));
        }
        Ok(pb::OpenTaskResponse {
            task_id,
            spiffe_id: owner_str,
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
            delegation_depth: depth,
            parent_task_id: task.parent.unwrap_or_default(),
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
        let bundle = self.identities.authority().current_bundle();
        let parsed = jwt::parse(token).map_err(|e| denied(e.to_string()))?;
        let owner_str = owner.to_string();
        if !parsed.audiences().contains(&owner_str.as_str()) {
            return Err(denied(format!(
                "it is addressed to {}, not to {owner_str}",
                parsed.audiences().join(", ")
            )));
        }
        let verified = jwt::verify(token, &owner_str, now, |td| {
            (td == &bundle.trust_domain).then_some(bundle.as_ref())
        })
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
        let task = task.clone();
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
        let now = SystemTime::now();
        let now_secs = unix_seconds(now);
        let task = {
            let table = self.lock();
            let task = table
                .get(&req.task_id)
                .filter(|t| Who::Workload(caller.clone()).holds(&t.owner));
            let task = task.ok_or_else(|| {
                Status::permission_denied(format!("task {} not found or not yours", req.task_id))
            })?;
            match task.state(now_secs) {
                TaskState::Open => task.clone(),
                s => {
                    return Err(Status::failed_precondition(format!(
                        "task {} is {}",
                        req.task_id,
                        s.as_str()
                    )))
                }
            }
        };
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
        let ttl = self.token_ttl(req.ttl_seconds, task.expires_at - now_secs)?;
        let rate = self.lock().rate(&task.owner, now_secs);
        let owner_str = task.owner.to_string();
        let td = task.owner.trust_domain_name().to_string();
        let selectors = caller.selector_strings();
        let obo_text = task.obo.as_ref().map(Value::to_string).unwrap_or_default();
        let d = policy.decide(&PolicyRequest {
            principal: Principal {
                spiffe_id: &owner_str,
                trust_domain: &td,
                selectors: &selectors,
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
        let act = self.act_of(&task);
        let jti = random_hex(16);
        let claims = token::claims(
            &TaskTokenSpec {
                sub: &task.owner,
                audience: &req.audience,
                scopes: &scopes,
                ttl,
                jti: &jti,
                task_id: &task.id,
                act: act.as_ref(),
                obo: task.obo.as_ref(),
            },
            now,
        );
        let token = self.identities.sign_task_token(caller, &claims).await?;
        // A SPIRE-minted token carries SPIRE's `exp`: the token dies at the earlier of the two.
        // Our own tokens carry exactly the TTL we chose, so there is nothing to read back.
        let ours = now_secs + ttl.as_secs() as i64;
        let expires_at = match self.identities.authority() {
            crate::authority::Authority::Embedded(_) => ours,
            crate::authority::Authority::Spire(_) => jwt::parse(&token)
                .ok()
                .and_then(|p| p.numeric("exp"))
                .map_or(ours, |exp| exp.min(ours)),
        };
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
                },
            );
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

    /// The `act` chain of tokens minted in `task`.
    fn act_of(&self, task: &Task) -> Option<Value> {
        let table = self.lock();
        let mut owners = Vec::new();
        let mut next = task.parent.clone();
        while let Some(id) = next {
            let Some(p) = table.get(&id) else { break };
            owners.push(p.owner.clone());
            next = p.parent.clone();
        }
        owners.iter().rev().fold(None, |inner, owner| {
            Some(token::act_chain(owner, inner.as_ref()))
        })
    }

    /// CloseTask / Admin.RevokeTask: closes the task and its descendants, revoking their
    /// tokens.
    ///
    /// # Errors
    /// Not the owner (workloads), or no such task.
    pub async fn close(
        &self,
        who: &Who,
        task_id: &str,
        reason: &str,
    ) -> Result<pb::CloseTaskResponse, Status> {
        limits::task_id(task_id)?;
        if reason.len() > limits::MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason longer than {} bytes",
                limits::MAX_REASON_BYTES
            )));
        }
        {
            let table = self.lock();
            let task = table.get(task_id);
            let allowed = match (who, task) {
                (Who::Admin, Some(_)) => true,
                (Who::Workload(_), Some(t)) => who.holds(&t.owner),
                _ => false,
            };
            if !allowed {
                return Err(Status::permission_denied(format!(
                    "task {task_id} not found or not yours"
                )));
            }
        }
        let by = who.label();
        self.audit(AuditEvent::TaskClose {
            task_id: task_id.to_string(),
            by: by.clone(),
            reason: if reason.is_empty() {
                "closed".into()
            } else {
                reason.to_string()
            },
        })
        .await?;
        let (closed, revoked) = {
            let mut table = self.lock();
            let closed = table.close(task_id);
            let revoked = table.live_tokens_of(&closed, now_s());
            (closed, revoked)
        };
        for child in closed.iter().filter(|c| c.as_str() != task_id) {
            self.audit(AuditEvent::Revocation {
                task_id: child.clone(),
                reason: "an ancestor task was closed".into(),
                cause_task_id: Some(task_id.to_string()),
            })
            .await?;
        }
        Ok(pb::CloseTaskResponse {
            closed_task_ids: closed,
            revoked_tokens: revoked,
        })
    }

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
        let now = SystemTime::now();
        let bundle = self.identities.authority().current_bundle();
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
            claims: Some(crate::workload_api::json_to_struct(map)),
        })
    }

    /// Admin.ListTasks.
    pub fn list(&self, include_closed: bool) -> Vec<pb::TaskInfo> {
        let now = now_s();
        let table = self.lock();
        let mut out: Vec<pb::TaskInfo> = table
            .tasks()
            .filter(|t| include_closed || t.state(now) == TaskState::Open)
            .map(|t| pb::TaskInfo {
                task_id: t.id.clone(),
                spiffe_id: t.owner.to_string(),
                purpose: t.purpose.clone(),
                audiences: t.grants.keys().cloned().collect(),
                scopes: t
                    .grants
                    .values()
                    .flatten()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                created_at: t.created_at,
                expires_at: t.expires_at,
                parent_task_id: t.parent.clone().unwrap_or_default(),
                delegation_depth: t.depth,
                state: t.state(now).as_str().to_string(),
                tokens_issued: t.tokens_issued,
            })
            .collect();
        out.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.task_id.cmp(&b.task_id))
        });
        out
    }

    /// Re-reads the policy file; a broken file is refused and the old policy stays.
    ///
    /// # Errors
    /// No policy configured, or the new file is invalid.
    pub async fn reload_policy(&self) -> Result<Vec<String>, Status> {
        let policy = self.policy_or_deny()?;
        match policy.reload() {
            Ok(ids) => {
                tracing::info!(policies = ids.len(), "policy reloaded");
                self.audit(AuditEvent::PolicyReload {
                    ok: true,
                    policy_ids: ids.clone(),
                    error: None,
                })
                .await?;
                Ok(ids)
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "policy reload refused; the previous policy stays in force");
                let short: String = msg.chars().take(1024).collect();
                self.audit(AuditEvent::PolicyReload {
                    ok: false,
                    policy_ids: policy.policy_ids(),
                    error: Some(short),
                })
                .await?;
                Err(Status::invalid_argument(format!(
                    "policy reload refused, previous policy kept: {msg}"
                )))
            }
        }
    }

    /// Forgets finished tasks and expired tokens, periodically.
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            self.lock()
                .sweep(now_s(), CLOSED_TASK_RETENTION.as_secs() as i64);
        }
    }
}

struct ParentInfo {
    task: Task,
    token_scopes: BTreeSet<String>,
    /// (task, jti, uses) when opening this child spent a use of the delegation token.
    used: Option<(String, String, u32)>,
}

fn choose_identity(caller: &Caller, wanted: &str) -> Result<SpiffeId, Status> {
    let identities = caller.require_identities()?;
    if wanted.is_empty() {
        return Ok(identities[0].spiffe_id.clone());
    }
    let id = crate::workload_api::parse_spiffe_id(wanted)?;
    identities
        .iter()
        .find(|i| i.spiffe_id == id)
        .map(|i| i.spiffe_id.clone())
        .ok_or_else(|| {
            Status::permission_denied(format!("no identity issued: caller does not hold {id}"))
        })
}

#[allow(clippy::too_many_arguments)]
fn decision_event(
    spiffe_id: &str,
    action: Action,
    audience: &str,
    scopes: &[String],
    ttl_seconds: u64,
    depth: u32,
    d: &crate::policy::Decision,
    task_id: Option<&str>,
) -> AuditEvent {
    AuditEvent::Decision {
        spiffe_id: spiffe_id.to_string(),
        action: action.as_str().to_string(),
        audience: audience.to_string(),
        scopes: scopes.to_vec(),
        ttl_seconds,
        delegation_depth: depth,
        allowed: d.allowed,
        policy_ids: d.policy_ids.clone(),
        errors: d
            .errors
            .iter()
            .take(8)
            .map(|e| e.chars().take(512).collect())
            .collect(),
        task_id: task_id.map(str::to_string),
    }
}

fn task_open_event(task: &Task) -> AuditEvent {
    AuditEvent::TaskOpen {
        task_id: task.id.clone(),
        spiffe_id: task.owner.to_string(),
        purpose: task.purpose.clone(),
        audiences: task.grants.keys().cloned().collect(),
        scopes: task
            .grants
            .values()
            .flatten()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        expires_at: task.expires_at as u64,
        delegation_depth: task.depth,
        parent_task_id: task.parent.clone(),
        on_behalf_of: task.obo.as_ref().map(Value::to_string),
        grants: task
            .grants
            .iter()
            .map(|(a, s)| (a.clone(), s.iter().cloned().collect()))
            .collect(),
    }
}
