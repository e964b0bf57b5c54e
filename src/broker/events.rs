//! The audit records the broker's operations write.

use serde_json::Value;

use super::table::Task;
use crate::audit::AuditEvent;
use crate::policy::Action;

#[allow(clippy::too_many_arguments)]
pub(super) fn decision_event(
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

pub(super) fn task_open_event(task: &Task) -> AuditEvent {
    AuditEvent::TaskOpen {
        task_id: task.id.clone(),
        spiffe_id: task.owner.to_string(),
        purpose: task.purpose.clone(),
        audiences: task.grants.keys().cloned().collect(),
        scopes: task.all_scopes(),
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
