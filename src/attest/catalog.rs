//! The selector types our attestors produce (README, "Selector reference"), and the shape of a
//! value of each. A registration entry naming anything else could never match, so config
//! loading refuses it instead of issuing nothing in silence.

use super::selector::{Selector, SelectorError};

/// What a value of one selector type looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A decimal number that fits a u32 (`unix:uid:1000`).
    Number,
    /// A user or group name: no `:` (`/etc/passwd` forbids it).
    Name,
    /// An absolute path.
    AbsolutePath,
    /// 64 lowercase hex digits, as the attestor prints them.
    Sha256,
    /// `<key>:<value>` with a non-empty key; the value may be empty (a label `app=""`).
    KeyValue,
    /// `<Kind>:<name>`, both non-empty.
    Pair,
    /// Anything non-empty.
    Text,
}

/// One selector type. `placeholder`: it can fill `{kind:type}` in a SPIFFE ID, because a
/// caller has exactly one value of it and that value can be a path segment.
struct SelectorType {
    kind: &'static str,
    ty: &'static str,
    shape: Shape,
    placeholder: bool,
    example: &'static str,
}

const fn t(
    kind: &'static str,
    ty: &'static str,
    shape: Shape,
    placeholder: bool,
    example: &'static str,
) -> SelectorType {
    SelectorType {
        kind,
        ty,
        shape,
        placeholder,
        example,
    }
}

const TYPES: &[SelectorType] = &[
    t("unix", "uid", Shape::Number, true, "unix:uid:1000"),
    t("unix", "gid", Shape::Number, true, "unix:gid:1000"),
    t("unix", "user", Shape::Name, true, "unix:user:alice"),
    t("unix", "group", Shape::Name, true, "unix:group:agents"),
    t(
        "unix",
        "supplementary_gid",
        Shape::Number,
        false,
        "unix:supplementary_gid:27",
    ),
    t(
        "unix",
        "supplementary_group",
        Shape::Name,
        false,
        "unix:supplementary_group:sudo",
    ),
    t(
        "unix",
        "path",
        Shape::AbsolutePath,
        false,
        "unix:path:/usr/bin/agent",
    ),
    t(
        "unix",
        "sha256",
        Shape::Sha256,
        true,
        "unix:sha256:<64 lowercase hex digits>",
    ),
    t("k8s", "ns", Shape::Text, true, "k8s:ns:default"),
    t("k8s", "sa", Shape::Text, true, "k8s:sa:agent"),
    t(
        "k8s",
        "node-name",
        Shape::Text,
        true,
        "k8s:node-name:node-1",
    ),
    t("k8s", "pod-name", Shape::Text, true, "k8s:pod-name:agent-0"),
    t("k8s", "pod-uid", Shape::Text, true, "k8s:pod-uid:<uid>"),
    t(
        "k8s",
        "pod-label",
        Shape::KeyValue,
        false,
        "k8s:pod-label:app:web",
    ),
    t(
        "k8s",
        "pod-owner",
        Shape::Pair,
        false,
        "k8s:pod-owner:ReplicaSet:web-5d9",
    ),
    t(
        "k8s",
        "pod-owner-uid",
        Shape::Pair,
        false,
        "k8s:pod-owner-uid:ReplicaSet:<uid>",
    ),
    t(
        "k8s",
        "pod-image",
        Shape::Text,
        false,
        "k8s:pod-image:nginx:1.27",
    ),
    t(
        "k8s",
        "pod-image-count",
        Shape::Number,
        true,
        "k8s:pod-image-count:2",
    ),
    t(
        "k8s",
        "pod-init-image",
        Shape::Text,
        false,
        "k8s:pod-init-image:busybox:1.36",
    ),
    t(
        "k8s",
        "pod-init-image-count",
        Shape::Number,
        true,
        "k8s:pod-init-image-count:0",
    ),
    t(
        "k8s",
        "container-name",
        Shape::Text,
        true,
        "k8s:container-name:agent",
    ),
    t(
        "k8s",
        "container-image",
        Shape::Text,
        false,
        "k8s:container-image:nginx:1.27",
    ),
];

fn known_kinds() -> String {
    let mut kinds: Vec<&str> = TYPES.iter().map(|t| t.kind).collect();
    kinds.dedup();
    kinds.join(", ")
}

fn types_of(kind: &str) -> String {
    TYPES
        .iter()
        .filter(|t| t.kind == kind)
        .map(|t| t.ty)
        .collect::<Vec<_>>()
        .join(", ")
}

fn lookup(selector: &str, kind: &str, ty: &str) -> Result<&'static SelectorType, SelectorError> {
    if !TYPES.iter().any(|t| t.kind == kind) {
        return Err(SelectorError::UnknownKind {
            selector: selector.to_string(),
            kind: kind.to_string(),
            known: known_kinds(),
        });
    }
    TYPES
        .iter()
        .find(|t| t.kind == kind && t.ty == ty)
        .ok_or_else(|| SelectorError::UnknownType {
            selector: selector.to_string(),
            ty: format!("{kind}:{ty}"),
            known: types_of(kind),
        })
}

/// Parses a selector written in a registration entry: known kind and type, and a value of the
/// shape our attestor produces.
///
/// # Errors
/// One [`SelectorError`] variant per rule, each naming the selector.
pub fn parse_registered(text: &str) -> Result<Selector, SelectorError> {
    let selector: Selector = text.parse()?;
    let ty = selector.type_name();
    let spec = lookup(text, selector.kind(), ty)?;
    let Some((_, value)) = selector.value().split_once(':') else {
        return Err(SelectorError::MissingValue {
            selector: text.to_string(),
            example: spec.example,
        });
    };
    if value.is_empty() && spec.shape != Shape::KeyValue {
        return Err(SelectorError::MissingValue {
            selector: text.to_string(),
            example: spec.example,
        });
    }
    let fits = match spec.shape {
        Shape::Number => value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u32>().is_ok(),
        Shape::Name => !value.contains(':'),
        Shape::AbsolutePath => value.starts_with('/'),
        Shape::Sha256 => {
            value.len() == 64
                && value
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Shape::KeyValue => value.split_once(':').is_some_and(|(k, _)| !k.is_empty()),
        Shape::Pair => value
            .split_once(':')
            .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty()),
        Shape::Text => true,
    };
    if !fits {
        return Err(SelectorError::BadValue {
            selector: text.to_string(),
            example: spec.example,
        });
    }
    Ok(selector)
}

/// Checks a `{kind:type}` placeholder of a SPIFFE ID template: a known type whose one value
/// can fill a path segment.
///
/// # Errors
/// Unknown kind or type, or a type that cannot fill a placeholder.
pub fn check_placeholder(kind: &str, ty: &str) -> Result<(), SelectorError> {
    let placeholder = format!("{{{kind}:{ty}}}");
    let usable = || {
        TYPES
            .iter()
            .filter(|t| t.placeholder)
            .map(|t| format!("{{{}:{}}}", t.kind, t.ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match TYPES.iter().find(|t| t.kind == kind && t.ty == ty) {
        Some(spec) if spec.placeholder => Ok(()),
        Some(_) => Err(SelectorError::NotAPlaceholder {
            placeholder,
            known: usable(),
        }),
        None => Err(SelectorError::UnknownPlaceholder {
            placeholder,
            known: usable(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_selectors() {
        let good = [
            "unix:uid:0",
            "unix:gid:4294967295",
            "unix:user:alice",
            "unix:supplementary_group:docker",
            "unix:path:/usr/bin/python3",
            "unix:sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "k8s:ns:default",
            "k8s:pod-label:app:web",
            "k8s:pod-label:app:",
            "k8s:pod-owner:ReplicaSet:web-5d9",
            "k8s:pod-image:docker.io/library/nginx@sha256:abc",
            "k8s:pod-image-count:2",
        ];
        for s in good {
            assert_eq!(parse_registered(s).unwrap().to_string(), s);
        }
        type Rule = fn(&SelectorError) -> bool;
        let bad: &[(&str, Rule)] = &[
            ("unix:uid", |e| {
                matches!(e, SelectorError::MissingValue { .. })
            }),
            ("unix:uid:", |e| {
                matches!(e, SelectorError::MissingValue { .. })
            }),
            ("foo:bar:1", |e| {
                matches!(e, SelectorError::UnknownKind { .. })
            }),
            ("unix:nope:1", |e| {
                matches!(e, SelectorError::UnknownType { .. })
            }),
            ("k8s:namespace:x", |e| {
                matches!(e, SelectorError::UnknownType { .. })
            }),
            ("unix:uid:alice", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("unix:uid:-1", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("unix:uid:4294967296", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("unix:path:bin/agent", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("unix:sha256:E3B0", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("unix:user:a:b", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("k8s:pod-label:app", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("k8s:pod-label::web", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("k8s:pod-owner:ReplicaSet:", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
            ("nokind", |e| matches!(e, SelectorError::MissingKind(_))),
        ];
        for (s, rule) in bad {
            let err = parse_registered(s).unwrap_err();
            assert!(rule(&err), "{s}: {err:?}");
            assert!(err.to_string().contains(s), "{s} not named in: {err}");
        }
    }

    #[test]
    fn placeholders() {
        for (kind, ty) in [
            ("unix", "uid"),
            ("k8s", "ns"),
            ("k8s", "sa"),
            ("unix", "sha256"),
        ] {
            check_placeholder(kind, ty).unwrap();
        }
        for (kind, ty) in [
            ("unix", "nope"),
            ("foo", "uid"),
            ("k8s", "pod-label"),
            ("unix", "path"),
        ] {
            let err = check_placeholder(kind, ty).unwrap_err();
            assert!(
                matches!(
                    err,
                    SelectorError::UnknownPlaceholder { .. }
                        | SelectorError::NotAPlaceholder { .. }
                ),
                "{err:?}"
            );
            assert!(
                err.to_string().contains(&format!("{{{kind}:{ty}}}")),
                "{err}"
            );
        }
    }

    /// Every type the attestors emit is in the catalogue (the k8s list is checked by its own
    /// tests against [`TYPES`] through `parse_registered`).
    #[test]
    fn unix_attestor_types_are_known() {
        for ty in [
            "uid",
            "gid",
            "user",
            "group",
            "supplementary_gid",
            "supplementary_group",
            "path",
            "sha256",
        ] {
            assert!(lookup(ty, "unix", ty).is_ok(), "{ty}");
        }
    }
}
