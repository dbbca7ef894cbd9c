//! The routes of the alerts API (see the crate's doc), and how each answer is made.

use crate::act::{perform, ActError, Performed};
use crate::paging::{page_json, Params};
use bus::Bus;
use bytes::Bytes;
use model::alert::{HumanAct, HumanAction};
use model::SharedCatalog;
use std::collections::HashMap;
use std::sync::Arc;
use store::alerts::{Alert, AlertQuery, AlertState, AlertStore, Entry};
use store::audit::AuditLog;
use store::links::LinkStore;
use store::records::{Attempt, RecordStore};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

/// The longest comment a person may leave, in characters.
const MAX_COMMENT: usize = 4096;
/// The act's body (a comment) at most, in bytes.
const BODY_LIMIT: u64 = 64 * 1024;
/// Events of one alert whose delivery attempts the timeline shows, the latest ones.
const TIMELINE_ATTEMPTS_OF: usize = 200;

/// Everything the routes need; cheap to clone.
#[derive(Clone)]
pub struct State {
    pub alerts: AlertStore,
    pub records: RecordStore,
    /// What the stateful channels created per alert.
    pub links: LinkStore,
    /// The actions, to name the type of each link's action.
    pub catalog: SharedCatalog,
    pub bus: Arc<dyn Bus>,
    /// Where every act is recorded, and once-only acts are claimed.
    pub audit: AuditLog,
}

/// The alerts API over `state`; `responder` yields the acting client's name (the `responder`
/// scope).
pub fn routes(
    state: State,
    responder: impl Filter<Extract = (String,), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let state = warp::any().map(move || state.clone());
    let base = web::tocsin_api("alerts");
    let list = base
        .and(warp::path::end())
        .and(warp::get())
        .and(responder.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(state.clone())
        .then(|_: String, params: HashMap<String, String>, state: State| list(params, state));
    let one = base
        .and(web::segment())
        .and(warp::path::end())
        .and(warp::get())
        .and(responder.clone())
        .and(state.clone())
        .then(|key: String, _: String, state: State| one(key, state));
    let act = base
        .and(web::segment())
        .and(web::segment())
        .and(warp::path::end())
        .and(warp::post())
        .and(responder)
        .and(optional_body())
        .and(state)
        .then(
            |key: String, action: String, who: String, body: Bytes, state: State| {
                act(key, action, who, body, state)
            },
        );
    list.or(one).unify().or(act).unify().boxed()
}

/// The body, or none at all (an act without a comment needs none).
fn optional_body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(|length: Option<u64>, chunked: Option<String>| async move {
            if length.unwrap_or(0) == 0 && chunked.is_none() {
                Ok(())
            } else {
                Err(warp::reject())
            }
        })
        .untuple_one()
        .map(Bytes::new)
        .or(web::body::json(BODY_LIMIT))
        .unify()
}

async fn list(params: HashMap<String, String>, state: State) -> Response {
    match list_page(&params, &state).await {
        Ok(page) => warp::reply::json(&page).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The page of alerts the query `params` ask for, as the API answers it (the console shows
/// the same page).
pub async fn list_page(
    params: &HashMap<String, String>,
    state: &State,
) -> Result<serde_json::Value, ApiError> {
    let query = parse_query(&Params(params))?;
    let (page, page_size) = (query.page, query.page_size);
    let (total, results) = state.alerts.list(query).await.map_err(unavailable)?;
    Ok(page_json(page, page_size, total, &results))
}

/// Reads the list's query parameters, naming the one at fault.
fn parse_query(params: &Params) -> Result<AlertQuery, ApiError> {
    let state = params
        .text("state")
        .map(|s| {
            AlertState::parse(&s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`state` must be one of firing, acknowledged, resolved, got `{s}`"
                ))
            })
        })
        .transpose()?;
    let (page, page_size) = params.page()?;
    Ok(AlertQuery {
        state,
        severity: params.text("severity"),
        event_type: params.text("eventType"),
        resource_name: params.text("resourceName"),
        since_ms: params.millis("since")?,
        until_ms: params.millis("until")?,
        text: params.text("q"),
        page,
        page_size,
    })
}

/// One line of the timeline as the API shows it: the store's lines and the attempts — kind
/// `delivery` for an attempt of an event's delivery (with `digest` when it went in one), kind
/// `repeat` for a repeat digest that named the event again.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Line {
    Stored(Entry),
    Delivery {
        /// `delivery` or `repeat`.
        kind: &'static str,
        #[serde(rename = "atMs")]
        at_ms: i64,
        #[serde(rename = "eventId")]
        event_id: String,
        #[serde(flatten)]
        attempt: Attempt,
    },
}

impl Line {
    fn at_ms(&self) -> i64 {
        match self {
            Line::Stored(entry) => entry.at_ms(),
            Line::Delivery { at_ms, .. } => *at_ms,
        }
    }
}

async fn one(key: String, state: State) -> Response {
    match alert_with_timeline(&key, &state).await {
        Ok(found) => warp::reply::json(&found).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Alert `key` with what the destinations made for it and its timeline (its events, the
/// persons' acts and the delivery attempts, in order), as the API answers it.
pub async fn alert_with_timeline(key: &str, state: &State) -> Result<serde_json::Value, ApiError> {
    let (alert, entries) = match state.alerts.get(key).await {
        Ok(Some(found)) => found,
        Ok(None) => return Err(ActError::NotFound(key.to_owned()).into()),
        Err(e) => return Err(unavailable(e)),
    };
    let events: Vec<String> = entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::Event { event_id, .. } => Some(event_id.clone()),
            Entry::Action { .. } => None,
        })
        .collect();
    let mut timeline: Vec<Line> = entries.into_iter().map(Line::Stored).collect();
    let shown = events.len().saturating_sub(TIMELINE_ATTEMPTS_OF);
    for event_id in &events[shown..] {
        let attempts = state
            .records
            .attempts(event_id)
            .await
            .map_err(unavailable)?;
        timeline.extend(attempts.into_iter().map(|attempt| Line::Delivery {
            kind: match &attempt.digest {
                Some(digest) if digest.repeat => "repeat",
                _ => "delivery",
            },
            at_ms: attempt.started_at_ms,
            event_id: event_id.clone(),
            attempt,
        }));
    }
    // Stable: an event's line stays before the attempts that started in the same millisecond.
    timeline.sort_by_key(Line::at_ms);
    let destinations = crate::created::of_alert(&state.links, &state.catalog, &alert)
        .await
        .map_err(unavailable)?;
    Ok(serde_json::json!({
        "alert": alert,
        "destinations": destinations,
        "timeline": timeline,
    }))
}

async fn act(key: String, action: String, who: String, body: Bytes, state: State) -> Response {
    let Some(action) = HumanAction::parse(&action) else {
        return ApiError::not_found(format!(
            "no such act `{action}`: acknowledge, unacknowledge, resolve or comment"
        ))
        .into_response();
    };
    let comment = match read_comment(&body, action) {
        Ok(comment) => comment,
        Err(e) => return e.into_response(),
    };
    let by = HumanAct {
        action,
        who,
        via: "api".into(),
        comment,
    };
    match perform(&state, &key, by, None).await {
        Ok(Performed::Done { alert, event_id }) => {
            answer(StatusCode::ACCEPTED, &alert, Some(&event_id))
        }
        Ok(Performed::Unchanged(alert) | Performed::Repeated(alert)) => {
            answer(StatusCode::OK, &alert, None)
        }
        Err(e) => e.into_response(),
    }
}

/// The act's comment, from `{"comment": "…"}`, checked ([`check_comment`]).
fn read_comment(body: &[u8], action: HumanAction) -> Result<Option<String>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        comment: Option<String>,
    }
    let comment = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Body>(body)
            .map_err(|e| {
                ApiError::bad_request(format!("the body must be {{\"comment\": \"…\"}}: {e}"))
            })?
            .comment
    };
    check_comment(comment, action)
}

/// The comment trimmed, none if blank; within bounds, and present for a comment — from the
/// API's body or the console's form alike.
pub fn check_comment(
    comment: Option<String>,
    action: HumanAction,
) -> Result<Option<String>, ApiError> {
    let comment = comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return Err(ApiError::bad_request(format!(
            "`comment` must be at most {MAX_COMMENT} characters"
        )));
    }
    if action == HumanAction::Comment && comment.is_none() {
        return Err(ApiError::bad_request("`comment` is required to comment"));
    }
    Ok(comment)
}

/// The alert as the act leaves it, and the event that carries the act if one was queued.
fn answer(status: StatusCode, alert: &Alert, event_id: Option<&str>) -> Response {
    let body =
        serde_json::json!({"alert": alert, "eventId": event_id, "changed": event_id.is_some()});
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

fn unavailable(e: store::StoreError) -> ApiError {
    tracing::error!(error = %e, "cannot read the alerts");
    ApiError::unavailable("cannot read the alerts now, retry later")
}
