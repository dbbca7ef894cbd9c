//! The pages behind the action links of Teams cards and emails, `/tocsin/v1/act/{token}`
//! (`web::act_link`): a link names one act on one alert for one audience, and expires.
//!
//! - `GET` only shows what the link would do, to whom, as whom: link scanners and mail
//!   previewers open links, so opening one never changes anything.
//! - `POST` (the page's button) acts: the form must carry the link's anti-forgery token and
//!   come from this site (`Origin`). The actor is the identity mapped to the mailbox an email
//!   link went to (`chat.identities`, `email:…`), or, for a Teams link — everyone in the
//!   channel saw it — the person signed in to the console (sent to sign in first, and back).
//!   The act goes through the common act path ([`alerts::perform`], or a silence through the
//!   silences' check and [`router::silences::Silences::create`]), audited with the link's
//!   once-only key, so a link acts once.
//! - An expired or used link answers 410 and says so; a link this Tocsin did not sign, 404.
//!
//! Pages carry `Referrer-Policy: same-origin` — the token is in the URL, so no other site may
//! see it; not `no-referrer`, under which browsers send the form's `Origin` as `null` — and
//! are never cached.

use crate::render::{page, refused, see_other};
use crate::session::{Form, Sessions};
use crate::Console;
use model::alert::{Control, HumanAct, HumanAction};
use router::silences::{By, NewSilence, SilenceActError};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};
use web::act_link::{ActLinks, Audience, LinkClaims, LinkError};
use web::Scope;

/// The confirmation form's body at most.
const FORM_LIMIT: u64 = 4 * 1024;

/// What the act pages need.
#[derive(Clone)]
struct Acts {
    console: Arc<Console>,
    sessions: Arc<Sessions>,
}

/// `GET` and `POST /tocsin/v1/act/{token}`.
pub(crate) fn routes(console: Arc<Console>, sessions: Arc<Sessions>) -> BoxedFilter<(Response,)> {
    let acts = Acts { console, sessions };
    let with_acts = warp::any().map(move || acts.clone());
    let base = warp::path::param::<String>();
    let show = base
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::header::optional::<String>("cookie"))
        .and(with_acts.clone())
        .then(
            |token: String, cookie: Option<String>, acts: Acts| async move {
                private(acts.show(&token, cookie.as_deref()).await)
            },
        );
    let act = base
        .and(warp::path::end())
        .and(crate::session::form(FORM_LIMIT))
        .and(warp::header::optional::<String>("cookie"))
        .and(with_acts)
        .then(
            |token: String, form: Form, cookie: Option<String>, acts: Acts| async move {
                private(acts.act(&token, &form, cookie.as_deref()).await)
            },
        );
    // The refusal pages only under `/tocsin/v1/act/`: every other path stays the others' to
    // answer.
    let pages = show
        .or(act)
        .unify()
        .recover(|rejection: Rejection| async move { crate::recover(rejection).await.map(private) })
        .unify();
    web::tocsin_api("act").and(pages).boxed()
}

/// Who would act through a link, or why nobody may.
enum Actor {
    /// The identity, and the surface it acts through (`email`, `teams`).
    Known {
        who: String,
        via: &'static str,
    },
    /// A Teams link opened by someone not signed in (or whose session is not sent yet).
    SignInFirst,
    Refused(String),
}

/// Why a link cannot be used now.
enum Unusable {
    NotSetUp,
    Link(LinkError),
    Used,
    StoreDown,
}

impl Unusable {
    fn page(&self) -> Response {
        match self {
            Unusable::NotSetUp => refused(
                None,
                StatusCode::NOT_FOUND,
                "Action links are not set up on this Tocsin ([links] public_url).",
            ),
            Unusable::Link(e @ LinkError::NotALink) => {
                refused(None, StatusCode::NOT_FOUND, &format!("{e}."))
            }
            Unusable::Link(LinkError::Expired) => refused(
                None,
                StatusCode::GONE,
                "This action link expired. Act from the console or from chat instead.",
            ),
            Unusable::Used => used(),
            Unusable::StoreDown => unavailable(),
        }
    }
}

impl Acts {
    /// The link `token` stands for, usable now; else why not.
    async fn usable(&self, token: &str) -> Result<(&ActLinks, LinkClaims, Control), Unusable> {
        let links = self
            .console
            .act_links
            .as_deref()
            .ok_or(Unusable::NotSetUp)?;
        let claims = links
            .read(token, clock::now_epoch_seconds())
            .map_err(Unusable::Link)?;
        match self.console.alerts.audit.taken(&claims.once_key()).await {
            Ok(false) => {}
            Ok(true) => return Err(Unusable::Used),
            Err(e) => {
                tracing::error!(error = %e, "cannot tell whether an action link was used");
                return Err(Unusable::StoreDown);
            }
        }
        let control = claims.control().expect("read() checks the act");
        Ok((links, claims, control))
    }

    /// Who acts through `claims`' link for the request with `cookie`.
    async fn actor(&self, claims: &LinkClaims, cookie: Option<&str>) -> Actor {
        match &claims.audience {
            Audience::Mailbox(address) => match self.console.directory.mailbox(address) {
                Some(identity) if identity.scopes.contains(&Scope::Responder) => Actor::Known {
                    who: identity.name.clone(),
                    via: "email",
                },
                Some(identity) => Actor::Refused(format!(
                    "`{}` ({address}) lacks the `responder` scope that acting needs.",
                    identity.name
                )),
                None => Actor::Refused(format!(
                    "{address} is no longer mapped to a Tocsin identity (`chat.identities`)."
                )),
            },
            Audience::Channel(_) => match self.sessions.viewer_of_cookie(cookie).await {
                Some(viewer) if viewer.may(Scope::Responder) => Actor::Known {
                    who: viewer.client,
                    via: "teams",
                },
                Some(viewer) => Actor::Refused(format!(
                    "client `{}` lacks the `responder` scope that acting needs.",
                    viewer.client
                )),
                None => Actor::SignInFirst,
            },
        }
    }

    async fn show(&self, token: &str, cookie: Option<&str>) -> Response {
        let (links, claims, control) = match self.usable(token).await {
            Ok(usable) => usable,
            Err(unusable) => return unusable.page(),
        };
        let alert = match self.console.alerts.alerts.get(&claims.alert).await {
            Ok(Some((alert, _))) => alert,
            Ok(None) => {
                return refused(
                    None,
                    StatusCode::NOT_FOUND,
                    &format!("Alert `{}` does not exist (any more).", claims.alert),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read an alert for an action link");
                return unavailable();
            }
        };
        let (who, sign_in) = match self.actor(&claims, cookie).await {
            Actor::Known { who, .. } => (Some(who), false),
            Actor::SignInFirst => (None, true),
            Actor::Refused(why) => return refused(None, StatusCode::FORBIDDEN, &why),
        };
        page(
            "act.html",
            None,
            serde_json::json!({
                "title": format!("{} this alert?", control.label()),
                "act": control.label(),
                "alert": alert,
                "who": who,
                "sign_in": sign_in,
                "form": links.form_token(&claims.nonce),
                "expires": claims.expires,
            }),
            StatusCode::OK,
        )
    }

    async fn act(&self, token: &str, form: &Form, cookie: Option<&str>) -> Response {
        let (links, claims, control) = match self.usable(token).await {
            Ok(usable) => usable,
            Err(unusable) => return unusable.page(),
        };
        if !form
            .get("form")
            .is_some_and(|f| links.genuine_form(&claims.nonce, f))
        {
            return refused(
                None,
                StatusCode::FORBIDDEN,
                "The confirmation's anti-forgery token is missing or wrong: open the link again.",
            );
        }
        let (who, via) = match self.actor(&claims, cookie).await {
            Actor::Known { who, via } => (who, via),
            Actor::SignInFirst => {
                return see_other(&format!(
                    "/ui/sign-in?next=/tocsin/v1/act/{}",
                    crate::render::encoded(token)
                ))
            }
            Actor::Refused(why) => return refused(None, StatusCode::FORBIDDEN, &why),
        };
        let action = match control {
            Control::Acknowledge => HumanAction::Acknowledge,
            Control::Resolve => HumanAction::Resolve,
            Control::SilenceHour => return self.silence(&claims, &who, via).await,
        };
        let by = HumanAct {
            action,
            who: who.clone(),
            via: via.into(),
            comment: None,
        };
        let done = |text: String| {
            page(
                "act.html",
                None,
                serde_json::json!({"title": control.label(), "done": text}),
                StatusCode::OK,
            )
        };
        let key = &claims.alert;
        match alerts::perform(&self.console.alerts, key, by, Some(claims.once_key())).await {
            Ok(alerts::Performed::Done { .. }) => done(format!(
                "Alert `{key}`: {} by {who}.",
                action.done().to_lowercase()
            )),
            Ok(alerts::Performed::Unchanged(alert)) => done(format!(
                "Alert `{key}` is {} already: nothing changed.",
                alert.state.as_str()
            )),
            Ok(alerts::Performed::Repeated(_)) => used(),
            Err(e) => {
                let error = web::ApiError::from(e);
                refused(None, error.status, &error.message)
            }
        }
    }

    /// Silences the link's alert (by its key) for an hour, as `who`, once for the link.
    async fn silence(&self, claims: &LinkClaims, who: &str, via: &'static str) -> Response {
        let now = clock::now_epoch_millis();
        let new = NewSilence {
            matchers: vec![router::silences::alert_matcher(&claims.alert)],
            starts_at_ms: None,
            ends_at_ms: now.saturating_add(Control::SILENCE_HOUR_MS),
            comment: Some(format!("from a {via} link")),
        };
        let silence = match router::silences::check(new, who.to_owned(), now) {
            Ok(silence) => silence,
            Err(problem) => return refused(None, StatusCode::BAD_REQUEST, &problem),
        };
        let by = By {
            via,
            once: Some(claims.once_key()),
        };
        let audit = &self.console.alerts.audit;
        match self.console.silences.create(&silence, audit, &by).await {
            Ok(()) => {}
            Err(SilenceActError::Repeated) => return used(),
            Err(SilenceActError::Unavailable(e)) => {
                tracing::error!(error = %e, "cannot keep a silence from a link");
                return unavailable();
            }
        }
        page(
            "act.html",
            None,
            serde_json::json!({
                "title": Control::SilenceHour.label(),
                "done": format!("Alert `{}` is silenced for an hour by {who} (silence `{}`).", claims.alert, silence.id),
            }),
            StatusCode::OK,
        )
    }
}

fn used() -> Response {
    refused(
        None,
        StatusCode::GONE,
        "This action link was used already: each link acts once.",
    )
}

fn unavailable() -> Response {
    refused(
        None,
        StatusCode::SERVICE_UNAVAILABLE,
        "The store cannot be reached: nothing changed. Try the link again in a moment.",
    )
}

/// The page, kept out of referrers, caches and search engines: its URL is a credential.
fn private(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    response
}
