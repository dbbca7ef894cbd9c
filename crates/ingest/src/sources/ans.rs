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
//!
//! A request with an `Idempotency-Key` header is handled once per key ([`super::idempotency`]):
//! sent again, it gets the first answer (the same event ids) and publishes nothing.

use super::idempotency::{Idempotency, Outcome, Request};
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

/// The batch route's last path segment.
const BATCH: &str = "resource-events-batch";

/// The producer routes, behind the producer-scope credential check.
pub fn mount(mount: &super::Mount) -> BoxedFilter<(Response,)> {
    let publisher = mount.publisher(&DESCRIPTION);
    let guard = mount.producer.clone();
    let body_limit = mount.body_limit;
    // Path before method, so that an unknown path is a 404 rather than a 405.
    let base = web::platform()
        .and(warp::path("producer"))
        .and(warp::path("v1"));
    let idempotency = mount.idempotency.clone();
    let context = warp::any().map(move || (publisher.clone(), idempotency.clone()));
    let route = move |name: &'static str| {
        base.clone()
            .and(warp::path(name))
            .and(warp::path::end())
            .and(warp::post())
            .and(guard.clone())
            .and(warp::header::optional::<String>(super::idempotency::HEADER))
            .and(warp::query::<SchemaQuery>())
            .and(web::body::json(body_limit))
            .and(context.clone())
            .then(
                move |client: String,
                      key: Option<String>,
                      query: SchemaQuery,
                      body: Bytes,
                      (publisher, idempotency): (EventPublisher, Idempotency)| async move {
                    let request = request(key, &client, name, &query, &body);
                    if name == BATCH {
                        let handle = accept_batch(&query, &body, &publisher);
                        idempotency.once(request, &publisher, handle).await
                    } else {
                        let handle = accept_one(&query, &body, &publisher);
                        idempotency.once(request, &publisher, handle).await
                    }
                },
            )
    };
    let single = route("resource-events");
    let batch = route(BATCH);
    single.or(batch).unify().boxed()
}

/// What identifies a producer request under its `Idempotency-Key`: its route (the key's
/// namespace, the same on `cf` and `neo`), how its body reads, and the body.
fn request<'a>(
    key: Option<String>,
    client: &'a str,
    route: &'a str,
    query: &SchemaQuery,
    body: &'a Bytes,
) -> Request<'a> {
    let variant = match Schema::of(query) {
        Ok(Schema::Ans) => "ans",
        Ok(Schema::CloudEvents) => "cloud_events",
        // Refused with 400 before anything is kept.
        Err(_) => "",
    };
    Request {
        key,
        client,
        route,
        variant,
        body,
    }
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

async fn accept_one(query: &SchemaQuery, body: &[u8], publisher: &EventPublisher) -> Outcome {
    let schema = match Schema::of(query) {
        Ok(schema) => schema,
        Err(e) => return e.into_response().into(),
    };
    let event = match schema.parse_one(body, new_event_id(), clock::now_epoch_seconds()) {
        Ok(event) => event,
        Err(e) => return ApiError::bad_request(e.message).into_response().into(),
    };
    match publisher.publish(std::slice::from_ref(&event)).await {
        Ok(()) => Outcome::keep(StatusCode::ACCEPTED, &event),
        Err(e) => queue_unavailable(e).into(),
    }
}

#[derive(serde::Serialize)]
struct BatchError<'a> {
    message: &'a str,
    accepted: &'a [ResourceEvent],
    rejected: &'a [serde_json::Value],
}

async fn accept_batch(query: &SchemaQuery, body: &[u8], publisher: &EventPublisher) -> Outcome {
    let schema = match Schema::of(query) {
        Ok(schema) => schema,
        Err(e) => return e.into_response().into(),
    };
    let items = match model::parse_events(body) {
        Ok(items) => items,
        Err(e) => return ApiError::bad_request(e.message).into_response().into(),
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
            return queue_unavailable(e).into();
        }
    }
    match first_error {
        None => Outcome::keep(StatusCode::ACCEPTED, &accepted),
        Some((index, error)) => {
            let body = BatchError {
                message: &error.message,
                accepted: &accepted,
                rejected: &items[index..],
            };
            if accepted.is_empty() {
                // Nothing published: the key stays free for the corrected batch.
                warp::reply::with_status(warp::reply::json(&body), StatusCode::BAD_REQUEST)
                    .into_response()
                    .into()
            } else {
                // The accepted part is queued: sent again, it must not be queued twice.
                Outcome::keep(StatusCode::BAD_REQUEST, &body)
            }
        }
    }
}
