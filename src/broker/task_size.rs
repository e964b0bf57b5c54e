//! What a task costs the table in memory, as the table counts it against
//! `[broker] max_task_bytes`.
//!
//! The count bounds (`max_open_tasks`, `max_finished_tasks`) alone let one task weigh as much
//! as its request's field limits and its audit record (64 KiB) allow: a task of 14 audiences
//! of 2,000 bytes costs the daemon about 40 KiB, so 20,000 such tasks held about 800 MB. The estimate is the bytes of every string a task keeps plus a fixed cost per
//! string, per audience's set of scopes and per task, so that many small strings cost what
//! they cost. The costs were set from the daemon's RSS (BENCHMARKS.md): a task with a short
//! purpose, one audience and one scope measured about 3 KiB, and the largest tasks about
//! 40 KiB each.

use serde_json::Value;

use super::table::Task;

/// Counted per string a task keeps: its 24-byte header and the allocator's rounding.
pub const STRING_COST: usize = 40;
/// Counted per audience granted: the first node of its B-tree set of scopes (eleven 24-byte
/// slots, whatever it holds).
pub const SCOPE_SET_COST: usize = 320;
/// Counted once per task: the struct, its map entry, its entries in the table-wide expiry and
/// close indexes, and the grants' own B-tree node. (Its entries in its owner's indexes are
/// counted as two more copies of its id.)
pub const TASK_COST: usize = 2048;

impl Task {
    /// Bytes this task is counted for against `max_task_bytes`: [`TASK_COST`],
    /// [`SCOPE_SET_COST`] per audience, and each string it keeps at its length plus
    /// [`STRING_COST`]: its id three times (once more when it has a parent, whose list of
    /// children holds it too), two of them for its entries in its owner's expiry and close
    /// indexes (`broker::task_ends`).
    pub fn kept_bytes(&self) -> usize {
        let string = |s: &str| s.len() + STRING_COST;
        let grants: usize = self
            .grants
            .iter()
            .map(|(audience, scopes)| {
                SCOPE_SET_COST + string(audience) + scopes.iter().map(|s| string(s)).sum::<usize>()
            })
            .sum();
        let parent = self
            .parent
            .as_deref()
            .map_or(0, |p| string(p) + string(&self.id));
        TASK_COST
            + 3 * string(&self.id)
            + string(self.owner.trust_domain_name())
            + string(self.owner.path())
            + string(&self.purpose)
            + grants
            + parent
            + self.obo.as_ref().map_or(0, value_bytes)
    }
}

/// Bytes a JSON value keeps, strings (keys too) at their length plus [`STRING_COST`], and
/// each other node at [`STRING_COST`].
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + STRING_COST,
        Value::Array(a) => STRING_COST + a.iter().map(value_bytes).sum::<usize>(),
        Value::Object(m) => {
            STRING_COST
                + m.iter()
                    .map(|(k, v)| k.len() + STRING_COST + value_bytes(v))
                    .sum::<usize>()
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => STRING_COST,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;
    use spiffe::SpiffeId;

    use super::*;
    use crate::broker::table::Grants;

    fn task(purpose: &str, grants: Grants) -> Task {
        Task {
            id: "task_1".into(),
            owner: SpiffeId::new("spiffe://example.org/a").unwrap(),
            purpose: purpose.into(),
            grants,
            created_at: 0,
            expires_at: 10,
            parent: None,
            depth: 0,
            children: vec![],
            closed_at: None,
            tokens_issued: 0,
            obo: None,
        }
    }

    #[test]
    fn every_kept_string_is_counted() {
        let bare = task("p", Grants::new());
        let base = bare.kept_bytes();
        assert_eq!(
            base,
            TASK_COST + 6 * STRING_COST + 3 * "task_1".len() + "example.org".len() + "/a".len() + 1
        );

        let longer = task(&"p".repeat(1000), Grants::new());
        assert_eq!(longer.kept_bytes(), base + 999);

        let scopes: BTreeSet<String> = ["read".to_string(), "write".into()].into();
        let granted = task("p", Grants::from([("https://tool".to_string(), scopes)]));
        assert_eq!(
            granted.kept_bytes(),
            base + 3 * STRING_COST
                + SCOPE_SET_COST
                + "https://tool".len()
                + "read".len()
                + "write".len()
        );

        let mut child = task("p", Grants::new());
        child.parent = Some("task_0".into());
        assert_eq!(child.kept_bytes(), base + 2 * STRING_COST + 6 + 6);

        let mut acting = task("p", Grants::new());
        acting.obo = Some(json!({"iss": "https://idp", "sub": "alice"}));
        assert_eq!(
            acting.kept_bytes(),
            base + STRING_COST
                + (3 + STRING_COST + 11 + STRING_COST)
                + (3 + STRING_COST + 5 + STRING_COST)
        );
    }

    /// The worst task the request limits allow is what the bound is there for.
    #[test]
    fn the_largest_task_the_field_limits_allow_counts_over_sixty_kib() {
        use crate::broker::limits::*;
        let scopes: BTreeSet<String> = (0..MAX_SCOPES)
            .map(|i| format!("{i:0>width$}", width = MAX_SCOPE_BYTES))
            .collect();
        let grants: Grants = (0..MAX_TASK_AUDIENCES)
            .map(|i| {
                (
                    format!("{i:0>width$}", width = MAX_AUDIENCE_BYTES),
                    scopes.clone(),
                )
            })
            .collect();
        let big = task(&"p".repeat(MAX_PURPOSE_BYTES), grants);
        assert!(big.kept_bytes() > 60 * 1024, "{}", big.kept_bytes());
    }
}
