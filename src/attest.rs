//! Who is calling: the caller is pinned by pidfd at accept ([`peer`]), then each attestor
//! ([`unix`], and where configured `k8s`) turns the pinned process into selectors.

use std::future::Future;
use std::pin::Pin;

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
