//! `[oauth]`: where the OAuth 2.1 face listens, the issuer URL it answers for, and its TLS.
//! Parsing has no side effects; [`OAuthConfig::validate`] says what is wrong in words.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default lifetime of the task a grant without `task_id` opens (it lives as long as its
/// one token).
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(120);
/// Default cap on concurrent HTTP connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default time for a client to send a whole request (headers and body).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a TLS handshake may take.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// TCP address to listen on (`"127.0.0.1:8443"`, `"[::]:8443"`).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Or a Unix socket path (plain HTTP, mode 0666: the assertion, not the socket, decides).
    #[serde(default)]
    pub socket_path: Option<PathBuf>,
    /// The issuer URL: what clients put in their assertion's `aud`, what metadata names, the
    /// base of every endpoint URL. `https://` unless the listener is plain HTTP.
    pub issuer: String,
    /// Operator certificate chain (PEM, leaf first) for TLS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Serve TLS with the broker's own X.509-SVID for this SPIFFE ID (a `[[entry]]` of the
    /// registry), renewed as the authority renews it.
    #[serde(default)]
    pub tls_spiffe_id: Option<String>,
    /// Lifetime of the task (and so the token) of a grant that names no `task_id`.
    #[serde(default = "default_grant_ttl", with = "humantime_serde")]
    pub grant_ttl: Duration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time to send a request's head, and then its body; also how long an idle keep-alive
    /// connection waits for the next request.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// `[[oauth.introspection_client]]`: resource servers that authenticate to the
    /// introspection endpoint with a client secret, and may do nothing else.
    #[serde(default, rename = "introspection_client")]
    pub introspection_clients: Vec<IntrospectionClientConfig>,
}

/// Most `[[oauth.introspection_client]]` tables.
pub const MAX_INTROSPECTION_CLIENTS: usize = 64;
/// Most `resources` of one introspection client.
pub const MAX_CLIENT_RESOURCES: usize = 64;
/// Longest `client_id` of an introspection client.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// `[[oauth.introspection_client]]`: a resource server (for example FastMCP's
/// `IntrospectionTokenVerifier`) that authenticates to `/introspect` with `client_id` and a
/// secret (`client_secret_basic` or `client_secret_post`, RFC 6749 §2.3.1). It may introspect
/// only tokens whose audience is one of its `resources`, and may not get, exchange or revoke
/// tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionClientConfig {
    /// Letters, digits and `-._~` (unchanged by form encoding, so Basic credentials mean the
    /// same encoded or not), at most 128 bytes.
    pub client_id: String,
    /// The secret, alone in a file owned by the daemon's user and not readable by group or
    /// other (read at start; see [`super::secret`]).
    pub secret_file: PathBuf,
    /// The audiences (resource URIs) whose tokens it may introspect.
    pub resources: Vec<String>,
}

/// True for the characters a client id or secret may hold: RFC 3986 unreserved, which
/// `application/x-www-form-urlencoded` leaves as they are.
pub fn is_credential_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

impl IntrospectionClientConfig {
    /// # Errors
    /// The first rule broken, in words naming the client.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.client_id;
        if id.is_empty() || id.len() > MAX_CLIENT_ID_BYTES {
            return Err(format!(
                "oauth.introspection_client client_id {id:?} must be 1 to {MAX_CLIENT_ID_BYTES} bytes"
            ));
        }
        if !id.bytes().all(is_credential_char) {
            return Err(format!(
                "oauth.introspection_client client_id {id:?} may hold only letters, digits and -._~ (a SPIFFE ID authenticates with its JWT-SVID instead, needing no entry here)"
            ));
        }
        if self.secret_file.as_os_str().is_empty() {
            return Err(format!(
                "oauth.introspection_client {id}: secret_file is required"
            ));
        }
        if self.resources.is_empty() || self.resources.len() > MAX_CLIENT_RESOURCES {
            return Err(format!(
                "oauth.introspection_client {id}: resources must list 1 to {MAX_CLIENT_RESOURCES} audiences whose tokens it may introspect"
            ));
        }
        for r in &self.resources {
            let absolute = r
                .split_once(':')
                .is_some_and(|(scheme, _)| !scheme.is_empty());
            if !absolute
                || r.contains('#')
                || r.chars().any(char::is_whitespace)
                || r.len() > crate::broker::limits::MAX_AUDIENCE_BYTES
            {
                return Err(format!(
                    "oauth.introspection_client {id}: resource {r:?} must be an absolute URI without a fragment or spaces, at most {} bytes (a token's aud)",
                    crate::broker::limits::MAX_AUDIENCE_BYTES
                ));
            }
        }
        Ok(())
    }
}

fn default_grant_ttl() -> Duration {
    DEFAULT_GRANT_TTL
}
fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}

/// Why `[oauth]` and `authority.kind = "spire"` do not go together.
pub const SPIRE_REFUSAL: &str = "[oauth] needs authority.kind = \"embedded\": an OAuth client proves itself with a JWT-SVID, not by attestation, so under SPIRE there are no selectors to ask the SPIRE agent to mint its task tokens with";

/// How the listener speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Plain,
    Files { cert: PathBuf, key: PathBuf },
    Svid(String),
}

impl OAuthConfig {
    pub fn tls(&self) -> TlsMode {
        match (&self.tls_cert_file, &self.tls_key_file, &self.tls_spiffe_id) {
            (Some(c), Some(k), None) => TlsMode::Files {
                cert: c.clone(),
                key: k.clone(),
            },
            (None, None, Some(id)) => TlsMode::Svid(id.clone()),
            _ => TlsMode::Plain,
        }
    }

    /// The issuer without a trailing slash.
    pub fn issuer(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    /// The issuer's path ("" or "/prefix"): every endpoint lives under it.
    pub fn path_prefix(&self) -> &str {
        let issuer = self.issuer();
        let rest = issuer.split_once("://").map_or("", |(_, r)| r);
        rest.find('/').map_or("", |i| &rest[i..])
    }

    /// # Errors
    /// The first rule broken, in words naming the key.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.listen, &self.socket_path) {
            (Some(_), Some(_)) => {
                return Err("oauth.listen and oauth.socket_path: set one, not both".into())
            }
            (None, None) => return Err("[oauth] needs listen or socket_path".into()),
            _ => {}
        }
        let tls_parts = [
            self.tls_cert_file.is_some(),
            self.tls_key_file.is_some(),
            self.tls_spiffe_id.is_some(),
        ];
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("oauth.tls_cert_file and oauth.tls_key_file go together".into());
        }
        if tls_parts.iter().filter(|b| **b).count() > 2 || (tls_parts[0] && tls_parts[2]) {
            return Err(
                "oauth: TLS from an operator certificate (tls_cert_file, tls_key_file) or from the broker's X.509-SVID (tls_spiffe_id), not both".into(),
            );
        }
        let tls = self.tls() != TlsMode::Plain;
        if tls && self.socket_path.is_some() {
            return Err("oauth.socket_path is plain HTTP; TLS keys are for oauth.listen".into());
        }
        if let (Some(addr), false) = (self.listen, tls) {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "oauth.listen {addr} is not a loopback address: plain HTTP is only allowed on loopback or a Unix socket; set tls_cert_file and tls_key_file, or tls_spiffe_id"
                ));
            }
        }
        let issuer = self.issuer();
        let scheme_ok = issuer.starts_with("https://") || (!tls && issuer.starts_with("http://"));
        if !scheme_ok {
            return Err(format!(
                "oauth.issuer {issuer:?} must be an https:// URL (http:// only for a plain loopback or Unix-socket listener)"
            ));
        }
        if issuer.contains(['?', '#']) || issuer.split_once("://").is_none_or(|(_, r)| r.is_empty())
        {
            return Err(format!(
                "oauth.issuer {issuer:?} must have a host and no query or fragment (RFC 8414)"
            ));
        }
        if issuer.len() > 1024 {
            return Err("oauth.issuer is longer than 1024 bytes".into());
        }
        if self.max_connections == 0 {
            return Err("oauth.max_connections must be at least 1".into());
        }
        if self.introspection_clients.len() > MAX_INTROSPECTION_CLIENTS {
            return Err(format!(
                "{} [[oauth.introspection_client]] tables; the limit is {MAX_INTROSPECTION_CLIENTS}",
                self.introspection_clients.len()
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for c in &self.introspection_clients {
            c.validate()?;
            if !ids.insert(c.client_id.as_str()) {
                return Err(format!(
                    "oauth.introspection_client client_id {:?} appears twice",
                    c.client_id
                ));
            }
        }
        for (name, d) in [
            ("oauth.request_timeout", self.request_timeout),
            ("oauth.handshake_timeout", self.handshake_timeout),
            ("oauth.grant_ttl", self.grant_ttl),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be more than zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OAuthConfig, String> {
        let c: OAuthConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    #[test]
    fn plain_http_only_on_loopback_or_unix() {
        parse("listen = \"127.0.0.1:8080\"\nissuer = \"http://127.0.0.1:8080\"").unwrap();
        parse("socket_path = \"/run/x.sock\"\nissuer = \"http://localhost\"").unwrap();
        let e = parse("listen = \"0.0.0.0:8080\"\nissuer = \"http://h:8080\"").unwrap_err();
        assert!(e.contains("not a loopback"), "{e}");
        parse("listen = \"0.0.0.0:8443\"\nissuer = \"https://h:8443\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"").unwrap();
        let e = parse("listen = \"0.0.0.0:8443\"\nissuer = \"http://h:8443\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"").unwrap_err();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn issuer_rules_and_prefix() {
        let c = parse("listen = \"127.0.0.1:1\"\nissuer = \"http://127.0.0.1:1/auth/\"").unwrap();
        assert_eq!(c.issuer(), "http://127.0.0.1:1/auth");
        assert_eq!(c.path_prefix(), "/auth");
        assert!(parse("listen = \"127.0.0.1:1\"\nissuer = \"http://h?x=1\"").is_err());
        assert!(parse("listen = \"127.0.0.1:1\"\nissuer = \"ftp://h\"").is_err());
        assert!(parse("issuer = \"http://h\"").is_err());
        assert!(
            parse("listen = \"127.0.0.1:1\"\nissuer = \"http://h\"\ngrant_ttl = \"0s\"").is_err()
        );
        let c =
            parse("listen = \"127.0.0.1:1\"\nissuer = \"http://h\"\ngrant_ttl = \"5m\"").unwrap();
        assert_eq!(c.grant_ttl, Duration::from_secs(300));
    }

    #[test]
    fn spire_mode_is_refused_with_the_reason() {
        let text = "trust_domain = \"example.org\"\n[authority]\nkind = \"spire\"\n[authority.spire]\nworkload_socket = \"unix:///run/a.sock\"\nadmin_socket = \"unix:///run/b.sock\"\n[oauth]\nlisten = \"127.0.0.1:1\"\nissuer = \"http://127.0.0.1:1\"\n";
        let e = crate::config::Config::parse(text).unwrap_err().to_string();
        assert!(e.contains("authority.kind = \"embedded\""), "{e}");
    }

    const BASE: &str = "listen = \"127.0.0.1:1\"\nissuer = \"http://h\"\n";

    fn with_client(table: &str) -> Result<OAuthConfig, String> {
        parse(&format!("{BASE}[[introspection_client]]\n{table}"))
    }

    #[test]
    fn introspection_clients_are_checked() {
        let c = with_client(
            "client_id = \"fastmcp-tool\"\nsecret_file = \"/etc/s\"\nresources = [\"https://t/mcp\"]",
        )
        .unwrap();
        assert_eq!(c.introspection_clients.len(), 1);
        assert_eq!(c.introspection_clients[0].client_id, "fastmcp-tool");
        assert_eq!(c.introspection_clients[0].resources, ["https://t/mcp"]);
        for (table, needle) in [
            (
                "client_id = \"spiffe://td/x\"\nsecret_file = \"/s\"\nresources = [\"https://t\"]",
                "only letters",
            ),
            (
                "client_id = \"\"\nsecret_file = \"/s\"\nresources = [\"https://t\"]",
                "1 to 128 bytes",
            ),
            (
                "client_id = \"a\"\nsecret_file = \"\"\nresources = [\"https://t\"]",
                "secret_file is required",
            ),
            (
                "client_id = \"a\"\nsecret_file = \"/s\"\nresources = []",
                "resources must list",
            ),
            (
                "client_id = \"a\"\nsecret_file = \"/s\"\nresources = [\"relative\"]",
                "absolute URI",
            ),
            (
                "client_id = \"a\"\nsecret_file = \"/s\"\nresources = [\"https://t\"]\nsecret = \"x\"",
                "unknown field",
            ),
        ] {
            let e = with_client(table).unwrap_err();
            assert!(e.contains(needle), "{table}: {e}");
        }
        let long = "a".repeat(MAX_CLIENT_ID_BYTES + 1);
        let e = with_client(&format!(
            "client_id = \"{long}\"\nsecret_file = \"/s\"\nresources = [\"https://t\"]"
        ))
        .unwrap_err();
        assert!(e.contains("1 to 128 bytes"), "{e}");
        with_client(&format!(
            "client_id = \"{}\"\nsecret_file = \"/s\"\nresources = [\"https://t\"]",
            &long[1..]
        ))
        .unwrap();
        let one = "client_id = \"a\"\nsecret_file = \"/s\"\nresources = [\"https://t\"]\n";
        let e = parse(&format!(
            "{BASE}[[introspection_client]]\n{one}[[introspection_client]]\n{one}"
        ))
        .unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn tls_sources_are_exclusive() {
        let e = parse("listen = \"0.0.0.0:1\"\nissuer = \"https://h\"\ntls_cert_file = \"c\"")
            .unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = parse("listen = \"0.0.0.0:1\"\nissuer = \"https://h\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"\ntls_spiffe_id = \"spiffe://td/b\"").unwrap_err();
        assert!(e.contains("not both"), "{e}");
    }
}
