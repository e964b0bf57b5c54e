//! What operators do beside revoking and listing: reload policy; and the periodic sweep.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use super::settings::CLOSED_TASK_RETENTION;
use super::Broker;
use crate::audit::AuditEvent;

impl Broker {
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
