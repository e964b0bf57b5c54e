//! The `workload.spiffe.io: true` security header, required exactly once on every call of
//! the Workload API and of the TaskBroker, so a browser or SSRF-able proxy cannot call them.

use tonic::{Request, Status};

pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// A tonic interceptor.
///
/// # Errors
/// `InvalidArgument` when the header is missing, repeated or not exactly `true`.
pub fn require_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    let mut values = req.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"true" => Ok(req),
        (None, _) => Err(Status::invalid_argument(
            "security header missing from request (set metadata workload.spiffe.io: true)",
        )),
        (Some(_), Some(_)) => Err(Status::invalid_argument(
            "security header given more than once",
        )),
        (Some(_), None) => Err(Status::invalid_argument(
            "security header workload.spiffe.io must be exactly \"true\"",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> Request<()> {
        let mut r = Request::new(());
        for v in values {
            r.metadata_mut().append(SECURITY_HEADER, v.parse().unwrap());
        }
        r
    }

    #[test]
    fn header_rules() {
        assert!(require_security_header(with(&["true"])).is_ok());
        for bad in [&[][..], &["True"], &["true", "true"], &["false"]] {
            let err = require_security_header(with(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
