//! The Workload API's streams (a message at once, then on every bundle or SVID change, each
//! recorded before it is sent) and the records of what they hand out.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::WorkloadApi;
use crate::audit::{AuditEvent, AuditLog, SvidKind};
use crate::authority::{IssuedJwt, Issuer};
use crate::caller::{Caller, Written};
use crate::server::caller::{audit_refused, record_for, AttestationRecord};
use crate::svid::bundle::TrustBundle;

pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream message, the state it shows (to skip repeats), and the audit records of what it
/// hands out.
pub(super) type Made<T, K = Vec<String>> = (T, K, Records);

/// The audit records of handing something out.
pub(super) struct Records {
    events: Vec<AuditEvent>,
    /// Set when the same records may already have been written for another stream of the
    /// connection (`caller::Delivered`): written once, the first time.
    once: Option<Arc<Written>>,
}

impl Records {
    /// Written for every hand-out.
    pub(super) fn each(events: Vec<AuditEvent>) -> Self {
        Self { events, once: None }
    }

    /// Written once for all the hand-outs `once` stands for.
    pub(super) fn once(events: Vec<AuditEvent>, once: Arc<Written>) -> Self {
        Self {
            events,
            once: Some(once),
        }
    }
}

/// Writes the records of SVIDs handed to a caller (after its attestation record, when that
/// is not on disk yet: one disk wait for both) and returns once they are on disk: an SVID
/// leaves only with its record. Without an audit log, nothing to do.
///
/// # Errors
/// `Unavailable` "audit log unavailable: …" when the log refuses them, `InvalidArgument` when
/// a record is too large to write ([`audit_refused`]); the SVIDs must not be handed out.
pub(super) async fn record_issued(
    audit: Option<&AuditLog>,
    attestation: Option<&AttestationRecord>,
    records: Records,
) -> Result<(), Status> {
    let written = match records.once {
        Some(once) => once
            .get_or_try_init(|| record_for(audit, attestation, records.events))
            .await
            .map(drop),
        None => record_for(audit, attestation, records.events).await,
    };
    written.map_err(audit_refused)
}

impl WorkloadApi {
    /// A stream that sends `make()` at once, then again whenever the bundle or the SVIDs
    /// change and `make` yields a different state (compared by `key`), until shutdown. The
    /// audit records `make` returns with a message are on disk before the message is sent;
    /// when the log refuses them the stream ends with that status instead.
    ///
    /// The first message is built here, after subscribing to changes (so none is missed in
    /// between) and only once: a failure is the call's status, not a broken stream.
    ///
    /// # Errors
    /// The first `make()` failed, or its records could not be written.
    pub(super) async fn watch_stream<T, K>(
        &self,
        attestation: Option<&AttestationRecord>,
        make: impl Fn() -> Result<Made<T, K>, Status> + Send + Sync + 'static,
    ) -> Result<BoxStream<T>, Status>
    where
        T: Send + 'static,
        K: PartialEq + Send + 'static,
    {
        // Subscribed before the first message is made, so no change after it is missed.
        let mut changes = self.changes.clone();
        changes.mark_unchanged();
        let (first, key, records) = make()?;
        record_issued(self.audit.as_ref(), attestation, records).await?;
        // The first message is boxed, and so is a later one while its record is written: an
        // idle stream keeps a pointer, not a message-sized slot, in its state.
        let state = (changes, Some(key), false, Some(Box::new(first)));
        let make = Arc::new(make);
        let audit = self.audit.clone();
        Ok(Box::pin(futures::stream::unfold(
            state,
            move |(mut changes, last, done, pending)| {
                let produced = {
                    let make = make.clone();
                    let audit = audit.clone();
                    async move {
                        if let Some(msg) = pending {
                            return Some((Ok(*msg), (changes, last, false, None)));
                        }
                        if done {
                            return None;
                        }
                        let mut last = last;
                        loop {
                            if last.is_some() && changes.changed().await.is_err() {
                                // Shutting down, or the issuer stopped reporting changes.
                                return None;
                            }
                            match make() {
                                Ok((msg, key, records)) => {
                                    if last.as_ref() == Some(&key) {
                                        continue;
                                    }
                                    // Boxed: the write is rare (once per connection and
                                    // state), and inline its future would make every idle
                                    // stream about 1 KiB larger.
                                    let held = Box::new((msg, key));
                                    let written =
                                        Box::pin(record_issued(audit.as_ref(), None, records));
                                    if let Err(status) = written.await {
                                        return Some((Err(status), (changes, last, true, None)));
                                    }
                                    let (msg, key) = *held;
                                    last = Some(key);
                                    return Some((Ok(msg), (changes, last, false, None)));
                                }
                                Err(status) => {
                                    return Some((Err(status), (changes, last, true, None)))
                                }
                            }
                        }
                    }
                };
                produced
            },
        )))
    }
}

fn bundle_key(b: &TrustBundle) -> String {
    b.trust_domain.id_string()
}

/// The audit record of handing `jwt` to `caller`: named by its `jti` (SPIRE-minted tokens
/// may have none), never by the token.
pub(super) fn jwt_issued_record(
    caller: &Caller,
    identity: &crate::registry::Identity,
    jwt: &IssuedJwt,
) -> AuditEvent {
    AuditEvent::SvidIssued {
        spiffe_id: identity.spiffe_id.to_string(),
        svid: SvidKind::Jwt,
        serial: None,
        jti: jwt.jti.as_deref().map(str::to_string),
        audiences: jwt.audiences.to_vec(),
        expires_at: jwt.expires_at,
        pid: Some(caller.pid),
    }
}

/// Our bundle, plus (under SPIRE) the federated bundles the agent holds.
impl WorkloadApi {
    /// A bundle stream for an attested caller that holds an identity: `message` turns the
    /// current bundle into the response, sent at once and on every bundle change.
    pub(super) async fn bundle_stream<R, T>(
        &self,
        request: &Request<R>,
        message: impl Fn(&dyn Issuer, &TrustBundle) -> T + Send + Sync + 'static,
    ) -> Result<Response<BoxStream<T>>, Status>
    where
        T: Send + 'static,
    {
        let caller = self.resolver.resolve(request).await?;
        caller.require_identities()?;
        let issuer = self.issuer.clone();
        let stream = self
            .watch_stream(None, move || {
                let b = issuer.current_bundle();
                Ok((
                    message(issuer.as_ref(), &b),
                    b.sequence,
                    Records::each(Vec::new()),
                ))
            })
            .await?;
        Ok(Response::new(stream))
    }
}

pub(super) fn with_federated(
    issuer: &dyn Issuer,
    pick: impl Fn(&crate::svid::bundle::Federated) -> &HashMap<String, Vec<u8>>,
    b: &TrustBundle,
    ours: Vec<u8>,
) -> HashMap<String, Vec<u8>> {
    let mut map = pick(&issuer.federated()).clone();
    map.insert(bundle_key(b), ours);
    map
}
