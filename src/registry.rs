//! Registration entries: which selectors earn which SPIFFE ID, with what lifetimes.
//!
//! An entry matches when every one of its selectors was observed. A SPIFFE ID may hold
//! placeholders such as `{unix:uid}` or `{k8s:ns}`, filled from the caller's selector of that
//! type: one entry can then serve many workloads (the development profile uses this).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use spiffe::{SpiffeId, TrustDomain};

use crate::attest::{catalog, Selector};

/// X.509-SVID lifetime of an entry that names none.
pub const DEFAULT_X509_TTL: Duration = Duration::from_secs(3600);
/// JWT-SVID lifetime of an entry that names none.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Most entries a config may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// Most selectors one entry may list.
pub const MAX_SELECTORS_PER_ENTRY: usize = 64;
/// Longest hint (SPIFFE Workload API limit).
pub const MAX_HINT_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `index` counts `[[entry]]` tables from 0, in file order.
    #[error("[[entry]] {index} (spiffe_id {spiffe_id:?}): {reason}")]
    Invalid {
        index: usize,
        spiffe_id: String,
        reason: String,
    },
    #[error("{0} entries; the limit is {MAX_ENTRIES}")]
    TooMany(usize),
}

/// `[[entry]]` as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryConfig {
    pub spiffe_id: String,
    #[serde(default)]
    pub selectors: Vec<String>,
    #[serde(default, with = "humantime_serde::option")]
    pub x509_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub jwt_ttl: Option<Duration>,
    #[serde(default)]
    pub hint: String,
}

#[derive(Clone, Debug)]
struct Entry {
    template: IdTemplate,
    selectors: Vec<Selector>,
    x509_ttl: Duration,
    jwt_ttl: Duration,
    hint: String,
}

/// A SPIFFE ID with `{kind:type}` placeholders, split into literal text and selector types.
#[derive(Clone, Debug)]
struct IdTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Clone, Debug)]
enum TemplatePart {
    Literal(String),
    /// e.g. kind `unix`, type `uid`.
    Placeholder {
        kind: String,
        ty: String,
    },
}

/// An identity a caller holds, resolved from an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub spiffe_id: SpiffeId,
    pub x509_ttl: Duration,
    pub jwt_ttl: Duration,
    pub hint: String,
}

/// Why an entry did or did not match, for `debug selectors`.
#[derive(Debug)]
pub struct EntryExplanation {
    pub spiffe_id: String,
    /// Selectors the entry needs that the caller does not have (empty: matched).
    pub missing: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Registry {
    trust_domain: TrustDomain,
    entries: Vec<Entry>,
}

impl Registry {
    /// # Errors
    /// Invalid SPIFFE IDs, selectors, hints or an entry with neither selectors nor
    /// placeholders (it would match every process on the machine).
    pub fn new(trust_domain: &TrustDomain, raw: Vec<EntryConfig>) -> Result<Self, RegistryError> {
        if raw.len() > MAX_ENTRIES {
            return Err(RegistryError::TooMany(raw.len()));
        }
        let mut entries = Vec::with_capacity(raw.len());
        for (index, e) in raw.into_iter().enumerate() {
            let spiffe_id = e.spiffe_id.clone();
            let invalid = |reason: String| RegistryError::Invalid {
                index,
                spiffe_id: spiffe_id.clone(),
                reason,
            };
            if e.selectors.len() > MAX_SELECTORS_PER_ENTRY {
                return Err(invalid(format!(
                    "{} selectors; the limit is {MAX_SELECTORS_PER_ENTRY}",
                    e.selectors.len()
                )));
            }
            let selectors = e
                .selectors
                .iter()
                .map(|s| catalog::parse_registered(s).map_err(|err| invalid(err.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let template = IdTemplate::parse(&e.spiffe_id).map_err(invalid)?;
            if selectors.is_empty() && !template.has_placeholders() {
                return Err(invalid(format!(
                    "{} has no selectors: it would match every process",
                    e.spiffe_id
                )));
            }
            // Validate the shape with a sample value in each placeholder.
            let sample = template.render(|_, _| Some("x".to_string()));
            let id = sample
                .as_deref()
                .map(crate::spiffe_id::parse)
                .transpose()
                .map_err(|err| invalid(format!("spiffe_id {:?}: {err}", e.spiffe_id)))?
                .ok_or_else(|| invalid("empty spiffe_id".into()))?;
            if !id.is_member_of(trust_domain) {
                return Err(invalid(format!(
                    "spiffe_id {} is not in trust domain {trust_domain}",
                    e.spiffe_id
                )));
            }
            if id.path().is_empty() {
                return Err(invalid(
                    "spiffe_id needs a path; the bare trust domain is the CA's".into(),
                ));
            }
            if e.hint.len() > MAX_HINT_LEN {
                return Err(invalid(format!("hint longer than {MAX_HINT_LEN} bytes")));
            }
            entries.push(Entry {
                template,
                selectors,
                x509_ttl: e.x509_ttl.unwrap_or(DEFAULT_X509_TTL),
                jwt_ttl: e.jwt_ttl.unwrap_or(DEFAULT_JWT_TTL),
                hint: e.hint,
            });
        }
        Ok(Self {
            trust_domain: trust_domain.clone(),
            entries,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// True when some entry needs `unix:sha256`, so the attestor must hash executables.
    pub fn wants_sha256(&self) -> bool {
        self.entries.iter().any(|e| {
            e.selectors
                .iter()
                .any(|s| s.kind() == "unix" && s.type_name() == "sha256")
        })
    }

    /// The identities the caller holds, in config order (the first is the default). An ID
    /// reached by two entries appears once; hints stay unique by dropping repeats.
    pub fn identities(&self, observed: &BTreeSet<Selector>) -> Vec<Identity> {
        let mut out: Vec<Identity> = Vec::new();
        for entry in &self.entries {
            if !entry.selectors.iter().all(|s| observed.contains(s)) {
                continue;
            }
            let Some(id) = entry.resolve(observed) else {
                continue;
            };
            if out.iter().any(|i| i.spiffe_id == id) {
                continue;
            }
            let hint = if !entry.hint.is_empty() && out.iter().any(|i| i.hint == entry.hint) {
                String::new()
            } else {
                entry.hint.clone()
            };
            out.push(Identity {
                spiffe_id: id,
                x509_ttl: entry.x509_ttl,
                jwt_ttl: entry.jwt_ttl,
                hint,
            });
        }
        out
    }

    /// Whether an entry that `observed` satisfies names a selector type `reads` picks, among
    /// its selectors or its ID's placeholders. When none does, a caller that loses any of
    /// those selectors keeps exactly the identities it has: matching is by subset, so it
    /// still satisfies the same entries, and their IDs are filled from the same values.
    pub fn matched_entries_read(
        &self,
        observed: &BTreeSet<Selector>,
        reads: impl Fn(&str, &str) -> bool,
    ) -> bool {
        self.entries
            .iter()
            .filter(|entry| entry.selectors.iter().all(|s| observed.contains(s)))
            .any(|entry| {
                entry
                    .selectors
                    .iter()
                    .any(|s| reads(s.kind(), s.type_name()))
                    || entry.template.placeholders().any(|(k, t)| reads(k, t))
            })
    }

    /// The first entry that names `id` without placeholders: its identity and selectors.
    /// For callers proven by a JWT-SVID rather than attested (the OAuth listener).
    pub fn entry_for_id(&self, id: &SpiffeId) -> Option<(Identity, BTreeSet<Selector>)> {
        self.entries.iter().find_map(|entry| {
            if entry.template.has_placeholders() {
                return None;
            }
            let text = entry.template.render(|_, _| None)?;
            (crate::spiffe_id::parse(&text).ok()? == *id).then(|| {
                (
                    Identity {
                        spiffe_id: id.clone(),
                        x509_ttl: entry.x509_ttl,
                        jwt_ttl: entry.jwt_ttl,
                        hint: entry.hint.clone(),
                    },
                    entry.selectors.iter().cloned().collect(),
                )
            })
        })
    }

    /// For every entry: the selectors the caller lacks.
    pub fn explain(&self, observed: &BTreeSet<Selector>) -> Vec<EntryExplanation> {
        self.entries
            .iter()
            .map(|entry| {
                let mut missing: Vec<String> = entry
                    .selectors
                    .iter()
                    .filter(|s| !observed.contains(*s))
                    .map(ToString::to_string)
                    .collect();
                if missing.is_empty() && entry.resolve(observed).is_none() {
                    for (kind, ty) in entry.template.placeholders() {
                        missing.push(format!("{kind}:{ty}:<a value usable in a SPIFFE ID path>"));
                    }
                }
                EntryExplanation {
                    spiffe_id: entry.template.source(),
                    missing,
                }
            })
            .collect()
    }
}

impl Entry {
    fn resolve(&self, observed: &BTreeSet<Selector>) -> Option<SpiffeId> {
        let text = self.template.render(|kind, ty| {
            observed
                .iter()
                .find(|s| s.kind() == kind && s.type_name() == ty)
                .and_then(|s| s.value().split_once(':').map(|(_, v)| v.to_string()))
        })?;
        crate::spiffe_id::parse(&text).ok()
    }
}

impl IdTemplate {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
            if open > 0 {
                parts.push(TemplatePart::Literal(rest[..open].to_string()));
            }
            let inner = &rest[open + 1..close];
            let (kind, ty) = inner
                .split_once(':')
                .filter(|(k, t)| !k.is_empty() && !t.is_empty() && !t.contains(':'))
                .ok_or_else(|| format!("placeholder {{{inner}}} must look like {{unix:uid}}"))?;
            catalog::check_placeholder(kind, ty).map_err(|e| e.to_string())?;
            parts.push(TemplatePart::Placeholder {
                kind: kind.to_string(),
                ty: ty.to_string(),
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_string()));
        }
        Ok(Self { parts })
    }

    fn has_placeholders(&self) -> bool {
        self.placeholders().next().is_some()
    }

    fn placeholders(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Placeholder { kind, ty } => Some((kind.as_str(), ty.as_str())),
            TemplatePart::Literal(_) => None,
        })
    }

    fn render(&self, mut value: impl FnMut(&str, &str) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => out.push_str(s),
                TemplatePart::Placeholder { kind, ty } => {
                    let v = value(kind, ty)?;
                    // One path segment's characters only: a value cannot add segments.
                    if v.is_empty()
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    {
                        return None;
                    }
                    out.push_str(&v);
                }
            }
        }
        Some(out)
    }

    fn source(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                TemplatePart::Literal(s) => s.clone(),
                TemplatePart::Placeholder { kind, ty } => format!("{{{kind}:{ty}}}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn entry(id: &str, sels: &[&str]) -> EntryConfig {
        EntryConfig {
            spiffe_id: id.into(),
            selectors: sels.iter().map(|s| s.to_string()).collect(),
            x509_ttl: None,
            jwt_ttl: None,
            hint: String::new(),
        }
    }

    fn observed(sels: &[&str]) -> BTreeSet<Selector> {
        sels.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_entries_the_caller_matches_decide_whether_its_groups_are_read() {
        let r = Registry::new(
            &td(),
            vec![
                entry(
                    "spiffe://example.org/ops",
                    &["unix:uid:1000", "unix:supplementary_gid:27"],
                ),
                entry("spiffe://example.org/uid/{unix:uid}", &["unix:gid:1000"]),
                entry(
                    "spiffe://example.org/docker",
                    &["unix:supplementary_group:docker"],
                ),
            ],
        )
        .unwrap();
        let groups = crate::attest::unix::names_a_group;
        let without_groups = |o: &BTreeSet<Selector>| -> BTreeSet<Selector> {
            o.iter()
                .filter(|s| !groups(s.kind(), s.type_name()))
                .cloned()
                .collect()
        };
        let unread = observed(&[
            "unix:uid:1000",
            "unix:gid:1000",
            "unix:supplementary_gid:1000",
            "unix:supplementary_gid:4",
        ]);
        assert!(!r.matched_entries_read(&unread, groups));
        // What the answer promises: losing the groups changes nothing.
        assert_eq!(
            r.identities(&unread),
            r.identities(&without_groups(&unread))
        );
        assert_eq!(r.identities(&unread).len(), 1);

        for read in [
            &[
                "unix:uid:1000",
                "unix:gid:1000",
                "unix:supplementary_gid:27",
            ][..],
            &["unix:uid:5", "unix:supplementary_group:docker"],
        ] {
            let o = observed(read);
            assert!(r.matched_entries_read(&o, groups), "{read:?}");
            assert_ne!(
                r.identities(&o),
                r.identities(&without_groups(&o)),
                "{read:?}"
            );
        }
    }

    #[test]
    fn all_selectors_must_match_and_order_is_kept() {
        let r = Registry::new(
            &td(),
            vec![
                entry(
                    "spiffe://example.org/a",
                    &["unix:uid:1000", "unix:gid:1000"],
                ),
                entry("spiffe://example.org/b", &["unix:uid:1000"]),
                entry("spiffe://example.org/c", &["unix:uid:0"]),
            ],
        )
        .unwrap();
        let ids: Vec<String> = r
            .identities(&observed(&["unix:uid:1000", "unix:gid:1000"]))
            .into_iter()
            .map(|i| i.spiffe_id.to_string())
            .collect();
        assert_eq!(ids, ["spiffe://example.org/a", "spiffe://example.org/b"]);
        assert!(r.identities(&observed(&["unix:uid:1000"])).len() == 1);
        assert!(r.identities(&observed(&["unix:uid:7"])).is_empty());
    }

    #[test]
    fn placeholders_fill_from_selectors_and_cannot_add_segments() {
        let r = Registry::new(
            &td(),
            vec![entry("spiffe://example.org/uid/{unix:uid}", &[])],
        )
        .unwrap();
        let ids = r.identities(&observed(&["unix:uid:1000"]));
        assert_eq!(
            ids[0].spiffe_id.to_string(),
            "spiffe://example.org/uid/1000"
        );
        let r = Registry::new(&td(), vec![entry("spiffe://example.org/ns/{k8s:ns}", &[])]).unwrap();
        assert!(r.identities(&observed(&["k8s:ns:a/b"])).is_empty());
        assert!(
            r.identities(&observed(&["k8s:ns:.."])).is_empty(),
            "'..' is no valid segment"
        );
    }

    #[test]
    fn explains_missing_selectors() {
        let r = Registry::new(
            &td(),
            vec![entry(
                "spiffe://example.org/a",
                &["unix:uid:1000", "unix:gid:5"],
            )],
        )
        .unwrap();
        let ex = r.explain(&observed(&["unix:uid:1000"]));
        assert_eq!(ex[0].missing, ["unix:gid:5"]);
    }

    #[test]
    fn rejects_bad_entries() {
        let cases = [
            entry("spiffe://other.org/a", &["unix:uid:1"]),
            entry("spiffe://example.org/a", &[]),
            entry("spiffe://example.org", &["unix:uid:1"]),
            entry("not-a-spiffe-id", &["unix:uid:1"]),
            entry("spiffe://example.org/a/", &["unix:uid:1"]),
            entry("spiffe://example.org/{unix}", &[]),
            entry("spiffe://example.org/a", &["nokind"]),
            entry("spiffe://example.org/a", &["unix:uid"]),
            entry("spiffe://example.org/a", &["foo:bar:1"]),
            entry("spiffe://example.org/a", &["unix:nope:1"]),
            entry("spiffe://example.org/{unix:nope}", &[]),
            entry("spiffe://example.org/{k8s:pod-label}", &[]),
        ];
        for e in cases {
            let id = e.spiffe_id.clone();
            assert!(Registry::new(&td(), vec![e]).is_err(), "{id} accepted");
        }
        let err = Registry::new(
            &td(),
            vec![
                entry("spiffe://example.org/ok", &["unix:uid:1"]),
                entry("spiffe://example.org/b", &["unix:uid:1", "unix:uid"]),
            ],
        )
        .unwrap_err()
        .to_string();
        for want in ["[[entry]] 1", "spiffe://example.org/b", "\"unix:uid\""] {
            assert!(err.contains(want), "{want} missing from: {err}");
        }
        let too_many = vec![entry("spiffe://example.org/a", &["unix:uid:1"]); MAX_ENTRIES + 1];
        assert!(matches!(
            Registry::new(&td(), too_many),
            Err(RegistryError::TooMany(_))
        ));
        let many = vec![entry("spiffe://example.org/a", &["unix:uid:1"]); MAX_ENTRIES];
        assert!(Registry::new(&td(), many).is_ok());
    }
}
