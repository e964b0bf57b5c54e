//! Task token claims. A task token is a JWT-SVID (`sub` = the agent's SPIFFE ID, one `aud`)
//! carrying, in addition: `nbf`, `task_id`, `scope` (space-separated, as OAuth writes it),
//! `act` (RFC 8693 shape: who delegated, nested outward) and `obo` (the user it acts for).

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use spiffe::SpiffeId;

use crate::svid::jwt::{svid_claims, ParsedJwt};
use crate::svid::unix_seconds;

pub struct TaskTokenSpec<'a> {
    pub sub: &'a SpiffeId,
    pub audience: &'a str,
    pub scopes: &'a [String],
    pub ttl: Duration,
    pub jti: &'a str,
    pub task_id: &'a str,
    pub act: Option<&'a Value>,
    pub obo: Option<&'a Value>,
}

pub fn claims(spec: &TaskTokenSpec<'_>, now: SystemTime) -> Map<String, Value> {
    let mut m = svid_claims(
        spec.sub,
        &[spec.audience.to_string()],
        now,
        spec.ttl,
        spec.jti,
    );
    m.insert("nbf".into(), json!(unix_seconds(now)));
    m.insert("task_id".into(), json!(spec.task_id));
    m.insert("scope".into(), json!(spec.scopes.join(" ")));
    if let Some(act) = spec.act {
        m.insert("act".into(), act.clone());
    }
    if let Some(obo) = spec.obo {
        m.insert("obo".into(), obo.clone());
    }
    m
}

/// `act` for a task opened from a parent task owned by `parent_owner`, whose own tokens
/// carried `parent_act`: the most recent actor outermost, as RFC 8693 nests it.
pub fn act_chain(parent_owner: &SpiffeId, parent_act: Option<&Value>) -> Value {
    let mut act = Map::new();
    act.insert("sub".into(), json!(parent_owner.to_string()));
    if let Some(inner) = parent_act {
        act.insert("act".into(), inner.clone());
    }
    Value::Object(act)
}

/// What a verified task token says about its task.
#[derive(Debug, Clone)]
pub struct TaskClaims {
    pub jti: String,
    pub task_id: String,
    pub audience: String,
    pub scopes: Vec<String>,
}

/// Reads the task claims of a verified token; `None` for a JWT-SVID that is not a task
/// token (no `task_id`, or not exactly one audience).
pub fn read(parsed: &ParsedJwt) -> Option<TaskClaims> {
    if !parsed.claims.contains_key("task_id") {
        return read_upstream_minted(parsed);
    }
    let task_id = parsed.claims.get("task_id")?.as_str()?.to_string();
    let jti = parsed.claims.get("jti")?.as_str()?.to_string();
    let [audience] = parsed.audiences()[..] else {
        return None;
    };
    let scopes = parsed
        .claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Some(TaskClaims {
        jti,
        task_id,
        audience: audience.to_string(),
        scopes,
    })
}

/// A task token minted by SPIRE (`[authority] kind = "spire"`): no task claims, two audiences,
/// the relying party and `urn:svid-broker:task:<task_id>:<jti>`. Scopes are known only to the
/// broker (IntrospectToken).
fn read_upstream_minted(parsed: &ParsedJwt) -> Option<TaskClaims> {
    use crate::svid::task_audience::parse as parse_task_audience;
    let [a, b] = parsed.audiences()[..] else {
        return None;
    };
    let (audience, (task_id, jti)) = match (parse_task_audience(a), parse_task_audience(b)) {
        (None, Some(t)) => (a, t),
        (Some(t), None) => (b, t),
        _ => return None,
    };
    Some(TaskClaims {
        jti: jti.to_string(),
        task_id: task_id.to_string(),
        audience: audience.to_string(),
        scopes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_nests_the_latest_actor_outermost() {
        let a = SpiffeId::new("spiffe://example.org/a").unwrap();
        let b = SpiffeId::new("spiffe://example.org/b").unwrap();
        let from_a = act_chain(&a, None);
        let from_b = act_chain(&b, Some(&from_a));
        assert_eq!(
            from_b,
            json!({"sub": "spiffe://example.org/b", "act": {"sub": "spiffe://example.org/a"}})
        );
    }

    #[test]
    fn upstream_minted_tokens_name_their_task_in_a_second_audience() {
        let key = crate::svid::keys::EcKey::generate().unwrap();
        let parsed = |mut claims: Value| {
            claims["sub"] = json!("spiffe://example.org/a");
            claims["exp"] = json!(4_000_000_000u64);
            let token =
                crate::svid::jwt::sign_es256(&key, "k", claims.as_object().unwrap()).unwrap();
            crate::svid::jwt::parse(&token).unwrap()
        };
        let t = parsed(json!({
            "sub": "spiffe://example.org/a",
            "aud": ["urn:svid-broker:task:task_1:j1", "spiffe://example.org/rp"],
        }));
        let c = read(&t).unwrap();
        assert_eq!(
            (c.task_id.as_str(), c.jti.as_str(), c.audience.as_str()),
            ("task_1", "j1", "spiffe://example.org/rp")
        );
        assert!(c.scopes.is_empty());
        // A plain JWT-SVID, or two task audiences, is not a task token.
        assert!(read(&parsed(json!({"aud": ["spiffe://example.org/rp"]}))).is_none());
        assert!(read(&parsed(json!({
            "aud": ["urn:svid-broker:task:t:1", "urn:svid-broker:task:t:2"]
        })))
        .is_none());
    }

    #[test]
    fn claims_carry_one_audience_and_scope_string() {
        let sub = SpiffeId::new("spiffe://example.org/a").unwrap();
        let scopes = vec!["r".to_string(), "w".to_string()];
        let spec = TaskTokenSpec {
            sub: &sub,
            audience: "aud",
            scopes: &scopes,
            ttl: Duration::from_secs(60),
            jti: "j",
            task_id: "t",
            act: None,
            obo: None,
        };
        let m = claims(&spec, SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(m["aud"], json!(["aud"]));
        assert_eq!(m["scope"], json!("r w"));
        assert_eq!(m["exp"], json!(160));
        assert_eq!(m["nbf"], json!(100));
        assert!(!m.contains_key("act"));
    }
}
