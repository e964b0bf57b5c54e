//! Request-time authorization in Cedar, default deny.
//!
//! The schema ([`SCHEMA`], `src/policy/schema.cedarschema`) fixes the vocabulary: principal
//! `SvidBroker::Workload` (id = SPIFFE ID), resource `SvidBroker::Audience` (id = audience),
//! actions `OpenTask`, `MintTaskToken`, `Delegate`, `FetchJWTSVID`, and a context of purpose,
//! scopes, TTL, delegation depth, issuance rate and on-behalf-of subject.
//!
//! A policy set is published only whole: text is size-bounded, parsed, re-keyed to each
//! policy's `@id`, validated in strict mode, and then swapped in as one `Arc`. A request holds
//! the `Arc` it started with, so it never sees a half-loaded set, and a broken file on reload
//! leaves the old set in force.
//!
//! Any evaluation error denies: Cedar skips a policy that errors, and a skipped `forbid` would
//! otherwise let the request through.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use cedar_policy::{Authorizer, PolicySet, Request, Schema, Validator};

mod entities;
mod loader;
mod nesting;
mod readers;
#[cfg(test)]
mod tests;

/// The policy of the development profile: any workload of the trust domain may open tasks,
/// mint tokens and delegate, for any audience and scope, within the broker's TTL bounds.
pub const DEVELOPMENT_POLICY: &str = include_str!("policy/development.cedar");

pub use entities::{AudienceAttributes, AudienceInfo, NAMESPACE};
pub use nesting::MAX_POLICY_NESTING;

/// The schema every policy set is validated against.
pub const SCHEMA: &str = include_str!("policy/schema.cedarschema");

/// Largest policy file (or text) accepted. Real sets are a few KiB; the bound keeps a
/// mistaken path (a log file, a binary) from being read whole.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// Longest `@id` accepted; ids are copied into every audit record of a decision.
pub const MAX_POLICY_ID_BYTES: usize = 128;

/// Backstop bounds on what a caller passes in. The broker bounds request fields far below
/// these; a request over them is denied with an error rather than evaluated.
pub const MAX_REQUEST_SELECTORS: usize = 1024;
pub const MAX_REQUEST_SCOPES: usize = 1024;

/// What the caller wants to do; the Cedar action of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    OpenTask = 0,
    MintTaskToken = 1,
    Delegate = 2,
    FetchJwtSvid = 3,
}

impl Action {
    /// The action's id in the schema (`SvidBroker::Action::"<this>"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::OpenTask => "OpenTask",
            Action::MintTaskToken => "MintTaskToken",
            Action::Delegate => "Delegate",
            Action::FetchJwtSvid => "FetchJWTSVID",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attested caller.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    pub spiffe_id: &'a str,
    pub trust_domain: &'a str,
    /// `kind:type:value` strings, e.g. `unix:uid:1000`.
    pub selectors: &'a [String],
}

/// One question to the policy. See the schema for what each field means per action.
#[derive(Clone, Copy, Debug)]
pub struct PolicyRequest<'a> {
    pub principal: Principal<'a>,
    pub action: Action,
    pub audience: &'a str,
    pub purpose: &'a str,
    pub scopes: &'a [String],
    pub ttl_seconds: u64,
    pub delegation_depth: u32,
    pub issuance_rate: u32,
    /// The subject acted for, `""` if none.
    pub on_behalf_of: &'a str,
}

/// The answer, with what an audit record needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The `@id`s of the policies that decided: the permits that allowed, the forbids that
    /// denied, or the policies whose evaluation failed. Empty for a default deny.
    pub policy_ids: Vec<String>,
    /// Evaluation or request-building errors. Non-empty implies `allowed == false`.
    pub errors: Vec<String>,
}

impl Decision {
    fn error(message: String) -> Self {
        Self {
            allowed: false,
            policy_ids: Vec::new(),
            errors: vec![message],
        }
    }
}

/// Problems Cedar reported, one per line, each with its line and column where Cedar gives one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<String>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  {d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file, or a directory above it, could be changed by another user.
    #[error(transparent)]
    Untrusted(#[from] crate::fs_trust::TrustError),
    #[error("{path} is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("policy text is over {MAX_POLICY_BYTES} bytes (read {size})")]
    TooLarge { size: usize },
    #[error(
        "policy nests deeper than {MAX_POLICY_NESTING} levels at line {line}, column {column} \
         (brackets, `if` and chains of `.`, arithmetic and comparisons count; `&&`, `||` and \
         commas do not): split the condition or use `&&` / `||`"
    )]
    TooDeep { line: usize, column: usize },
    #[error("policy does not parse:\n{0}")]
    Parse(Diagnostics),
    #[error("policy does not validate against the schema:\n{0}")]
    Invalid(Diagnostics),
    #[error("policy {0} is a template; only static policies are supported")]
    Template(String),
    #[error("two policies have the id {0:?}; each @id must be unique")]
    DuplicateId(String),
    #[error("@id {id:?} {reason} (ids are at most {MAX_POLICY_ID_BYTES} printable bytes)")]
    BadId { id: String, reason: &'static str },
    #[error("audience {audience:?} in config: {reason}")]
    Audience { audience: String, reason: String },
    #[error("built-in schema: {0}")]
    Schema(String),
    #[error("this policy engine was built from text, so there is no file to reload")]
    NoFile,
}

/// Result of checking a policy file without loading it into an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyCheck {
    /// Policy ids in source order.
    pub ids: Vec<String>,
    /// Non-fatal findings, e.g. a policy with no `@id`.
    pub warnings: Vec<String>,
}

/// A fully validated set, published as one unit.
struct Snapshot {
    policies: PolicySet,
    ids: Vec<String>,
    /// Whether a policy may read `principal.selectors` ([`readers::reads_selectors`]).
    reads_selectors: bool,
}

impl Snapshot {
    fn new(set: PolicySet, ids: Vec<String>) -> Self {
        let reads_selectors = readers::reads_selectors(&set);
        if reads_selectors {
            // Operators see why callers in supplementary groups cost more per call.
            tracing::info!(
                "the policy reads principal.selectors: a caller with supplementary groups has \
                 them re-read on each call (see deploy/policy/README.md)"
            );
        }
        Self {
            reads_selectors,
            policies: set,
            ids,
        }
    }
}

/// Decides [`PolicyRequest`]s against the current policy set; reloadable.
pub struct PolicyEngine {
    path: Option<PathBuf>,
    validator: Validator,
    authorizer: Authorizer,
    vocabulary: entities::Vocabulary,
    current: RwLock<Arc<Snapshot>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("path", &self.path)
            .field("policy_ids", &self.policy_ids())
            .finish_non_exhaustive()
    }
}

/// Parses and validates a policy file against the schema, without an engine.
///
/// # Errors
/// The file cannot be read, is over [`MAX_POLICY_BYTES`], does not parse, has a bad or
/// duplicate `@id`, is a template, or does not validate (strict mode).
pub fn check_file(path: &Path) -> Result<PolicyCheck, PolicyError> {
    let text = loader::read_file(path)?;
    let checked = loader::check(&text, &Validator::new(parse_schema()?))?;
    Ok(PolicyCheck {
        ids: checked.ids,
        warnings: checked.warnings,
    })
}

fn parse_schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Schema(e.to_string()))
}

impl PolicyEngine {
    /// Loads the policy file at `path`; [`reload`](Self::reload) re-reads the same path.
    ///
    /// # Errors
    /// As [`check_file`], or an audience in `audiences` whose attributes do not fit the schema.
    pub fn load(path: &Path, audiences: AudienceAttributes) -> Result<Self, PolicyError> {
        let text = loader::read_trusted_file(path)?;
        Self::build(Some(path.to_path_buf()), &text, &audiences)
    }

    /// Builds an engine from policy text (tests, embedded defaults). It cannot be reloaded.
    ///
    /// # Errors
    /// As [`load`](Self::load), minus file errors.
    pub fn from_text(text: &str, audiences: AudienceAttributes) -> Result<Self, PolicyError> {
        Self::build(None, text, &audiences)
    }

    fn build(
        path: Option<PathBuf>,
        text: &str,
        audiences: &AudienceAttributes,
    ) -> Result<Self, PolicyError> {
        let schema = parse_schema()?;
        let validator = Validator::new(schema.clone());
        let vocabulary = entities::Vocabulary::new(&schema, audiences)?;
        let checked = loader::check(text, &validator)?;
        log_warnings(&checked.warnings);
        Ok(Self {
            path,
            validator,
            authorizer: Authorizer::new(),
            vocabulary,
            current: RwLock::new(Arc::new(Snapshot::new(checked.set, checked.ids))),
        })
    }

    /// Re-reads the policy file and, if it is entirely valid, swaps it in.
    ///
    /// # Errors
    /// [`PolicyError::NoFile`] for an engine built from text; otherwise as [`check_file`].
    /// On any error the previous set stays in force.
    pub fn reload(&self) -> Result<Vec<String>, PolicyError> {
        let path = self.path.as_deref().ok_or(PolicyError::NoFile)?;
        let text = loader::read_trusted_file(path)?;
        self.replace(&text)
    }

    /// Validates `text` and swaps it in whole; on error the old set stays.
    fn replace(&self, text: &str) -> Result<Vec<String>, PolicyError> {
        let checked = loader::check(text, &self.validator)?;
        log_warnings(&checked.warnings);
        let ids = checked.ids.clone();
        let next = Arc::new(Snapshot::new(checked.set, checked.ids));
        // A panic elsewhere while holding the lock cannot leave a half-written Arc, so a
        // poisoned lock is still safe to use.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(ids)
    }

    /// Ids of the policies in force, in source order.
    pub fn policy_ids(&self) -> Vec<String> {
        self.snapshot().ids.clone()
    }

    /// Whether a policy in force may read the principal's selectors. The connection layer
    /// reads a caller's groups on each call only while something may: see
    /// `server::caller`.
    pub fn reads_selectors(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .reads_selectors
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The policy set in force now, held for several decisions that must all come from the
    /// same version (one OpenTask decides many (audience, scope) pairs; a reload between
    /// them must not give a grant that neither version allows).
    pub fn pin(&self) -> PinnedPolicy<'_> {
        PinnedPolicy {
            engine: self,
            snapshot: self.snapshot(),
        }
    }

    /// Decides one request. Default deny; any error (building the request or evaluating a
    /// policy) denies and is reported in [`Decision::errors`].
    pub fn decide(&self, req: &PolicyRequest<'_>) -> Decision {
        self.decide_with(&self.snapshot(), req)
    }

    fn decide_with(&self, snapshot: &Snapshot, req: &PolicyRequest<'_>) -> Decision {
        if req.principal.selectors.len() > MAX_REQUEST_SELECTORS {
            return Decision::error(format!(
                "{} selectors; the limit is {MAX_REQUEST_SELECTORS}",
                req.principal.selectors.len()
            ));
        }
        if req.scopes.len() > MAX_REQUEST_SCOPES {
            return Decision::error(format!(
                "{} scopes; the limit is {MAX_REQUEST_SCOPES}",
                req.scopes.len()
            ));
        }
        let request = match self.request(req) {
            Ok(r) => r,
            Err(e) => return Decision::error(e),
        };
        let entities = match self.vocabulary.entities(req) {
            Ok(e) => e,
            Err(e) => return Decision::error(e),
        };
        let response = self
            .authorizer
            .is_authorized(&request, &snapshot.policies, &entities);
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        if !errors.is_empty() {
            let mut failed: Vec<String> = diagnostics
                .errors()
                .map(|e| match e {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        e.policy_id().to_string()
                    }
                })
                .collect();
            failed.sort();
            failed.dedup();
            return Decision {
                allowed: false,
                policy_ids: failed,
                errors,
            };
        }
        let mut policy_ids: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
        policy_ids.sort();
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            policy_ids,
            errors,
        }
    }

    /// The Cedar request. It is not checked against the schema here: that check cost more
    /// than the decision itself, and what it checks (context types, principal and resource
    /// types per action) depends only on this module's code, so a unit test checks every
    /// action's request once (`every_action_request_fits_the_schema`).
    fn request(&self, req: &PolicyRequest<'_>) -> Result<Request, String> {
        self.request_checked(req, None)
    }

    fn request_checked(
        &self,
        req: &PolicyRequest<'_>,
        schema: Option<&Schema>,
    ) -> Result<Request, String> {
        let v = &self.vocabulary;
        Request::new(
            v.principal_uid(req.principal.spiffe_id),
            v.action_uid(req.action).clone(),
            v.resource_uid(req.audience),
            entities::context(req)?,
            schema,
        )
        .map_err(|e| e.to_string())
    }

    /// The request of `req` checked against the schema, as every request was before
    /// [`Self::request`] stopped checking: for tests.
    #[cfg(test)]
    pub(crate) fn check_request_against_schema(
        &self,
        req: &PolicyRequest<'_>,
    ) -> Result<(), String> {
        let schema = parse_schema().map_err(|e| e.to_string())?;
        self.request_checked(req, Some(&schema)).map(drop)
    }
}

/// One version of the policy set, pinned by [`PolicyEngine::pin`].
pub struct PinnedPolicy<'a> {
    engine: &'a PolicyEngine,
    snapshot: Arc<Snapshot>,
}

impl PinnedPolicy<'_> {
    /// As [`PolicyEngine::decide`], against the pinned version.
    pub fn decide(&self, req: &PolicyRequest<'_>) -> Decision {
        self.engine.decide_with(&self.snapshot, req)
    }
}

fn log_warnings(warnings: &[String]) {
    for w in warnings {
        tracing::warn!(warning = %w, "policy");
    }
}
