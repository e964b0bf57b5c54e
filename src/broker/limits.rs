//! Bounds on every TaskBroker request field. Over a bound → `InvalidArgument` naming the
//! field and the bound.

use tonic::Status;

pub const MAX_PURPOSE_BYTES: usize = 1024;
pub const MAX_TASK_AUDIENCES: usize = 16;
pub const MAX_AUDIENCE_BYTES: usize = 2048;
pub const MAX_SCOPES: usize = 32;
pub const MAX_SCOPE_BYTES: usize = 128;
pub const MAX_TOKEN_BYTES: usize = 8192;
pub const MAX_TASK_ID_BYTES: usize = 64;
pub const MAX_USES: u32 = 1000;
pub const MAX_REASON_BYTES: usize = 1024;

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// # Errors
/// Empty or oversize purpose.
pub fn purpose(p: &str) -> Result<(), Status> {
    if p.trim().is_empty() {
        return Err(invalid(
            "purpose is required: say what the task is for".into(),
        ));
    }
    if p.len() > MAX_PURPOSE_BYTES {
        return Err(invalid(format!(
            "purpose is {} bytes; the limit is {MAX_PURPOSE_BYTES}",
            p.len()
        )));
    }
    if crate::audit::looks_like_secret(p) {
        return Err(invalid(
            "purpose looks like it contains a token or key; never put credentials in a purpose"
                .into(),
        ));
    }
    Ok(())
}

/// # Errors
/// None, too many, empty or oversize audiences.
pub fn audiences(list: &[String]) -> Result<(), Status> {
    if list.is_empty() {
        return Err(invalid("at least one audience is required".into()));
    }
    if list.len() > MAX_TASK_AUDIENCES {
        return Err(invalid(format!(
            "{} audiences; the limit is {MAX_TASK_AUDIENCES}",
            list.len()
        )));
    }
    list.iter().try_for_each(|a| audience(a))
}

/// # Errors
/// Empty or oversize audience.
pub fn audience(a: &str) -> Result<(), Status> {
    if a.is_empty() {
        return Err(invalid("audience must not be empty".into()));
    }
    if a.len() > MAX_AUDIENCE_BYTES {
        return Err(invalid(format!(
            "audience is {} bytes; the limit is {MAX_AUDIENCE_BYTES}",
            a.len()
        )));
    }
    Ok(())
}

/// # Errors
/// Too many scopes, or one that is empty, oversize or has characters outside
/// `[A-Za-z0-9:._/-]`.
pub fn scopes(list: &[String]) -> Result<(), Status> {
    if list.len() > MAX_SCOPES {
        return Err(invalid(format!(
            "{} scopes; the limit is {MAX_SCOPES}",
            list.len()
        )));
    }
    for s in list {
        if s.is_empty() || s.len() > MAX_SCOPE_BYTES {
            return Err(invalid(format!(
                "scope must be 1 to {MAX_SCOPE_BYTES} bytes"
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._/-".contains(&b))
        {
            return Err(invalid(format!(
                "scope {s:?} has characters outside [A-Za-z0-9:._/-]"
            )));
        }
    }
    Ok(())
}

/// # Errors
/// Oversize token.
pub fn token(name: &str, t: &str) -> Result<(), Status> {
    if t.len() > MAX_TOKEN_BYTES {
        return Err(invalid(format!(
            "{name} is {} bytes; the limit is {MAX_TOKEN_BYTES}",
            t.len()
        )));
    }
    Ok(())
}

/// # Errors
/// Empty or oversize task id.
pub fn task_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("task_id is required".into()));
    }
    if id.len() > MAX_TASK_ID_BYTES {
        return Err(invalid(format!(
            "task_id longer than {MAX_TASK_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// # Errors
/// More uses than allowed.
pub fn max_uses(n: u32) -> Result<(), Status> {
    if n > MAX_USES {
        return Err(invalid(format!("max_uses {n}; the limit is {MAX_USES}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_at_their_edges() {
        assert!(purpose(&"p".repeat(MAX_PURPOSE_BYTES)).is_ok());
        assert!(purpose(&"p".repeat(MAX_PURPOSE_BYTES + 1)).is_err());
        assert!(purpose("  ").is_err());
        assert!(audiences(&vec!["a".into(); MAX_TASK_AUDIENCES]).is_ok());
        assert!(audiences(&vec!["a".into(); MAX_TASK_AUDIENCES + 1]).is_err());
        assert!(audiences(&[]).is_err());
        assert!(audience(&"a".repeat(MAX_AUDIENCE_BYTES)).is_ok());
        assert!(audience(&"a".repeat(MAX_AUDIENCE_BYTES + 1)).is_err());
        assert!(scopes(&vec!["s".into(); MAX_SCOPES]).is_ok());
        assert!(scopes(&vec!["s".into(); MAX_SCOPES + 1]).is_err());
        assert!(scopes(&["s".repeat(MAX_SCOPE_BYTES)]).is_ok());
        assert!(scopes(&["s".repeat(MAX_SCOPE_BYTES + 1)]).is_err());
        assert!(scopes(&["read write".into()]).is_err());
        assert!(scopes(&["repo:read/x-1.2".into()]).is_ok());
        assert!(token("t", &"t".repeat(MAX_TOKEN_BYTES)).is_ok());
        assert!(token("t", &"t".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        assert!(task_id(&"i".repeat(MAX_TASK_ID_BYTES)).is_ok());
        assert!(task_id(&"i".repeat(MAX_TASK_ID_BYTES + 1)).is_err());
        assert!(max_uses(MAX_USES).is_ok());
        assert!(max_uses(MAX_USES + 1).is_err());
    }
}
