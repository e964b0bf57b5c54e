//! The audit record of one OAuth request. Every grant and every refusal is written; the
//! strings a client sent are bounded and never a credential (a value shaped like a token is
//! withheld, so the log's no-secrets rule cannot turn a refusal into an outage).

use crate::audit::{looks_like_secret, AuditEvent};

use super::errors::OAuthError;

/// Longest client-supplied string kept in a record.
pub const MAX_RECORDED_BYTES: usize = 512;

/// What the record says so far.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub endpoint: &'static str,
    pub grant_type: Option<String>,
    pub client: Option<String>,
    pub assertion_jti: Option<String>,
    pub resource: Option<String>,
    pub task_id: Option<String>,
    pub token_jti: Option<String>,
    /// A refusal answered as success (introspection of a token the client may not see).
    pub denied: Option<OAuthError>,
}

/// `s` made safe to record.
pub fn clean(s: &str) -> String {
    if looks_like_secret(s) {
        return "(withheld: shaped like a credential)".into();
    }
    if s.len() <= MAX_RECORDED_BYTES {
        return s.to_string();
    }
    let mut end = MAX_RECORDED_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Record {
    pub fn new(endpoint: &'static str) -> Self {
        Self {
            endpoint,
            ..Self::default()
        }
    }

    /// The event for an outcome.
    pub fn event(&self, outcome: Result<(), &OAuthError>) -> AuditEvent {
        let outcome = match (outcome, &self.denied) {
            (Ok(()), Some(d)) => Err(d),
            (o, _) => o,
        };
        let c = |o: &Option<String>| o.as_deref().map(clean);
        AuditEvent::OauthRequest {
            endpoint: self.endpoint.to_string(),
            grant_type: c(&self.grant_type),
            client: c(&self.client),
            assertion_jti: c(&self.assertion_jti),
            resource: c(&self.resource),
            task_id: c(&self.task_id),
            token_jti: c(&self.token_jti),
            error: outcome.err().map(|e| e.code.to_string()),
            error_description: outcome.err().map(|e| clean(&e.description)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_strings_are_bounded_and_never_tokens() {
        let long = "é".repeat(MAX_RECORDED_BYTES);
        assert!(clean(&long).len() <= MAX_RECORDED_BYTES + 3);
        assert_eq!(
            clean("eyJhbGciOi.eyJzdWIi.sig"),
            "(withheld: shaped like a credential)"
        );
        assert_eq!(clean("https://tool/mcp"), "https://tool/mcp");
    }
}
