//! The SPIFFE Workload API service (`SpiffeWorkloadAPI`), standard behaviour only: extra
//! functionality lives in separate services.

use std::sync::Arc;
use std::time::SystemTime;

use spiffe::SpiffeId;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::audit::{AuditEvent, AuditLog, SvidKind};
use crate::authority::Issuer;
use crate::proto::workload as pb;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::server::caller::{Caller, CallerResolver};
use crate::svid::jwt;
use crate::telemetry::Metrics;

mod changes;
mod frames;
mod streams;
mod validated;
use crate::server::caller::{with_attestation_written, AttestationRecord};
pub use frames::{parse_empty_request, WorkloadApiService, FETCH_X509_SVID_PATH};
use streams::{jwt_issued_record, record_issued, with_federated, BoxStream, Made, Records};
use validated::ValidatedTokens;

pub use crate::server::limits::{MAX_AUDIENCES, MAX_AUDIENCE_BYTES, MAX_SPIFFE_ID_BYTES};

/// A hook deciding whether a caller may get a JWT-SVID for an audience (policy, when
/// configured; SPIRE allows any audience).
pub trait AudienceGate: Send + Sync {
    /// # Errors
    /// `PermissionDenied` with the reason when the audience is not allowed.
    fn check(&self, caller: &Caller, spiffe_id: &SpiffeId, audience: &str) -> Result<(), Status>;
}

pub struct WorkloadApi {
    resolver: Arc<CallerResolver>,
    issuer: Arc<dyn Issuer>,
    /// Every SVID handed out is recorded here first, when there is a log.
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
    /// Bumped on every bundle or SVID change; closed at shutdown (see `changes`).
    changes: watch::Receiver<u64>,
    audience_gate: Option<Arc<dyn AudienceGate>>,
    validated: Arc<ValidatedTokens>,
}

impl WorkloadApi {
    pub fn new(
        resolver: Arc<CallerResolver>,
        issuer: Arc<dyn Issuer>,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
        audience_gate: Option<Arc<dyn AudienceGate>>,
    ) -> Self {
        let changes = changes::forwarded(&issuer, shutdown);
        Self {
            resolver,
            issuer,
            audit,
            metrics,
            changes,
            audience_gate,
            validated: Arc::default(),
        }
    }

    fn record<T>(&self, rpc: &'static str, r: Result<T, Status>) -> Result<T, Status> {
        let code = r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.observe_request(rpc, code);
        r
    }

    /// The caller's X.509-SVIDs, the state key (serials and bundle sequence), and the audit
    /// records of handing each SVID to this caller: once per state and connection (see
    /// `caller::Delivered`), so they are built only while nobody has written them.
    fn x509_response(&self, caller: &Caller) -> Result<Made<pb::X509svidResponse>, Status> {
        let bundle = self.issuer.current_bundle();
        let identities = caller.current_identities()?;
        let mut issued = Vec::with_capacity(identities.len());
        let mut serials = Vec::with_capacity(identities.len() + 1);
        for identity in &identities {
            let svid = self.issuer.x509_svid(identity)?;
            self.metrics.x509_issued(svid.not_after);
            serials.push(svid.serial.clone());
            issued.push((identity, svid));
        }
        serials.push(bundle.sequence.to_string());
        let once = caller.delivered.cell(&serials);
        let mut records = Vec::new();
        if !once.initialized() {
            for (identity, svid) in &issued {
                records.push(AuditEvent::SvidIssued {
                    spiffe_id: identity.spiffe_id.to_string(),
                    svid: SvidKind::X509,
                    serial: Some(svid.serial.clone()),
                    jti: None,
                    audiences: Vec::new(),
                    expires_at: crate::svid::unix_seconds(svid.not_after).max(0) as u64,
                    pid: Some(caller.pid),
                });
            }
        }
        let svids = issued
            .into_iter()
            .map(|(identity, svid)| pb::X509svid {
                spiffe_id: identity.spiffe_id.to_string(),
                x509_svid: svid.chain.concat(),
                x509_svid_key: svid.key.der().to_vec(),
                bundle: bundle.x509_der.clone(),
                hint: identity.hint.clone(),
            })
            .collect();
        Ok((
            pb::X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles: self.issuer.federated_x509_for(caller),
            },
            serials,
            Records::once(records, once),
        ))
    }
}

impl WorkloadApi {
    /// FetchX509SVID for the caller of `request`, whichever way its bytes travel (the
    /// generated server, or `frames`): the caller's stream, whose first message is recorded
    /// (with the caller's attestation when that is not on disk yet) before this returns. The
    /// attestation record is on disk before any answer, the stream or an error.
    async fn fetch_x509svid_stream<T>(
        &self,
        request: &Request<T>,
    ) -> Result<BoxStream<pb::X509svidResponse>, Status> {
        let r = async {
            let (caller, attestation) = self.resolver.resolve_deferring(request).await?;
            let r = self.x509_stream(caller, attestation.as_deref()).await;
            with_attestation_written(attestation.as_deref(), r).await
        }
        .await;
        self.record("FetchX509SVID", r)
    }

    async fn x509_stream(
        &self,
        caller: Arc<Caller>,
        attestation: Option<&AttestationRecord>,
    ) -> Result<BoxStream<pb::X509svidResponse>, Status> {
        caller.require_identities()?;
        let api = Self {
            resolver: self.resolver.clone(),
            issuer: self.issuer.clone(),
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
            changes: self.changes.clone(),
            audience_gate: None,
            validated: self.validated.clone(),
        };
        self.watch_stream(attestation, move || api.x509_response(&caller))
            .await
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<pb::X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.fetch_x509svid_stream(&request)
            .await
            .map(Response::new)
    }

    type FetchX509BundlesStream = BoxStream<pb::X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let r = self
            .bundle_stream(&request, |authority, b| pb::X509BundlesResponse {
                crl: Vec::new(),
                bundles: with_federated(authority, |f| &f.x509, b, b.x509_der.clone()),
            })
            .await;
        self.record("FetchX509Bundles", r)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let r = async {
            let req = request.get_ref();
            check_audiences(&req.audience)?;
            let wanted = if req.spiffe_id.is_empty() {
                None
            } else {
                Some(parse_spiffe_id(&req.spiffe_id)?)
            };
            let (caller, attestation) = self.resolver.resolve_deferring(&request).await?;
            let r: Result<Response<pb::JwtsvidResponse>, Status> = async {
                let identities = caller.require_identities()?;
                let chosen: Vec<_> = match &wanted {
                    Some(id) => {
                        let found: Vec<_> =
                            identities.iter().filter(|i| &i.spiffe_id == id).collect();
                        if found.is_empty() {
                            return Err(Status::permission_denied(format!(
                                "no identity issued: caller does not hold {id}"
                            )));
                        }
                        found
                    }
                    None => identities.iter().collect(),
                };
                let mut svids = Vec::with_capacity(chosen.len());
                let mut records = Vec::with_capacity(chosen.len());
                for identity in chosen {
                    if let Some(gate) = &self.audience_gate {
                        for aud in &req.audience {
                            gate.check(&caller, &identity.spiffe_id, aud)?;
                        }
                    }
                    let token = self
                        .issuer
                        .jwt_svid(&caller, identity, &req.audience)
                        .await?;
                    records.push(jwt_issued_record(&caller, identity, &token));
                    svids.push(pb::Jwtsvid {
                        spiffe_id: identity.spiffe_id.to_string(),
                        svid: token.token.to_string(),
                        hint: identity.hint.clone(),
                    });
                }
                // Every hand-out is recorded, cached token or not, before any token leaves.
                record_issued(
                    self.audit.as_ref(),
                    attestation.as_deref(),
                    Records::each(records),
                )
                .await?;
                for _ in &svids {
                    self.metrics.jwt_issued();
                }
                Ok(Response::new(pb::JwtsvidResponse { svids }))
            }
            .await;
            with_attestation_written(attestation.as_deref(), r).await
        }
        .await;
        self.record("FetchJWTSVID", r)
    }

    type FetchJWTBundlesStream = BoxStream<pb::JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let r = self
            .bundle_stream(&request, |authority, b| pb::JwtBundlesResponse {
                bundles: with_federated(authority, |f| &f.jwt, b, b.jwks.clone()),
            })
            .await;
        self.record("FetchJWTBundles", r)
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let r = async {
            let req = request.get_ref();
            if req.audience.is_empty() {
                return Err(Status::invalid_argument("audience must be specified"));
            }
            if req.audience.len() > MAX_AUDIENCE_BYTES {
                return Err(Status::invalid_argument(format!(
                    "audience longer than {MAX_AUDIENCE_BYTES} bytes"
                )));
            }
            if req.svid.is_empty() {
                return Err(Status::invalid_argument("svid must be specified"));
            }
            self.resolver.resolve(&request).await?;
            let bundle = self.issuer.current_bundle();
            let now = SystemTime::now();
            // A token verified before under the same bundle needs only its time and audience
            // checked again.
            if let Some((spiffe_id, claims)) = self.validated.get(
                &req.svid,
                &req.audience,
                bundle.sequence,
                crate::svid::unix_seconds(now),
            ) {
                return Ok(Response::new(pb::ValidateJwtsvidResponse {
                    spiffe_id: spiffe_id.to_string(),
                    claims: Some(claims),
                }));
            }
            let verified = jwt::verify(&req.svid, &req.audience, now, |td| {
                (td == &bundle.trust_domain).then_some(bundle.as_ref())
            })
            .map_err(|e| Status::invalid_argument(format!("invalid JWT-SVID: {e}")))?;
            let claims = json_to_struct(verified.parsed.claims.clone());
            self.validated
                .insert(&req.svid, bundle.sequence, &verified, &claims);
            Ok(Response::new(pb::ValidateJwtsvidResponse {
                spiffe_id: verified.spiffe_id.to_string(),
                claims: Some(claims),
            }))
        }
        .await;
        self.record("ValidateJWTSVID", r)
    }

    type FetchWITSVIDStream = BoxStream<pb::WitsvidResponse>;

    async fn fetch_witsvid(
        &self,
        _request: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        self.record(
            "FetchWITSVID",
            Err(Status::unimplemented("WIT-SVIDs are not implemented")),
        )
    }

    type FetchWITBundlesStream = BoxStream<pb::WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        _request: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        self.record(
            "FetchWITBundles",
            Err(Status::unimplemented("WIT bundles are not implemented")),
        )
    }
}

/// # Errors
/// `InvalidArgument` for an empty list, too many audiences, or an empty or oversize one.
pub fn check_audiences(audiences: &[String]) -> Result<(), Status> {
    if audiences.is_empty() {
        return Err(Status::invalid_argument("audience must be specified"));
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(Status::invalid_argument(format!(
            "{} audiences requested; the limit is {MAX_AUDIENCES}",
            audiences.len()
        )));
    }
    for a in audiences {
        if a.is_empty() {
            return Err(Status::invalid_argument("audience must not be empty"));
        }
        if a.len() > MAX_AUDIENCE_BYTES {
            return Err(Status::invalid_argument(format!(
                "audience of {} bytes; the limit is {MAX_AUDIENCE_BYTES}",
                a.len()
            )));
        }
    }
    Ok(())
}

pub use crate::server::status::parse_spiffe_id;

pub use crate::proto::json_to_struct;

#[cfg(test)]
#[path = "workload_api/rotation_tests.rs"]
mod rotation_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_bounds_at_their_edges() {
        let ok = vec!["a".to_string(); MAX_AUDIENCES];
        assert!(check_audiences(&ok).is_ok());
        let too_many = vec!["a".to_string(); MAX_AUDIENCES + 1];
        assert_eq!(
            check_audiences(&too_many).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(check_audiences(&["x".repeat(MAX_AUDIENCE_BYTES)]).is_ok());
        assert!(check_audiences(&["x".repeat(MAX_AUDIENCE_BYTES + 1)]).is_err());
        assert!(check_audiences(&[]).is_err());
        assert!(check_audiences(&[String::new()]).is_err());
    }
}
