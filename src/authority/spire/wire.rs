//! The agent's wire types and errors, as we hand them on: selectors and SPIFFE IDs in SPIRE's
//! shapes, and its statuses as our callers should see them.

use std::collections::BTreeSet;

use tonic::Status;

use crate::attest::Selector;
use crate::caller::NO_IDENTITY;
use crate::proto::spire::api::types as spire_types;

/// A SPIRE agent error as our caller should see it: "no identity" stays `PermissionDenied`,
/// everything else means the agent could not serve us (retryable).
pub fn upstream_status(s: &Status) -> Status {
    match s.code() {
        tonic::Code::PermissionDenied if s.message().contains(NO_IDENTITY) => {
            Status::permission_denied(NO_IDENTITY)
        }
        tonic::Code::PermissionDenied => Status::unavailable(format!(
            "the SPIRE agent refused svid-broker ({}): is svid-broker's SPIFFE ID in the agent's authorized_delegates?",
            s.message()
        )),
        _ => Status::unavailable(format!("SPIRE agent unavailable: {}", s.message())),
    }
}

/// Why a stream to the agent ended, for logs and for callers that find nothing cached. On a
/// stream, PermissionDenied (SPIRE says "no identity issued") means svid-broker itself is not
/// an authorized delegate.
pub fn stream_error(s: &Status) -> String {
    match s.code() {
        tonic::Code::PermissionDenied => format!(
            "the SPIRE agent refused svid-broker ({}): register svid-broker in SPIRE and list its SPIFFE ID in the agent's authorized_delegates",
            s.message()
        ),
        _ => format!("{:?}: {}", s.code(), s.message()),
    }
}

pub fn to_spire_selectors(selectors: &BTreeSet<Selector>) -> Vec<spire_types::Selector> {
    selectors
        .iter()
        .map(|s| spire_types::Selector {
            r#type: s.kind().to_string(),
            value: s.value().to_string(),
        })
        .collect()
}

/// `spiffe://<trust_domain><path>`.
pub fn spiffe_id_string(id: &spire_types::Spiffeid) -> String {
    format!("spiffe://{}{}", id.trust_domain, id.path)
}
