//! Building the parts from the config: policy, audit log, issuer, attestors, connection
//! gate, and the Workload API's policy gate.

use super::*;

/// The connection gate, its cap lowered to what the file-descriptor limit allows (raised to
/// the hard limit first).
pub(super) fn build_gate(lim: &ConnectionLimits) -> Arc<Gate> {
    let max = match limits::raise_fd_limit() {
        Ok(fds) => {
            let by_fds = limits::connections_for_fds(fds);
            let max = lim.max_connections.min(by_fds).max(1);
            tracing::info!(
                fd_limit = fds,
                max_connections = max,
                max_connections_per_uid = lim.max_connections_per_uid.min(max),
                "connection capacity"
            );
            if by_fds < lim.max_connections {
                tracing::warn!(
                    configured = lim.max_connections,
                    "limits.max_connections lowered to what the fd limit allows; raise LimitNOFILE / ulimit -n to hold more"
                );
            }
            max
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the fd limit; keeping limits.max_connections");
            lim.max_connections
        }
    };
    Gate::new(lim, max)
}

pub(super) fn build_policy(config: &Config) -> anyhow::Result<Option<Arc<PolicyEngine>>> {
    let policy = match (&config.policy, config.development_profile) {
        (Some(p), _) => Some(Arc::new(
            PolicyEngine::load(&p.file, config.audiences.clone())
                .map_err(|e| anyhow::anyhow!("[policy] file {}: {e}", p.file.display()))?,
        )),
        (None, true) => Some(Arc::new(PolicyEngine::from_text(
            DEVELOPMENT_POLICY,
            config.audiences.clone(),
        )?)),
        (None, false) => {
            tracing::warn!("no [policy] configured: the TaskBroker denies every request");
            None
        }
    };
    Ok(policy)
}

/// Opens the audit log and reads back its records (to rebuild the task table).
pub(super) async fn open_audit(
    config: &Config,
) -> anyhow::Result<(Option<AuditLog>, Vec<crate::audit::AuditRecord>)> {
    Ok(match &config.audit {
        Some(a) => {
            let dir = a.path.parent().filter(|d| !d.as_os_str().is_empty());
            crate::fs_trust::FsTrust::current().ensure_dir(
                "[audit] path's directory",
                dir.unwrap_or(std::path::Path::new(".")),
                0o700,
            )?;
            let opts = AuditOptions {
                max_file_bytes: a.rotate_at(),
                ..AuditOptions::default()
            };
            let (log, records) = AuditLog::open(&a.path, opts)
                .await
                .map_err(|e| anyhow::anyhow!("[audit] path {}: {e}", a.path.display()))?;
            (Some(log), records)
        }
        None => {
            tracing::warn!("no [audit] path configured: decisions and tokens are not recorded, and a restart forgets tasks");
            (None, Vec::new())
        }
    })
}

/// The issuer `[authority] kind` names.
pub(super) async fn build_issuer(
    config: &Config,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn Issuer>> {
    crate::authority::build(
        &config.trust_domain,
        &config.authority,
        config.data_dir.as_deref(),
        clock.clone(),
    )
    .await
}

/// Policy on the Workload API's JWT-SVID audiences.
pub(super) struct PolicyGate(pub(super) Arc<PolicyEngine>);

impl AudienceGate for PolicyGate {
    fn check(
        &self,
        caller: &Caller,
        spiffe_id: &spiffe::SpiffeId,
        audience: &str,
    ) -> Result<(), tonic::Status> {
        let id = spiffe_id.to_string();
        let selectors = caller.selector_strings();
        let d = self.0.decide(&PolicyRequest {
            principal: Principal {
                spiffe_id: &id,
                trust_domain: spiffe_id.trust_domain_name(),
                selectors,
            },
            action: Action::FetchJwtSvid,
            audience,
            purpose: "",
            scopes: &[],
            ttl_seconds: 0,
            delegation_depth: 0,
            issuance_rate: 0,
            on_behalf_of: "",
        });
        if d.allowed {
            Ok(())
        } else {
            Err(tonic::Status::permission_denied(format!(
                "JWT-SVID for audience {audience:?} {}",
                crate::broker::grant::why(&d)
            )))
        }
    }
}

/// The attestors a config asks for.
///
/// # Errors
/// An attestor cannot be built from its config.
pub fn build_attestors(config: &Config) -> anyhow::Result<Attestors> {
    let unix: Arc<dyn WorkloadAttestor> = Arc::new(UnixAttestor::new(
        config.attestor.unix.clone(),
        // When the issuer keeps the entries, they are not known here: offer unix:sha256 in
        // case one uses it.
        config.registry.wants_sha256() || !config.authority.entries_are_local(),
    ));
    let mut attestors = vec![unix];
    if let Some(k8s) = &config.attestor.k8s {
        let k8s = crate::attest::k8s::K8sAttestor::new(k8s.clone())
            .map_err(|e| anyhow::anyhow!("[attestor.k8s]: {e}"))?;
        attestors.push(Arc::new(k8s));
    }
    Ok(Attestors::new(attestors))
}
