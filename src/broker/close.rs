//! CloseTask and Admin.RevokeTask: a task and its subtree close together, revoking their
//! tokens.

use tonic::Status;

use super::limits;
use super::who::Who;
use super::Broker;
use crate::audit::AuditEvent;
use crate::proto::svidbroker::v1 as pb;

impl Broker {
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
            let revoked = table.live_tokens_of(&closed, self.clock.unix_seconds());
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
}
