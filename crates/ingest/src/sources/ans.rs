//! The SAP Alert Notification service producer API: native resource events, and CloudEvents.
//!
//! `POST /{cf|neo}/producer/v1/resource-events` takes one event, `…/resource-events-batch` an
//! array processed in order. Each event is validated, given an id and an `eventTimestamp` if
//! it had none, published, and echoed with 202 — only once it is durably queued.
//! A batch is accepted up to its first invalid event (ANS semantics): the answer is then 400
//! with the `accepted` events (queued) and the `rejected` rest (not queued).
//!
//! The query selects how the body reads ([`Schema`]): the native ANS event by default, or a
//! CloudEvent with `?schema_definition=cloud_events&version=1.0` (ANS's CloudEvents variant),
//! normalized by [`super::cloudevents`]. The handlers are the same for both.

use super::{new_event_id, queue_unavailable};
use crate::EventPublisher;
use bytes::Bytes;
use model::{ResourceEvent, ValidationError};
use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};
use web::ApiError;

/// Settings of the ANS producer source.
pub const DESCRIPTION: super::Description = super::Description {
    label: "ans",
    routes: &[
        super::intake("/{platform}/producer/v1/resource-events"),
        super::intake("/{platform}/producer/v1/resource-events-batch"),
    ],
};

/// The producer routes, behind the producer-scope credential check.
pub fn mount(mount: &super::Mount) -> BoxedFilter<(Response,)> {
    let publisher = mount.publisher(&DESCRIPTION);
    let guard = mount.producer.clone();
    let body_limit = mount.body_limit;
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
        .and(warp::query::<SchemaQuery>())
        .and(web::body::json(body_limit))
        .and(publisher.clone())
        .then(accept_one);
    let batch = base
        .and(warp::path("resource-events-batch"))
        .and(warp::path::end())
        .and(warp::post())
        .and(guard)
        .and(warp::query::<SchemaQuery>())
        .and(web::body::json(body_limit))
        .and(publisher)
        .then(accept_batch);
    single.or(batch).unify().boxed()
}

/// The query parameters that select the body's format.
#[derive(Debug, serde::Deserialize)]
struct SchemaQuery {
    schema_definition: Option<String>,
    version: Option<String>,
}

/// How a producer body reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// The ANS resource event (no `schema_definition`).
    Ans,
    /// A CloudEvent 1.0 in structured JSON mode (`schema_definition=cloud_events`).
    CloudEvents,
}

impl Schema {
    fn of(query: &SchemaQuery) -> Result<Schema, ApiError> {
        match query.schema_definition.as_deref() {
            None => Ok(Schema::Ans),
            Some(name) if name.eq_ignore_ascii_case(super::cloudevents::SCHEMA_DEFINITION) => {
                match query.version.as_deref() {
                    None | Some(super::cloudevents::SPEC_VERSION) => Ok(Schema::CloudEvents),
                    Some(other) => Err(ApiError::bad_request(format!(
                        "`version` {other} is not supported for cloud_events; use {}",
                        super::cloudevents::SPEC_VERSION
                    ))),
                }
            }
            Some(other) => Err(ApiError::bad_request(format!(
                "`schema_definition` `{other}` is not supported: omit it for ANS resource events, \
                 or use cloud_events"
            ))),
        }
    }

    /// Parses a single-event body.
    fn parse_one(
        self,
        body: &[u8],
        id: String,
        now: i64,
    ) -> Result<ResourceEvent, ValidationError> {
        match self {
            Schema::Ans => model::parse_event(body, id, now),
            Schema::CloudEvents => {
                super::cloudevents::to_resource_event(&super::parse_json(body)?, id, now)
            }
        }
    }

    /// Validates one element of a batch.
    fn validate(
        self,
        item: &Value,
        id: String,
        now: i64,
    ) -> Result<ResourceEvent, ValidationError> {
        match self {
            Schema::Ans => model::validate::validate_value(item, id, now),
            Schema::CloudEvents => super::cloudevents::to_resource_event(item, id, now),
        }
    }
}

async fn accept_one(query: SchemaQuery, body: Bytes, publisher: EventPublisher) -> Response {
    let schema = match Schema::of(&query) {
        Ok(schema) => schema,
        Err(e) => return e.into_response(),
    };
    let event = match schema.parse_one(&body, new_event_id(), clock::now_epoch_seconds()) {
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

async fn accept_batch(query: SchemaQuery, body: Bytes, publisher: EventPublisher) -> Response {
    let schema = match Schema::of(&query) {
        Ok(schema) => schema,
        Err(e) => return e.into_response(),
    };
    let items = match model::parse_events(&body) {
        Ok(items) => items,
        Err(e) => return ApiError::bad_request(e.message).into_response(),
    };
    let now = clock::now_epoch_seconds();
    let mut accepted = Vec::with_capacity(items.len());
    let mut first_error: Option<(usize, ValidationError)> = None;
    for (index, item) in items.iter().enumerate() {
        match schema.validate(item, new_event_id(), now) {
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
