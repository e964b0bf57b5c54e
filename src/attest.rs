//! Who is calling: the caller is pinned by pidfd at accept ([`peer`]), then each attestor
//! ([`unix`], and where configured `k8s`) turns the pinned process into selectors.

use std::future::Future;
use std::pin::Pin;

pub mod catalog;
pub mod k8s;
pub mod peer;
pub mod selector;
pub mod unix;

pub use selector::{Selector, SelectorError};

/// A boxed future, so attestors can be held as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an attestor could not describe a caller.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The pinned process exited (or its PID was reused) while we looked at it.
    #[error("caller process {pid} exited during attestation")]
    ProcessGone { pid: i32 },
    /// The attestor saw contradictory facts and refuses to guess (e.g. two container IDs).
    /// Maps to `FailedPrecondition`.
    #[error("{attestor} attestor refused: {reason}")]
    Refused {
        attestor: &'static str,
        reason: String,
    },
    /// The attestor could not finish (I/O, kubelet unreachable, timeout). Maps to `Unavailable`.
    #[error("{attestor} attestor failed: {reason}")]
    Failed {
        attestor: &'static str,
        reason: String,
    },
}

/// A source of selectors for a process. Implementations read only what they need and must
/// bound their own time and memory.
pub trait WorkloadAttestor: Send + Sync {
    /// Short name used in logs and in selector kinds (`unix`, `k8s`).
    fn name(&self) -> &'static str;

    /// Selectors for the process `pid`. A process the attestor does not apply to (not in a
    /// container, for `k8s`) yields `Ok(vec![])`, not an error.
    fn attest(&self, pid: i32) -> BoxFuture<'_, Result<Vec<Selector>, AttestError>>;
}

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use peer::PinnedProcess;

/// What the attestors found out about one pinned process.
#[derive(Debug, Clone)]
pub struct Attestation {
    pub pid: i32,
    pub selectors: BTreeSet<Selector>,
    /// Attestors that failed while others succeeded: logged, and shown by `debug selectors`.
    pub failures: Vec<String>,
    pub elapsed: std::time::Duration,
}

/// Every configured attestor, run together; their selectors are united.
#[derive(Clone)]
pub struct Attestors {
    attestors: Vec<Arc<dyn WorkloadAttestor>>,
}

impl Attestors {
    pub fn new(attestors: Vec<Arc<dyn WorkloadAttestor>>) -> Self {
        Self { attestors }
    }

    /// Runs every attestor on the pinned process, then confirms the process is still the one
    /// pinned: a PID recycled meanwhile yields `ProcessGone`, never someone else's selectors.
    ///
    /// # Errors
    /// The process is gone, an attestor refused, or every attestor failed.
    pub async fn attest(&self, process: &PinnedProcess) -> Result<Attestation, AttestError> {
        let attestation = self.run(process.pid(), true).await?;
        if !process.is_alive() {
            return Err(AttestError::ProcessGone { pid: process.pid() });
        }
        Ok(attestation)
    }

    /// Runs the attestors on a PID without pinning it. Only for diagnostics (`debug
    /// selectors` on a fake proc root): nothing issued may rest on an unpinned attestation.
    ///
    /// A process an attestor cannot find is that attestor's failure here (a fake proc root may
    /// hold only what one attestor reads), not the end of the run.
    ///
    /// # Errors
    /// An attestor refused, or every attestor failed.
    pub async fn attest_pid(&self, pid: i32) -> Result<Attestation, AttestError> {
        self.run(pid, false).await
    }

    /// `gone_is_fatal`: for a pinned caller, any attestor seeing the process gone ends the
    /// attestation.
    async fn run(&self, pid: i32, gone_is_fatal: bool) -> Result<Attestation, AttestError> {
        let started = Instant::now();
        let results = futures::future::join_all(self.attestors.iter().map(|a| a.attest(pid))).await;
        let mut selectors = BTreeSet::new();
        let mut failures = Vec::new();
        let mut last_error = None;
        for (attestor, result) in self.attestors.iter().zip(results) {
            match result {
                Ok(found) => selectors.extend(found),
                Err(e @ AttestError::Refused { .. }) => return Err(e),
                Err(e @ AttestError::ProcessGone { .. }) if gone_is_fatal => return Err(e),
                Err(e) => {
                    tracing::warn!(attestor = attestor.name(), pid, error = %e, "attestor failed; using the others' selectors");
                    failures.push(e.to_string());
                    last_error = Some(e);
                }
            }
        }
        if selectors.is_empty() {
            if let Some(e) = last_error {
                return Err(e);
            }
        }
        Ok(Attestation {
            pid,
            selectors,
            failures,
            elapsed: started.elapsed(),
        })
    }
}
