//! Selectors: the facts an attestor observed about a caller, `kind:value` as SPIRE writes them
//! (`unix:uid:1000`, `k8s:ns:default`, `k8s:pod-label:app:web`).

use std::fmt;
use std::str::FromStr;

/// One observed fact. `kind` is the attestor (`unix`, `k8s`); `value` is everything after the
/// first colon and may itself contain colons.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    kind: String,
    value: String,
}

/// The longest selector we accept from config or produce; longer values are refused rather than
/// compared, so a hostile label cannot make matching expensive.
pub const MAX_SELECTOR_LEN: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("selector {0:?} has no `kind:` prefix (expected e.g. `unix:uid:1000`)")]
    MissingKind(String),
    #[error("selector {0:?} has an empty value")]
    EmptyValue(String),
    #[error("selector is {0} bytes; the limit is {MAX_SELECTOR_LEN}")]
    TooLong(usize),
    #[error("selector {selector:?}: no attestor produces kind {kind:?} (known: {known})")]
    UnknownKind {
        selector: String,
        kind: String,
        known: String,
    },
    #[error("selector {selector:?}: unknown type {ty:?} (known: {known})")]
    UnknownType {
        selector: String,
        ty: String,
        known: String,
    },
    #[error("selector {selector:?} has no value (expected e.g. `{example}`)")]
    MissingValue {
        selector: String,
        example: &'static str,
    },
    #[error("selector {selector:?}: the value never matches what the attestor reports (expected e.g. `{example}`)")]
    BadValue {
        selector: String,
        example: &'static str,
    },
    #[error(
        "placeholder {placeholder}: no attestor produces that selector type (usable: {known})"
    )]
    UnknownPlaceholder { placeholder: String, known: String },
    #[error("placeholder {placeholder}: a caller has no single value of it that fits a path segment (usable: {known})")]
    NotAPlaceholder { placeholder: String, known: String },
}

impl Selector {
    /// Builds a selector from an attestor name and a value such as `uid:1000`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// The selector's type within its kind: `uid` for `unix:uid:1000`, `pod-label` for
    /// `k8s:pod-label:app:web`.
    pub fn type_name(&self) -> &str {
        self.value.split(':').next().unwrap_or("")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong(s.len()));
        }
        let (kind, value) = s
            .split_once(':')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| SelectorError::MissingKind(s.to_string()))?;
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(s.to_string()));
        }
        Ok(Self::new(kind, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let cases = [
            ("unix:uid:1000", "unix", "uid:1000", "uid"),
            (
                "k8s:pod-label:app:web",
                "k8s",
                "pod-label:app:web",
                "pod-label",
            ),
            ("k8s:ns:default", "k8s", "ns:default", "ns"),
        ];
        for (text, kind, value, ty) in cases {
            let s: Selector = text.parse().unwrap();
            assert_eq!(s.kind(), kind);
            assert_eq!(s.value(), value);
            assert_eq!(s.type_name(), ty);
            assert_eq!(s.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            "nokind".parse::<Selector>(),
            Err(SelectorError::MissingKind(_))
        ));
        assert!(matches!(
            ":uid:1".parse::<Selector>(),
            Err(SelectorError::MissingKind(_))
        ));
        assert!(matches!(
            "unix:".parse::<Selector>(),
            Err(SelectorError::EmptyValue(_))
        ));
        let long = format!("unix:path:{}", "a".repeat(MAX_SELECTOR_LEN));
        assert!(matches!(
            long.parse::<Selector>(),
            Err(SelectorError::TooLong(_))
        ));
    }
}
