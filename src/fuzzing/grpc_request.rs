//! The body of a FetchX509SVID request, read before the caller is known
//! ([`crate::workload_api::parse_empty_request`]): a 5-byte gRPC prefix (compression flag,
//! big-endian length) and a message with no fields.

use tonic::Code;

use crate::server::limits::{GRPC_MESSAGE_PREFIX_BYTES, MAX_EMPTY_REQUEST_BYTES};
use crate::workload_api::parse_empty_request;

pub fn check(data: &[u8]) {
    let got = parse_empty_request(data);
    if let Err(status) = &got {
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::Unimplemented),
            "{status:?}"
        );
        let message = status.message();
        assert!(!message.is_empty(), "a refusal says why");
        assert!(
            !message.chars().any(char::is_control),
            "the message goes into a grpc-message header as is: {message:?}"
        );
    }

    // The framing, stated independently of the parser's order of checks.
    let within_bound = data.len() <= GRPC_MESSAGE_PREFIX_BYTES + MAX_EMPTY_REQUEST_BYTES;
    let has_prefix = data.len() >= GRPC_MESSAGE_PREFIX_BYTES;
    let uncompressed = has_prefix && data[0] == 0;
    let one_whole_message = has_prefix
        && u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize
            == data.len() - GRPC_MESSAGE_PREFIX_BYTES;
    if !(within_bound && uncompressed && one_whole_message) {
        assert!(got.is_err(), "a badly framed request was accepted");
    }
    if within_bound && has_prefix && !uncompressed {
        assert_eq!(
            got.as_ref().map_err(tonic::Status::code),
            Err(Code::Unimplemented),
            "a compressed message within the bound is refused as compressed"
        );
    }
    if got.is_err() {
        return;
    }

    // An accepted request stops being one when a second message follows it or a byte of it
    // is missing.
    let mut twice = data.to_vec();
    twice.extend_from_slice(data);
    assert!(
        parse_empty_request(&twice).is_err(),
        "two messages accepted"
    );
    assert!(
        parse_empty_request(&data[..data.len() - 1]).is_err(),
        "a truncated message accepted"
    );
}
