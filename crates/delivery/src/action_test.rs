//! Test events: `POST /tocsin/v1/actions/{name}/test` (configuration scope) sends an event
//! through one action *now* and answers with how the attempt ended — to try an action when it
//! is saved, not when the first alarm fails.
//!
//! The body is an ANS resource event, or empty for a sample event (`TocsinTestEvent`, INFO,
//! its own `ans:sourceEventId`). The attempt goes through the action as the catalog holds it,
//! like a queued job's first attempt, but outside the pipeline: nothing is queued, retried or
//! recorded (a stateful destination still creates what it creates, e.g. a B2C incident).
//! The answer is 200 whatever the outcome: `delivered`, and otherwise the failure's `code`,
//! `reason` and whether it is `retryable`; 404 for an unknown action, 400 for a bad event.

use crate::channels::Channels;
use crate::failure::Retry;
use model::{DeliveryJob, ResourceEvent, SharedCatalog};
use serde::Serialize;
use std::time::Instant;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

/// How the test attempt ended.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub action: String,
    pub event_id: String,
    pub delivered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    pub duration_ms: u64,
}

pub fn routes(
    catalog: SharedCatalog,
    channels: Channels,
    body_limit: u64,
    operator: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    warp::path!("tocsin" / "v1" / "actions" / ..)
        .and(web::segment())
        .and(warp::path("test"))
        .and(warp::path::end())
        .and(warp::post())
        .and(operator)
        .and(web::body::json(body_limit))
        .then(move |name: String, body: bytes::Bytes| {
            let (catalog, channels) = (catalog.clone(), channels.clone());
            async move {
                match test(&catalog, &channels, &name, &body).await {
                    Ok(outcome) => warp::reply::json(&outcome).into_response(),
                    Err(e) => e.into_response(),
                }
            }
        })
        .boxed()
}

/// Sends `body` (or the sample event) through action `name` once.
pub async fn test(
    catalog: &SharedCatalog,
    channels: &Channels,
    name: &str,
    body: &[u8],
) -> Result<Outcome, ApiError> {
    let catalog = catalog.load_full();
    let prepared = catalog
        .prepared(name)
        .ok_or_else(|| ApiError::not_found(format!("no action `{name}`")))?;
    let now_ms = clock::now_epoch_millis();
    let event_id = format!("tocsin-test-{now_ms}");
    let event = if body.iter().all(u8::is_ascii_whitespace) {
        sample(event_id, name, now_ms / 1000)
    } else {
        model::parse_event(body, event_id, now_ms / 1000)
            .map_err(|e| ApiError::bad_request(e.message))?
    };
    let job = DeliveryJob::new(event, now_ms, name);
    let started = Instant::now();
    let outcome = channels.attempt(&job, Some(prepared)).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(action = name, event = %job.event.id, delivered = outcome.is_ok(), "test event sent");
    let failure = outcome.err();
    Ok(Outcome {
        action: name.to_owned(),
        event_id: job.event.id,
        delivered: failure.is_none(),
        code: failure.as_ref().map(|f| f.code.number()),
        retryable: failure.as_ref().map(|f| f.retry != Retry::Never),
        reason: failure.map(|f| f.reason),
        duration_ms,
    })
}

/// The event sent when the request names none.
fn sample(id: String, action: &str, now: i64) -> ResourceEvent {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "eventType": "TocsinTestEvent",
        "severity": "INFO",
        "category": "NOTIFICATION",
        "subject": format!("Test event for action {action}"),
        "body": format!("Sent by Tocsin's test endpoint: if this arrived, action `{action}` delivers."),
        "eventTimestamp": now,
        "resource": {"resourceName": "tocsin", "resourceType": "broker"},
        "tags": {"ans:sourceEventId": id}
    }))
    .expect("the sample event is valid")
}
