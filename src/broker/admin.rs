//! What operators do beside revoking: list tasks, reload policy; and the periodic sweep.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::settings::CLOSED_TASK_RETENTION;
use super::table::TaskState;
use super::Broker;
use crate::audit::AuditEvent;
use crate::proto::svidbroker::v1 as pb;

impl Broker {
    /// Admin.ListTasks.
    pub fn list(&self, include_closed: bool) -> Vec<pb::TaskInfo> {
        let now = self.clock.unix_seconds();
        let table = self.lock();
        let mut out: Vec<pb::TaskInfo> = table
            .tasks()
            .filter(|t| include_closed || t.state(now) == TaskState::Open)
            .map(|t| pb::TaskInfo {
                task_id: t.id.clone(),
                spiffe_id: t.owner.to_string(),
                purpose: t.purpose.clone(),
                audiences: t.grants.keys().cloned().collect(),
                scopes: t.all_scopes(),
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
            self.lock().sweep(
                self.clock.unix_seconds(),
                CLOSED_TASK_RETENTION.as_secs() as i64,
            );
        }
    }
}
