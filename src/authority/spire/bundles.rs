//! Trust bundles from the agent's Delegated Identity API: `SubscribeToX509Bundles` and
//! `SubscribeToJWTBundles`, followed with backoff. The bundle of our trust domain becomes the
//! [`TrustBundle`] every Workload API stream serves; its JWKS bytes are SPIRE's, unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::backoff::Backoff;
use super::{lock, SpireAuthority};
use crate::proto::spire::api::agent::delegatedidentity::v1 as di;
use crate::svid::bundle::{parse_jwt_bundle, TrustBundle};
use crate::svid::der::split_certificates;

pub use crate::svid::bundle::Federated;

/// The last maps the agent sent, keyed by trust domain ID (`spiffe://example.org`).
#[derive(Debug, Default)]
pub struct Parts {
    x509: HashMap<String, Vec<u8>>,
    jwt: HashMap<String, Vec<u8>>,
    sequence: u64,
}

pub(super) async fn follow_x509(authority: Weak<SpireAuthority>) {
    follow(
        authority,
        "X.509",
        |mut client| async move {
            client
                .subscribe_to_x509_bundles(di::SubscribeToX509BundlesRequest {})
                .await
        },
        |l, up| l.x509_bundles = up,
        |p, msg: di::SubscribeToX509BundlesResponse| p.x509 = msg.ca_certificates,
    )
    .await;
}

pub(super) async fn follow_jwt(authority: Weak<SpireAuthority>) {
    follow(
        authority,
        "JWT",
        |mut client| async move {
            client
                .subscribe_to_jwt_bundles(di::SubscribeToJwtBundlesRequest {})
                .await
        },
        |l, up| l.jwt_bundles = up,
        |p, msg: di::SubscribeToJwtBundlesResponse| p.jwt = msg.bundles,
    )
    .await;
}

/// Follows one bundle stream of the agent until the authority is dropped: each message
/// updates its part of the bundle; a broken stream marks the link down and reconnects with
/// backoff.
async fn follow<M, Sub, Fut>(
    authority: Weak<SpireAuthority>,
    kind: &'static str,
    subscribe: Sub,
    link: impl Fn(&mut super::Links, bool),
    apply: impl Fn(&mut Parts, M),
) where
    Sub: Fn(
        di::delegated_identity_client::DelegatedIdentityClient<tonic::transport::Channel>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>>,
{
    let mut backoff = Backoff::default();
    loop {
        let Some(me) = authority.upgrade() else {
            return;
        };
        let client = me.admin_client();
        drop(me);
        let why = match subscribe(client).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff.reset();
                            let Some(me) = authority.upgrade() else {
                                return;
                            };
                            me.set_link(|l| link(l, true));
                            me.update_bundle(|p| apply(p, msg));
                        }
                        Ok(None) => break "stream closed".to_string(),
                        Err(s) => break super::stream_error(&s),
                    }
                }
            }
            Err(s) => super::stream_error(&s),
        };
        let Some(me) = authority.upgrade() else {
            return;
        };
        tracing::debug!(error = %why, kind, "SPIRE bundle stream down; reconnecting");
        me.set_link(|l| link(l, false));
        drop(me);
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

impl SpireAuthority {
    /// Applies a bundle message and republishes our trust domain's bundle when it changed.
    fn update_bundle(&self, apply: impl FnOnce(&mut Parts)) {
        let mut parts = lock(&self.bundle_parts);
        apply(&mut parts);
        let td_id = self.trust_domain.id_string();
        let td_name = self.trust_domain.to_string();
        let find =
            |m: &HashMap<String, Vec<u8>>| m.get(&td_id).or_else(|| m.get(&td_name)).cloned();
        if !parts.x509.is_empty() && find(&parts.x509).is_none() {
            tracing::error!(
                trust_domain = %td_id,
                agent_trust_domains = ?parts.x509.keys().collect::<Vec<_>>(),
                "the SPIRE agent has no bundle for our trust_domain: set trust_domain to SPIRE's"
            );
        }
        let x509 = find(&parts.x509)
            .map(|d| ca_certificates(&d))
            .unwrap_or_default();
        let jwks = find(&parts.jwt);
        let jwt = match &jwks {
            Some(doc) => parse_jwt_bundle(doc).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "SPIRE sent an unreadable JWT bundle; keeping no JWT keys");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let others = |m: &HashMap<String, Vec<u8>>| -> HashMap<String, Vec<u8>> {
            m.iter()
                .filter(|(k, _)| **k != td_id && **k != td_name)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let federated = Federated {
            x509: others(&parts.x509),
            jwt: others(&parts.jwt),
        };
        let federated_changed = *lock(&self.federated).as_ref() != federated;
        if federated_changed {
            *lock(&self.federated) = Arc::new(federated);
        }
        let current = self.current_bundle();
        if current.x509_authorities == x509
            && current.jwt_authorities == jwt
            && jwks.as_ref().is_none_or(|j| *j == current.jwks)
            && !federated_changed
        {
            return;
        }
        parts.sequence += 1;
        let refresh = jwks
            .as_deref()
            .and_then(refresh_hint)
            .unwrap_or(crate::authority::embedded::BUNDLE_REFRESH_HINT);
        let mut bundle = TrustBundle::new(
            self.trust_domain.clone(),
            parts.sequence,
            refresh,
            x509,
            jwt,
        );
        if let Some(raw) = jwks {
            bundle.jwks = raw;
        }
        tracing::info!(
            sequence = parts.sequence,
            x509_authorities = bundle.x509_authorities.len(),
            jwt_authorities = bundle.jwt_authorities.len(),
            "trust bundle from SPIRE"
        );
        self.bundle_tx.send_replace(Arc::new(bundle));
    }
}

fn refresh_hint(jwks: &[u8]) -> Option<std::time::Duration> {
    let v: serde_json::Value = serde_json::from_slice(jwks).ok()?;
    let secs = v.get("spiffe_refresh_hint")?.as_u64()?;
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// The CA certificates of SPIRE's concatenated DER. Unreadable bytes are logged and the
/// certificates before them kept, as the agent's bundle is all the trust this daemon has:
/// dropping every CA for one bad one would fail every workload's handshakes at once.
fn ca_certificates(der: &[u8]) -> Vec<Vec<u8>> {
    let certs = split_certificates(der).or_else(|e| {
        tracing::warn!(error = %e, "SPIRE sent an unreadable CA certificate; ignoring the rest");
        split_certificates(&der[..e.offset])
    });
    certs
        .unwrap_or_default()
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svid::keys::EcKey;
    use crate::svid::x509::CaCert;
    use spiffe::TrustDomain;
    use std::time::Duration;

    #[tokio::test]
    async fn our_bundle_and_federated_ones_are_kept_apart() {
        let td = TrustDomain::new("example.org").unwrap();
        let cfg = crate::authority::spire::SpireAuthorityConfig {
            workload_socket: "unix:///nonexistent/a.sock".into(),
            admin_socket: "unix:///nonexistent/b.sock".into(),
            startup_wait: Duration::from_secs(1),
        };
        let spire = SpireAuthority::new(td.clone(), cfg).unwrap();
        let ca = |td: &TrustDomain| {
            CaCert::self_signed(td, Duration::from_secs(60), EcKey::generate().unwrap())
                .unwrap()
                .cert_der
        };
        let other = TrustDomain::new("partner.org").unwrap();
        let (ours, theirs) = (ca(&td), ca(&other));
        let jwks = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#.to_vec();
        let rx = spire.bundle();
        spire.update_bundle(|p| {
            p.x509 = HashMap::from([
                ("spiffe://example.org".to_string(), ours.clone()),
                ("spiffe://partner.org".to_string(), theirs.clone()),
            ])
        });
        spire.update_bundle(|p| {
            p.jwt = HashMap::from([("spiffe://example.org".to_string(), jwks.clone())])
        });
        assert!(rx.has_changed().unwrap());
        let b = spire.current_bundle();
        assert_eq!(b.x509_authorities, vec![ours]);
        assert_eq!(
            b.jwt_authorities.len(),
            1,
            "a JWKS without `use` is SPIRE's form"
        );
        assert_eq!(b.jwks, jwks, "JWKS served as the agent sent it");
        let f = spire.federated();
        assert_eq!(f.x509.get("spiffe://partner.org"), Some(&theirs));
        assert!(!f.x509.contains_key("spiffe://example.org"));
        let seq = b.sequence;
        spire.update_bundle(|_| {});
        assert_eq!(
            spire.current_bundle().sequence,
            seq,
            "no change, no new sequence"
        );
    }

    #[test]
    fn concatenated_der_splits_back() {
        let td = TrustDomain::new("example.org").unwrap();
        let a =
            CaCert::self_signed(&td, Duration::from_secs(60), EcKey::generate().unwrap()).unwrap();
        let b =
            CaCert::self_signed(&td, Duration::from_secs(60), EcKey::generate().unwrap()).unwrap();
        let joined = [a.cert_der.clone(), b.cert_der.clone()].concat();
        assert_eq!(
            ca_certificates(&joined),
            vec![a.cert_der.clone(), b.cert_der.clone()]
        );
        assert!(ca_certificates(b"garbage").is_empty());
        let torn = [&joined[..], b"\x30\x03"].concat();
        assert_eq!(
            ca_certificates(&torn),
            vec![a.cert_der, b.cert_der],
            "the certificates before unreadable bytes are kept"
        );
    }
}
