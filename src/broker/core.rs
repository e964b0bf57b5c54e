//! The broker's state and what every operation shares. Each operation lives in its own file
//! (`open`, `mint`, `close`, `introspect`, `admin`); every path that grants authority checks
//! the caller's attested identity, the task's state, the grant, and policy — in that order —
//! and writes its audit record (synced) before anything leaves.

use std::sync::{Arc, Mutex, MutexGuard};

use tonic::Status;

use super::oidc::OidcIssuers;
use super::settings::BrokerConfig;
use super::settings::CLOSED_TASK_RETENTION;
use super::table::TaskTable;
use crate::audit::{AuditEvent, AuditSink};
use crate::authority::Issuer;
use crate::clock::Clock;
use crate::policy::PolicyEngine;
use crate::telemetry::Metrics;

/// What a broker is made of. The audit sink is built first and shared: the broker writes
/// through it, never owns the only handle.
pub struct BrokerParts {
    pub config: BrokerConfig,
    pub issuer: Arc<dyn Issuer>,
    pub policy: Option<Arc<PolicyEngine>>,
    pub audit: Option<Arc<dyn AuditSink>>,
    pub oidc: OidcIssuers,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

pub struct Broker {
    pub(super) config: BrokerConfig,
    pub(super) issuer: Arc<dyn Issuer>,
    pub(super) policy: Option<Arc<PolicyEngine>>,
    pub(super) audit: Option<Arc<dyn AuditSink>>,
    pub(super) oidc: OidcIssuers,
    pub(super) table: Mutex<TaskTable>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: Arc<dyn Clock>,
}

impl Broker {
    pub fn new(parts: BrokerParts) -> Self {
        let BrokerParts {
            config,
            issuer,
            policy,
            audit,
            oidc,
            metrics,
            clock,
        } = parts;
        Self {
            config,
            issuer,
            policy,
            audit,
            oidc,
            table: Mutex::new(TaskTable::default()),
            metrics,
            clock,
        }
    }

    pub fn policy(&self) -> Option<&Arc<PolicyEngine>> {
        self.policy.as_ref()
    }

    /// Replaces the task table (state rebuilt from the audit log at start), then forgets
    /// what a running broker would have forgotten by now: the sweep's due tasks and
    /// expired tokens, and finished tasks beyond the table's bounds.
    pub fn restore(&self, mut table: TaskTable) {
        let now = self.clock.unix_seconds();
        table.sweep(now, CLOSED_TASK_RETENTION.as_secs() as i64);
        table.trim(&self.config.table_bounds(), now);
        *self.lock() = table;
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, TaskTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn policy_or_deny(&self) -> Result<&PolicyEngine, Status> {
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
    /// `InvalidArgument` when the record itself cannot be written (too large, a field too
    /// long): the request carried too much.
    pub async fn audit(&self, event: AuditEvent) -> Result<(), Status> {
        self.audit_all(vec![event]).await
    }

    /// Writes records in order and waits until all are on disk (usually one fsync).
    ///
    /// # Errors
    /// As [`Broker::audit`].
    pub async fn audit_all(&self, events: Vec<AuditEvent>) -> Result<(), Status> {
        // Nothing to write is no wait: a call that refused before deciding anything.
        let Some(log) = self.audit.as_ref().filter(|_| !events.is_empty()) else {
            return Ok(());
        };
        log.append_all(events).await.map_err(|e| {
            // Nothing was written: every record is checked before any is queued.
            if let Some(refusal) =
                crate::server::status::unrecordable(&e, "audiences, scopes or purpose")
            {
                tracing::warn!(error = %e, "request refused: its audit record cannot be written");
                return refusal;
            }
            tracing::error!(error = %e, "audit append failed; refusing the request");
            Status::unavailable(format!("audit log unavailable, nothing issued: {e}"))
        })
    }
}
