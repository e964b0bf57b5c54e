//! The token endpoint (RFC 6749 §3.2): `client_credentials` and token exchange (RFC 8693),
//! both giving the same task token as MintTaskToken, `aud` = the one `resource` (RFC 8707).
//!
//! Naming an open task: the extra parameter `task_id` (the id OpenTask returned). Without
//! it, a `client_credentials` grant opens its own task for that one resource, lives
//! `[oauth] grant_ttl`, and mints one token in it; revoking the token closes that task.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::client_auth::Client;
use super::errors::{from_status, Denied, OAuthError};
use super::form::Form;
use super::metadata::TOKEN_EXCHANGE;
use super::record::Record;
use super::State;
use crate::broker::limits;
use crate::proto::svidbroker::v1 as pb;
use crate::svid::{jwt, unix_seconds};

pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_ID: &str = "urn:ietf:params:oauth:token-type:id_token";
/// The purpose recorded for a grant that sends none (`purpose` parameter).
pub const DEFAULT_PURPOSE: &str = "OAuth client_credentials grant";

/// Handles a token request; the outcome is recorded in `rec`'s audit record by the caller.
///
/// # Errors
/// An RFC 6749 error for anything refused.
pub async fn token(
    st: &State,
    form: &Form,
    authorization: Option<&str>,
    rec: &mut Record,
) -> Result<Value, OAuthError> {
    let grant_type = form.require("grant_type")?;
    rec.grant_type = Some(grant_type.to_string());
    if grant_type != "client_credentials" && grant_type != TOKEN_EXCHANGE {
        return Err(OAuthError::unsupported_grant_type(format!(
            "grant_type {grant_type:?} is not supported: use client_credentials or {TOKEN_EXCHANGE}"
        )));
    }
    let client = st
        .auth
        .authenticate(form, authorization, rec)?
        .workload("token")?;
    let resource = resource(form)?;
    rec.resource = Some(resource.clone());
    let scopes = scopes(form)?;
    let purpose = form.get("purpose").unwrap_or(DEFAULT_PURPOSE).to_string();
    let (task_id, one_shot, issued_type) = if grant_type == TOKEN_EXCHANGE {
        let task = exchange(st, &client, form, &resource, &scopes, purpose).await?;
        (task, true, Some(TOKEN_TYPE_ACCESS))
    } else if let Some(task_id) = form.get("task_id") {
        limits::task_id(task_id).map_err(|s| OAuthError::invalid_request(s.message()))?;
        (task_id.to_string(), false, None)
    } else {
        let opened = st
            .broker
            .open_task(
                &client.caller,
                pb::OpenTaskRequest {
                    purpose,
                    audiences: vec![resource.clone()],
                    scopes: scopes.clone(),
                    ttl_seconds: st.grant_ttl.as_secs().try_into().unwrap_or(u32::MAX),
                    ..Default::default()
                },
            )
            .await
            .map_err(|s| from_status(&s, Denied::Target))?;
        (opened.task_id, true, None)
    };
    rec.task_id = Some(task_id.clone());
    let minted = st
        .broker
        .mint(
            &client.caller,
            pb::MintTaskTokenRequest {
                task_id: task_id.clone(),
                audience: resource,
                scopes,
                ttl_seconds: 0,
                max_uses: 0,
            },
        )
        .await;
    let minted = match minted {
        Ok(m) => m,
        Err(s) => {
            if one_shot {
                // The task was opened for this token alone: nothing will use it now.
                let who = crate::broker::Who::Workload(client.caller.clone());
                let _ = st
                    .broker
                    .close(&who, &task_id, "its OAuth grant was refused")
                    .await;
            }
            return Err(from_status(&s, Denied::Target));
        }
    };
    rec.token_jti = Some(minted.jti.clone());
    let now = unix_seconds(SystemTime::now());
    let mut body = json!({
        "access_token": minted.token,
        "token_type": "Bearer",
        "expires_in": (minted.expires_at - now).max(0),
        "scope": minted.scopes.join(" "),
        "task_id": task_id,
    });
    if let Some(t) = issued_type {
        body["issued_token_type"] = json!(t);
    }
    Ok(body)
}

/// Token exchange: a task token addressed to the client (delegation: `act` in the result),
/// or a user's token from a configured OIDC issuer (on-behalf-of: `obo`). Opens the child
/// task and returns its id.
async fn exchange(
    st: &State,
    client: &Client,
    form: &Form,
    resource: &str,
    scopes: &[String],
    purpose: String,
) -> Result<String, OAuthError> {
    if form.get("task_id").is_some() {
        return Err(OAuthError::invalid_request(
            "task_id is for client_credentials; a token exchange opens its own task",
        ));
    }
    if form.get("actor_token").is_some() {
        return Err(OAuthError::invalid_request(
            "actor_token is not used: the authenticated client is the actor",
        ));
    }
    if let Some(t) = form.get("requested_token_type") {
        if t != TOKEN_TYPE_ACCESS && t != TOKEN_TYPE_JWT {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type {t:?}: only {TOKEN_TYPE_ACCESS} or {TOKEN_TYPE_JWT} is issued"
            )));
        }
    }
    let subject = form.require("subject_token")?;
    let kind = form.require("subject_token_type")?;
    limits::token("subject_token", subject)
        .map_err(|s| OAuthError::invalid_request(s.message()))?;
    let is_task_token = jwt::parse_jws(subject)
        .map(|p| p.claims.contains_key("task_id"))
        .unwrap_or(false);
    let delegation = match kind {
        TOKEN_TYPE_ID => false,
        TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS => is_task_token,
        other => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type {other:?} is not supported: use {TOKEN_TYPE_ACCESS} or {TOKEN_TYPE_JWT} (a task token), or {TOKEN_TYPE_ID} (a user's OIDC token)"
            )))
        }
    };
    let (parent_token, subject_token) = if delegation {
        (subject.to_string(), String::new())
    } else {
        (String::new(), subject.to_string())
    };
    let opened = st
        .broker
        .open_task(
            &client.caller,
            pb::OpenTaskRequest {
                purpose,
                audiences: vec![resource.to_string()],
                scopes: scopes.to_vec(),
                ttl_seconds: st.grant_ttl.as_secs().try_into().unwrap_or(u32::MAX),
                parent_token,
                subject_token,
                ..Default::default()
            },
        )
        .await
        .map_err(|s| from_status(&s, Denied::Grant))?;
    Ok(opened.task_id)
}

/// The one `resource` (RFC 8707), an absolute URI.
fn resource(form: &Form) -> Result<String, OAuthError> {
    let all = form.all("resource");
    let r = match all[..] {
        [] => {
            return Err(OAuthError::invalid_target(
                "resource is required: the URI of the tool the token is for (RFC 8707)",
            ))
        }
        [one] => one,
        _ => {
            return Err(OAuthError::invalid_target(format!(
                "{} resources: a task token has exactly one audience; ask once per resource",
                all.len()
            )))
        }
    };
    limits::audience(r).map_err(|s| OAuthError::invalid_target(s.message()))?;
    let absolute = r
        .split_once(':')
        .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty());
    if !absolute || r.contains('#') || r.chars().any(char::is_whitespace) {
        return Err(OAuthError::invalid_target(format!(
            "resource {:?} must be an absolute URI without a fragment (RFC 8707)",
            super::record::clean(r)
        )));
    }
    Ok(r.to_string())
}

/// `scope`, space-separated, each checked like MintTaskToken's.
fn scopes(form: &Form) -> Result<Vec<String>, OAuthError> {
    let list: Vec<String> = form
        .get("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    limits::scopes(&list).map_err(|s| OAuthError::invalid_scope(s.message()))?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn resource_rules() {
        assert_eq!(
            resource(&form("resource=https%3A%2F%2Ft%2Fmcp")).unwrap(),
            "https://t/mcp"
        );
        assert_eq!(resource(&form("")).unwrap_err().code, "invalid_target");
        assert_eq!(
            resource(&form("resource=a:b&resource=c:d"))
                .unwrap_err()
                .code,
            "invalid_target"
        );
        assert_eq!(
            resource(&form("resource=relative")).unwrap_err().code,
            "invalid_target"
        );
        assert_eq!(
            resource(&form("resource=https://t/%23frag"))
                .unwrap_err()
                .code,
            "invalid_target"
        );
        let long = format!(
            "resource=https://t/{}",
            "a".repeat(limits::MAX_AUDIENCE_BYTES)
        );
        assert_eq!(resource(&form(&long)).unwrap_err().code, "invalid_target");
    }

    #[test]
    fn scope_rules() {
        assert_eq!(
            scopes(&form("scope=read+write")).unwrap(),
            ["read", "write"]
        );
        assert!(scopes(&form("")).unwrap().is_empty());
        assert_eq!(
            scopes(&form("scope=a%00b")).unwrap_err().code,
            "invalid_scope"
        );
    }
}
