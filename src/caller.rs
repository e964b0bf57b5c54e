//! Who called, once attestation has said so, and the errors of handing them an identity.
//!
//! These types sit low in the module tree: the issuers, the broker, the Workload API and the
//! connection layer all read a [`Caller`], so it imports nothing above the registry and the
//! selectors it is made of.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::attest::Selector;
use crate::registry::Identity;

/// The message SPIFFE clients match on.
pub const NO_IDENTITY: &str = "no identity issued";

/// Why an identity, SVID or token could not be handed out. Typed here; the gRPC layer turns
/// it into a status (`server::status`), so issuers never speak gRPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The caller holds no such identity. The message starts with [`NO_IDENTITY`].
    #[error("{0}")]
    NoIdentity(String),
    /// The issuer cannot serve now (an upstream agent is unreachable); retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A bound was reached (too many distinct workloads, say).
    #[error("{0}")]
    Exhausted(String),
    /// Signing or minting failed: a bug or broken key material, not the caller's doing.
    #[error("{0}")]
    Failed(String),
}

impl IssueError {
    /// "no identity issued", optionally with why.
    pub fn no_identity(detail: impl fmt::Display) -> Self {
        let detail = detail.to_string();
        if detail.is_empty() {
            Self::NoIdentity(NO_IDENTITY.to_string())
        } else {
            Self::NoIdentity(format!("{NO_IDENTITY}: {detail}"))
        }
    }
}

/// Identities that an issuer keeps current for a caller (SPIRE's per-selector subscription),
/// held as long as the caller is.
pub trait LiveIdentities: Send + Sync + fmt::Debug {
    /// The caller's identities now.
    ///
    /// # Errors
    /// Nothing valid to serve.
    fn identities(&self) -> Result<Vec<Identity>, IssueError>;

    /// Trust domain IDs the caller's SVIDs federate with.
    fn federates_with(&self) -> Arc<Vec<String>>;
}

/// Who called, as far as we have established.
#[derive(Debug)]
pub struct Caller {
    pub pid: i32,
    pub selectors: BTreeSet<Selector>,
    /// In registry order: the first is the default identity.
    pub identities: Vec<Identity>,
    /// Set when the issuer, not our registry, decides the caller's identities and keeps them
    /// current: entries added or removed upstream reach open streams.
    pub upstream: Option<Arc<dyn LiveIdentities>>,
    /// The X.509-SVIDs last recorded as handed to this caller.
    pub delivered: Delivered,
    /// `selectors` as text, made on first use: policy reads them on every OpenTask,
    /// MintTaskToken and JWT-SVID audience check of the connection, and they never change.
    pub selector_text: std::sync::OnceLock<Vec<String>>,
}

/// The record of the X.509-SVIDs last handed to a caller (one connection's attestation), by
/// their state (serials and bundle): every stream of the connection sends the same SVIDs, and
/// their records would say the same thing (which SVIDs, which process) once per stream —
/// 100,000 identical lines for 100,000 streams at each rotation. The first stream to send a
/// state writes its records; the others wait until those are on disk, then send. Holds one
/// state, the latest.
#[derive(Debug, Default)]
pub struct Delivered {
    last: std::sync::Mutex<Option<(Vec<String>, Arc<Written>)>>,
}

/// Set once some records are on disk; concurrent writers wait for the first.
pub type Written = tokio::sync::OnceCell<()>;

impl Delivered {
    /// Set once the records of handing out `state` are on disk: the same cell for the same
    /// state, until another state replaces it.
    pub fn cell(&self, state: &[String]) -> Arc<Written> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((s, cell)) if s.as_slice() == state => cell.clone(),
            _ => {
                let cell = Arc::new(Written::new());
                *last = Some((state.to_vec(), cell.clone()));
                cell
            }
        }
    }
}

impl Caller {
    /// The caller's identities as attested.
    ///
    /// # Errors
    /// [`IssueError::NoIdentity`] when the caller matched no entry.
    pub fn require_identities(&self) -> Result<&[Identity], IssueError> {
        if self.identities.is_empty() {
            Err(IssueError::no_identity(""))
        } else {
            Ok(&self.identities)
        }
    }

    /// The caller's identities now: as attested, or as the issuer last sent them.
    ///
    /// # Errors
    /// [`IssueError::NoIdentity`] when there are none; `Unavailable` when an upstream's SVIDs
    /// expired while it is unreachable.
    pub fn current_identities(&self) -> Result<Vec<Identity>, IssueError> {
        let identities = match &self.upstream {
            Some(live) => live.identities()?,
            None => self.identities.clone(),
        };
        if identities.is_empty() {
            return Err(IssueError::no_identity(""));
        }
        Ok(identities)
    }

    /// Trust domains the caller's SVIDs federate with (none unless an upstream says so).
    pub fn federates_with(&self) -> Arc<Vec<String>> {
        self.upstream
            .as_ref()
            .map(|l| l.federates_with())
            .unwrap_or_default()
    }

    /// The selectors as text (`unix:uid:1000`), sorted as `selectors` is.
    pub fn selector_strings(&self) -> &[String] {
        self.selector_text
            .get_or_init(|| self.selectors.iter().map(ToString::to_string).collect())
    }
}
