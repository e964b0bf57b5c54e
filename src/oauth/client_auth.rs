//! Client authentication on the OAuth listener: `private_key_jwt` (RFC 7523 §2.2) where the
//! assertion is the client's own JWT-SVID, fetched from the Workload API after attestation,
//! with `aud` = the issuer (or the token endpoint URL); and, for resource servers that may only
//! introspect (`[[oauth.introspection_client]]`), `client_secret_basic` or
//! `client_secret_post` (RFC 6749 §2.3.1). One method per request (RFC 6749 §2.3).
//!
//! TCP carries no peer credentials, so the JWT-SVID is the proof: it was signed by this
//! trust domain's authority for a workload that was attested as its `sub`. Each assertion is
//! accepted once within its lifetime (`jti` remembered until `exp`), so a copied assertion
//! cannot be replayed. The caller handed to the broker carries the identity and selectors of
//! the registration entry that names that SPIFFE ID.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use spiffe::SpiffeId;
use zeroize::Zeroizing;

use super::config::IntrospectionClientConfig;
use super::errors::OAuthError;
use super::form::Form;
use super::record::Record;
use super::secret::ClientSecret;
use crate::authority::Issuer;
use crate::caller::Caller;
use crate::registry::Registry;
use crate::svid::{jwt, unix_seconds};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Most assertion `jti`s remembered at once; past it, new assertions are refused
/// (`temporarily_unavailable`) until old ones expire, rather than forgetting one early.
pub const MAX_REPLAY_ENTRIES: usize = 100_000;
/// Longest assertion lifetime accepted (`exp` − now): the replay cache holds a `jti` that
/// long, so an assertion valid for days would pin memory for days.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Remembers used assertion ids until they expire.
#[derive(Debug, Default)]
pub struct ReplayCache {
    /// (sub, jti) → exp (Unix seconds, leeway included).
    seen: HashMap<(String, String), i64>,
    max: usize,
}

/// Why an assertion was not accepted for use.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    Used,
    Full,
}

impl ReplayCache {
    pub fn new(max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            max,
        }
    }

    /// Records `(sub, jti)` until `exp`; refuses one seen before.
    ///
    /// # Errors
    /// Seen before and not yet expired, or the cache is full of live entries.
    pub fn use_once(&mut self, sub: &str, jti: &str, exp: i64, now: i64) -> Result<(), Replay> {
        let key = (sub.to_string(), jti.to_string());
        if self.seen.get(&key).is_some_and(|e| *e > now) {
            return Err(Replay::Used);
        }
        if self.seen.len() >= self.max {
            self.seen.retain(|_, e| *e > now);
            if self.seen.len() >= self.max {
                return Err(Replay::Full);
            }
        }
        self.seen.insert(key, exp);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// An authenticated client.
pub struct Client {
    pub caller: Arc<Caller>,
    pub spiffe_id: SpiffeId,
    /// The `jti` of the assertion it authenticated with (recorded in the audit log).
    pub assertion_jti: String,
}

/// A resource server that authenticates with a client secret and may only introspect tokens
/// of its `resources` (`[[oauth.introspection_client]]`).
pub struct SecretClient {
    pub client_id: String,
    secret: ClientSecret,
    pub resources: Vec<String>,
}

impl std::fmt::Debug for SecretClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretClient")
            .field("client_id", &self.client_id)
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

impl SecretClient {
    pub fn new(client_id: &str, secret: ClientSecret, resources: Vec<String>) -> Self {
        Self {
            client_id: client_id.to_string(),
            secret,
            resources,
        }
    }
}

/// The configured introspection clients.
#[derive(Debug, Default)]
pub struct SecretClients(Vec<Arc<SecretClient>>);

impl SecretClients {
    /// Reads each client's `secret_file` (see [`ClientSecret::read`]).
    ///
    /// # Errors
    /// A secret file that is not trusted, unreadable, or holds no acceptable secret; the
    /// message names the client and the file, never the secret.
    pub fn load(configs: &[IntrospectionClientConfig]) -> anyhow::Result<Self> {
        let mut clients = Vec::with_capacity(configs.len());
        for c in configs {
            let secret =
                ClientSecret::read("oauth.introspection_client secret_file", &c.secret_file)
                    .map_err(|e| {
                        anyhow::anyhow!("oauth.introspection_client {}: {e}", c.client_id)
                    })?;
            clients.push(SecretClient::new(&c.client_id, secret, c.resources.clone()));
        }
        Ok(Self::new(clients))
    }

    pub fn new(clients: Vec<SecretClient>) -> Self {
        Self(clients.into_iter().map(Arc::new).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client whose id and secret these are.
    ///
    /// # Errors
    /// `invalid_client`, the same for an unknown id as for a wrong secret.
    pub fn check(&self, client_id: &str, secret: &[u8]) -> Result<Arc<SecretClient>, OAuthError> {
        let found = self.0.iter().find(|c| c.client_id == client_id);
        // An unknown id costs a comparison too, so the answer's timing does not tell ids apart.
        let ok = match found {
            Some(c) => c.secret.matches(secret),
            None => {
                let _ = self.0.first().map(|c| c.secret.matches(secret));
                false
            }
        };
        match found {
            Some(c) if ok => Ok(c.clone()),
            _ => Err(OAuthError::invalid_client(
                "client_id and client_secret do not match a configured [[oauth.introspection_client]]",
            )),
        }
    }
}

/// How a request says who its client is (at most one way, RFC 6749 §2.3).
enum Presented {
    Nothing,
    Assertion,
    Secret {
        client_id: String,
        secret: Zeroizing<String>,
        basic: bool,
    },
}

/// A client authenticated at some endpoint.
pub enum Authenticated {
    Workload(Client),
    Introspector(Arc<SecretClient>),
}

impl Authenticated {
    /// The workload, or `unauthorized_client` for an introspection client: it may only
    /// introspect.
    ///
    /// # Errors
    /// As above.
    pub fn workload(self, endpoint: &str) -> Result<Client, OAuthError> {
        match self {
            Authenticated::Workload(c) => Ok(c),
            Authenticated::Introspector(c) => Err(OAuthError::unauthorized_client(format!(
                "client {} is an [[oauth.introspection_client]]: it may only introspect tokens, not use the {endpoint} endpoint (tokens go to workloads that authenticate with their JWT-SVID)",
                c.client_id
            ))),
        }
    }
}

/// The longest `Authorization` value read (a Basic header of the longest id and secret fits).
pub const MAX_AUTHORIZATION_BYTES: usize = 2048;

/// Decodes `Authorization: Basic …` into a client id and secret (RFC 7617, with RFC 6749
/// §2.3.1's form-encoding of each part undone).
fn basic_credentials(value: &str) -> Result<(String, Zeroizing<String>), OAuthError> {
    let bad = |why: &str| {
        OAuthError::invalid_client(format!(
            "the Authorization header is not valid Basic credentials: {why}"
        ))
        .with_basic_challenge()
    };
    if value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(bad("it is too long"));
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| bad("not base64"))?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| bad("not UTF-8"))?;
    let (id, secret) = text
        .split_once(':')
        .ok_or_else(|| bad("no ':' between client_id and client_secret"))?;
    let id = form_decode(id).ok_or_else(|| bad("client_id is not form-encoded"))?;
    let secret = Zeroizing::new(
        form_decode(secret).ok_or_else(|| bad("client_secret is not form-encoded"))?,
    );
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one value; `None` for a broken escape or
/// bytes that are not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Which method a request used.
fn presented(form: &Form, authorization: Option<&str>) -> Result<Presented, OAuthError> {
    let basic = match authorization.map(str::trim) {
        None => None,
        Some(h) => {
            let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(OAuthError::invalid_client(format!(
                    "the Authorization scheme {:?} is not accepted here: authenticate with client_assertion (your JWT-SVID), or as an [[oauth.introspection_client]] with HTTP Basic",
                    super::record::clean(&scheme.chars().take(32).collect::<String>())
                )));
            }
            Some(basic_credentials(rest)?)
        }
    };
    let post = form.get("client_secret");
    let assertion =
        form.get("client_assertion").is_some() || form.get("client_assertion_type").is_some();
    let methods = [basic.is_some(), post.is_some(), assertion];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(OAuthError::invalid_request(
            "more than one client authentication method in one request (RFC 6749 §2.3): send a client_assertion, or HTTP Basic, or client_id with client_secret",
        ));
    }
    if let Some((client_id, secret)) = basic {
        if form.get("client_id").is_some_and(|f| f != client_id) {
            return Err(OAuthError::invalid_client(
                "the client_id parameter is not the client_id of the Authorization header",
            )
            .with_basic_challenge());
        }
        return Ok(Presented::Secret {
            client_id,
            secret,
            basic: true,
        });
    }
    if let Some(secret) = post {
        let client_id = form.get("client_id").ok_or_else(|| {
            OAuthError::invalid_client("client_secret without client_id (client_secret_post)")
        })?;
        return Ok(Presented::Secret {
            client_id: client_id.to_string(),
            secret: Zeroizing::new(secret.to_string()),
            basic: false,
        });
    }
    Ok(if assertion {
        Presented::Assertion
    } else {
        Presented::Nothing
    })
}

/// Verifies client assertions and turns them into callers; checks introspection clients'
/// secrets.
pub struct ClientAuth {
    issuer: String,
    token_endpoint: String,
    identities: Arc<dyn Issuer>,
    registry: Arc<Registry>,
    replay: Mutex<ReplayCache>,
    secret_clients: SecretClients,
}

impl ClientAuth {
    pub fn new(
        issuer: &str,
        token_endpoint: &str,
        identities: Arc<dyn Issuer>,
        registry: Arc<Registry>,
        secret_clients: SecretClients,
    ) -> Self {
        Self {
            issuer: issuer.to_string(),
            token_endpoint: token_endpoint.to_string(),
            identities,
            registry,
            replay: Mutex::new(ReplayCache::new(MAX_REPLAY_ENTRIES)),
            secret_clients,
        }
    }

    /// Whether any `[[oauth.introspection_client]]` is configured (metadata advertises
    /// `client_secret_basic` and `client_secret_post` for introspection only then).
    pub fn has_secret_clients(&self) -> bool {
        !self.secret_clients.is_empty()
    }

    /// The client of a request, by whichever one method it used; the client (SPIFFE ID or
    /// introspection client id) and the assertion's `jti` go into `rec`.
    ///
    /// # Errors
    /// `invalid_request` for more than one method; `invalid_client` for none, or credentials
    /// that do not check out (with a Basic challenge when they came in the Authorization
    /// header); `temporarily_unavailable` when the replay cache is full.
    pub fn authenticate(
        &self,
        form: &Form,
        authorization: Option<&str>,
        rec: &mut Record,
    ) -> Result<Authenticated, OAuthError> {
        match presented(form, authorization)? {
            Presented::Secret {
                client_id,
                secret,
                basic,
            } => {
                let challenge = |e: OAuthError| {
                    if basic {
                        e.with_basic_challenge()
                    } else {
                        e
                    }
                };
                if self.secret_clients.is_empty() {
                    return Err(challenge(OAuthError::invalid_client(
                        "client secrets are accepted only from a configured [[oauth.introspection_client]], and none is configured: authenticate with client_assertion (your JWT-SVID)",
                    )));
                }
                let client = self
                    .secret_clients
                    .check(&client_id, secret.as_bytes())
                    .map_err(challenge)?;
                rec.client = Some(client.client_id.clone());
                Ok(Authenticated::Introspector(client))
            }
            Presented::Nothing | Presented::Assertion => {
                let client = self.assertion_client(form)?;
                rec.client = Some(client.spiffe_id.to_string());
                rec.assertion_jti = Some(client.assertion_jti.clone());
                Ok(Authenticated::Workload(client))
            }
        }
    }

    /// The authenticated client of a request, as a broker caller.
    ///
    /// # Errors
    /// `invalid_client` for a missing, malformed, unverifiable, replayed or unregistered
    /// assertion; `temporarily_unavailable` when the replay cache is full.
    fn assertion_client(&self, form: &Form) -> Result<Client, OAuthError> {
        let (spiffe_id, assertion_jti) = self.verify(form, SystemTime::now())?;
        let (identity, selectors) = self.registry.entry_for_id(&spiffe_id).ok_or_else(|| {
            OAuthError::invalid_client(format!(
                "no registration entry names {spiffe_id}: only workloads of a [[entry]] without placeholders can be OAuth clients"
            ))
        })?;
        Ok(Client {
            caller: Arc::new(Caller {
                pid: 0,
                selectors,
                identities: vec![identity],
                upstream: None,
                delivered: Default::default(),
                selector_text: Default::default(),
            }),
            spiffe_id,
            assertion_jti,
        })
    }

    /// Checks the assertion and spends it; returns its subject and `jti`.
    ///
    /// # Errors
    /// As [`ClientAuth::authenticate`].
    pub fn verify(&self, form: &Form, now: SystemTime) -> Result<(SpiffeId, String), OAuthError> {
        let how = if self.secret_clients.is_empty() {
            "authenticate with client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and client_assertion=<your JWT-SVID for audience the issuer>"
        } else {
            "authenticate with client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and client_assertion=<your JWT-SVID for audience the issuer>, or (at the introspection endpoint only) as an [[oauth.introspection_client]] with HTTP Basic or client_id and client_secret"
        };
        match form.get("client_assertion_type") {
            Some(JWT_BEARER) => {}
            Some(other) => {
                return Err(OAuthError::invalid_client(format!(
                    "client_assertion_type {other:?} is not supported: {how}"
                )))
            }
            None => {
                return Err(OAuthError::invalid_client(format!(
                    "client authentication is required: {how}"
                )))
            }
        }
        let token = form.get("client_assertion").ok_or_else(|| {
            OAuthError::invalid_client(format!("client_assertion is missing: {how}"))
        })?;
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion is {} bytes; the limit is {}",
                token.len(),
                jwt::MAX_TOKEN_BYTES
            )));
        }
        let bad =
            |why: String| OAuthError::invalid_client(format!("client_assertion rejected: {why}"));
        let parsed = jwt::parse(token).map_err(|e| bad(e.to_string()))?;
        let auds = parsed.audiences();
        let aud = [self.issuer.as_str(), self.token_endpoint.as_str()]
            .into_iter()
            .find(|a| auds.contains(a))
            .ok_or_else(|| {
                bad(format!(
                    "its aud is {}, not the issuer {}",
                    auds.join(", "),
                    self.issuer
                ))
            })?
            .to_string();
        let bundle = self.identities.current_bundle();
        let verified = jwt::verify(token, &aud, now, |td| {
            (td == &bundle.trust_domain).then_some(bundle.as_ref())
        })
        .map_err(|e| bad(e.to_string()))?;
        let sub = verified.spiffe_id;
        if let Some(client_id) = form.get("client_id") {
            if client_id != sub.to_string() {
                return Err(bad(format!(
                    "client_id {client_id} is not its subject {sub}"
                )));
            }
        }
        let jti = verified
            .parsed
            .claims
            .get("jti")
            .and_then(|v| v.as_str())
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("no jti (1 to 256 bytes): it could be replayed".into()))?
            .to_string();
        let now_s = unix_seconds(now);
        let exp = verified.parsed.numeric("exp").unwrap_or(0);
        if exp - now_s > MAX_ASSERTION_LIFETIME.as_secs() as i64 {
            return Err(bad(format!(
                "it lives {}s more; the limit is {}s",
                exp - now_s,
                MAX_ASSERTION_LIFETIME.as_secs()
            )));
        }
        let keep_until = exp.saturating_add(jwt::LEEWAY.as_secs() as i64);
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .use_once(&sub.to_string(), &jti, keep_until, now_s)
            .map_err(|r| match r {
                Replay::Used => bad(format!(
                    "it was already used (jti {jti}); fetch a fresh JWT-SVID for each request"
                )),
                Replay::Full => OAuthError::temporarily_unavailable(
                    "too many assertions in flight; retry when some have expired",
                ),
            })?;
        Ok((sub, jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn clients() -> SecretClients {
        let secret = ClientSecret::from_bytes(Zeroizing::new(SECRET.as_bytes().to_vec())).unwrap();
        SecretClients::new(vec![SecretClient::new(
            "fastmcp-tool",
            secret,
            vec!["https://t/mcp".into()],
        )])
    }

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).unwrap()
    }

    fn basic(user: &str, pass: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {b64}")
    }

    #[test]
    fn secrets_check_out_only_whole_and_for_their_client() {
        let c = clients();
        let ok = c.check("fastmcp-tool", SECRET.as_bytes()).unwrap();
        assert_eq!(ok.resources, ["https://t/mcp"]);
        let wrong = c.check("fastmcp-tool", b"0123456789abcdef0123456789abcdeF");
        let unknown = c.check("other", SECRET.as_bytes());
        for e in [wrong.unwrap_err(), unknown.unwrap_err()] {
            assert_eq!((e.code, e.status.as_u16()), ("invalid_client", 401));
            assert!(e.description.contains("do not match"), "{}", e.description);
            assert!(!e.description.contains(SECRET));
        }
        assert!(c.check("fastmcp-tool", &SECRET.as_bytes()[1..]).is_err());
        assert!(SecretClients::default()
            .check("fastmcp-tool", SECRET.as_bytes())
            .is_err());
        let shown = format!("{c:?}");
        assert!(
            shown.contains("fastmcp-tool") && !shown.contains(SECRET),
            "{shown}"
        );
    }

    #[test]
    fn basic_and_post_credentials_are_read() {
        let h = basic("fastmcp-tool", SECRET);
        match presented(&form("token=t"), Some(&h)).unwrap() {
            Presented::Secret {
                client_id,
                secret,
                basic,
            } => {
                assert_eq!(client_id, "fastmcp-tool");
                assert_eq!(secret.as_str(), SECRET);
                assert!(basic);
            }
            _ => panic!("not read as a secret"),
        }
        // RFC 6749 §2.3.1: each part form-encoded before Basic; a lower-case scheme.
        let h = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode("a%2Db:c%7Ed+e")
        );
        let Presented::Secret {
            client_id, secret, ..
        } = presented(&form(""), Some(&h)).unwrap()
        else {
            panic!("not read as a secret")
        };
        assert_eq!((client_id.as_str(), secret.as_str()), ("a-b", "c~d e"));
        let body = format!("client_id=fastmcp-tool&client_secret={SECRET}&token=t");
        let Presented::Secret { basic, .. } = presented(&form(&body), None).unwrap() else {
            panic!("not read as a secret")
        };
        assert!(!basic);
        assert!(matches!(
            presented(&form("token=t"), None).unwrap(),
            Presented::Nothing
        ));
        assert!(matches!(
            presented(&form("client_assertion=x"), None).unwrap(),
            Presented::Assertion
        ));
    }

    #[test]
    fn malformed_or_mixed_credentials_are_refused_in_words() {
        let h = basic("fastmcp-tool", SECRET);
        let cases: Vec<(Form, Option<String>, &str, &str, bool)> = vec![
            (
                form("client_assertion=x"),
                Some(h.clone()),
                "invalid_request",
                "more than one",
                false,
            ),
            (
                form(&format!(
                    "client_id=fastmcp-tool&client_secret={SECRET}&client_assertion=x"
                )),
                None,
                "invalid_request",
                "more than one",
                false,
            ),
            (
                form(&format!("client_secret={SECRET}")),
                Some(h.clone()),
                "invalid_request",
                "more than one",
                false,
            ),
            (
                form(&format!("client_secret={SECRET}")),
                None,
                "invalid_client",
                "without client_id",
                false,
            ),
            (
                form("client_id=other"),
                Some(h.clone()),
                "invalid_client",
                "not the client_id",
                true,
            ),
            (
                form(""),
                Some("Basic !!!".into()),
                "invalid_client",
                "not base64",
                true,
            ),
            (
                form(""),
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("no-colon")
                )),
                "invalid_client",
                "no ':'",
                true,
            ),
            (
                form(""),
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("a:%zz")
                )),
                "invalid_client",
                "form-encoded",
                true,
            ),
            (
                form(""),
                Some(format!("Basic {}", "A".repeat(MAX_AUTHORIZATION_BYTES + 1))),
                "invalid_client",
                "too long",
                true,
            ),
            (
                form(""),
                Some("Bearer abc".into()),
                "invalid_client",
                "scheme \"Bearer\"",
                false,
            ),
        ];
        for (f, h, code, needle, challenge) in cases {
            let Err(e) = presented(&f, h.as_deref()) else {
                panic!("{f:?} {h:?} accepted");
            };
            assert_eq!(e.code, code, "{f:?} {h:?}: {}", e.description);
            assert!(e.description.contains(needle), "{}", e.description);
            assert_eq!(e.basic_challenge, challenge, "{f:?} {h:?}");
            assert!(!e.description.contains(SECRET));
        }
    }

    #[test]
    fn an_assertion_is_used_once_within_its_lifetime() {
        let mut c = ReplayCache::new(10);
        c.use_once("spiffe://td/a", "j1", 100, 50).unwrap();
        assert_eq!(
            c.use_once("spiffe://td/a", "j1", 100, 60),
            Err(Replay::Used)
        );
        // Another subject's jti is its own.
        c.use_once("spiffe://td/b", "j1", 100, 60).unwrap();
        // After expiry the id is forgotten (the token itself is refused as expired).
        c.use_once("spiffe://td/a", "j1", 200, 101).unwrap();
    }

    #[test]
    fn the_cache_is_bounded_and_fails_closed_at_its_edge() {
        let mut c = ReplayCache::new(3);
        for j in ["a", "b", "c"] {
            c.use_once("s", j, 100, 0).unwrap();
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.use_once("s", "d", 100, 0), Err(Replay::Full));
        // Expired entries make room.
        c.use_once("s", "d", 300, 150).unwrap();
        assert_eq!(c.len(), 1);
    }
}
