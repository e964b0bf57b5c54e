//! A broker on fakes for the operations' unit tests: the fake issuer, a recording audit
//! sink, a fake clock and the development policy (everything the grant allows).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::oidc::OidcIssuers;
use super::{Broker, BrokerConfig, BrokerParts};
use crate::audit::{AuditEvent, RecordingSink};
use crate::authority::fake::FakeIssuer;
use crate::caller::Caller;
use crate::clock::FakeClock;
use crate::policy::PolicyEngine;
use crate::proto::svidbroker::v1 as pb;
use crate::registry::Identity;
use crate::telemetry::Metrics;

pub const AGENT: &str = "spiffe://example.org/agent/a";
pub const OTHER: &str = "spiffe://example.org/agent/b";
pub const TOOL: &str = "https://tool.example";

pub struct Kit {
    pub broker: Broker,
    pub issuer: Arc<FakeIssuer>,
    pub sink: Arc<RecordingSink>,
    pub clock: FakeClock,
}

pub fn kit() -> Kit {
    kit_with(BrokerConfig::default())
}

/// A kit whose broker runs on `config`.
pub fn kit_with(config: BrokerConfig) -> Kit {
    let issuer = FakeIssuer::new("example.org");
    let sink = Arc::new(RecordingSink::default());
    let clock = FakeClock::now_truncated();
    let policy = PolicyEngine::from_text(crate::policy::DEVELOPMENT_POLICY, Default::default())
        .expect("development policy");
    let broker = Broker::new(BrokerParts {
        config,
        issuer: issuer.clone(),
        policy: Some(Arc::new(policy)),
        audit: Some(sink.clone()),
        oidc: OidcIssuers::load(&[]).expect("no OIDC issuers"),
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(clock.clone()),
    });
    Kit {
        broker,
        issuer,
        sink,
        clock,
    }
}

/// A caller attested as `spiffe_id`.
pub fn caller(spiffe_id: &str) -> Arc<Caller> {
    Arc::new(Caller {
        pid: 4242,
        selectors: BTreeSet::new(),
        identities: vec![Identity {
            spiffe_id: crate::spiffe_id::parse(spiffe_id).expect("test SPIFFE ID"),
            x509_ttl: Duration::from_secs(3600),
            jwt_ttl: Duration::from_secs(300),
            hint: String::new(),
        }],
        upstream: None,
        delivered: Default::default(),
        selector_text: Default::default(),
    })
}

pub fn open_request(audiences: &[&str], scopes: &[&str], ttl_seconds: u32) -> pb::OpenTaskRequest {
    pb::OpenTaskRequest {
        purpose: "unit test".into(),
        audiences: audiences.iter().map(ToString::to_string).collect(),
        scopes: scopes.iter().map(ToString::to_string).collect(),
        ttl_seconds,
        ..Default::default()
    }
}

pub fn mint_request(task_id: &str, audience: &str, scopes: &[&str]) -> pb::MintTaskTokenRequest {
    pb::MintTaskTokenRequest {
        task_id: task_id.into(),
        audience: audience.into(),
        scopes: scopes.iter().map(ToString::to_string).collect(),
        ..Default::default()
    }
}

/// `count` audiences under `prefix`, each padded to `bytes`: requests near the size bounds.
pub fn padded_audiences(prefix: &str, count: usize, bytes: usize) -> Vec<String> {
    (0..count)
        .map(|a| {
            let mut s = format!("{prefix}/{a}/");
            s.extend(std::iter::repeat_n('x', bytes - s.len()));
            s
        })
        .collect()
}

/// Opens a task for AGENT on TOOL with scopes `read` and `write`.
pub async fn open_task(kit: &Kit) -> pb::OpenTaskResponse {
    kit.broker
        .open_task(
            &caller(AGENT),
            open_request(&[TOOL], &["read", "write"], 600),
        )
        .await
        .expect("task opens")
}

/// The kinds of the records written, in order (`"token_issued"`, …).
pub fn kinds(records: &[AuditEvent]) -> Vec<String> {
    records
        .iter()
        .map(|e| {
            serde_json::to_value(e).expect("event encodes")["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// `token` with its payload rewritten by `edit`, its header and signature kept: the jti is
/// one the broker issued, the bytes are not the ones it signed.
pub fn with_payload(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let mut parts = token.split('.');
    let (header, payload, sig) = (
        parts.next().expect("header"),
        parts.next().expect("payload"),
        parts.next().expect("signature"),
    );
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON payload");
    edit(&mut claims);
    format!(
        "{header}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("JSON"))
    )
}
