//! The web console at `/ui/`: server-rendered pages for the people on call — what is firing,
//! what failed and why, and the one click that fixes it — served by Tocsin itself.
//!
//! A client signs in with its API credentials ([`session`]); what a page shows and which
//! forms it offers follow the client's scopes, and every POST is checked again (scope,
//! anti-forgery token, origin). The pages sit on the same functions as the APIs — the act
//! path of the alerts API, the configuration API's create/update/delete with its validation
//! messages, redelivery, the silences' checks, the action test — never on Tocsin over HTTP.
//!
//! It also serves the pages behind the action links of Teams cards and emails
//! (`/tocsin/v1/act/{token}`, [`act_pages`]), which need its sessions and pages.
//!
//! Data flows: request → [`session`] filters (who, which scope, genuine form) → a page module
//! ([`pages`]) calls the component's function → [`render`] turns the answer into HTML, or a
//! form ends in a 303 back to the page it came from. Templates, CSS and htmx are embedded in
//! the binary; everything works without JavaScript, htmx only spares full page loads.

mod act_pages;
mod pages;
mod render;
pub mod session;

use bus::Bus;
use delivery::channels::Channels;
use delivery::records::RecordStore;
use router::silences::Silences;
use router::store::ConfigStore;
use session::{Refusal, Sessions};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};
use web::{Authenticator, RateLimit, RateLimiter};

/// Sign-in attempts per client: ten at once, then one every ten seconds — enough for people,
/// too few to guess a secret.
const SIGN_IN_LIMIT: RateLimit = RateLimit {
    per_second: 0.1,
    burst: 10,
};

/// `[console]`: the web console's sessions.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// How long a sign-in lasts, in minutes.
    pub session_minutes: u64,
    /// Mark the session cookie `Secure` although Tocsin serves plain HTTP (behind a proxy that
    /// terminates TLS). With `[tls]` set it always is.
    pub secure_cookie: bool,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            session_minutes: 8 * 60,
            secure_cookie: false,
        }
    }
}

/// What the console's pages read and act through; each is the component's own.
pub struct Console {
    pub alerts: alerts::State,
    pub records: RecordStore,
    pub bus: Arc<dyn Bus>,
    pub config: Arc<ConfigStore>,
    pub channels: Channels,
    pub silences: Arc<Silences>,
    pub metrics: Arc<metrics::Metrics>,
    /// The largest form accepted (a configuration import is the largest).
    pub body_limit: u64,
    /// The action links' reader, when `[links] public_url` is set (else their pages say so).
    pub act_links: Option<Arc<web::act_link::ActLinks>>,
    /// Who an email's action link acts as (`chat.identities`).
    pub directory: Arc<chat::settings::Directory>,
}

/// The console's routes under `/ui`, with its own refusal pages; `tls` says whether Tocsin
/// serves HTTPS.
pub fn routes(
    console: Console,
    auth: &Arc<Authenticator>,
    settings: &ConsoleSettings,
    tls: bool,
) -> BoxedFilter<(Response,)> {
    let sign_ins = Arc::new(RateLimiter::new(Some(SIGN_IN_LIMIT), auth.client_names()));
    let sessions = Arc::new(Sessions::new(
        Arc::clone(auth),
        settings.session_minutes.saturating_mul(60) as i64,
        tls || settings.secure_cookie,
        console.alerts.audit.clone(),
    ));
    let console = Arc::new(console);
    let act_pages = act_pages::routes(Arc::clone(&console), Arc::clone(&sessions));
    // Recovering inside `/ui` only: every other path stays the APIs' to answer.
    warp::path("ui")
        .and(
            pages::routes(console, sessions, sign_ins)
                .recover(recover)
                .unify(),
        )
        .or(act_pages)
        .unify()
        .boxed()
}

/// The console's refusals as pages: no session sends to sign-in; the rest say why, and an
/// unknown page under `/ui` is a 404 page. Other rejections (a wrong method) get the APIs'
/// answers.
async fn recover(rejection: Rejection) -> Result<Response, Rejection> {
    match rejection.find::<Refusal>() {
        Some(Refusal::SignIn) => Ok(render::see_other("/ui/sign-in")),
        Some(Refusal::Forbidden(why)) => Ok(render::refused(None, StatusCode::FORBIDDEN, why)),
        None if rejection.is_not_found() => Ok(render::refused(
            None,
            StatusCode::NOT_FOUND,
            "There is no such page.",
        )),
        None => Err(rejection),
    }
}
