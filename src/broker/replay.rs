//! Rebuilds the task table from the audit log at start, so a restart forgets no task, no
//! revocation and no use count.

use std::collections::BTreeSet;

use serde_json::Value;

use super::table::{Grants, Task, TaskTable, TokenState};
use crate::audit::{AuditEvent, AuditRecord};

/// Replays records in order.
pub fn rebuild(records: &[AuditRecord]) -> TaskTable {
    let mut table = TaskTable::default();
    let mut skipped = 0usize;
    for record in records {
        match &record.event {
            AuditEvent::TaskOpen {
                task_id,
                spiffe_id,
                purpose,
                audiences,
                scopes,
                expires_at,
                delegation_depth,
                parent_task_id,
                on_behalf_of,
                grants,
            } => {
                let Ok(owner) = crate::spiffe_id::parse(spiffe_id) else {
                    skipped += 1;
                    continue;
                };
                let grants: Grants = if grants.is_empty() {
                    // Records without per-audience grants: every scope on every audience.
                    let all: BTreeSet<String> = scopes.iter().cloned().collect();
                    audiences.iter().map(|a| (a.clone(), all.clone())).collect()
                } else {
                    grants
                        .iter()
                        .map(|(a, s)| (a.clone(), s.iter().cloned().collect()))
                        .collect()
                };
                let created_at = chrono_seconds(&record.ts);
                table.insert_unchecked(Task {
                    id: task_id.clone(),
                    owner,
                    purpose: purpose.clone(),
                    grants,
                    created_at,
                    expires_at: *expires_at as i64,
                    parent: parent_task_id.clone(),
                    depth: *delegation_depth,
                    children: Vec::new(),
                    closed_at: None,
                    tokens_issued: 0,
                    obo: on_behalf_of
                        .as_deref()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok()),
                });
            }
            AuditEvent::TokenIssued {
                task_id,
                jti,
                expires_at,
                max_uses,
                ..
            } => table.restore_token(
                jti.clone(),
                TokenState {
                    task_id: task_id.clone(),
                    exp: *expires_at as i64,
                    max_uses: max_uses.unwrap_or(0),
                    uses: 0,
                    digest: None,
                },
            ),
            AuditEvent::TokenUsed { jti, uses, .. } => table.set_uses(jti, *uses),
            AuditEvent::TaskClose { task_id, .. } | AuditEvent::Revocation { task_id, .. } => {
                table.close(task_id, chrono_seconds(&record.ts));
            }
            _ => {}
        }
    }
    if skipped > 0 {
        tracing::warn!(skipped, "audit records that could not be replayed");
    }
    table
}

/// Unix seconds of an RFC 3339 UTC timestamp (`2026-11-28T14:05:32Z` or with fractions);
/// 0 when it cannot be read (only used for listing).
fn chrono_seconds(ts: &str) -> i64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or(0)
}
