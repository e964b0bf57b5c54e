//! The broker's own X.509-SVID from the agent's Workload API (the `spiffe` crate's client),
//! followed across rotations and reconnected with backoff.

use std::sync::Weak;
use std::time::SystemTime;

use futures::StreamExt;
use spiffe::{SpiffeId, WorkloadApiClient};

use super::backoff::Backoff;
use super::SpireAuthority;

/// What we keep of our own SVID: who we are and until when.
#[derive(Debug, Clone)]
pub struct OwnSvid {
    pub spiffe_id: SpiffeId,
    pub not_after: Option<SystemTime>,
}

pub(super) async fn follow(authority: Weak<SpireAuthority>) {
    let mut backoff = Backoff::default();
    loop {
        let Some(me) = authority.upgrade() else {
            return;
        };
        let endpoint = me.config.workload_socket.clone();
        drop(me);
        let why = match WorkloadApiClient::connect_to(&endpoint).await {
            Ok(client) => match client.stream_x509_contexts().await {
                Ok(mut stream) => loop {
                    match stream.next().await {
                        Some(Ok(ctx)) => {
                            backoff.reset();
                            let Some(me) = authority.upgrade() else {
                                return;
                            };
                            let own = ctx.default_svid().map(|s| OwnSvid {
                                spiffe_id: s.spiffe_id().clone(),
                                not_after: not_after(s.leaf().as_bytes()),
                            });
                            if let Some(o) = &own {
                                tracing::debug!(spiffe_id = %o.spiffe_id, "own X.509-SVID from SPIRE");
                                if o.spiffe_id.trust_domain() != me.trust_domain() {
                                    tracing::error!(
                                        own = %o.spiffe_id,
                                        trust_domain = %me.trust_domain(),
                                        "the SPIRE agent serves another trust domain: set trust_domain to SPIRE's"
                                    );
                                }
                            }
                            me.own.send_replace(own);
                            me.set_link(|l| l.own_svid = true);
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "stream closed".to_string(),
                    }
                },
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        let Some(me) = authority.upgrade() else {
            return;
        };
        tracing::debug!(error = %why, "SPIRE Workload API stream down; reconnecting");
        me.set_link(|l| l.own_svid = false);
        drop(me);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn not_after(der: &[u8]) -> Option<SystemTime> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
}
