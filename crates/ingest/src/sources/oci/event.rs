//! OCI Events service messages (a CloudEvents 0.1 envelope, `oci-and-destinations.md` §3) that
//! reach Tocsin through the same Notifications topic as the alarms, normalized into one resource
//! event each. Pure, like [`super::alarm`].
//!
//! An event is a fact, not a state: it is a NOTIFICATION of severity INFO with no `ans:status`,
//! identified by its `eventID` (Oracle's dedupe key for events).

use super::Delivery;
use crate::sources::{from_value, invalid, required_text, rfc3339_seconds, scalar_text};
use model::event::TAG_SOURCE_EVENT_ID;
use model::{AffectedResource, Category, ResourceEvent, Severity, Tags, ValidationError};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt::Write;

/// The CloudEvents version OCI Events speaks.
const CLOUD_EVENTS_VERSION: &str = "0.1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    cloud_events_version: Option<String>,
    event_type: Option<String>,
    event_type_version: Option<String>,
    source: Option<String>,
    #[serde(rename = "eventID")]
    event_id: Option<String>,
    event_time: Option<String>,
    extensions: Option<Map<String, Value>>,
    data: Option<Data>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data {
    compartment_id: Option<String>,
    compartment_name: Option<String>,
    resource_name: Option<String>,
    resource_id: Option<String>,
    availability_domain: Option<String>,
    /// Payloads spell it `freeformTags`, the docs `freeFormTags`.
    #[serde(alias = "freeFormTags")]
    freeform_tags: Option<Map<String, Value>>,
    additional_details: Option<Value>,
}

/// A validated OCI event.
pub struct OciEvent {
    event_type: String,
    event_type_version: Option<String>,
    source: Option<String>,
    event_id: String,
    event_time: Option<i64>,
    compartment_id: Option<String>,
    data: Data,
}

impl OciEvent {
    pub fn parse(value: &Value) -> Result<OciEvent, ValidationError> {
        let envelope: Envelope = from_value(value)?;
        let version = required_text(envelope.cloud_events_version, "cloudEventsVersion")?;
        if version != CLOUD_EVENTS_VERSION {
            return Err(invalid(
                "cloudEventsVersion",
                format_args!("must be {CLOUD_EVENTS_VERSION} (OCI Events), got {version}"),
            ));
        }
        let event_time = match envelope.event_time {
            None => None,
            Some(time) => Some(rfc3339_seconds(&time).ok_or_else(|| {
                invalid(
                    "eventTime",
                    format_args!("must be an RFC 3339 timestamp, got `{time}`"),
                )
            })?),
        };
        Ok(OciEvent {
            event_type: required_text(envelope.event_type, "eventType")?,
            event_type_version: envelope.event_type_version,
            source: envelope.source.filter(|s| !s.trim().is_empty()),
            event_id: required_text(envelope.event_id, "eventID")?,
            event_time,
            compartment_id: envelope
                .extensions
                .as_ref()
                .and_then(|e| e.get("compartmentId"))
                .and_then(scalar_text),
            data: envelope.data.unwrap_or_default(),
        })
    }

    /// Oracle's dedupe key for events.
    pub fn occurrence_key(&self) -> String {
        format!("event:{}", self.event_id)
    }

    pub fn normalize(&self, delivery: &Delivery, id: String, now: i64) -> ResourceEvent {
        let data = &self.data;
        // A blank name is no name: an event's resourceName must not be blank.
        let present = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let resource_name = present(&data.resource_name)
            .or_else(|| present(&data.resource_id))
            .or_else(|| self.source.clone())
            .unwrap_or_else(|| self.event_type.clone());
        let subject = match present(&data.resource_name) {
            Some(name) => format!("{}: {name}", self.event_type),
            None => self.event_type.clone(),
        };
        let mut tags = Tags::new();
        tags.insert(TAG_SOURCE_EVENT_ID.into(), self.event_id.clone());
        let mut put = |key: &str, value: Option<&String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                tags.insert(key.into(), value.clone());
            }
        };
        put("oci:eventId", Some(&self.event_id));
        put("oci:source", self.source.as_ref());
        put("oci:eventTypeVersion", self.event_type_version.as_ref());
        put(
            "oci:compartmentId",
            data.compartment_id
                .as_ref()
                .or(self.compartment_id.as_ref()),
        );
        put("oci:compartmentName", data.compartment_name.as_ref());
        put("oci:availabilityDomain", data.availability_domain.as_ref());
        put("oci:messageId", delivery.message_id.as_ref());
        put("oci:topicId", delivery.topic_id.as_ref());
        put("oci:topicName", delivery.topic_name.as_ref());
        let resource_tags: Option<Tags> = data.freeform_tags.as_ref().map(|tags| {
            tags.iter()
                .filter_map(|(k, v)| Some((k.clone(), scalar_text(v)?)))
                .collect()
        });
        ResourceEvent {
            id,
            event_type: self.event_type.clone(),
            severity: Severity::Info,
            category: Category::Notification,
            subject,
            body: self.body_text(),
            resource: AffectedResource {
                resource_name,
                resource_type: self.source.clone().unwrap_or_else(|| "oci".into()),
                resource_instance: data.resource_id.clone(),
                tags: resource_tags.filter(|t| !t.is_empty()),
            },
            event_timestamp: self.event_time.unwrap_or(now),
            priority: None,
            tags: Some(tags),
        }
    }

    fn body_text(&self) -> String {
        let data = &self.data;
        let mut out = format!("OCI event {}", self.event_type);
        if let Some(source) = &self.source {
            let _ = write!(out, " from {source}");
        }
        out.push('\n');
        let resource = [data.resource_name.as_deref(), data.resource_id.as_deref()];
        match resource {
            [Some(name), Some(id)] => {
                let _ = writeln!(out, "Resource: {name} ({id})");
            }
            [Some(one), None] | [None, Some(one)] => {
                let _ = writeln!(out, "Resource: {one}");
            }
            [None, None] => {}
        }
        if let Some(name) = &data.compartment_name {
            let _ = writeln!(out, "Compartment: {name}");
        }
        if let Some(details) = data.additional_details.as_ref().filter(|d| !d.is_null()) {
            let _ = writeln!(out, "Details: {details}");
        }
        out.trim_end().to_owned()
    }
}

/// Whether a JSON body looks like an OCI event (rather than an alarm message).
pub fn looks_like(object: &Map<String, Value>) -> bool {
    object.contains_key("cloudEventsVersion")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Oracle's object-storage example (eventenvelopereference.htm), shortened.
    fn sample() -> Value {
        json!({
            "eventType": "com.oraclecloud.objectstorage.createobject",
            "cloudEventsVersion": "0.1",
            "eventTypeVersion": "2.0",
            "source": "ObjectStorage",
            "eventTime": "2019-01-10T21:19:24Z",
            "contentType": "application/json",
            "extensions": {"compartmentId": "ocid1.compartment.oc1..example"},
            "eventID": "a1b2c3d4-0000-4000-8000-000000000001",
            "data": {
                "compartmentId": "ocid1.compartment.oc1..example",
                "compartmentName": "example_name",
                "resourceName": "my_object",
                "resourceId": "/n/example_namespace/b/my_bucket/o/my_object",
                "availabilityDomain": "all",
                "freeformTags": {"Department": "Finance"},
                "definedTags": {"Operations": {"CostCenter": "42"}},
                "additionalDetails": {"eTag": "f8ffb6e9", "bucketName": "my_bucket"}
            }
        })
    }

    #[test]
    fn an_oci_event_is_an_info_notification_about_its_resource() {
        let delivery = Delivery {
            message_id: Some("m".into()),
            ..Delivery::default()
        };
        let event = OciEvent::parse(&sample())
            .unwrap()
            .normalize(&delivery, "id".into(), 0);
        assert_eq!(
            event.event_type,
            "com.oraclecloud.objectstorage.createobject"
        );
        assert_eq!(
            (event.severity, event.category),
            (Severity::Info, Category::Notification)
        );
        assert_eq!(
            event.subject,
            "com.oraclecloud.objectstorage.createobject: my_object"
        );
        assert_eq!(event.resource.resource_name, "my_object");
        assert_eq!(event.resource.resource_type, "ObjectStorage");
        assert_eq!(
            event.resource.resource_instance.as_deref(),
            Some("/n/example_namespace/b/my_bucket/o/my_object")
        );
        assert_eq!(
            event.resource.tags.as_ref().unwrap()["Department"],
            "Finance"
        );
        assert_eq!(event.event_timestamp, 1_547_155_164);
        assert_eq!(
            event.source_event_id(),
            Some("a1b2c3d4-0000-4000-8000-000000000001")
        );
        assert_eq!(event.tag("ans:status"), None, "an event opens nothing");
        assert_eq!(event.tag("oci:compartmentName"), Some("example_name"));
        assert_eq!(event.tag("oci:messageId"), Some("m"));
        assert!(
            event.body.contains("\"bucketName\":\"my_bucket\""),
            "{}",
            event.body
        );
        assert!(event.body.contains("Compartment: example_name"));
    }

    #[test]
    fn a_blank_resource_name_falls_back_like_a_missing_one() {
        let mut blank = sample();
        blank["data"]["resourceName"] = json!(" ");
        let event =
            OciEvent::parse(&blank)
                .unwrap()
                .normalize(&Delivery::default(), "id".into(), 0);
        assert_eq!(
            event.resource.resource_name,
            "/n/example_namespace/b/my_bucket/o/my_object"
        );
        assert_eq!(event.subject, "com.oraclecloud.objectstorage.createobject");
        blank["data"]["resourceId"] = json!("");
        let event =
            OciEvent::parse(&blank)
                .unwrap()
                .normalize(&Delivery::default(), "id".into(), 0);
        assert_eq!(event.resource.resource_name, "ObjectStorage");
    }

    #[test]
    fn bad_events_name_the_field() {
        for (field, value, message) in [
            ("eventID", Value::Null, "`eventID` is required"),
            ("eventType", json!(""), "`eventType` must not be empty"),
            (
                "cloudEventsVersion",
                json!("1.0"),
                "`cloudEventsVersion` must be 0.1",
            ),
            (
                "eventTime",
                json!("soon"),
                "`eventTime` must be an RFC 3339 timestamp",
            ),
            ("data", json!("x"), "`data` is invalid"),
        ] {
            let mut event = sample();
            if value.is_null() {
                event.as_object_mut().unwrap().remove(field);
            } else {
                event[field] = value;
            }
            let err = OciEvent::parse(&event).err().expect(field);
            assert_eq!(err.field, field);
            assert!(err.message.starts_with(message), "{}", err.message);
        }
    }
}
