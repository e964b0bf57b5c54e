//! `application/x-www-form-urlencoded` request bodies, bounded and checked for the RFC 6749
//! rule that no parameter appears twice (except RFC 8707's `resource`, which we then refuse
//! with its own error: one token, one audience).

use std::collections::BTreeMap;

use super::errors::OAuthError;

/// Most parameters read from one request body.
pub const MAX_PARAMS: usize = 32;

/// Parameters whose values are credentials: `Debug` shows only that they are there.
pub const CREDENTIAL_PARAMS: &[&str] = &[
    "client_secret",
    "client_assertion",
    "token",
    "subject_token",
    "actor_token",
];

/// The parameters of one request.
#[derive(Default)]
pub struct Form {
    params: BTreeMap<String, Vec<String>>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.params {
            if CREDENTIAL_PARAMS.contains(&k.as_str()) {
                m.entry(k, &"(withheld)");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl Drop for Form {
    /// The parsed credential values are wiped (best effort: the request body they were read
    /// from is hyper's buffer, freed unwiped).
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (k, values) in &mut self.params {
            if CREDENTIAL_PARAMS.contains(&k.as_str()) {
                values.iter_mut().for_each(Zeroize::zeroize);
            }
        }
    }
}

impl Form {
    /// # Errors
    /// Not form-encoded, too many parameters, or a parameter repeated.
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
            OAuthError::invalid_request(format!(
                "the body is not application/x-www-form-urlencoded: {e}"
            ))
        })?;
        if pairs.len() > MAX_PARAMS {
            return Err(OAuthError::invalid_request(format!(
                "{} parameters; the limit is {MAX_PARAMS}",
                pairs.len()
            )));
        }
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            let values = params.entry(k.clone()).or_default();
            if !values.is_empty() && k != "resource" {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {k} appears more than once (RFC 6749 §3.2)"
                )));
            }
            values.push(v);
        }
        Ok(Self { params })
    }

    /// The value of `name`; an empty value counts as absent (RFC 6749 §3.2).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// # Errors
    /// `invalid_request` naming the missing parameter.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("parameter {name} is required")))
    }

    /// Every non-empty value of `name` (only `resource` may have several).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.params
            .get(name)
            .map(|v| {
                v.iter()
                    .map(String::as_str)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused_except_resource() {
        let f = Form::parse(b"grant_type=client_credentials&resource=a&resource=b").unwrap();
        assert_eq!(f.all("resource"), ["a", "b"]);
        let e = Form::parse(b"scope=a&scope=b").unwrap_err();
        assert!(e.description.contains("more than once"));
    }

    #[test]
    fn empty_is_absent_and_decoding_works() {
        let f = Form::parse(b"scope=&resource=https%3A%2F%2Ft%2Fmcp&x=a+b").unwrap();
        assert_eq!(f.get("scope"), None);
        assert_eq!(f.get("resource"), Some("https://t/mcp"));
        assert_eq!(f.get("x"), Some("a b"));
        assert!(f.require("grant_type").is_err());
    }

    #[test]
    fn debug_withholds_credentials() {
        let f =
            Form::parse(b"client_id=rs&client_secret=s3cr3t-s3cr3t-s3cr3t&token=tok-tok").unwrap();
        let shown = format!("{f:?}");
        assert!(shown.contains("rs"), "{shown}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok-tok"),
            "{shown}"
        );
    }

    #[test]
    fn parameter_count_is_bounded_at_its_edge() {
        let body = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        Form::parse(body(MAX_PARAMS).as_bytes()).unwrap();
        let e = Form::parse(body(MAX_PARAMS + 1).as_bytes()).unwrap_err();
        assert!(e.description.contains("limit"));
    }
}
