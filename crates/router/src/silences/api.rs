//! The silences API, under `/tocsin/v1/silences` (Tocsin's own, beside the alerts API):
//! - `GET /tocsin/v1/silences` — the silences, newest first, all or those in `state`
//!   (`active`, `pending`, `expired`);
//! - `POST /tocsin/v1/silences` — a new silence (`matchers`, `endsAtMs`, optional
//!   `startsAtMs` and `comment`), created by the calling client: `201` with it once it is in
//!   force (see the module above);
//! - `GET /tocsin/v1/silences/{id}` — one silence;
//! - `DELETE /tocsin/v1/silences/{id}` — expires it now: `200` with the silence as it ends;
//!   expiring an expired silence changes nothing and answers `200` too (idempotent, as
//!   Alertmanager's), `404` for an unknown id.
//!
//! Every answer shows each silence with its `state` at the time of asking. All need the
//! `responder` scope: the people on call silence what they are working on.

use super::{check, By, NewSilence, SilenceActError, Silences};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use store::audit::AuditLog;
use store::silences::{Expired, Silence, SilenceState};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

/// A new silence's body at most, in bytes.
const BODY_LIMIT: u64 = 64 * 1024;

/// A silence as the API shows it: with its state now.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    silence: &'a Silence,
    state: SilenceState,
}

fn shown(silence: &Silence, now_ms: i64) -> Shown<'_> {
    Shown {
        silence,
        state: silence.state(now_ms),
    }
}

/// The silences API, auditing in `audit`; `responder` yields the calling client's name (the
/// `responder` scope).
pub fn routes(
    silences: Arc<Silences>,
    audit: AuditLog,
    responder: impl Filter<Extract = (String,), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let state = warp::any().map(move || Arc::clone(&silences));
    let audit = warp::any().map(move || audit.clone());
    let base = web::tocsin_api("silences");
    let list = base
        .and(warp::path::end())
        .and(warp::get())
        .and(responder.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(state.clone())
        .then(|_: String, params: HashMap<String, String>, silences| list(params, silences));
    let create = base
        .and(warp::path::end())
        .and(warp::post())
        .and(responder.clone())
        .and(web::body::json(BODY_LIMIT))
        .and(state.clone())
        .and(audit.clone())
        .then(create);
    let one = base
        .and(web::segment())
        .and(warp::path::end())
        .and(warp::get())
        .and(responder.clone())
        .and(state.clone())
        .then(|id: String, _: String, silences| one(id, silences));
    let expire = base
        .and(web::segment())
        .and(warp::path::end())
        .and(warp::delete())
        .and(responder)
        .and(state)
        .and(audit)
        .then(expire);
    list.or(create)
        .unify()
        .or(one)
        .unify()
        .or(expire)
        .unify()
        .boxed()
}

async fn list(params: HashMap<String, String>, silences: Arc<Silences>) -> Response {
    let state = match params.get("state").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match SilenceState::parse(s) {
            Some(state) => Some(state),
            None => {
                return ApiError::bad_request(format!(
                    "`state` must be one of active, pending, expired, got `{s}`"
                ))
                .into_response()
            }
        },
    };
    let now = clock::now_epoch_millis();
    match silences.store().list(state, now).await {
        Ok(found) => {
            let results: Vec<Shown> = found.iter().map(|s| shown(s, now)).collect();
            warp::reply::json(&serde_json::json!({ "results": results })).into_response()
        }
        Err(e) => unavailable(e),
    }
}

async fn create(who: String, body: Bytes, silences: Arc<Silences>, audit: AuditLog) -> Response {
    let deserializer = &mut serde_json::Deserializer::from_slice(&body);
    let new: NewSilence = match serde_path_to_error::deserialize(deserializer) {
        Ok(new) => new,
        Err(e) => {
            let path = e.path().to_string();
            return ApiError::bad_request(format!("`{path}`: {}", e.into_inner())).into_response();
        }
    };
    let now = clock::now_epoch_millis();
    let silence = match check(new, who, now) {
        Ok(silence) => silence,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    if let Err(e) = silences.create(&silence, &audit, &API).await {
        return refused(e);
    }
    warp::reply::with_status(
        warp::reply::json(&shown(&silence, now)),
        StatusCode::CREATED,
    )
    .into_response()
}

async fn one(id: String, silences: Arc<Silences>) -> Response {
    match silences.store().get(&id).await {
        Ok(Some(silence)) => {
            warp::reply::json(&shown(&silence, clock::now_epoch_millis())).into_response()
        }
        Ok(None) => not_found(&id),
        Err(e) => unavailable(e),
    }
}

async fn expire(id: String, who: String, silences: Arc<Silences>, audit: AuditLog) -> Response {
    let now = clock::now_epoch_millis();
    match silences.expire(&id, now, &audit, &who, &API).await {
        Ok(Some(Expired::Now(silence) | Expired::Already(silence))) => {
            warp::reply::json(&shown(&silence, now)).into_response()
        }
        Ok(None) => not_found(&id),
        Err(e) => refused(e),
    }
}

fn not_found(id: &str) -> Response {
    ApiError::not_found(format!("silence `{id}` does not exist")).into_response()
}

/// An act through the API: no once-only key (a client retries a create as a new silence).
const API: By = By {
    via: "api",
    once: None,
};

/// An act that was not done: `503` when the store or the audit log cannot be reached (`409`
/// for a repeated once-only act, which the API, giving no once-only key, does not make).
fn refused(e: SilenceActError) -> Response {
    match e {
        SilenceActError::Unavailable(e) => unavailable(e),
        SilenceActError::Repeated => {
            ApiError::new(StatusCode::CONFLICT, e.to_string()).into_response()
        }
    }
}

fn unavailable(e: store::StoreError) -> Response {
    tracing::error!(error = %e, "cannot reach the silences");
    ApiError::unavailable("cannot reach the silences now, retry later").into_response()
}
