//! One module per source. Each describes itself ([`Description`]: its metrics label and its
//! routes, from which the server builds its route table) and mounts its warp filter from a
//! [`Mount`]; the binary mounts them side by side. Adding a source means writing its module
//! and adding it to [`ALL`] and to the server's mount list.
//!
//! A source parses its wire format and normalizes it into [`ResourceEvent`]s with pure
//! functions (no HTTP, unit-tested over fixtures), then its thin HTTP layer hands the events to
//! the [`crate::EventPublisher`] and answers only once they are durably queued. What every source
//! needs for that last step — event ids, the 202/503 answers, tolerant text helpers — lives here,
//! so that adding a source never touches another one.
//! [`idempotency`] keeps the producer APIs from publishing a request sent again with its
//! `Idempotency-Key`, or an Alertmanager alert re-sent unchanged, twice.

pub mod alertmanager;
pub mod ans;
pub mod cloudevents;
pub mod idempotency;
pub mod oci;

use crate::EventPublisher;
use bus::Bus;
use metrics::Metrics;
use model::{ResourceEvent, ValidationError};
use serde_json::Value;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};
use web::ApiError;

/// A route a source serves, as the OpenAPI document writes it (`{platform}` is `cf` or `neo`).
pub struct SourceRoute {
    pub pattern: &'static str,
    pub methods: &'static [&'static str],
    /// Whether requests to it bring events: its refusals are counted under the source's label.
    pub takes_events: bool,
}

/// What a source says of itself.
pub struct Description {
    /// Its `source` label in the metrics.
    pub label: &'static str,
    pub routes: &'static [SourceRoute],
}

/// A route that brings events, by `POST`.
pub(crate) const fn intake(pattern: &'static str) -> SourceRoute {
    SourceRoute {
        pattern,
        methods: &["POST"],
        takes_events: true,
    }
}

/// Every source.
pub const ALL: [&Description; 3] = [
    &ans::DESCRIPTION,
    &oci::DESCRIPTION,
    &alertmanager::DESCRIPTION,
];

/// What every source is mounted with.
pub struct Mount {
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted, in bytes.
    pub body_limit: u64,
    /// The credential check of the routes that take events (the producer scope); yields the
    /// client's name.
    pub producer: BoxedFilter<(String,)>,
    /// The credential check of the routes that show a source's state (the configuration scope).
    pub reader: BoxedFilter<()>,
    /// The producer APIs' dedupe window (`Idempotency-Key`, Alertmanager re-sends).
    pub idempotency: idempotency::Idempotency,
}

impl Mount {
    /// The producer-scope check, for routes that need not know the client.
    pub fn producer_guard(&self) -> BoxedFilter<()> {
        self.producer
            .clone()
            .map(|_client: String| ())
            .untuple_one()
            .boxed()
    }

    /// The publisher of `source`'s events, counted under its label.
    pub fn publisher(&self, source: &Description) -> EventPublisher {
        EventPublisher::new(
            Arc::clone(&self.bus),
            Arc::clone(&self.metrics),
            source.label,
        )
    }
}

/// A fresh event id (UUID v7: time-ordered, so ids sort roughly by arrival).
pub(crate) fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The answer when the bus cannot take events now: 503, so that the sender retries.
pub(crate) fn queue_unavailable(e: bus::BusError) -> Response {
    tracing::warn!(error = %e, "cannot queue events");
    ApiError::unavailable(format!("the event was not accepted, retry later: {e}")).into_response()
}

/// The answer of the non-ANS sources once their events are queued: 202
/// `{"published": [events as queued]}`.
pub(crate) fn published(events: &[ResourceEvent]) -> Response {
    published_outcome(events).into_response()
}

/// [`published`], as an answer to keep for an `Idempotency-Key`.
pub(crate) fn published_outcome(events: &[ResourceEvent]) -> idempotency::Outcome {
    #[derive(serde::Serialize)]
    struct Published<'a> {
        published: &'a [ResourceEvent],
    }
    idempotency::Outcome::keep(StatusCode::ACCEPTED, &Published { published: events })
}

/// Publishes `events` and answers [`published`], or 503 if the bus refuses them.
pub(crate) async fn publish(
    publisher: &crate::EventPublisher,
    events: &[ResourceEvent],
) -> Response {
    match publisher.publish(events).await {
        Ok(()) => published(events),
        Err(e) => queue_unavailable(e),
    }
}

/// Parses a request body as JSON, or says why it is not.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ValidationError> {
    serde_json::from_slice(body).map_err(|e| ValidationError {
        field: String::new(),
        message: format!("malformed JSON: {e}"),
    })
}

/// Deserializes `value` into `T`, naming the offending field (`alerts[2].labels`) on error.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    value: &Value,
) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ValidationError {
            message: format!("`{field}` is invalid: {}", e.inner()),
            field,
        }
    })
}

/// An error about one field of the body.
pub(crate) fn invalid(field: &str, problem: impl std::fmt::Display) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        message: format!("`{field}` {problem}"),
    }
}

/// The text of a required string field: present and not blank.
pub(crate) fn required_text(value: Option<String>, field: &str) -> Result<String, ValidationError> {
    match value {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err(invalid(field, "must not be empty")),
        None => Err(invalid(field, "is required")),
    }
}

/// A JSON scalar as tag text (`"a"` → `a`, `3` → `3`, `true` → `true`); `null` is no value;
/// objects and arrays keep their compact JSON text.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Epoch seconds of an RFC 3339 timestamp (`2023-05-17T15:34:23.852Z`), if it is one at or
/// after the epoch (ANS event timestamps cannot be negative; `tocsin silence` reads its times
/// with it too).
pub fn rfc3339_seconds(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(time.unix_timestamp()).filter(|seconds| *seconds >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_with_and_without_fractions_and_offsets() {
        assert_eq!(
            rfc3339_seconds("2023-05-17T15:34:23.852Z"),
            Some(1_684_337_663)
        );
        assert_eq!(
            rfc3339_seconds("2023-05-17T17:34:23+02:00"),
            Some(1_684_337_663)
        );
        assert_eq!(
            rfc3339_seconds("2024-01-02T03:04:05.123456789Z"),
            Some(1_704_164_645)
        );
        assert_eq!(
            rfc3339_seconds("0001-01-01T00:00:00Z"),
            None,
            "Go's zero time"
        );
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }

    #[test]
    fn scalars_become_text_and_null_is_nothing() {
        assert_eq!(scalar_text(&serde_json::json!("a")).as_deref(), Some("a"));
        assert_eq!(
            scalar_text(&serde_json::json!(92.5)).as_deref(),
            Some("92.5")
        );
        assert_eq!(
            scalar_text(&serde_json::json!(false)).as_deref(),
            Some("false")
        );
        assert_eq!(
            scalar_text(&serde_json::json!({"k": 1})).as_deref(),
            Some("{\"k\":1}")
        );
        assert_eq!(scalar_text(&Value::Null), None);
    }

    #[test]
    fn field_errors_name_the_path() {
        let err = from_value::<std::collections::BTreeMap<String, Vec<u32>>>(
            &serde_json::json!({"items": [1, "x"]}),
        )
        .unwrap_err();
        assert_eq!(err.field, "items[1]");
        assert!(
            err.message.starts_with("`items[1]` is invalid"),
            "{}",
            err.message
        );
        assert_eq!(
            required_text(Some(" ".into()), "dedupeKey")
                .unwrap_err()
                .message,
            "`dedupeKey` must not be empty"
        );
    }
}
