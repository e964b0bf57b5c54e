//! Typed errors from below as gRPC statuses: the one place that decides which code a caller
//! sees for each.

use tonic::Status;

use spiffe::SpiffeId;

use crate::audit::AuditError;
use crate::caller::IssueError;
use crate::server::limits::MAX_SPIFFE_ID_BYTES;

impl From<IssueError> for Status {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::NoIdentity(m) => Status::permission_denied(m),
            IssueError::Unavailable(m) => Status::unavailable(m),
            IssueError::Exhausted(m) => Status::resource_exhausted(m),
            IssueError::Failed(m) => Status::internal(m),
        }
    }
}

/// `InvalidArgument` for a request whose own audit record cannot be written (too large, a field
/// too long, a secret-like value): the log is healthy, nothing was written, and the caller must
/// send less (`cut` names what). `None` when the fault is the log's: the caller decides how to
/// say that.
pub fn unrecordable(e: &AuditError, cut: &str) -> Option<Status> {
    e.is_about_the_record().then(|| {
        Status::invalid_argument(format!(
            "the request cannot be recorded, nothing issued: {e}; ask for fewer or shorter {cut}"
        ))
    })
}

/// A SPIFFE ID from a request field.
///
/// # Errors
/// `InvalidArgument` naming the rule the ID breaks.
pub fn parse_spiffe_id(s: &str) -> Result<SpiffeId, Status> {
    if s.len() > MAX_SPIFFE_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "spiffe_id longer than {MAX_SPIFFE_ID_BYTES} bytes"
        )));
    }
    crate::spiffe_id::parse(s)
        .map_err(|e| Status::invalid_argument(format!("invalid spiffe_id {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::NO_IDENTITY;
    use tonic::Code;

    #[test]
    fn each_issue_error_has_its_code_and_keeps_its_message() {
        let s = Status::from(IssueError::no_identity(""));
        assert_eq!(
            (s.code(), s.message()),
            (Code::PermissionDenied, NO_IDENTITY)
        );
        for (e, code) in [
            (IssueError::Unavailable("u".into()), Code::Unavailable),
            (IssueError::Exhausted("u".into()), Code::ResourceExhausted),
            (IssueError::Failed("u".into()), Code::Internal),
        ] {
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, "u"));
        }
    }
}
