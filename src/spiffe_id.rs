//! SPIFFE IDs and trust domain names from outside, in their one canonical spelling.
//!
//! The `spiffe` crate accepts `SPIFFE://Example.org/a` and lowercases the scheme and trust
//! domain. The SPIFFE ID standard allows only lowercase there, and go-spiffe refuses anything
//! else. Accepting both spellings would let two strings name one identity: a response field
//! and its certificate could disagree and still match, and a policy or audit search written
//! for one spelling would miss the other. Every ID that arrives from a certificate, a token,
//! a request, the config or SPIRE goes through here and must already be canonical.

use std::fmt;

use spiffe::{SpiffeId, TrustDomain};

/// Why a string is not a canonical SPIFFE ID or trust domain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The crate's parser refused it; its message says which rule.
    Invalid(String),
    /// It parses, but only after lowercasing the scheme or trust domain.
    NotLowercase,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(why) => f.write_str(why),
            Self::NotLowercase => {
                f.write_str("the scheme and trust domain must be lowercase (SPIFFE ID standard §2)")
            }
        }
    }
}

impl std::error::Error for IdError {}

/// Parses a SPIFFE ID that is already in canonical form.
///
/// # Errors
/// [`IdError`] naming the rule the string breaks.
pub fn parse(s: &str) -> Result<SpiffeId, IdError> {
    let id = SpiffeId::new(s).map_err(|e| IdError::Invalid(e.to_string()))?;
    if id.to_string() != s {
        return Err(IdError::NotLowercase);
    }
    Ok(id)
}

/// Whether `text` is `id` written out (`spiffe://` + trust domain + path), without writing
/// it: the same answer as `id.to_string() == text`, for checks made on every call.
pub fn is(id: &SpiffeId, text: &str) -> bool {
    text.strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_prefix(id.trust_domain_name()))
        .is_some_and(|path| path == id.path())
}

/// Parses a trust domain, as its name (`example.org`) or its ID (`spiffe://example.org`, the
/// form bundle maps are keyed by), already in canonical form.
///
/// # Errors
/// [`IdError`] naming the rule the string breaks.
pub fn parse_trust_domain(s: &str) -> Result<TrustDomain, IdError> {
    let td = TrustDomain::new(s).map_err(|e| IdError::Invalid(e.to_string()))?;
    if td.to_string() != s && td.id_string() != s {
        return Err(IdError::NotLowercase);
    }
    Ok(td)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_answers_as_the_written_id_compares() {
        let ids = [
            "spiffe://example.org/a/b",
            "spiffe://example.org",
            "spiffe://ex.org/a",
        ];
        let texts = [
            "spiffe://example.org/a/b",
            "spiffe://example.org/a/b/",
            "spiffe://example.org/a",
            "spiffe://example.org",
            "spiffe://example.org.evil/a/b",
            "spiffe://example.orga/b",
            "SPIFFE://example.org/a/b",
            "example.org/a/b",
            "spiffe://ex.org/a",
            "",
        ];
        for id in ids {
            let id = parse(id).unwrap();
            for text in texts {
                assert_eq!(is(&id, text), id.to_string() == text, "{id} vs {text:?}");
            }
        }
    }

    #[test]
    fn canonical_ids_parse() {
        let id = parse("spiffe://example.org/Agent/A").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/Agent/A");
        assert_eq!(
            parse_trust_domain("example.org").unwrap().to_string(),
            "example.org"
        );
    }

    #[test]
    fn uppercase_scheme_or_trust_domain_is_refused() {
        for s in [
            "Spiffe://example.org/a",
            "SPIFFE://example.org/a",
            "spiffe://Example.org/a",
            "spiffe://EXAMPLE.ORG/a",
        ] {
            assert_eq!(parse(s), Err(IdError::NotLowercase), "{s}");
        }
        assert_eq!(
            parse_trust_domain("Example.org"),
            Err(IdError::NotLowercase)
        );
    }

    #[test]
    fn malformed_ids_keep_the_crate_message() {
        let Err(IdError::Invalid(why)) = parse("spiffe://example.org:80/a") else {
            panic!("a port must be refused");
        };
        assert!(why.contains("trust domain"), "{why}");
    }
}
