//! The second audience of a task token minted by an upstream issuer that carries no claims
//! of ours (SPIRE's JWT-SVIDs): `urn:svid-broker:task:<task_id>:<jti>` names the task and
//! makes every mint a distinct token the task table can track.

pub const PREFIX: &str = "urn:svid-broker:task:";

/// The audience naming `task_id` and `jti`.
pub fn encode(task_id: &str, jti: &str) -> String {
    format!("{PREFIX}{task_id}:{jti}")
}

/// `(task_id, jti)` from a task audience.
pub fn parse(aud: &str) -> Option<(&str, &str)> {
    let rest = aud.strip_prefix(PREFIX)?;
    let (task, jti) = rest.rsplit_once(':')?;
    (!task.is_empty() && !jti.is_empty()).then_some((task, jti))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_audience_round_trips() {
        let a = encode("task_ab", "0123");
        assert_eq!(a, "urn:svid-broker:task:task_ab:0123");
        assert_eq!(parse(&a), Some(("task_ab", "0123")));
        assert_eq!(parse("urn:svid-broker:task::x"), None);
        assert_eq!(parse("spiffe://example.org/x"), None);
    }
}
