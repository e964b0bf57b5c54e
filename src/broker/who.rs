//! Who is asking the broker, and which of a caller's identities a request speaks for.

use std::sync::Arc;

use spiffe::SpiffeId;
use tonic::Status;

use crate::caller::Caller;

/// Who is asking: an attested workload, or an operator on the admin socket.
#[derive(Clone)]
pub enum Who {
    Workload(Arc<Caller>),
    Admin,
}

impl Who {
    pub(super) fn label(&self) -> String {
        match self {
            Who::Workload(c) => c
                .identities
                .first()
                .map_or_else(|| format!("pid:{}", c.pid), |i| i.spiffe_id.to_string()),
            Who::Admin => "admin".to_string(),
        }
    }

    pub(super) fn holds(&self, id: &SpiffeId) -> bool {
        match self {
            Who::Workload(c) => c.identities.iter().any(|i| &i.spiffe_id == id),
            Who::Admin => false,
        }
    }
}

/// The identity a request names, or the caller's first.
pub(super) fn choose_identity(caller: &Caller, wanted: &str) -> Result<SpiffeId, Status> {
    let identities = caller.require_identities()?;
    if wanted.is_empty() {
        return Ok(identities[0].spiffe_id.clone());
    }
    let id = crate::server::status::parse_spiffe_id(wanted)?;
    identities
        .iter()
        .find(|i| i.spiffe_id == id)
        .map(|i| i.spiffe_id.clone())
        .ok_or_else(|| {
            Status::permission_denied(format!("no identity issued: caller does not hold {id}"))
        })
}
