//! CloudEvents 1.0 (structured JSON mode) as ANS resource events: the format behind ANS's
//! `POST /{cf|neo}/producer/v1/resource-events?schema_definition=cloud_events&version=1.0`.
//!
//! Pure normalization, no HTTP: the ANS producer source ([`super::ans`]) reads the body and
//! calls [`to_resource_event`], then publishes the result exactly as it does a native event.
//!
//! | CloudEvent | resource event |
//! |---|---|
//! | `type` (required) | `eventType` |
//! | extension `severity` (INFO … FATAL, any case) | `severity`, default `INFO` |
//! | extension `category` (ALERT, EXCEPTION, NOTIFICATION) | `category`, default `NOTIFICATION` |
//! | `type`, then `: subject` if there is one | `subject` |
//! | `data`: a string as is, other JSON as its text; `data_base64` as is | `body` |
//! | `source` (required) | `resource.resourceName`; `resource.resourceType` is `cloudevents` |
//! | `time` (RFC 3339) | `eventTimestamp`, default the reception time |
//! | `id` (required) | tag `ans:sourceEventId` |
//! | `source`, every other extension attribute | tags `ce:source`, `ce:<name>` |

use super::{from_value, invalid, required_text, rfc3339_seconds, scalar_text};
use model::{AffectedResource, Category, ResourceEvent, Severity, Tags, ValidationError};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The `schema_definition` query value that selects this format.
pub const SCHEMA_DEFINITION: &str = "cloud_events";
/// The only CloudEvents version read here (`specversion`, and the `version` query value).
pub const SPEC_VERSION: &str = "1.0";

/// What `resource.resourceType` says of a CloudEvent's source.
const RESOURCE_TYPE: &str = "cloudevents";

#[derive(Deserialize)]
struct CloudEvent {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    data: Option<Value>,
    data_base64: Option<String>,
    /// Every other attribute: `datacontenttype`, `dataschema` and the extensions.
    #[serde(flatten)]
    extensions: Map<String, Value>,
}

/// Normalizes one CloudEvent (a JSON object) into a resource event with `id`; `now` (epoch
/// seconds) stands in for a missing `time`.
pub fn to_resource_event(
    value: &Value,
    id: String,
    now: i64,
) -> Result<ResourceEvent, ValidationError> {
    if !value.is_object() {
        return Err(ValidationError {
            field: String::new(),
            message: "a CloudEvent must be a JSON object".into(),
        });
    }
    let ce: CloudEvent = from_value(value)?;
    let specversion = required_text(ce.specversion, "specversion")?;
    if specversion != SPEC_VERSION {
        return Err(invalid(
            "specversion",
            format_args!("must be {SPEC_VERSION}, got {specversion}"),
        ));
    }
    let ce_id = required_text(ce.id, "id")?;
    let source = required_text(ce.source, "source")?;
    let event_type = required_text(ce.kind, "type")?;
    let mut extensions = ce.extensions;
    let severity = match extensions.remove("severity") {
        None | Some(Value::Null) => Severity::Info,
        Some(value) => parse_enum(&value, "severity", Severity::ALL)?,
    };
    let category = match extensions.remove("category") {
        None | Some(Value::Null) => Category::Notification,
        Some(value) => parse_enum(&value, "category", Category::ALL)?,
    };
    let event_timestamp = match ce.time {
        None => now,
        Some(time) => rfc3339_seconds(&time).ok_or_else(|| {
            invalid(
                "time",
                format_args!("must be an RFC 3339 timestamp, got `{time}`"),
            )
        })?,
    };
    let subject = match ce.subject.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(subject) => format!("{event_type}: {subject}"),
        None => event_type.clone(),
    };
    let body = match (ce.data, ce.data_base64) {
        (Some(Value::String(text)), _) => text,
        (Some(Value::Null) | None, Some(base64)) => base64,
        (Some(Value::Null) | None, None) => String::new(),
        (Some(data), _) => data.to_string(),
    };
    let mut tags = Tags::new();
    tags.insert(model::event::TAG_SOURCE_EVENT_ID.into(), ce_id);
    tags.insert("ce:source".into(), source.clone());
    for (name, value) in &extensions {
        if let Some(text) = scalar_text(value) {
            tags.insert(format!("ce:{name}"), text);
        }
    }
    Ok(ResourceEvent {
        id,
        event_type,
        severity,
        category,
        subject,
        body,
        resource: AffectedResource {
            resource_name: source,
            resource_type: RESOURCE_TYPE.into(),
            resource_instance: None,
            tags: None,
        },
        event_timestamp,
        priority: None,
        tags: Some(tags),
    })
}

/// An ANS enum from an extension attribute, in any letter case.
fn parse_enum<T: Copy + std::fmt::Display>(
    value: &Value,
    field: &str,
    all: &[T],
) -> Result<T, ValidationError> {
    let text = value.as_str().unwrap_or_default();
    all.iter()
        .copied()
        .find(|v| v.to_string().eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            let allowed: Vec<String> = all.iter().map(T::to_string).collect();
            invalid(
                field,
                format_args!("must be one of {}, got {value}", allowed.join(", ")),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn normalize(value: Value) -> Result<ResourceEvent, ValidationError> {
        to_resource_event(&value, "id-1".into(), 1_700_000_000)
    }

    fn sample() -> Value {
        json!({
            "specversion": "1.0",
            "id": "a1b2",
            "source": "/default/sap.lmc/prod",
            "type": "ce/sap/lmc/Activity/STARTSERVICE/v1",
            "subject": "system PRD",
            "time": "2023-11-14T22:13:20Z",
            "datacontenttype": "application/json",
            "severity": "error",
            "category": "ALERT",
            "tenant": 42,
            "data": {"activityId": "7", "status": "failed"}
        })
    }

    #[test]
    fn a_cloud_event_maps_onto_the_ans_fields() {
        let event = normalize(sample()).unwrap();
        assert_eq!(event.event_type, "ce/sap/lmc/Activity/STARTSERVICE/v1");
        assert_eq!(event.severity, Severity::Error);
        assert_eq!(event.category, Category::Alert);
        assert_eq!(
            event.subject,
            "ce/sap/lmc/Activity/STARTSERVICE/v1: system PRD"
        );
        assert_eq!(event.body, r#"{"activityId":"7","status":"failed"}"#);
        assert_eq!(event.resource.resource_name, "/default/sap.lmc/prod");
        assert_eq!(event.resource.resource_type, "cloudevents");
        assert_eq!(event.event_timestamp, 1_700_000_000);
        assert_eq!(event.source_event_id(), Some("a1b2"));
        assert_eq!(event.tag("ce:source"), Some("/default/sap.lmc/prod"));
        assert_eq!(event.tag("ce:tenant"), Some("42"));
        assert_eq!(event.tag("ce:datacontenttype"), Some("application/json"));
        assert_eq!(event.tag("ce:severity"), None, "consumed, not a tag");
    }

    #[test]
    fn optional_attributes_have_defaults() {
        let event = normalize(json!({
            "specversion": "1.0", "id": "x", "source": "s", "type": "t", "data": "plain text"
        }))
        .unwrap();
        assert_eq!(
            (event.severity, event.category),
            (Severity::Info, Category::Notification)
        );
        assert_eq!(event.subject, "t");
        assert_eq!(event.body, "plain text");
        assert_eq!(event.event_timestamp, 1_700_000_000, "reception time");
        let event = normalize(json!({
            "specversion": "1.0", "id": "x", "source": "s", "type": "t", "data_base64": "AAE="
        }))
        .unwrap();
        assert_eq!(event.body, "AAE=");
    }

    #[test]
    fn errors_name_the_attribute() {
        let cases: &[(&str, Value, &str)] = &[
            ("type", Value::Null, "`type` is required"),
            ("id", json!(""), "`id` must not be empty"),
            ("source", Value::Null, "`source` is required"),
            (
                "specversion",
                json!("0.3"),
                "`specversion` must be 1.0, got 0.3",
            ),
            (
                "severity",
                json!("CRITICAL"),
                "`severity` must be one of INFO, NOTICE",
            ),
            (
                "category",
                json!("ALARM"),
                "`category` must be one of ALERT",
            ),
            (
                "time",
                json!("yesterday"),
                "`time` must be an RFC 3339 timestamp",
            ),
            ("subject", json!(7), "`subject` is invalid"),
        ];
        for (field, value, expected) in cases {
            let mut ce = sample();
            if value.is_null() {
                ce.as_object_mut().unwrap().remove(*field);
            } else {
                ce[*field] = value.clone();
            }
            let err = normalize(ce).unwrap_err();
            assert_eq!(err.field, *field);
            assert!(
                err.message.starts_with(expected),
                "{field}: {}",
                err.message
            );
        }
        assert!(normalize(json!([1]))
            .unwrap_err()
            .message
            .contains("JSON object"));
    }
}
