//! The OAuth 2.1 face of the broker (`[oauth]`): Authorization Server Metadata (RFC 8414),
//! a JWKS (RFC 7517), a token endpoint for `client_credentials` and token exchange
//! (RFC 6749, 8693) authenticated by the client's JWT-SVID (RFC 7523), resource indicators
//! (RFC 8707), introspection (RFC 7662) and revocation (RFC 7009) — so off-the-shelf OAuth
//! and MCP libraries get and check the same per-task tokens as the TaskBroker API, through
//! the same broker: attestation, policy, delegation, revocation and audit unchanged.

pub mod client_auth;
pub mod config;
pub mod errors;
pub mod form;
pub mod grants;
pub mod introspect;
pub mod jwks;
pub mod listener;
pub mod metadata;
pub mod record;
pub mod secret;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use config::OAuthConfig;

use crate::authority::settings::{AuthorityConfig, AuthorityKind};
use crate::authority::Issuer;
use crate::broker::Broker;
use crate::registry::Registry;
use client_auth::ClientAuth;
use listener::{Bound, Bounds, SocketFile};
use metadata::Endpoints;

/// What every request handler reads.
pub struct State {
    pub broker: Arc<Broker>,
    pub identities: Arc<dyn Issuer>,
    pub auth: ClientAuth,
    pub endpoints: Endpoints,
    /// The issuer's path, under which every endpoint lives ("" for none).
    pub prefix: String,
    pub grant_ttl: Duration,
    pub jwt_key_ttl: Duration,
}

/// A bound OAuth listener, ready to serve.
pub struct OAuthListener {
    bound: Bound,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    bounds: Bounds,
}

impl OAuthListener {
    /// Binds `[oauth]`'s socket and loads its TLS material.
    ///
    /// # Errors
    /// The SPIRE authority (see below), an address in use, or unreadable TLS files.
    pub async fn bind(
        authority: &AuthorityConfig,
        oauth: &OAuthConfig,
        broker: Arc<Broker>,
        identities: Arc<dyn Issuer>,
        registry: Arc<Registry>,
    ) -> anyhow::Result<Self> {
        if authority.kind == AuthorityKind::Spire {
            // Config::parse refuses this already; kept for configs built in code.
            anyhow::bail!(config::SPIRE_REFUSAL);
        }
        let tls = tls::server_config(&oauth.tls(), &identities, &registry)?;
        let secret_clients = client_auth::SecretClients::load(&oauth.introspection_clients)?;
        let bound = match (&oauth.listen, &oauth.socket_path) {
            (Some(addr), _) => Bound::Tcp(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("oauth.listen {addr}: {e}"))?,
            ),
            (None, Some(path)) => {
                let _ = std::fs::remove_file(path);
                let l = tokio::net::UnixListener::bind(path)
                    .map_err(|e| anyhow::anyhow!("oauth.socket_path {}: {e}", path.display()))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
                Bound::Unix(l, SocketFile(path.clone()))
            }
            (None, None) => anyhow::bail!("[oauth] needs listen or socket_path"),
        };
        let endpoints = Endpoints::new(oauth.issuer());
        let auth = ClientAuth::new(
            &endpoints.issuer,
            &endpoints.token,
            identities.clone(),
            registry,
            secret_clients,
        );
        let state = Arc::new(State {
            broker,
            identities,
            auth,
            prefix: oauth.path_prefix().to_string(),
            endpoints,
            grant_ttl: oauth.grant_ttl,
            jwt_key_ttl: authority.jwt_key_ttl,
        });
        Ok(Self {
            bound,
            tls,
            state,
            bounds: Bounds {
                max_connections: oauth.max_connections,
                request_timeout: oauth.request_timeout,
                handshake_timeout: oauth.handshake_timeout,
            },
        })
    }

    /// The bound TCP address, if any.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.bound {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }

    /// Serves until `drain` turns true, then stops accepting and returns once the requests in
    /// progress are answered (see [`listener::serve`]); the caller bounds that wait.
    pub async fn serve(self, drain: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(
            issuer = %self.state.endpoints.issuer,
            tls = self.tls.is_some(),
            "oauth listener serving"
        );
        listener::serve(self.bound, self.tls, self.state, self.bounds, drain).await;
    }
}
