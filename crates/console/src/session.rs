//! Who is signed in to the console, and the checks every page and form goes through.
//!
//! A session is a signed cookie, `base64url(client|expiry|nonce).base64url(HMAC-SHA256)`, with
//! a key derived from the token signing key ([`web::Authenticator::derived_key`]): stateless,
//! so it works on every Tocsin process that shares the key, and it can never pass for an API
//! token. The client's scopes are not in the cookie: they are read from the current client
//! list on every request, so a removed client or scope takes effect at once.
//!
//! Sign-in and sign-out are recorded in the audit log (`store::audit`, shared by the processes
//! on a PostgreSQL store); sign-out claims the once-only key `console-session-end:{nonce}`
//! there, and every request checks that key (one store read), so a signed-out cookie is
//! refused by every process — a copied one included.
//!
//! Every form carries the session's anti-forgery token (`HMAC(key, "csrf|" + nonce)`), checked
//! on every POST, and a POST whose `Origin` names another host is refused; the cookie is
//! `SameSite=Strict` besides. The sign-in form, before any session exists, is protected by the
//! `Origin` check and the same-site cookie.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use store::audit::{AuditEntry, AuditLog};
use subtle::ConstantTimeEq;
use warp::{Filter, Rejection};
use web::{Authenticator, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "tocsin_console";

/// A signed-in client, as a page sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Viewer {
    pub client: String,
    pub scopes: Vec<Scope>,
    /// The anti-forgery token every form of this session carries.
    pub csrf: String,
    #[serde(skip)]
    nonce: String,
}

impl Viewer {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why the console refuses a request: rendered as a page by [`crate::recover`].
#[derive(Debug)]
pub enum Refusal {
    /// No session, or an expired or ended one: sign in first.
    SignIn,
    /// Signed in, but not allowed: says why (a 403 page).
    Forbidden(String),
}

impl warp::reject::Reject for Refusal {}

/// Issues and checks sessions.
pub struct Sessions {
    auth: Arc<Authenticator>,
    key: Vec<u8>,
    lifetime_seconds: i64,
    /// Cookies get `Secure` (the console is served over TLS).
    secure: bool,
    /// Where sign-ins and sign-outs are recorded, and a sign-out's key is claimed.
    audit: AuditLog,
}

impl Sessions {
    pub fn new(
        auth: Arc<Authenticator>,
        lifetime_seconds: i64,
        secure: bool,
        audit: AuditLog,
    ) -> Self {
        let key = auth.derived_key("console session");
        Sessions {
            auth,
            key,
            lifetime_seconds,
            secure,
            audit,
        }
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    fn mac(&self, text: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn csrf_of(&self, nonce: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&format!("csrf|{nonce}")))
    }

    /// A new session for `client`: the `Set-Cookie` value.
    pub fn start(&self, client: &str, now: i64) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
        let claims = format!("{client}|{}|{nonce}", now + self.lifetime_seconds);
        let value = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(self.mac(&claims))
        );
        self.cookie(&value, self.lifetime_seconds)
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn cleared(&self) -> String {
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        // `Path=/`, not `/ui`: the action links' pages (`/tocsin/v1/act/…`) read it too. The APIs
        // never do (they take credentials only from `Authorization`), so it grants nothing there.
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    /// The viewer a cookie value stands for: genuine, unexpired, not signed out (on any
    /// process), and its client still configured. A store that cannot be read refuses.
    async fn viewer_of(&self, value: &str, now: i64) -> Option<Viewer> {
        let viewer = self.open(value, now)?;
        match self.audit.taken(&ended_key(&viewer.nonce)).await {
            Ok(false) => Some(viewer),
            Ok(true) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether a console session was signed out; refusing it");
                None
            }
        }
    }

    /// The viewer the session cookie in a `Cookie` header stands for, if any (see
    /// [`Sessions::viewer_of`]).
    pub(crate) async fn viewer_of_cookie(&self, header: Option<&str>) -> Option<Viewer> {
        let value = header.and_then(cookie_value)?;
        self.viewer_of(value, clock::now_epoch_seconds()).await
    }

    /// The viewer a cookie value stands for by its signature, expiry and client alone.
    fn open(&self, value: &str, now: i64) -> Option<Viewer> {
        let (claims, signature) = value.split_once('.')?;
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        if !bool::from(self.mac(&claims).ct_eq(&signature)) {
            return None;
        }
        let mut parts = claims.rsplitn(3, '|');
        let nonce = parts.next()?.to_owned();
        let expires: i64 = parts.next()?.parse().ok()?;
        let client = parts.next()?.to_owned();
        if expires <= now {
            return None;
        }
        let scopes = self.auth.scopes_of(&client)?;
        Some(Viewer {
            csrf: self.csrf_of(&nonce),
            client,
            scopes,
            nonce,
        })
    }

    /// Records that `client` signed in.
    pub async fn signed_in(&self, client: &str) {
        self.note(client, "sign-in", None).await;
    }

    /// Ends `viewer`'s session on every process, and records it.
    pub async fn end(&self, viewer: &Viewer) {
        let key = ended_key(&viewer.nonce);
        self.note(&viewer.client, "sign-out", Some(key)).await;
    }

    /// One line of the audit log about a session of `client`.
    async fn note(&self, client: &str, action: &str, dedupe_key: Option<String>) {
        let entry = AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: clock::now_epoch_millis(),
            who: client.to_owned(),
            via: "console".into(),
            action: action.into(),
            target: "session".into(),
            outcome: "done".into(),
            detail: None,
            dedupe_key,
        };
        if let Err(e) = self.audit.record(&entry).await {
            tracing::warn!(error = %e, client, action, "cannot record a console session in the audit log");
        }
    }

    /// Whether `token` is `viewer`'s anti-forgery token.
    fn genuine_form(&self, viewer: &Viewer, token: Option<&str>) -> bool {
        token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(viewer.csrf.as_bytes())))
    }
}

/// The once-only audit key a sign-out claims for the session `nonce`.
fn ended_key(nonce: &str) -> String {
    format!("console-session-end:{nonce}")
}

/// The session cookie's value in a `Cookie` header.
fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The signed-in viewer, if `scope` is given holding it; refuses otherwise.
pub fn viewer(
    sessions: Arc<Sessions>,
    scope: Option<Scope>,
) -> impl Filter<Extract = (Viewer,), Error = Rejection> + Clone {
    warp::header::optional::<String>("cookie").and_then(move |cookie: Option<String>| {
        let sessions = Arc::clone(&sessions);
        async move {
            let viewer = sessions
                .viewer_of_cookie(cookie.as_deref())
                .await
                .ok_or_else(|| warp::reject::custom(Refusal::SignIn))?;
            match scope {
                Some(scope) if !viewer.may(scope) => {
                    Err(warp::reject::custom(Refusal::Forbidden(format!(
                        "client `{}` lacks the `{}` scope this needs",
                        viewer.client,
                        scope.as_str()
                    ))))
                }
                _ => Ok(viewer),
            }
        }
    })
}

/// A form's fields, as posted.
#[derive(Debug, Clone, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The field `name`, trimmed; `None` if absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// Every field, in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.0
    }
}

/// A POSTed form from another site's page is refused: its `Origin` must name this host.
fn same_origin() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("host"))
        .and_then(|origin: Option<String>, host: Option<String>| async move {
            let Some(origin) = origin else {
                return Ok(());
            };
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            if origin_host.is_some() && origin_host == host.as_deref() {
                Ok(())
            } else {
                Err(warp::reject::custom(Refusal::Forbidden(format!(
                    "the form was sent from another site ({origin})"
                ))))
            }
        })
        .untuple_one()
}

/// A form body of at most `limit` bytes, from this site.
pub fn form(limit: u64) -> impl Filter<Extract = (Form,), Error = Rejection> + Clone {
    warp::post()
        .and(same_origin())
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::form::<Vec<(String, String)>>())
        .map(Form)
}

/// A POST by the signed-in viewer holding `scope` (if given), from this site, with the
/// session's anti-forgery token: the viewer and the form.
pub fn signed_form(
    sessions: Arc<Sessions>,
    scope: Option<Scope>,
    limit: u64,
) -> impl Filter<Extract = (Viewer, Form), Error = Rejection> + Clone {
    form(limit)
        .and(viewer(Arc::clone(&sessions), scope))
        .and_then(move |form: Form, viewer: Viewer| {
            let genuine = sessions.genuine_form(&viewer, form.get("csrf"));
            async move {
                if genuine {
                    Ok((viewer, form))
                } else {
                    Err(warp::reject::custom(Refusal::Forbidden(
                        "the form's anti-forgery token is missing or not this session's: \
                         reload the page and send it again"
                            .into(),
                    )))
                }
            }
        })
        .untuple_one()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn sessions(dir: &std::path::Path) -> Sessions {
        let clients = [web::Client {
            name: "ops".into(),
            password: "pw".into(),
            scopes: vec![Scope::Responder],
        }];
        let auth = Authenticator::new(&clients, b"key".to_vec(), Duration::from_secs(60)).unwrap();
        let audit = AuditLog::open(&store::Location::Sqlite(dir.to_owned()))
            .await
            .unwrap();
        Sessions::new(Arc::new(auth), 600, true, audit)
    }

    fn value(set_cookie: &str) -> &str {
        let (pair, _) = set_cookie.split_once(';').unwrap();
        pair.split_once('=').unwrap().1
    }

    #[tokio::test]
    async fn a_session_opens_until_it_expires_or_ends_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = sessions(dir.path()).await;
        let set_cookie = sessions.start("ops", 1000);
        assert!(
            set_cookie.contains("HttpOnly; SameSite=Strict"),
            "{set_cookie}"
        );
        assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
        let cookie = value(&set_cookie);
        let viewer = sessions.open(cookie, 1599).expect("valid");
        assert_eq!(
            (viewer.client.as_str(), viewer.scopes.as_slice()),
            ("ops", &[Scope::Responder][..])
        );
        assert!(sessions.open(cookie, 1600).is_none(), "expired");
        let (claims, signature) = cookie.split_once('.').unwrap();
        let forged = format!("{}.{signature}", URL_SAFE_NO_PAD.encode("ops|99999|x"));
        assert!(sessions.open(&forged, 1001).is_none(), "{claims}");
        assert!(sessions.genuine_form(&viewer, Some(&viewer.csrf.clone())));
        assert!(!sessions.genuine_form(&viewer, Some("nope")));
        assert!(!sessions.genuine_form(&viewer, None));
        assert!(sessions.viewer_of(cookie, 1001).await.is_some());
        sessions.end(&viewer).await;
        assert!(
            sessions.viewer_of(cookie, 1001).await.is_none(),
            "signed out"
        );
        // Every process reading the same audit log refuses it too.
        let elsewhere = self::sessions(dir.path()).await;
        assert!(elsewhere.viewer_of(cookie, 1001).await.is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(cookie_value("a=1; tocsin_console=v.s; b=2"), Some("v.s"));
        assert_eq!(cookie_value("a=1"), None);
    }
}
