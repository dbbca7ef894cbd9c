//! The SAP Alert Notification service producer API: native resource events.
//!
//! `POST /{cf|neo}/producer/v1/resource-events` takes one event, `…/resource-events-batch` an
//! array processed in order. Each event is validated, given an id and an `eventTimestamp` if
//! it had none, published, and echoed with 202 — only once it is durably queued.
//! A batch is accepted up to its first invalid event (ANS semantics): the answer is then 400
//! with the `accepted` events (queued) and the `rejected` rest (not queued).

use crate::EventPublisher;
use bytes::Bytes;
use model::{ResourceEvent, ValidationError};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

/// Settings of the ANS producer source.
#[derive(Debug, Clone)]
pub struct AnsProducerConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: u64,
}

/// The producer routes, behind `guard` (the producer-scope credential check).
pub fn routes(
    config: AnsProducerConfig,
    publisher: EventPublisher,
    guard: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    // Path before method, so that an unknown path is a 404 rather than a 405.
    let base = web::platform()
        .and(warp::path("producer"))
        .and(warp::path("v1"));
    let publisher = warp::any().map(move || publisher.clone());
    let single = base
        .clone()
        .and(warp::path("resource-events"))
        .and(warp::path::end())
        .and(warp::post())
        .and(guard.clone())
        .and(web::body::json(config.body_limit))
        .and(publisher.clone())
        .then(accept_one);
    let batch = base
        .and(warp::path("resource-events-batch"))
        .and(warp::path::end())
        .and(warp::post())
        .and(guard)
        .and(web::body::json(config.body_limit))
        .and(publisher)
        .then(accept_batch);
    single.or(batch).unify().boxed()
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn queue_unavailable(e: bus::BusError) -> Response {
    tracing::warn!(error = %e, "cannot queue events");
    ApiError::unavailable(format!("the event was not accepted, retry later: {e}")).into_response()
}

async fn accept_one(body: Bytes, publisher: EventPublisher) -> Response {
    let event = match model::parse_event(&body, new_event_id(), model::now_epoch_seconds()) {
        Ok(event) => event,
        Err(e) => return ApiError::bad_request(e.message).into_response(),
    };
    match publisher.publish(std::slice::from_ref(&event)).await {
        Ok(()) => warp::reply::with_status(warp::reply::json(&event), StatusCode::ACCEPTED)
            .into_response(),
        Err(e) => queue_unavailable(e),
    }
}

#[derive(serde::Serialize)]
struct BatchError<'a> {
    message: &'a str,
    accepted: &'a [ResourceEvent],
    rejected: &'a [serde_json::Value],
}

async fn accept_batch(body: Bytes, publisher: EventPublisher) -> Response {
    let items = match model::parse_events(&body) {
        Ok(items) => items,
        Err(e) => return ApiError::bad_request(e.message).into_response(),
    };
    let now = model::now_epoch_seconds();
    let mut accepted = Vec::with_capacity(items.len());
    let mut first_error: Option<(usize, ValidationError)> = None;
    for (index, item) in items.iter().enumerate() {
        match model::validate::validate_value(item, new_event_id(), now) {
            Ok(event) => accepted.push(event),
            Err(e) => {
                first_error = Some((index, e.in_batch(index)));
                break;
            }
        }
    }
    if !accepted.is_empty() {
        if let Err(e) = publisher.publish(&accepted).await {
            return queue_unavailable(e);
        }
    }
    match first_error {
        None => warp::reply::with_status(warp::reply::json(&accepted), StatusCode::ACCEPTED)
            .into_response(),
        Some((index, error)) => {
            let body = BatchError {
                message: &error.message,
                accepted: &accepted,
                rejected: &items[index..],
            };
            warp::reply::with_status(warp::reply::json(&body), StatusCode::BAD_REQUEST)
                .into_response()
        }
    }
}
