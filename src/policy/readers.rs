//! Which parts of a request a policy set can read. The connection layer asks: a caller's
//! supplementary groups change without moving its fingerprint, so they are read again on each
//! call only while something (a policy, a registry entry) could decide differently without
//! them.
//!
//! The answer comes from the parsed set, not its text: Cedar string escapes can spell an
//! attribute name (`principal["sel\u{65}ctors"]`), and a comment can name it without reading
//! it. Attribute names in Cedar are always literals (there is no computed access and no way to
//! list an entity's attributes), so a policy that reads `principal.selectors` carries the
//! string `selectors` in its JSON form.

use cedar_policy::PolicySet;
use serde_json::Value;

/// The principal attribute that holds the caller's selectors (see the schema).
const SELECTORS: &str = "selectors";

/// Whether any policy of `set` may read the principal's selectors. Errs towards yes: any
/// appearance of the name (an annotation, a string literal, another entity's attribute of the
/// same name) counts, and so does a policy that cannot be written as JSON.
pub(super) fn reads_selectors(set: &PolicySet) -> bool {
    set.policies()
        .any(|p| p.to_json().map_or(true, |json| names(&json, SELECTORS)))
        || set.templates().next().is_some()
}

/// Whether `name` appears in `json` as a string or an object key.
fn names(json: &Value, name: &str) -> bool {
    match json {
        Value::String(s) => s == name,
        Value::Array(items) => items.iter().any(|v| names(v, name)),
        Value::Object(fields) => fields.iter().any(|(k, v)| k == name || names(v, name)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> PolicySet {
        text.parse().unwrap()
    }

    #[test]
    fn the_development_policy_reads_no_selectors() {
        assert!(!reads_selectors(&set(super::super::DEVELOPMENT_POLICY)));
    }

    #[test]
    fn every_spelling_of_the_attribute_counts() {
        for (what, text) in [
            (
                "contains",
                r#"permit (principal, action, resource) when { principal.selectors.contains("unix:supplementary_gid:27") };"#,
            ),
            (
                "index",
                r#"permit (principal, action, resource) when { principal["selectors"].isEmpty() };"#,
            ),
            (
                "escaped",
                r#"permit (principal, action, resource) when { principal["sel\u{65}ctors"].isEmpty() };"#,
            ),
            (
                "has",
                r#"forbid (principal, action, resource) unless { principal has selectors };"#,
            ),
            (
                "in a forbid among others",
                r#"permit (principal, action, resource);
                   forbid (principal, action, resource) when { principal.selectors.containsAny(["unix:supplementary_group:guests"]) };"#,
            ),
        ] {
            assert!(reads_selectors(&set(text)), "{what}: {text}");
        }
    }

    #[test]
    fn a_comment_or_another_attribute_does_not_count() {
        let text = r#"
            // principal.selectors is not read here
            permit (principal, action, resource) when { principal.spiffe_id like "spiffe://example.org/*" };
            forbid (principal, action, resource) when { resource has tags && resource.tags.contains("x") };"#;
        assert!(!reads_selectors(&set(text)));
    }
}
