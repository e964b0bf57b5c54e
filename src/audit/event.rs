//! What the broker records. One variant per `kind`; fields are plain data so a record can be
//! read back for state rebuild (revocations, use counts) and by operators with `jq`.
//!
//! No variant has a place for a token or a key: tokens are named by `jti`. As a second line of
//! defence, the screen (`screen.rs`) refuses any string that looks like a JWT or a PEM private
//! key, so a token pasted into free text (a task's purpose) cannot reach the log.

use serde::{Deserialize, Serialize};

/// Which kind of SVID was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SvidKind {
    X509,
    Jwt,
}

/// One audited event. Serialized as `"kind": "<snake_case variant>"` plus the fields.
/// Times are Unix seconds; ids are strings as they appear on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A caller was attested.
    Attestation {
        pid: i32,
        selectors: Vec<String>,
        /// SPIFFE IDs of the registration entries that matched (may be empty).
        spiffe_ids: Vec<String>,
    },
    /// Attestations of callers with no identity that were counted instead of written, for
    /// one uid (or, past the tracking bound, all further uids: `overflow`) over one window.
    /// The first such attestation per uid and window is written as an `attestation`.
    AttestationSummary {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        overflow: bool,
        suppressed: u64,
        window_start: u64,
        window_end: u64,
        /// A few distinct selector sets seen (bounded in count and bytes).
        selector_samples: Vec<Vec<String>>,
    },
    /// An X.509-SVID (by serial) or JWT-SVID (by jti) was issued on the Workload API.
    SvidIssued {
        spiffe_id: String,
        svid: SvidKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        audiences: Vec<String>,
        expires_at: u64,
        /// The caller it was handed to (absent in records of older versions, which recorded
        /// mints, not hand-outs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
    },
    /// A policy decision and the policies that made it.
    Decision {
        spiffe_id: String,
        /// The Cedar action (`OpenTask`, `MintTaskToken`, `Delegate`, `FetchJWTSVID`).
        action: String,
        audience: String,
        scopes: Vec<String>,
        ttl_seconds: u64,
        delegation_depth: u32,
        allowed: bool,
        policy_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        errors: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
    },
    /// A task was opened with this grant.
    TaskOpen {
        task_id: String,
        spiffe_id: String,
        purpose: String,
        audiences: Vec<String>,
        scopes: Vec<String>,
        expires_at: u64,
        delegation_depth: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_task_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<String>,
        /// Scopes granted per audience (the flat lists above are their union).
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        grants: std::collections::BTreeMap<String, Vec<String>>,
    },
    /// A task token was minted. Written (and synced) before the token is returned.
    TokenIssued {
        task_id: String,
        jti: String,
        spiffe_id: String,
        audience: String,
        scopes: Vec<String>,
        expires_at: u64,
        /// `Some(n)` for an n-use token, enforced by introspection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_uses: Option<u32>,
    },
    /// A limited-use token was used (counted at introspection); `uses` is the new total.
    TokenUsed {
        task_id: String,
        jti: String,
        by: String,
        uses: u32,
    },
    /// A task was closed by its owner, an admin, or by expiry.
    TaskClose {
        task_id: String,
        by: String,
        reason: String,
    },
    /// A task's tokens were revoked; `cause_task_id` names the ancestor whose close cascaded.
    Revocation {
        task_id: String,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause_task_id: Option<String>,
    },
    /// A relying party introspected a token.
    Introspection {
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        active: bool,
    },
    /// A request on the OAuth listener (token, introspection, revocation) and its outcome:
    /// `error` is the RFC 6749 code of a refusal, absent for a grant. A grant's task and
    /// token have their own `task_open` / `token_issued` records; this one adds the client,
    /// its assertion's `jti` and the grant type, and is the only record of most refusals.
    OauthRequest {
        endpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_type: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assertion_jti: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        /// The `jti` of the token issued, introspected or revoked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_jti: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_description: Option<String>,
    },
    /// The policy set was reloaded (or a reload was refused).
    PolicyReload {
        ok: bool,
        policy_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl AuditEvent {
    /// The record's `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::Attestation { .. } => "attestation",
            AuditEvent::AttestationSummary { .. } => "attestation_summary",
            AuditEvent::SvidIssued { .. } => "svid_issued",
            AuditEvent::Decision { .. } => "decision",
            AuditEvent::TaskOpen { .. } => "task_open",
            AuditEvent::TokenIssued { .. } => "token_issued",
            AuditEvent::TokenUsed { .. } => "token_used",
            AuditEvent::TaskClose { .. } => "task_close",
            AuditEvent::Revocation { .. } => "revocation",
            AuditEvent::Introspection { .. } => "introspection",
            AuditEvent::PolicyReload { .. } => "policy_reload",
            AuditEvent::OauthRequest { .. } => "oauth_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_serialized_tag() {
        let e = AuditEvent::TaskClose {
            task_id: "t".into(),
            by: "owner".into(),
            reason: "done".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], e.kind());
    }
}
