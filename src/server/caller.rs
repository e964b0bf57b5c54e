//! Resolving the caller of a request to its identities: attest once per connection, then on
//! each call confirm cheaply (a pidfd poll and two stats) that the same program still runs
//! as the same user; anything else re-attests.

use std::sync::Arc;

use tokio::sync::Mutex;
use tonic::{Request, Status};

use crate::attest::peer::{PinnedProcess, ProcessFingerprint};
use crate::attest::{AttestError, Attestation, Attestors};
use crate::audit::{AuditEvent, AuditLog};
use crate::authority::Issuer;
use crate::registry::Registry;
use crate::telemetry::Metrics;

pub use crate::caller::{Caller, NO_IDENTITY};

/// Per-connection state, in the request extensions.
pub struct CallerHandle {
    pinned: Result<PinnedProcess, String>,
    known: Mutex<Option<(ProcessFingerprint, Arc<Caller>)>>,
}

impl CallerHandle {
    pub fn new(pinned: std::io::Result<PinnedProcess>) -> Self {
        Self {
            pinned: pinned.map_err(|e| e.to_string()),
            known: Mutex::new(None),
        }
    }

    pub fn pinned(&self) -> Option<&PinnedProcess> {
        self.pinned.as_ref().ok()
    }
}

/// Turns connections into callers.
pub struct CallerResolver {
    attestors: Attestors,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Asked first which identities a caller holds; the registry decides when it defers.
    issuer: Arc<dyn Issuer>,
    audit: Option<AuditLog>,
}

impl CallerResolver {
    /// Records every attestation in `audit` when there is one.
    pub fn new(
        attestors: Attestors,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        issuer: Arc<dyn Issuer>,
        audit: Option<AuditLog>,
    ) -> Self {
        Self {
            attestors,
            registry,
            metrics,
            issuer,
            audit,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The caller of `req`.
    ///
    /// # Errors
    /// `Unavailable` when the caller cannot be pinned or attested (retryable),
    /// `FailedPrecondition` when an attestor refuses to guess.
    pub async fn resolve<T>(&self, req: &Request<T>) -> Result<Arc<Caller>, Status> {
        let handle = req
            .extensions()
            .get::<Arc<CallerHandle>>()
            .ok_or_else(|| Status::unavailable("caller unknown: not a Unix socket connection"))?;
        self.resolve_handle(handle).await
    }

    /// # Errors
    /// As [`CallerResolver::resolve`].
    pub async fn resolve_handle(&self, handle: &CallerHandle) -> Result<Arc<Caller>, Status> {
        let checking = std::time::Instant::now();
        let process = handle
            .pinned
            .as_ref()
            .map_err(|e| Status::unavailable(format!("cannot identify caller: {e}")))?;
        if !process.is_alive() {
            return Err(Status::unavailable("caller process has exited"));
        }
        let mut known = handle.known.lock().await;
        let before = process.fingerprint().map_err(|_| gone(process.pid()))?;
        if let Some((fp, caller)) = known.as_ref() {
            if *fp == before {
                self.metrics.observe_recheck(checking.elapsed());
                return Ok(caller.clone());
            }
            tracing::info!(
                pid = process.pid(),
                "caller changed program or owner; attesting again"
            );
        }
        let attestation = self
            .attestors
            .attest(process)
            .await
            .map_err(attest_status)?;
        // The fingerprint taken before attesting must still hold after it: otherwise the
        // process exec'd or changed owner while we read it, and the selectors may be mixed.
        let after = process.fingerprint().map_err(|_| gone(process.pid()))?;
        if after != before || !process.is_alive() {
            return Err(Status::unavailable(
                "caller changed during attestation; retry",
            ));
        }
        self.metrics.observe_attestation(attestation.elapsed);
        let upstream = self.issuer.identities_for(&attestation.selectors).await?;
        let caller = Arc::new(match upstream {
            None => self.caller_from(attestation),
            Some((identities, live)) => Caller {
                pid: attestation.pid,
                selectors: attestation.selectors,
                identities,
                upstream: Some(live),
            },
        });
        if let Some(log) = &self.audit {
            // Once per connection, so waiting for the disk costs nothing on later calls. A
            // caller with no identity is recorded once per uid and window, then counted.
            let event = AuditEvent::Attestation {
                pid: caller.pid,
                selectors: caller.selector_strings(),
                spiffe_ids: caller
                    .identities
                    .iter()
                    .map(|i| i.spiffe_id.to_string())
                    .collect(),
            };
            log.append_attestation(process.uid(), event)
                .await
                .map_err(|e| Status::unavailable(format!("audit log unavailable: {e}")))?;
        }
        tracing::debug!(
            pid = caller.pid,
            pin = process.method().as_str(),
            identities = caller.identities.len(),
            "caller attested"
        );
        *known = Some((after, caller.clone()));
        Ok(caller)
    }

    pub fn caller_from(&self, attestation: Attestation) -> Caller {
        let identities = self.registry.identities(&attestation.selectors);
        Caller {
            pid: attestation.pid,
            selectors: attestation.selectors,
            identities,
            upstream: None,
        }
    }
}

fn gone(pid: i32) -> Status {
    attest_status(AttestError::ProcessGone { pid })
}

fn attest_status(e: AttestError) -> Status {
    match e {
        AttestError::Refused { .. } => Status::failed_precondition(e.to_string()),
        AttestError::ProcessGone { .. } | AttestError::Failed { .. } => {
            Status::unavailable(format!("attestation failed: {e}"))
        }
    }
}
