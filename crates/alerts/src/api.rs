//! The routes of the alerts API (see the crate's doc), and how each answer is made.

use crate::act::act_event;
use bus::{Bus, Queue};
use bytes::Bytes;
use model::alert::{HumanAct, HumanAction};
use model::consumer::ResponseMetadata;
use model::{IngestedEvent, SharedCatalog};
use std::collections::HashMap;
use std::sync::Arc;
use store::alerts::{Acted, Alert, AlertQuery, AlertState, AlertStore, Entry};
use store::links::LinkStore;
use store::records::{Attempt, RecordStore};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 1000;
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
    let query = parse_query(params)?;
    let (page, page_size) = (query.page, query.page_size);
    let (total, results) = state.alerts.list(query).await.map_err(unavailable)?;
    Ok(serde_json::json!({
        "responseMetadata": ResponseMetadata {
            page,
            page_size,
            total_pages: total.div_ceil(page_size),
            total_results_count: total,
        },
        "results": results,
    }))
}

/// Reads the list's query parameters, naming the one at fault. Unknown ones are ignored.
fn parse_query(params: &HashMap<String, String>) -> Result<AlertQuery, ApiError> {
    let text = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
    let number = |key: &str| -> Result<Option<u64>, ApiError> {
        text(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "`{key}` must be a non-negative integer, got `{v}`"
                    ))
                })
            })
            .transpose()
    };
    let state = text("state")
        .map(|s| {
            AlertState::parse(&s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`state` must be one of firing, acknowledged, resolved, got `{s}`"
                ))
            })
        })
        .transpose()?;
    let page_size = number("pageSize")?.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::bad_request(format!(
            "`pageSize` must be between 1 and {MAX_PAGE_SIZE}, got {page_size}"
        )));
    }
    let millis =
        |seconds: Option<u64>| seconds.map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64);
    Ok(AlertQuery {
        state,
        severity: text("severity"),
        event_type: text("eventType"),
        resource_name: text("resourceName"),
        since_ms: millis(number("since")?),
        until_ms: millis(number("until")?),
        text: text("q"),
        page: number("page")?.unwrap_or(0),
        page_size,
    })
}

/// One line of the timeline as the API shows it: the store's lines and the attempts.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Line {
    Stored(Entry),
    Delivery {
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
        Ok(None) => return Err(not_found(key)),
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
            kind: "delivery",
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
    let comment = match read_comment(&body) {
        Ok(comment) => comment,
        Err(e) => return e.into_response(),
    };
    match perform(&state, &key, action, who, "api", comment).await {
        Ok(Performed::Done { alert, event_id }) => {
            answer(StatusCode::ACCEPTED, &alert, Some(&event_id))
        }
        Ok(Performed::Unchanged(alert)) => answer(StatusCode::OK, &alert, None),
        Err(e) => e.into_response(),
    }
}

/// What a person's act did to an alert.
pub enum Performed {
    /// The alert changed (or took the comment): the event that carries the act is queued.
    Done { alert: Alert, event_id: String },
    /// The alert already was as the act would leave it.
    Unchanged(Alert),
}

/// The one path of a person's act on alert `key`, whatever the surface (`via`: the API, the
/// console): checks the comment, applies the act to the alert and queues the event that
/// carries it, so that it reaches the destinations and the timeline says who did it where.
pub async fn perform(
    state: &State,
    key: &str,
    action: HumanAction,
    who: String,
    via: &str,
    comment: Option<String>,
) -> Result<Performed, ApiError> {
    let comment = check_comment(comment, action)?;
    let alert = match state.alerts.get(key).await {
        Ok(Some((alert, _))) => alert,
        Ok(None) => return Err(not_found(key)),
        Err(e) => return Err(unavailable(e)),
    };
    let now = clock::now_epoch_millis();
    let after = match alert.act(action, now) {
        Acted::Done(after) => after,
        Acted::Unchanged(alert) => return Ok(Performed::Unchanged(alert)),
        Acted::Refused(alert) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                "alert `{key}` is {}: it can no longer be acted on (a new firing event reopens it)",
                alert.state.as_str()
            ),
            ))
        }
    };
    let by = HumanAct {
        action,
        who,
        via: via.into(),
        comment,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let Some(event) = act_event(&alert, &by, id, now) else {
        return Err(ApiError::internal(format!(
            "the latest event of alert `{key}` cannot be read"
        )));
    };
    let ingested = IngestedEvent {
        event,
        accepted_at_ms: now,
        by: Some(by),
        released_by: None,
    };
    let payload = Bytes::from(serde_json::to_vec(&ingested).expect("events serialize"));
    if let Err(e) = state.bus.publish(Queue::Events, vec![payload]).await {
        tracing::warn!(error = %e, "cannot queue a person's act");
        return Err(ApiError::unavailable(format!(
            "the act was not accepted, retry later: {e}"
        )));
    }
    tracing::info!(alert = %key, action = action.as_str(), who = %ingested.by.as_ref().map_or("", |b| b.who.as_str()), via, "a person acted on an alert");
    Ok(Performed::Done {
        alert: after,
        event_id: ingested.event.id,
    })
}

/// The act's comment, from `{"comment": "…"}`.
fn read_comment(body: &[u8]) -> Result<Option<String>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        comment: Option<String>,
    }
    if body.is_empty() {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<Body>(body)
        .map_err(|e| {
            ApiError::bad_request(format!("the body must be {{\"comment\": \"…\"}}: {e}"))
        })?
        .comment)
}

/// The comment trimmed, none if blank; within bounds, and present for a comment.
fn check_comment(comment: Option<String>, action: HumanAction) -> Result<Option<String>, ApiError> {
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

fn not_found(key: &str) -> ApiError {
    ApiError::not_found(format!("alert `{key}` does not exist"))
}

fn unavailable(e: store::StoreError) -> ApiError {
    tracing::error!(error = %e, "cannot read the alerts");
    ApiError::unavailable("cannot read the alerts now, retry later")
}
