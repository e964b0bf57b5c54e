//! RFC 6749 §5.2 error answers, and the one place where the broker's gRPC status codes
//! become OAuth error codes.

use hyper::StatusCode;
use serde_json::json;
use tonic::{Code, Status};

/// An OAuth error: the code a library matches on, a sentence for the person reading it, and
/// the HTTP status it travels with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
    pub status: StatusCode,
    /// Answer with `WWW-Authenticate: Basic` (RFC 6749 §5.2: a client that authenticated
    /// with the Authorization header gets a 401 with a challenge of its scheme).
    pub basic_challenge: bool,
}

/// The `WWW-Authenticate` value of a refused HTTP Basic client.
pub const BASIC_CHALLENGE: &str = "Basic realm=\"svid-broker\", charset=\"UTF-8\"";

impl OAuthError {
    pub fn new(code: &'static str, status: StatusCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            status,
            basic_challenge: false,
        }
    }

    /// The same error, answered with a `WWW-Authenticate: Basic` challenge.
    pub fn with_basic_challenge(mut self) -> Self {
        self.basic_challenge = true;
        self
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", StatusCode::BAD_REQUEST, d)
    }
    /// 401: the client could not be authenticated.
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new("invalid_client", StatusCode::UNAUTHORIZED, d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", StatusCode::BAD_REQUEST, d)
    }
    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new("unauthorized_client", StatusCode::BAD_REQUEST, d)
    }
    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new("unsupported_grant_type", StatusCode::BAD_REQUEST, d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new("invalid_scope", StatusCode::BAD_REQUEST, d)
    }
    /// RFC 8707: the `resource` is missing, malformed, or not one this client may have.
    pub fn invalid_target(d: impl Into<String>) -> Self {
        Self::new("invalid_target", StatusCode::BAD_REQUEST, d)
    }
    pub fn temporarily_unavailable(d: impl Into<String>) -> Self {
        Self::new(
            "temporarily_unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            d,
        )
    }
    pub fn server_error(d: impl Into<String>) -> Self {
        Self::new("server_error", StatusCode::INTERNAL_SERVER_ERROR, d)
    }
    /// 413 with `invalid_request`.
    pub fn too_large(d: impl Into<String>) -> Self {
        Self::new("invalid_request", StatusCode::PAYLOAD_TOO_LARGE, d)
    }
    /// The authorization endpoint's only answer: no user-facing flow is offered.
    pub fn unsupported_response_type(d: impl Into<String>) -> Self {
        Self::new("unsupported_response_type", StatusCode::BAD_REQUEST, d)
    }
    /// 405 with `invalid_request`.
    pub fn method(d: impl Into<String>) -> Self {
        Self::new("invalid_request", StatusCode::METHOD_NOT_ALLOWED, d)
    }
    /// 404 with `invalid_request`.
    pub fn not_found(d: impl Into<String>) -> Self {
        Self::new("invalid_request", StatusCode::NOT_FOUND, d)
    }
    /// 408 with `invalid_request`.
    pub fn timeout(d: impl Into<String>) -> Self {
        Self::new("invalid_request", StatusCode::REQUEST_TIMEOUT, d)
    }

    /// The JSON body: `{"error": code, "error_description": text}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "error": self.code,
            "error_description": self.description,
        }))
        .unwrap_or_default()
    }
}

/// What a `PermissionDenied` from the broker means where it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The resource (or its scopes) was refused for this client: `invalid_target`.
    Target,
    /// The presented grant (a subject token, a task) was refused: `invalid_grant`.
    Grant,
}

/// The broker's answer as an OAuth error. The broker's message becomes the description
/// unchanged (it never holds a token).
pub fn from_status(status: &Status, denied: Denied) -> OAuthError {
    let d = status.message().to_string();
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => {
            if d.starts_with("scope") || d.contains(" scopes;") {
                OAuthError::invalid_scope(d)
            } else if d.starts_with("audience") {
                OAuthError::invalid_target(d)
            } else {
                OAuthError::invalid_request(d)
            }
        }
        Code::PermissionDenied => match denied {
            Denied::Target => OAuthError::invalid_target(d),
            Denied::Grant => OAuthError::invalid_grant(d),
        },
        Code::FailedPrecondition | Code::NotFound | Code::AlreadyExists => {
            OAuthError::invalid_grant(d)
        }
        Code::Unauthenticated => OAuthError::invalid_client(d),
        Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => {
            OAuthError::temporarily_unavailable(d)
        }
        _ => OAuthError::server_error(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases = [
            (
                Status::invalid_argument("purpose is required"),
                Denied::Target,
                "invalid_request",
                400,
            ),
            (
                Status::invalid_argument("scope \"a b\" has characters"),
                Denied::Target,
                "invalid_scope",
                400,
            ),
            (
                Status::invalid_argument("audience must not be empty"),
                Denied::Target,
                "invalid_target",
                400,
            ),
            (
                Status::permission_denied("nothing granted"),
                Denied::Target,
                "invalid_target",
                400,
            ),
            (
                Status::permission_denied("parent_token rejected"),
                Denied::Grant,
                "invalid_grant",
                400,
            ),
            (
                Status::failed_precondition("task t is closed"),
                Denied::Target,
                "invalid_grant",
                400,
            ),
            (
                Status::unauthenticated("who"),
                Denied::Target,
                "invalid_client",
                401,
            ),
            (
                Status::unavailable("audit log unavailable"),
                Denied::Target,
                "temporarily_unavailable",
                503,
            ),
            (
                Status::resource_exhausted("too many tasks"),
                Denied::Target,
                "temporarily_unavailable",
                503,
            ),
            (Status::internal("bug"), Denied::Target, "server_error", 500),
        ];
        for (s, denied, code, http) in cases {
            let e = from_status(&s, denied);
            assert_eq!((e.code, e.status.as_u16()), (code, http), "{s:?}");
            assert_eq!(e.description, s.message());
        }
    }

    #[test]
    fn body_is_rfc6749_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&OAuthError::invalid_client("no").body()).unwrap();
        assert_eq!(
            v,
            json!({"error": "invalid_client", "error_description": "no"})
        );
    }
}
