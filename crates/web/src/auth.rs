//! Who may call which API. Every API needs credentials: HTTP Basic with a configured client, or
//! a bearer token that the OAuth client-credentials endpoint issued to such a client.
//!
//! A client has scopes (producer, consumer, configuration); each API route requires one.
//! A client's password is given in the settings as an Argon2id hash (PHC string, see
//! [`hash_password`]) or, warned about at start, in plaintext; in memory Tocsin keeps a
//! plaintext password only as its SHA-256 digest, compared in constant time.
//!
//! Argon2 is slow on purpose (tens of milliseconds and 19 MiB per check), and producers send
//! their Basic credentials with every request. So a hashed password is verified with Argon2
//! once: the digest of the password that verified is remembered, and later requests compare
//! digests like a plaintext client's. Until then, checks run on the blocking pool (never on the
//! async workers, which would stall every other request) and a few at a time (so a flood of
//! wrong passwords cannot take all the memory). Tokens are
//! stateless — `base64url(client|scopes|expiry).base64url(HMAC-SHA256)` — so that they survive
//! restarts and work across Tocsin processes that share the signing key; a token dies with its
//! client (it is checked against the current client list on every request).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use warp::{Filter, Rejection};

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send events.
    Producer,
    /// Read matched and undelivered events.
    Consumer,
    /// Read and change actions, conditions and subscriptions.
    Configuration,
    /// See alerts and act on them (acknowledge, resolve, comment), and nothing else.
    Responder,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::Producer,
        Scope::Consumer,
        Scope::Configuration,
        Scope::Responder,
    ];

    fn bit(self) -> u8 {
        match self {
            Scope::Producer => 1,
            Scope::Consumer => 2,
            Scope::Configuration => 4,
            Scope::Responder => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Producer => "producer",
            Scope::Consumer => "consumer",
            Scope::Configuration => "configuration",
            Scope::Responder => "responder",
        }
    }
}

/// A configured API client.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub name: String,
    /// An Argon2 PHC string (`$argon2id$v=19$…`), or the password itself.
    pub password: String,
    pub scopes: Vec<Scope>,
}

impl Client {
    /// Whether the password is given in plaintext rather than as a hash.
    pub fn password_is_plaintext(&self) -> bool {
        !self.password.starts_with("$argon2")
    }
}

/// The Argon2id hash of `password` with a random salt, as a PHC string for the settings.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("the default parameters accept any password")
        .to_string()
}

/// A client's password as the settings give it.
enum Password {
    /// Plaintext: only its digest is kept.
    Plain([u8; 32]),
    /// An Argon2 PHC string, and the digest of the password once one verified against it.
    Hashed {
        phc: Arc<str>,
        verified: OnceLock<[u8; 32]>,
    },
}

/// Argon2 checks running at once, at most (each takes 19 MiB).
const ARGON2_CHECKS_AT_ONCE: usize = 4;

/// A configured client whose password hash does not parse.
#[derive(Debug, thiserror::Error)]
#[error("client `{client}`: the password starts like an Argon2 hash but is not one ({problem})")]
pub struct MalformedHash {
    pub client: String,
    problem: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

struct KnownClient {
    password: Password,
    scopes: u8,
}

/// Rejection: no or wrong credentials (401).
#[derive(Debug)]
pub struct Unauthorized {
    pub message: String,
}
impl warp::reject::Reject for Unauthorized {}

/// Rejection: valid credentials without the needed scope (403).
#[derive(Debug)]
pub struct Forbidden {
    pub message: String,
}
impl warp::reject::Reject for Forbidden {}

fn unauthorized(message: impl Into<String>) -> Rejection {
    warp::reject::custom(Unauthorized {
        message: message.into(),
    })
}

/// Checks credentials and issues tokens.
pub struct Authenticator {
    clients: HashMap<String, KnownClient>,
    token_key: Vec<u8>,
    token_lifetime: Duration,
    argon2_checks: tokio::sync::Semaphore,
}

/// A successful client-credentials grant.
#[derive(Debug, serde::Serialize)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
}

impl Authenticator {
    pub fn new(
        clients: &[Client],
        token_key: Vec<u8>,
        token_lifetime: Duration,
    ) -> Result<Self, MalformedHash> {
        let clients = clients
            .iter()
            .map(|c| {
                let password = if c.password_is_plaintext() {
                    Password::Plain(Sha256::digest(c.password.as_bytes()).into())
                } else {
                    let malformed = |problem: String| MalformedHash {
                        client: c.name.clone(),
                        problem,
                    };
                    let hash =
                        PasswordHash::new(&c.password).map_err(|e| malformed(e.to_string()))?;
                    if hash.hash.is_none() {
                        return Err(malformed("it has no hash output".into()));
                    }
                    Password::Hashed {
                        phc: c.password.as_str().into(),
                        verified: OnceLock::new(),
                    }
                };
                let known = KnownClient {
                    password,
                    scopes: c.scopes.iter().fold(0, |bits, s| bits | s.bit()),
                };
                Ok((c.name.clone(), known))
            })
            .collect::<Result<_, _>>()?;
        Ok(Authenticator {
            clients,
            token_key,
            token_lifetime,
            argon2_checks: tokio::sync::Semaphore::new(ARGON2_CHECKS_AT_ONCE),
        })
    }

    /// The scopes of `name` if `password` is its password.
    async fn check_password(&self, name: &str, password: &str) -> Option<u8> {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        // Compare against a dummy when the client is unknown, so timing does not tell names.
        let Some(client) = self.clients.get(name) else {
            let _ = [0u8; 32].ct_eq(&digest);
            return None;
        };
        let equal: bool = match &client.password {
            Password::Plain(expected) => expected.ct_eq(&digest).into(),
            Password::Hashed { phc, verified } => match verified.get() {
                Some(known) => known.ct_eq(&digest).into(),
                None => {
                    let matches = self.argon2_verify(phc, password).await;
                    if matches {
                        let _ = verified.set(digest);
                    }
                    matches
                }
            },
        };
        equal.then_some(client.scopes)
    }

    /// The scopes of client `name` if `password` is its password: the console's sign-in.
    pub async fn sign_in(&self, name: &str, password: &str) -> Option<Vec<Scope>> {
        self.check_password(name, password)
            .await
            .map(scopes_of_bits)
    }

    /// The names of the configured clients.
    pub fn client_names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// The scopes client `name` has now; `None` once it is no longer configured.
    pub fn scopes_of(&self, name: &str) -> Option<Vec<Scope>> {
        self.clients.get(name).map(|c| scopes_of_bits(c.scopes))
    }

    /// A key for `purpose`, derived from the token signing key: what else Tocsin signs (the
    /// console's sessions) works across the processes that share the key, and can never pass
    /// for a token.
    pub fn derived_key(&self, purpose: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.token_key).expect("any key length");
        mac.update(b"tocsin derived key|");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `password` matches the hash `phc`, checked on the blocking pool, a few at once.
    async fn argon2_verify(&self, phc: &Arc<str>, password: &str) -> bool {
        let Ok(_slot) = self.argon2_checks.acquire().await else {
            return false;
        };
        let (phc, password) = (Arc::clone(phc), password.to_owned());
        tokio::task::spawn_blocking(move || {
            let hash = PasswordHash::new(&phc).expect("parsed at start");
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    fn signature(&self, claims: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.token_key).expect("any key length");
        mac.update(claims.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Issues a bearer token to a client that proved its password.
    pub async fn issue_token(&self, name: &str, password: &str, now: i64) -> Option<IssuedToken> {
        let scopes = self.check_password(name, password).await?;
        let expiry = now + self.token_lifetime.as_secs() as i64;
        let claims = format!("{name}|{scopes}|{expiry}");
        let token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(self.signature(&claims))
        );
        Some(IssuedToken {
            access_token: token,
            token_type: "bearer",
            expires_in: self.token_lifetime.as_secs(),
            scope: scopes_of_bits(scopes)
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// The client name and scopes a token stands for, if it is genuine, unexpired and its
    /// client still exists.
    fn check_token(&self, token: &str, now: i64) -> Option<(String, u8)> {
        let (claims, signature) = token.split_once('.')?;
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.token_key).expect("any key length");
        mac.update(claims.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let mut parts = claims.rsplitn(3, '|');
        let expiry: i64 = parts.next()?.parse().ok()?;
        let scopes: u8 = parts.next()?.parse().ok()?;
        let name = parts.next()?.to_owned();
        (expiry > now && self.clients.contains_key(&name)).then_some((name, scopes))
    }

    /// Resolves an `Authorization` header to the caller's scopes.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        now: i64,
    ) -> Result<(String, u8), Rejection> {
        let header = header.ok_or_else(|| {
            unauthorized("credentials are required: use HTTP Basic or a bearer token")
        })?;
        let (kind, value) = header.split_once(' ').unwrap_or((header, ""));
        if kind.eq_ignore_ascii_case("basic") {
            let (name, password) = decode_basic(value.trim())
                .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
            let scopes = self
                .check_password(&name, &password)
                .await
                .ok_or_else(|| unauthorized("unknown client or wrong password"))?;
            Ok((name, scopes))
        } else if kind.eq_ignore_ascii_case("bearer") {
            self.check_token(value.trim(), now)
                .ok_or_else(|| unauthorized("the bearer token is invalid or expired"))
        } else {
            Err(unauthorized(
                "unsupported authorization scheme: use Basic or Bearer",
            ))
        }
    }

    /// A filter that lets a request through only if its credentials carry `scope`.
    pub fn require(
        self: &Arc<Self>,
        scope: Scope,
    ) -> impl Filter<Extract = (), Error = Rejection> + Clone {
        self.identify(scope).map(|_client: String| ()).untuple_one()
    }

    /// Like [`require`](Self::require), and yields the client's name.
    pub fn identify(
        self: &Arc<Self>,
        scope: Scope,
    ) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
        let auth = Arc::clone(self);
        warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
            let auth = Arc::clone(&auth);
            async move {
                let (name, scopes) = auth
                    .authenticate(header.as_deref(), clock::now_epoch_seconds())
                    .await?;
                if scopes & scope.bit() == 0 {
                    return Err(warp::reject::custom(Forbidden {
                        message: format!("client `{name}` lacks the `{}` scope", scope.as_str()),
                    }));
                }
                Ok(name)
            }
        })
    }

    /// The OAuth 2.0 client-credentials token endpoint, `GET` or `POST /oauth/token`: the SAP
    /// clients use both. Client credentials come as HTTP Basic, or as `client_id` and
    /// `client_secret` form or query parameters.
    pub fn token_endpoint(
        self: &Arc<Self>,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
        let auth = Arc::clone(self);
        let form = warp::body::content_length_limit(16 * 1024)
            .and(warp::body::form::<HashMap<String, String>>())
            .or(warp::any().map(HashMap::new))
            .unify();
        warp::path!("oauth" / "token")
            .and(warp::get().or(warp::post()).unify())
            .and(warp::query::<HashMap<String, String>>())
            .and(form)
            .and(warp::header::optional::<String>("authorization"))
            .and_then(
                move |query: HashMap<String, String>,
                      form: HashMap<String, String>,
                      header: Option<String>| {
                    let auth = Arc::clone(&auth);
                    async move {
                        Ok::<_, Rejection>(auth.grant(&query, &form, header.as_deref()).await)
                    }
                },
            )
    }

    async fn grant(
        &self,
        query: &HashMap<String, String>,
        form: &HashMap<String, String>,
        header: Option<&str>,
    ) -> warp::reply::Response {
        use warp::http::StatusCode;
        use warp::Reply;
        let param = |key: &str| form.get(key).or_else(|| query.get(key)).map(String::as_str);
        match param("grant_type") {
            Some("client_credentials") => {}
            Some(other) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    &format!("grant_type `{other}` is not supported; use client_credentials"),
                )
            }
            None => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "`grant_type` is required (client_credentials)",
                )
            }
        }
        let credentials = match header.and_then(|h| h.split_once(' ')) {
            Some((kind, value)) if kind.eq_ignore_ascii_case("basic") => decode_basic(value.trim()),
            _ => param("client_id")
                .zip(param("client_secret"))
                .map(|(i, s)| (i.to_owned(), s.to_owned())),
        };
        let Some((name, password)) = credentials else {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client credentials are required (HTTP Basic or client_id/client_secret)",
            );
        };
        match self
            .issue_token(&name, &password, clock::now_epoch_seconds())
            .await
        {
            Some(token) => warp::reply::json(&token).into_response(),
            None => oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client or wrong secret",
            ),
        }
    }
}

fn scopes_of_bits(bits: u8) -> Vec<Scope> {
    Scope::ALL
        .into_iter()
        .filter(|s| bits & s.bit() != 0)
        .collect()
}

/// RFC 6749 error body, with `message` too so that ANS-style clients show something useful.
fn oauth_error(
    status: warp::http::StatusCode,
    error: &str,
    description: &str,
) -> warp::reply::Response {
    use warp::Reply;
    let body = serde_json::json!({ "error": error, "error_description": description, "message": description });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(STANDARD.decode(value).ok()?).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        let clients = [Client {
            name: "ops".into(),
            password: "s3cret".into(),
            scopes: vec![Scope::Producer, Scope::Consumer],
        }];
        Authenticator::new(&clients, b"key".to_vec(), Duration::from_secs(60)).unwrap()
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[tokio::test]
    async fn basic_credentials_resolve_to_scopes() {
        let auth = authenticator();
        let (name, scopes) = auth
            .authenticate(Some(&basic("ops", "s3cret")), 0)
            .await
            .unwrap();
        assert_eq!(name, "ops");
        assert_eq!(scopes, Scope::Producer.bit() | Scope::Consumer.bit());
        assert!(auth
            .authenticate(Some(&basic("ops", "wrong")), 0)
            .await
            .is_err());
        assert!(auth
            .authenticate(Some(&basic("nobody", "s3cret")), 0)
            .await
            .is_err());
        assert!(auth.authenticate(None, 0).await.is_err());
        assert!(auth.authenticate(Some("Digest abc"), 0).await.is_err());
    }

    #[tokio::test]
    async fn tokens_expire_and_cannot_be_forged() {
        let auth = authenticator();
        let issued = auth.issue_token("ops", "s3cret", 1000).await.unwrap();
        assert_eq!(issued.scope, "producer consumer");
        let header = format!("Bearer {}", issued.access_token);
        assert!(auth.authenticate(Some(&header), 1059).await.is_ok());
        assert!(
            auth.authenticate(Some(&header), 1060).await.is_err(),
            "expired"
        );
        let (claims, _) = issued.access_token.split_once('.').unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode("ops|7|99999");
        let forged = format!(
            "Bearer {forged_claims}.{}",
            issued.access_token.split_once('.').unwrap().1
        );
        assert!(
            auth.authenticate(Some(&forged), 1001).await.is_err(),
            "claims changed: {claims}"
        );
        let other_key = Authenticator::new(
            &[Client {
                name: "ops".into(),
                password: "s3cret".into(),
                scopes: vec![],
            }],
            b"other".to_vec(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(other_key.authenticate(Some(&header), 1001).await.is_err());
        assert!(auth.issue_token("ops", "nope", 0).await.is_none());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let client = Client {
            name: "a".into(),
            password: "hunter2".into(),
            scopes: vec![],
        };
        assert!(!format!("{client:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_hashed_password_verifies_once_and_a_wrong_one_never() {
        let hash = hash_password("s3cret");
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert_ne!(hash, hash_password("s3cret"), "salted");
        let client = Client {
            name: "ops".into(),
            password: hash,
            scopes: vec![Scope::Producer],
        };
        assert!(!client.password_is_plaintext());
        let auth = Authenticator::new(&[client], b"key".to_vec(), Duration::from_secs(60)).unwrap();
        assert!(auth.check_password("ops", "wrong").await.is_none());
        assert_eq!(auth.check_password("ops", "s3cret").await, Some(1));
        let Password::Hashed { verified, .. } = &auth.clients["ops"].password else {
            panic!("hashed");
        };
        assert!(
            verified.get().is_some(),
            "the verified password is remembered"
        );
        assert_eq!(auth.check_password("ops", "s3cret").await, Some(1));
        assert!(auth.check_password("ops", "s3cret ").await.is_none());
    }

    #[test]
    fn a_malformed_hash_names_its_client_only() {
        let client = Client {
            name: "ops".into(),
            password: "$argon2id$v=19$m=19456,t=2,p=1$hunter2".into(),
            scopes: vec![],
        };
        let error = Authenticator::new(&[client], vec![], Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(error.starts_with("client `ops`"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
