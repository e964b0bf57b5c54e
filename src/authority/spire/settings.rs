//! `[authority.spire]`: the agent's two sockets and how long to wait for it at start.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub(super) fn default_startup_wait() -> Duration {
    Duration::from_secs(10)
}

/// `[authority.spire]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpireAuthorityConfig {
    /// The agent's Workload API, `unix:///run/spire/agent/public/api.sock`: the broker's own
    /// SVID.
    pub workload_socket: String,
    /// The agent's admin socket, `unix:///run/spire/agent/admin/admin.sock`: the Delegated
    /// Identity API. svid-broker's SPIFFE ID must be in the agent's `authorized_delegates`.
    pub admin_socket: String,
    /// How long `run` waits at start for the first trust bundle before serving degraded.
    #[serde(default = "default_startup_wait", with = "humantime_serde")]
    pub startup_wait: Duration,
}

impl SpireAuthorityConfig {
    /// # Errors
    /// A socket that is not `unix:///absolute/path`.
    pub fn validate(&self) -> Result<(), String> {
        socket_path("authority.spire.workload_socket", &self.workload_socket)?;
        socket_path("authority.spire.admin_socket", &self.admin_socket)?;
        if self.startup_wait > Duration::from_secs(600) {
            return Err("authority.spire.startup_wait is above 10m".into());
        }
        Ok(())
    }

    pub(super) fn admin_path(&self) -> PathBuf {
        socket_path("", &self.admin_socket).unwrap_or_default()
    }
}

pub(super) fn socket_path(name: &str, s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => Err(format!(
            "{name} = {s:?}: expected a Unix socket address, unix:///absolute/path"
        )),
    }
}
