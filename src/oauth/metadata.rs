//! Authorization Server Metadata (RFC 8414), also served as `openid-configuration` because
//! many OAuth libraries look there first. It lists only what is implemented.

use serde_json::{json, Value};

use super::client_auth::JWT_BEARER;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The endpoint URLs, all under the issuer.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub issuer: String,
    /// Listed because MCP clients require the member (RFC 8414 makes it optional when no
    /// grant uses it); it answers every request with `unsupported_response_type`.
    pub authorization: String,
    pub token: String,
    pub introspection: String,
    pub revocation: String,
    pub jwks: String,
}

impl Endpoints {
    pub fn new(issuer: &str) -> Self {
        let issuer = issuer.trim_end_matches('/').to_string();
        Self {
            authorization: format!("{issuer}/authorize"),
            token: format!("{issuer}/token"),
            introspection: format!("{issuer}/introspect"),
            revocation: format!("{issuer}/revoke"),
            jwks: format!("{issuer}/jwks.json"),
            issuer,
        }
    }
}

/// The metadata document. `secret_introspection`: some `[[oauth.introspection_client]]` is
/// configured, so the introspection endpoint also takes `client_secret_basic` and
/// `client_secret_post` (the token and revocation endpoints never do).
pub fn document(e: &Endpoints, signing_algs: &[&str], secret_introspection: bool) -> Value {
    let auth_methods = json!(["private_key_jwt"]);
    let introspection_auth_methods = if secret_introspection {
        json!([
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post"
        ])
    } else {
        auth_methods.clone()
    };
    json!({
        "issuer": e.issuer,
        "authorization_endpoint": e.authorization,
        "token_endpoint": e.token,
        "jwks_uri": e.jwks,
        "introspection_endpoint": e.introspection,
        "revocation_endpoint": e.revocation,
        "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": signing_algs,
        "introspection_endpoint_auth_methods_supported": introspection_auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": signing_algs,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": signing_algs,
        "client_assertion_types_supported": [JWT_BEARER],
        "id_token_signing_alg_values_supported": signing_algs,
        "subject_types_supported": ["public"],
        "scopes_supported": [],
        "claims_supported": ["sub", "aud", "exp", "iat", "nbf", "jti", "scope", "task_id", "act", "obo"],
        "resource_indicators_supported": true,
        "authorization_response_iss_parameter_supported": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_hang_under_the_issuer() {
        let e = Endpoints::new("https://b.example/oauth/");
        assert_eq!(e.issuer, "https://b.example/oauth");
        assert_eq!(e.token, "https://b.example/oauth/token");
        let d = document(&e, &["ES256"], false);
        assert_eq!(d["issuer"], "https://b.example/oauth");
        assert_eq!(d["grant_types_supported"][1], TOKEN_EXCHANGE);
        assert_eq!(
            d["token_endpoint_auth_methods_supported"],
            json!(["private_key_jwt"])
        );
        assert_eq!(
            d["introspection_endpoint_auth_methods_supported"],
            json!(["private_key_jwt"])
        );
    }

    #[test]
    fn client_secrets_are_advertised_for_introspection_only_when_configured() {
        let d = document(&Endpoints::new("https://b"), &["ES256"], true);
        assert_eq!(
            d["introspection_endpoint_auth_methods_supported"],
            json!([
                "private_key_jwt",
                "client_secret_basic",
                "client_secret_post"
            ])
        );
        for other in [
            "token_endpoint_auth_methods_supported",
            "revocation_endpoint_auth_methods_supported",
        ] {
            assert_eq!(d[other], json!(["private_key_jwt"]), "{other}");
        }
    }
}
