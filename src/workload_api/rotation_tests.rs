//! Rotation seen through the Workload API streams, with paused time: SVIDs renew before they
//! expire, and a new CA reaches the bundle stream before any SVID it signed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use spiffe::TrustDomain;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Request;

use super::*;
use crate::attest::peer::PinnedProcess;
use crate::attest::unix::{UnixAttestor, UnixAttestorConfig};
use crate::attest::{Attestors, WorkloadAttestor};
use crate::authority::{EmbeddedAuthority, EmbeddedIssuer};
use crate::config::AuthorityConfig;
use crate::registry::{EntryConfig, Registry};
use crate::server::caller::CallerHandle;
use crate::svid::der::split_certificates;

fn api(ca_ttl: u64, x509_ttl: u64) -> (WorkloadApi, Arc<EmbeddedIssuer>, watch::Sender<bool>) {
    let td = TrustDomain::new("example.org").unwrap();
    let cfg = AuthorityConfig {
        ca_ttl: Duration::from_secs(ca_ttl),
        jwt_key_ttl: Duration::from_secs(100_000),
        ..Default::default()
    };
    let identities = EmbeddedIssuer::new(
        Arc::new(EmbeddedAuthority::new(td.clone(), cfg, None).unwrap()),
        crate::clock::system(),
    );
    let uid = unsafe { libc::geteuid() };
    let registry = Registry::new(
        &td,
        vec![EntryConfig {
            spiffe_id: "spiffe://example.org/test".into(),
            selectors: vec![format!("unix:uid:{uid}")],
            x509_ttl: Some(Duration::from_secs(x509_ttl)),
            jwt_ttl: None,
            hint: String::new(),
        }],
    )
    .unwrap();
    let unix: Arc<dyn WorkloadAttestor> =
        Arc::new(UnixAttestor::new(UnixAttestorConfig::default(), false));
    let metrics = Arc::new(Metrics::default());
    let resolver = Arc::new(CallerResolver::new(
        Attestors::new(vec![unix]),
        Arc::new(registry),
        metrics.clone(),
        identities.clone(),
        None,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let api = WorkloadApi::new(resolver, identities.clone(), None, metrics, stop_rx, None);
    (api, identities, stop_tx)
}

fn request<T>(msg: T, handle: &Arc<CallerHandle>) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(handle.clone());
    r
}

fn signed_by(leaf: &[u8], ca: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    let (_, ca) = X509Certificate::from_der(ca).unwrap();
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

#[tokio::test(start_paused = true)]
async fn streams_get_renewals_in_time_and_new_cas_before_their_svids() {
    let (api, identities, _stop) = api(400, 60);
    let rotation = tokio::spawn(identities.clone().run(_stop.subscribe()));
    let pinned = PinnedProcess::from_pid(std::process::id() as i32).unwrap();
    let handle = Arc::new(CallerHandle::new(Ok(pinned)));
    let mut svids = api
        .fetch_x509svid(request(pb::X509svidRequest {}, &handle))
        .await
        .unwrap()
        .into_inner();
    let mut bundles = api
        .fetch_x509_bundles(request(pb::X509BundlesRequest {}, &handle))
        .await
        .unwrap()
        .into_inner();
    let start = Instant::now();
    let mut cas_seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut last_svid_at = start;
    let mut serials = Vec::new();
    let mut new_ca_svids = 0;
    let first_ca = identities.current_bundle().x509_authorities[0].clone();
    while start.elapsed() < Duration::from_secs(380) {
        tokio::select! {
            Some(b) = bundles.next() => {
                let b = b.unwrap();
                let der = &b.bundles["spiffe://example.org"];
                for ca in split_certificates(der).unwrap() {
                    cas_seen.insert(ca.to_vec());
                }
            }
            Some(s) = svids.next() => {
                let s = s.unwrap();
                let now = Instant::now();
                assert!(now - last_svid_at < Duration::from_secs(60), "an SVID lived past its TTL before renewal");
                last_svid_at = now;
                let leaf = split_certificates(&s.svids[0].x509_svid).unwrap()[0].to_vec();
                serials.push(leaf.clone());
                if !signed_by(&leaf, &first_ca) {
                    new_ca_svids += 1;
                    let issuer = cas_seen.iter().find(|ca| signed_by(&leaf, ca));
                    assert!(issuer.is_some(), "an SVID signed by a CA no bundle had announced");
                    assert!(split_certificates(&s.svids[0].bundle).unwrap().iter().any(|ca| signed_by(&leaf, ca)));
                }
            }
        }
    }
    assert!(serials.len() >= 6, "renewals: {}", serials.len());
    assert!(new_ca_svids >= 1, "the CA rotated during the run");
    assert!(cas_seen.len() >= 2);
    rotation.abort();
}
