//! Turning policy text into a validated, re-keyed `PolicySet`: size bound, parse, `@id`
//! re-keying, strict validation against the schema. Nothing here is swapped in; the engine
//! publishes only what this module fully accepted.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, ValidationMode, Validator};
use miette::Diagnostic;

use crate::fs_trust::{FsTrust, TrustError};

use super::{Diagnostics, PolicyError, MAX_POLICY_BYTES, MAX_POLICY_ID_BYTES};

/// A policy set that parsed, was re-keyed and passed strict validation.
pub(super) struct Checked {
    pub set: PolicySet,
    /// Policy ids in source order.
    pub ids: Vec<String>,
    /// Non-fatal findings (a policy without `@id`, validator warnings).
    pub warnings: Vec<String>,
}

/// Reads a policy file, refusing anything over [`MAX_POLICY_BYTES`] without reading past it.
/// For `policy check`, which trusts nothing it reads.
pub(super) fn read_file(path: &Path) -> Result<String, PolicyError> {
    let file = std::fs::File::open(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_bounded(path, file)
}

/// Reads the policy the daemon enforces: as [`read_file`], and only from a file no other user
/// can change ([`FsTrust::open_input`]): whoever writes the policy decides every grant.
pub(super) fn read_trusted_file(path: &Path) -> Result<String, PolicyError> {
    let file = FsTrust::current()
        .open_input("[policy] file", path)
        .map_err(|e| match e {
            TrustError::Io { path, source, .. } => PolicyError::Io { path, source },
            untrusted => PolicyError::Untrusted(untrusted),
        })?;
    read_bounded(path, file)
}

fn read_bounded(path: &Path, file: std::fs::File) -> Result<String, PolicyError> {
    let io_err = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    // Read one byte past the limit so "exactly at the limit" and "over it" are distinguishable
    // even if the file grows while we read it.
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { size: bytes.len() });
    }
    String::from_utf8(bytes).map_err(|e| PolicyError::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Parses, re-keys and validates `text`.
pub(super) fn check(text: &str, validator: &Validator) -> Result<Checked, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { size: text.len() });
    }
    // Before Cedar, whose recursion would overflow the stack and abort the process.
    super::nesting::check(text).map_err(|at| PolicyError::TooDeep {
        line: at.line,
        column: at.column,
    })?;
    let parsed = PolicySet::from_str(text).map_err(|errs| {
        PolicyError::Parse(Diagnostics(
            errs.iter()
                .map(|e| render(e as &dyn Diagnostic, text))
                .collect(),
        ))
    })?;
    if let Some(t) = parsed.templates().next() {
        return Err(PolicyError::Template(t.id().to_string()));
    }
    let (set, ids, mut warnings) = rekey(&parsed)?;
    let result = validator.validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        return Err(PolicyError::Invalid(Diagnostics(
            result
                .validation_errors()
                .map(|e| render(e as &dyn Diagnostic, text))
                .collect(),
        )));
    }
    warnings.extend(
        result
            .validation_warnings()
            .map(|w| render(w as &dyn Diagnostic, text)),
    );
    Ok(Checked { set, ids, warnings })
}

/// Cedar names policies `policy0`, `policy1`, ... in source order. Audit records and operators
/// need stable names, so each policy takes its `@id("...")`; one without keeps its positional
/// name and produces a warning.
fn rekey(parsed: &PolicySet) -> Result<(PolicySet, Vec<String>, Vec<String>), PolicyError> {
    let mut policies: Vec<_> = parsed.policies().collect();
    // `policies()` has no defined order; the positional ids give us source order back.
    policies.sort_by_key(|p| positional_index(p.id()));
    let mut set = PolicySet::new();
    let mut ids = Vec::with_capacity(policies.len());
    let mut seen = BTreeSet::new();
    let mut warnings = Vec::new();
    for policy in policies {
        let id = match policy.annotation("id") {
            Some(id) => {
                check_id(id)?;
                id.to_string()
            }
            None => {
                let id = policy.id().to_string();
                warnings.push(format!(
                    "policy #{} has no @id annotation; it is named {id:?} by position, \
                     which changes when policies are added above it",
                    positional_index(policy.id()).unwrap_or(usize::MAX)
                ));
                id
            }
        };
        if !seen.insert(id.clone()) {
            return Err(PolicyError::DuplicateId(id));
        }
        set.add(policy.new_id(PolicyId::new(&id)))
            .map_err(|e| PolicyError::DuplicateId(format!("{id} ({e})")))?;
        ids.push(id);
    }
    Ok((set, ids, warnings))
}

fn positional_index(id: &PolicyId) -> Option<usize> {
    id.to_string().strip_prefix("policy")?.parse().ok()
}

/// Policy ids end up in audit records and log lines, so they must be short and printable.
fn check_id(id: &str) -> Result<(), PolicyError> {
    let reason = if id.is_empty() {
        "is empty"
    } else if id.len() > MAX_POLICY_ID_BYTES {
        "is too long"
    } else if id.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(PolicyError::BadId {
        id: id.chars().take(MAX_POLICY_ID_BYTES).collect(),
        reason,
    })
}

/// One diagnostic as `line L, column C: message (help: ...)`, using the first labelled span.
pub(super) fn render(diag: &dyn Diagnostic, text: &str) -> String {
    let at = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| line_col(text, label.offset()));
    let mut out = match at {
        Some((line, col)) => format!("line {line}, column {col}: {diag}"),
        None => diag.to_string(),
    };
    if let Some(help) = diag.help() {
        out.push_str(&format!(" (help: {help})"));
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map_or(0, |tail| tail.chars().count())
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "ab\ncde\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 5), (2, 3));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn policy_id_bounds() {
        assert!(check_id(&"a".repeat(MAX_POLICY_ID_BYTES)).is_ok());
        assert!(check_id(&"a".repeat(MAX_POLICY_ID_BYTES + 1)).is_err());
        assert!(check_id("").is_err());
        assert!(check_id("a\nb").is_err());
    }

    #[test]
    fn the_enforced_policy_must_be_safe_from_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.cedar");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(read_file(&path).is_ok(), "policy check reads anything");
        assert!(matches!(
            read_trusted_file(&path),
            Err(PolicyError::Untrusted(TrustError::Writable { .. }))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_trusted_file(&path).is_ok());
        assert!(matches!(
            read_trusted_file(&dir.path().join("missing")),
            Err(PolicyError::Io { .. })
        ));
    }
}
