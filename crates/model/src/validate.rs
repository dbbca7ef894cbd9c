//! Turning a producer's JSON into a valid [`ResourceEvent`], or into an error that names the
//! offending field (`resource.resourceType`, `[2].severity`, …) so the producer can fix it.
//!
//! Parsing is lenient where ANS producers differ (unknown fields are ignored, scalar tags are
//! stringified) and strict where the API is explicit: required fields, the severity and
//! category enums, `priority` in 1..=1000 and `eventTimestamp` ≥ 0.

use crate::event::{lenient_tags, AffectedResource, Category, ResourceEvent, Severity, Tags};
use serde::Deserialize;

/// Why a request body is not a valid event. `field` is empty for errors about the whole body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    fn field(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        let field = field.into();
        ValidationError {
            message: format!("`{field}` {problem}"),
            field,
        }
    }

    fn body(message: impl Into<String>) -> Self {
        ValidationError {
            field: String::new(),
            message: message.into(),
        }
    }

    /// The same error for the event at `index` of a batch.
    pub fn in_batch(self, index: usize) -> Self {
        let field = if self.field.is_empty() {
            format!("[{index}]")
        } else {
            format!("[{index}].{}", self.field)
        };
        let message = if self.field.is_empty() {
            format!("event [{index}]: {}", self.message)
        } else {
            self.message
                .replacen(&format!("`{}`", self.field), &format!("`{field}`"), 1)
        };
        ValidationError { field, message }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventInput {
    event_type: Option<String>,
    severity: Option<Severity>,
    category: Option<Category>,
    subject: Option<String>,
    body: Option<String>,
    resource: Option<ResourceInput>,
    event_timestamp: Option<i64>,
    priority: Option<i64>,
    #[serde(default, deserialize_with = "lenient_tags")]
    tags: Option<Tags>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceInput {
    resource_name: Option<String>,
    resource_type: Option<String>,
    resource_instance: Option<String>,
    #[serde(default, deserialize_with = "lenient_tags")]
    tags: Option<Tags>,
}

/// Parses one event from a request body. `id` and `now` (epoch seconds) are assigned here so
/// that the caller controls identity and time.
pub fn parse_event(body: &[u8], id: String, now: i64) -> Result<ResourceEvent, ValidationError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(not_an_object());
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let input: EventInput = serde_path_to_error::deserialize(&mut de).map_err(describe)?;
    de.end()
        .map_err(|e| ValidationError::body(format!("malformed JSON: {e}")))?;
    input.validate(id, now)
}

/// Parses a batch body into its raw elements; each is then checked with [`validate_value`], in
/// order, so that a batch can be accepted up to its first bad event.
pub fn parse_events(body: &[u8]) -> Result<Vec<serde_json::Value>, ValidationError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::body(format!("malformed JSON: {e}")))?;
    match value {
        serde_json::Value::Array(items) if !items.is_empty() => Ok(items),
        serde_json::Value::Array(_) => Err(ValidationError::body(
            "the batch is empty: send an array of at least one resource event",
        )),
        _ => Err(ValidationError::body(
            "the request body must be a JSON array of resource events",
        )),
    }
}

/// Validates one already-parsed JSON value as an event.
pub fn validate_value(
    value: &serde_json::Value,
    id: String,
    now: i64,
) -> Result<ResourceEvent, ValidationError> {
    if !value.is_object() {
        return Err(not_an_object());
    }
    let input: EventInput = serde_path_to_error::deserialize(value).map_err(describe)?;
    input.validate(id, now)
}

// Serde would read a struct from an array too, yielding confusing errors: refuse early.
fn not_an_object() -> ValidationError {
    ValidationError::body("a resource event must be a JSON object")
}

fn describe<E: std::fmt::Display + 'static>(err: serde_path_to_error::Error<E>) -> ValidationError {
    let path = err.path().to_string();
    let inner = err.inner();
    if let Some(json) = (inner as &dyn std::any::Any).downcast_ref::<serde_json::Error>() {
        if json.is_syntax() || json.is_eof() {
            return ValidationError::body(format!("malformed JSON: {json}"));
        }
    }
    ValidationError::field(path, format_args!("is invalid: {inner}"))
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ValidationError> {
    value.ok_or_else(|| ValidationError::field(field, "is required"))
}

fn required_text(value: Option<String>, field: &str) -> Result<String, ValidationError> {
    let text = required(value, field)?;
    if text.trim().is_empty() {
        return Err(ValidationError::field(field, "must not be empty"));
    }
    Ok(text)
}

impl EventInput {
    fn validate(self, id: String, now: i64) -> Result<ResourceEvent, ValidationError> {
        // Checked in the order the API documents the fields, so the first error is predictable.
        let event_type = required_text(self.event_type, "eventType")?;
        let severity = required(self.severity, "severity")?;
        let category = required(self.category, "category")?;
        let subject = required(self.subject, "subject")?;
        let body = required(self.body, "body")?;
        let resource = required(self.resource, "resource")?;
        let priority = match self.priority {
            None => None,
            Some(p) if (1..=1000).contains(&p) => Some(p as i32),
            Some(p) => {
                return Err(ValidationError::field(
                    "priority",
                    format_args!("must be between 1 and 1000, got {p}"),
                ))
            }
        };
        let event_timestamp = match self.event_timestamp {
            None => now,
            Some(t) if t >= 0 => t,
            Some(t) => {
                return Err(ValidationError::field(
                    "eventTimestamp",
                    format_args!("must be epoch seconds >= 0, got {t}"),
                ))
            }
        };
        Ok(ResourceEvent {
            id,
            event_type,
            severity,
            category,
            subject,
            body,
            resource: AffectedResource {
                resource_name: required_text(resource.resource_name, "resource.resourceName")?,
                resource_type: required_text(resource.resource_type, "resource.resourceType")?,
                resource_instance: resource.resource_instance,
                tags: resource.tags,
            },
            event_timestamp,
            priority,
            tags: self.tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"eventType":"MyDemoEventType","resource":{"resourceName":"DemoApp","resourceType":"app"},"severity":"INFO","category":"NOTIFICATION","subject":"My Demo Notification","body":"Sample event body."}"#;

    fn parse(json: &str) -> Result<ResourceEvent, ValidationError> {
        parse_event(json.as_bytes(), "id-1".into(), 1_700_000_000)
    }

    fn with(field: &str, value: serde_json::Value) -> String {
        let mut event: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        let (parent, key) = match field.split_once('.') {
            Some((p, k)) => (&mut event[p], k),
            None => (&mut event, field),
        };
        if value.is_null() {
            parent.as_object_mut().unwrap().remove(key);
        } else {
            parent[key] = value;
        }
        event.to_string()
    }

    #[test]
    fn minimal_event_gets_id_and_ingestion_time() {
        let event = parse(MINIMAL).unwrap();
        assert_eq!(event.id, "id-1");
        assert_eq!(event.event_timestamp, 1_700_000_000);
        assert_eq!(event.severity, Severity::Info);
        assert_eq!(event.priority, None);
    }

    #[test]
    fn every_required_field_is_named_when_missing() {
        for field in [
            "eventType",
            "severity",
            "category",
            "subject",
            "body",
            "resource",
            "resource.resourceName",
            "resource.resourceType",
        ] {
            let err = parse(&with(field, serde_json::Value::Null)).unwrap_err();
            assert_eq!(err.field, field);
            assert_eq!(err.message, format!("`{field}` is required"));
        }
    }

    #[test]
    fn enums_and_ranges_are_checked() {
        let err = parse(&with("severity", "CRITICAL".into())).unwrap_err();
        assert_eq!(err.field, "severity");
        assert!(
            err.message.contains("unknown variant `CRITICAL`"),
            "{}",
            err.message
        );
        let err = parse(&with("category", "ALARM".into())).unwrap_err();
        assert_eq!(err.field, "category");
        for bad in [0, 1001, -5] {
            let err = parse(&with("priority", bad.into())).unwrap_err();
            assert_eq!(err.field, "priority");
        }
        assert_eq!(
            parse(&with("priority", 1000.into())).unwrap().priority,
            Some(1000)
        );
        let err = parse(&with("eventTimestamp", (-1).into())).unwrap_err();
        assert_eq!(err.field, "eventTimestamp");
        let err = parse(&with("eventTimestamp", 1.5.into())).unwrap_err();
        assert_eq!(err.field, "eventTimestamp");
        let err = parse(&with("eventType", "  ".into())).unwrap_err();
        assert_eq!(err.message, "`eventType` must not be empty");
    }

    #[test]
    fn scalar_tags_are_stringified_and_unknown_fields_ignored() {
        let json = with(
            "tags",
            serde_json::json!({"n": 3, "b": true, "s": "x", "z": null}),
        );
        let json = json.replace("{\"body\"", "{\"extra\":1,\"body\"");
        let event = parse(&json).unwrap();
        let tags = event.tags.unwrap();
        assert_eq!(tags["n"], "3");
        assert_eq!(tags["b"], "true");
        assert_eq!(tags.len(), 3);
        let err = parse(&with("tags", serde_json::json!({"o": {"deep": 1}}))).unwrap_err();
        assert_eq!(err.field, "tags.o");
    }

    #[test]
    fn malformed_bodies_are_whole_body_errors() {
        assert!(parse("{\"eventType\":")
            .unwrap_err()
            .message
            .starts_with("malformed JSON"));
        assert!(parse("[1]")
            .unwrap_err()
            .message
            .contains("must be a JSON object"));
        assert!(parse("")
            .unwrap_err()
            .message
            .contains("must be a JSON object"));
        assert!(parse(&format!("{MINIMAL} x"))
            .unwrap_err()
            .message
            .starts_with("malformed JSON"));
    }

    #[test]
    fn batch_errors_are_prefixed_with_the_index() {
        let value: serde_json::Value =
            serde_json::from_str(&with("severity", "BAD".into())).unwrap();
        let err = validate_value(&value, "i".into(), 0)
            .unwrap_err()
            .in_batch(2);
        assert_eq!(err.field, "[2].severity");
        assert!(
            err.message.starts_with("`[2].severity` is invalid"),
            "{}",
            err.message
        );
        assert!(parse_events(b"[]").is_err());
        assert!(parse_events(b"{}").is_err());
    }
}
