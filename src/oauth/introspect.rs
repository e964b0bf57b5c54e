//! Introspection (RFC 7662) and revocation (RFC 7009), authenticated like the token endpoint
//! and allowed to the same callers as IntrospectToken and CloseTask over gRPC; introspection
//! also to `[[oauth.introspection_client]]`s, for the tokens of their `resources` only.

use serde_json::{json, Value};

use super::client_auth::Authenticated;
use super::errors::{from_status, Denied, OAuthError};
use super::form::Form;
use super::record::Record;
use super::State;
use crate::broker::Who;
use crate::broker::{limits, token};
use crate::svid::jwt;

/// Introspection: `{"active": false}` for anything not live, else the token's claims with
/// `active: true`. A caller that may not introspect the token (neither its audience nor a
/// configured `broker.introspectors` entry; for an introspection client, an audience not in
/// its `resources`) gets `{"active": false}` too, as RFC 7662 §2.2 suggests against token
/// scanning; the refusal is in the audit log.
///
/// # Errors
/// Client authentication, a missing `token`, or the broker unavailable.
pub async fn introspect(
    st: &State,
    form: &Form,
    authorization: Option<&str>,
    rec: &mut Record,
) -> Result<Value, OAuthError> {
    let client = st.auth.authenticate(form, authorization, rec)?;
    let token = form.require("token")?;
    limits::token("token", token).map_err(|s| OAuthError::invalid_request(s.message()))?;
    rec.token_jti = jwt::parse_jws(token).ok().and_then(|p| {
        p.claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let (answer, denied) = match client {
        Authenticated::Workload(c) => (
            st.broker.introspect(&Who::Workload(c.caller), token).await,
            None,
        ),
        Authenticated::Introspector(c) => (
            st.broker
                .introspect_for_audiences(
                    format!("oauth-client:{}", c.client_id),
                    &c.resources,
                    token,
                )
                .await,
            Some(format!(
                "the token's audience is not one of introspection client {}'s resources",
                c.client_id
            )),
        ),
    };
    match answer {
        Ok(r) if r.active => {
            let mut v = r
                .claims
                .as_ref()
                .map(struct_to_json)
                .unwrap_or_else(|| json!({}));
            v["active"] = json!(true);
            // RFC 7662 names: the client the token was issued to is its subject.
            if let Some(sub) = v.get("sub").cloned() {
                v["client_id"] = sub;
            }
            v["token_type"] = json!("Bearer");
            v["iss"] = json!(st.endpoints.issuer);
            Ok(v)
        }
        Ok(_) => Ok(json!({"active": false})),
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            // Answered as inactive; recorded as refused.
            let why = denied.unwrap_or_else(|| s.message().to_string());
            rec.denied = Some(OAuthError::unauthorized_client(why));
            Ok(json!({"active": false}))
        }
        Err(s) => Err(from_status(&s, Denied::Grant)),
    }
}

/// Revocation: closes the token's task and every task delegated from it (CloseTask). An
/// invalid, expired or foreign-signed token is answered 200 and nothing happens (RFC 7009
/// §2.2); a valid token of a task the client does not own is `unauthorized_client`.
///
/// # Errors
/// Client authentication, a missing `token`, not the owner, or the broker unavailable.
pub async fn revoke(
    st: &State,
    form: &Form,
    authorization: Option<&str>,
    rec: &mut Record,
) -> Result<Value, OAuthError> {
    let client = st
        .auth
        .authenticate(form, authorization, rec)?
        .workload("revocation")?;
    let token_text = form.require("token")?;
    limits::token("token", token_text).map_err(|s| OAuthError::invalid_request(s.message()))?;
    if let Some(hint) = form.get("token_type_hint") {
        if hint != "access_token" {
            return Err(OAuthError::new(
                "unsupported_token_type",
                hyper::StatusCode::BAD_REQUEST,
                format!("token_type_hint {hint:?}: only access tokens are issued here"),
            ));
        }
    }
    // Signed by this trust domain (any audience, even expired): only then trust its task id.
    let bundle = st.identities.current_bundle();
    let Ok(parsed) = jwt::parse(token_text) else {
        return Ok(json!({}));
    };
    if jwt::verify_signature(token_text, &parsed, &bundle.jwt_authorities).is_err()
        || parsed
            .subject()
            .map(|s| s.trust_domain() != &bundle.trust_domain)
            .unwrap_or(true)
    {
        return Ok(json!({}));
    }
    let Some(claims) = token::read(&parsed) else {
        return Ok(json!({}));
    };
    rec.task_id = Some(claims.task_id.clone());
    rec.token_jti = Some(claims.jti.clone());
    let reason = format!("revoked over OAuth (RFC 7009) by {}", client.spiffe_id);
    match st
        .broker
        .close(&Who::Workload(client.caller), &claims.task_id, &reason)
        .await
    {
        Ok(_) => Ok(json!({})),
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            Err(OAuthError::unauthorized_client(format!(
                "{}: only the task's owner may revoke its tokens",
                s.message()
            )))
        }
        Err(s) => Err(from_status(&s, Denied::Grant)),
    }
}

/// `google.protobuf.Struct` → JSON (the broker answers introspection with a Struct).
fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::NullValue(_)) | None => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        // Claims such as exp and iat are whole seconds: keep them integers.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}
