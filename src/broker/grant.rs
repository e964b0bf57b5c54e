//! The grant of a task: request ∩ policy ∩ parent. Policy decides each (audience, scope)
//! pair on its own, so a grant can be narrowed to exactly what is allowed, and every
//! narrowing says why.

use std::collections::BTreeSet;

use crate::audit::AuditEvent;
use crate::policy::{Action, Decision, PinnedPolicy, PolicyRequest, Principal};

use super::table::Grants;

/// The caller and the context shared by every decision of one OpenTask.
pub struct GrantContext<'a> {
    pub principal: Principal<'a>,
    pub purpose: &'a str,
    pub ttl_seconds: u64,
    pub delegation_depth: u32,
    pub issuance_rate: u32,
    pub on_behalf_of: &'a str,
}

/// What a parent task allows its children: its grants, cut down to the scopes its
/// delegation token carried.
pub struct ParentLimit<'a> {
    pub grants: &'a Grants,
    pub token_scopes: &'a BTreeSet<String>,
}

pub struct GrantOutcome {
    pub grants: Grants,
    pub narrowed: Vec<String>,
    /// One audit record per requested audience.
    pub decisions: Vec<AuditEvent>,
}

/// Every pair is decided by the one pinned policy version, so a reload in the middle of an
/// OpenTask cannot give a grant that neither version allows.
pub fn compute(
    policy: &PinnedPolicy<'_>,
    ctx: &GrantContext<'_>,
    audiences: &[String],
    scopes: &[String],
    parent: Option<&ParentLimit<'_>>,
) -> GrantOutcome {
    let mut grants = Grants::new();
    let mut narrowed = Vec::new();
    let mut decisions = Vec::new();
    let requested: BTreeSet<&String> = scopes.iter().collect();
    for audience in dedup(audiences) {
        let parent_scopes = match parent {
            Some(p) => match p.grants.get(audience) {
                Some(s) => Some(
                    s.intersection(p.token_scopes)
                        .cloned()
                        .collect::<BTreeSet<_>>(),
                ),
                None => {
                    narrowed.push(format!(
                        "audience {audience}: not in the parent task's grant"
                    ));
                    continue;
                }
            },
            None => None,
        };
        let mut allowed = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut errors = Vec::new();
        let mut decide = |scope_set: &[String]| -> Decision {
            let d = policy.decide(&PolicyRequest {
                principal: Principal { ..ctx.principal },
                action: Action::OpenTask,
                audience,
                purpose: ctx.purpose,
                scopes: scope_set,
                ttl_seconds: ctx.ttl_seconds,
                delegation_depth: ctx.delegation_depth,
                issuance_rate: ctx.issuance_rate,
                on_behalf_of: ctx.on_behalf_of,
            });
            ids.extend(d.policy_ids.iter().cloned());
            errors.extend(d.errors.iter().cloned());
            d
        };
        let granted_audience = if requested.is_empty() {
            decide(&[]).allowed
        } else {
            for scope in &requested {
                if let Some(ps) = &parent_scopes {
                    if !ps.contains(*scope) {
                        narrowed.push(format!(
                            "scope {scope} on {audience}: not delegated by the parent"
                        ));
                        continue;
                    }
                }
                let d = decide(std::slice::from_ref(*scope));
                if d.allowed {
                    allowed.insert((*scope).clone());
                } else {
                    narrowed.push(format!("scope {scope} on {audience}: {}", why(&d)));
                }
            }
            !allowed.is_empty()
        };
        if granted_audience {
            grants.insert(audience.clone(), allowed.clone());
        } else if requested.is_empty() {
            narrowed.push(format!("audience {audience}: denied by policy"));
        } else {
            narrowed.push(format!("audience {audience}: no requested scope allowed"));
        }
        decisions.push(AuditEvent::Decision {
            spiffe_id: ctx.principal.spiffe_id.to_string(),
            action: Action::OpenTask.as_str().to_string(),
            audience: audience.clone(),
            scopes: allowed.into_iter().collect(),
            ttl_seconds: ctx.ttl_seconds,
            delegation_depth: ctx.delegation_depth,
            allowed: granted_audience,
            policy_ids: ids.into_iter().collect(),
            errors: errors.into_iter().take(8).map(|e| truncate(&e)).collect(),
            task_id: None,
        });
    }
    GrantOutcome {
        grants,
        narrowed,
        decisions,
    }
}

/// A short reason for a denial: the deciding forbid policies, or default deny.
pub fn why(d: &Decision) -> String {
    if !d.errors.is_empty() {
        format!(
            "denied (policy evaluation error in {})",
            d.policy_ids.join(", ")
        )
    } else if d.policy_ids.is_empty() {
        "denied by policy (no permit matched; default deny)".to_string()
    } else {
        format!("denied by policy {}", d.policy_ids.join(", "))
    }
}

fn dedup(v: &[String]) -> Vec<&String> {
    let mut seen = BTreeSet::new();
    v.iter().filter(|a| seen.insert(*a)).collect()
}

fn truncate(s: &str) -> String {
    const MAX: usize = 512;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AudienceAttributes, PolicyEngine};

    const POLICY: &str = r#"
@id("read-search")
permit (principal, action == SvidBroker::Action::"OpenTask", resource == SvidBroker::Audience::"search")
when { ["read"].containsAll(context.scopes) };
"#;

    fn ctx<'a>(sels: &'a [String]) -> GrantContext<'a> {
        GrantContext {
            principal: Principal {
                spiffe_id: "spiffe://example.org/a",
                trust_domain: "example.org",
                selectors: sels,
            },
            purpose: "p",
            ttl_seconds: 60,
            delegation_depth: 0,
            issuance_rate: 0,
            on_behalf_of: "",
        }
    }

    #[test]
    fn narrows_to_what_policy_and_parent_allow() {
        let engine = PolicyEngine::from_text(POLICY, AudienceAttributes::default()).unwrap();
        let sels = vec![];
        let out = compute(
            &engine.pin(),
            &ctx(&sels),
            &["search".into(), "mail".into()],
            &["read".into(), "write".into()],
            None,
        );
        assert_eq!(out.grants.len(), 1);
        assert_eq!(out.grants["search"], BTreeSet::from(["read".to_string()]));
        assert!(out
            .narrowed
            .iter()
            .any(|n| n.contains("scope write on search")));
        assert!(out.narrowed.iter().any(|n| n.contains("audience mail")));
        assert_eq!(out.decisions.len(), 2);

        let parent_grants = Grants::from([("search".to_string(), BTreeSet::new())]);
        let token_scopes = BTreeSet::new();
        let limit = ParentLimit {
            grants: &parent_grants,
            token_scopes: &token_scopes,
        };
        let out = compute(
            &engine.pin(),
            &ctx(&sels),
            &["search".into()],
            &["read".into()],
            Some(&limit),
        );
        assert!(out.grants.is_empty(), "the parent did not delegate read");
    }
}
