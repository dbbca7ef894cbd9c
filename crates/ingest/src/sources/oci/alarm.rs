//! OCI Monitoring alarm messages, as OCI Notifications delivers them, normalized into one
//! resource event each. Pure: the HTTP layer ([`super`]) hands in the parsed body and the
//! delivery headers and publishes what comes out.
//!
//! Parsing is lenient where real payloads differ between versions 1.0 and 1.5 (see
//! `oci-and-destinations.md` §1): only `dedupeKey`, `type` and each `alarmMetaData[].id` are
//! required; `version` is a number or a string; `body` may be null; `metricValues` is read
//! inside each alarm or, misplaced as in Oracle's own example, at the top; dimension values may
//! be any scalar; an undocumented `type` is kept. Unknown fields are ignored.
//!
//! One message becomes one event whose identity is the `dedupeKey` (the alarm, or in split mode
//! the alarm and one metric stream): its `ans:status` says whether it opens or updates
//! (OK_TO_FIRING, REPEAT), closes (FIRING_TO_OK, RESET) or only comments (any other type) the
//! chain. docs/src/sources/oci.md has the full mapping table.

use super::Delivery;
use crate::sources::{from_value, invalid, required_text};
use model::event::{TAG_CORRELATION_ID, TAG_SOURCE_EVENT_ID, TAG_STATUS};
use model::{AffectedResource, Category, ResourceEvent, Severity, Tags, ValidationError};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// `eventType` of every alarm event.
pub const EVENT_TYPE: &str = "OCIAlarm";
/// Reserved ANS tag: a link to the details of the event (here, the alarm in the OCI console).
const TAG_DETAILS_LINK: &str = "ans:detailsLink";
/// `resource.resourceType` when the message names no metric namespace (old payloads).
const UNKNOWN_NAMESPACE: &str = "oci_alarm";
/// Dimensions listed in the body; all of them are in the `oci:dimensions` tag.
const BODY_DIMENSIONS: usize = 20;

/// The message type: the alarm's state transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlarmType {
    OkToFiring,
    FiringToOk,
    Repeat,
    Reset,
    /// A type OCI does not document (yet): kept, never rejected.
    Other(String),
}

impl AlarmType {
    fn parse(text: &str) -> AlarmType {
        match text {
            "OK_TO_FIRING" => AlarmType::OkToFiring,
            "FIRING_TO_OK" => AlarmType::FiringToOk,
            "REPEAT" => AlarmType::Repeat,
            "RESET" => AlarmType::Reset,
            other => AlarmType::Other(other.to_owned()),
        }
    }

    /// The ANS `ans:status`: what an incident-management target should do.
    pub fn ans_status(&self) -> &'static str {
        match self {
            AlarmType::OkToFiring | AlarmType::Repeat => "CREATE_OR_UPDATE",
            AlarmType::FiringToOk | AlarmType::Reset => "CLOSE",
            AlarmType::Other(_) => "COMMENT",
        }
    }

    /// How the subject announces the transition.
    fn label(&self) -> &str {
        match self {
            AlarmType::OkToFiring => "FIRING",
            AlarmType::Repeat => "FIRING (repeat)",
            AlarmType::FiringToOk => "OK",
            AlarmType::Reset => "OK (reset: metric stream absent)",
            AlarmType::Other(other) => other,
        }
    }
}

/// A JSON scalar read as text: OCI documents strings, some payloads carry numbers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        match Value::deserialize(de)? {
            Value::String(text) => Ok(Text(Some(text))),
            Value::Number(number) => Ok(Text(Some(number.to_string()))),
            Value::Bool(flag) => Ok(Text(Some(flag.to_string()))),
            Value::Null => Ok(Text(None)),
            _ => Err(serde::de::Error::custom("expected a string or a number")),
        }
    }
}

/// One metric stream's dimensions, or one metric value per query expression.
type TextMap = BTreeMap<String, Text>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    dedupe_key: Option<String>,
    title: Option<String>,
    body: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    severity: Option<String>,
    timestamp_epoch_millis: Option<Millis>,
    alarm_meta_data: Option<Vec<AlarmMetaData>>,
    metric_values: Option<Vec<TextMap>>,
    notification_type: Option<String>,
    version: Option<Text>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlarmMetaData {
    id: Option<String>,
    status: Option<String>,
    severity: Option<String>,
    namespace: Option<String>,
    query: Option<String>,
    total_metrics_firing: Option<u64>,
    dimensions: Option<Vec<TextMap>>,
    metric_values: Option<Vec<TextMap>>,
    alarm_url: Option<String>,
    alarm_summary: Option<String>,
}

/// `timestampEpochMillis`: an integer, or its decimal text.
#[derive(Debug, Clone, Copy)]
struct Millis(i64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(de)?;
        let millis = match &value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        millis.filter(|m| *m >= 0).map(Millis).ok_or_else(|| {
            serde::de::Error::custom("expected epoch milliseconds (an integer >= 0)")
        })
    }
}

/// A validated alarm message.
#[derive(Debug, Clone)]
pub struct Alarm {
    dedupe_key: String,
    kind: AlarmType,
    raw_type: String,
    title: Option<String>,
    body: Option<String>,
    severity: Option<String>,
    timestamp_millis: Option<i64>,
    alarms: Vec<Meta>,
    notification_type: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Clone)]
struct Meta {
    id: String,
    status: Option<String>,
    severity: Option<String>,
    namespace: Option<String>,
    query: Option<String>,
    total_metrics_firing: Option<u64>,
    dimensions: Vec<BTreeMap<String, String>>,
    metric_values: Vec<BTreeMap<String, String>>,
    alarm_url: Option<String>,
    alarm_summary: Option<String>,
}

fn texts(maps: Option<Vec<TextMap>>) -> Vec<BTreeMap<String, String>> {
    maps.unwrap_or_default()
        .into_iter()
        .map(|map| {
            map.into_iter()
                .filter_map(|(key, Text(value))| Some((key, value?)))
                .collect()
        })
        .collect()
}

impl Alarm {
    /// Reads an alarm message from its JSON body.
    pub fn parse(value: &Value) -> Result<Alarm, ValidationError> {
        let message: Message = from_value(value)?;
        let dedupe_key = required_text(message.dedupe_key, "dedupeKey")?;
        let raw_type = required_text(message.kind, "type")?;
        let mut alarms = Vec::new();
        for (index, meta) in message
            .alarm_meta_data
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            alarms.push(Meta {
                id: required_text(meta.id, &format!("alarmMetaData[{index}].id"))?,
                status: meta.status,
                severity: meta.severity,
                namespace: meta.namespace,
                query: meta.query,
                total_metrics_firing: meta.total_metrics_firing,
                dimensions: texts(meta.dimensions),
                metric_values: texts(meta.metric_values),
                alarm_url: meta.alarm_url,
                alarm_summary: meta.alarm_summary,
            });
        }
        // Oracle's RAW example misplaces `metricValues` outside `alarmMetaData`: give them to
        // the (first) alarm when it has none of its own.
        let misplaced = texts(message.metric_values);
        if !misplaced.is_empty() {
            match alarms.first_mut() {
                Some(first) if first.metric_values.is_empty() => first.metric_values = misplaced,
                Some(_) => {}
                None => {
                    return Err(invalid(
                        "metricValues",
                        "needs an alarm in `alarmMetaData` to belong to",
                    ))
                }
            }
        }
        Ok(Alarm {
            dedupe_key,
            kind: AlarmType::parse(&raw_type),
            raw_type,
            title: message.title.filter(|t| !t.trim().is_empty()),
            body: message.body.filter(|b| !b.trim().is_empty()),
            severity: message.severity,
            timestamp_millis: message.timestamp_epoch_millis.map(|Millis(m)| m),
            alarms,
            notification_type: message.notification_type,
            version: message.version.and_then(|Text(v)| v),
        })
    }

    /// The message's occurrence: `dedupeKey` + `timestampEpochMillis`, Oracle's advice for
    /// recognising a message delivered twice. `None` without a timestamp.
    pub fn occurrence_key(&self) -> Option<String> {
        self.timestamp_millis
            .map(|millis| format!("alarm:{}:{millis}", self.dedupe_key))
    }

    /// The resource event for this message, delivered with `delivery`'s headers.
    pub fn normalize(&self, delivery: &Delivery, id: String, now: i64) -> ResourceEvent {
        let first = self.alarms.first();
        let all_dimensions: Vec<&BTreeMap<String, String>> =
            self.alarms.iter().flat_map(|a| &a.dimensions).collect();
        let single_stream = match all_dimensions.as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        let title = self
            .title
            .clone()
            .or_else(|| first.map(|a| a.id.clone()))
            .unwrap_or_else(|| format!("OCI alarm {}", self.dedupe_key));
        // Split mode: the message is about one metric stream, named by its resource.
        let split = self
            .notification_type
            .as_deref()
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("split"));
        let resource_name = single_stream
            .filter(|_| split)
            .and_then(display_name)
            .unwrap_or(&title)
            .to_owned();
        let resource_type = first
            .and_then(|a| a.namespace.clone())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| UNKNOWN_NAMESPACE.into());
        let resource_tags = single_stream.map(|dimensions| {
            dimensions
                .iter()
                .map(|(key, value)| (canonical_dimension_key(key).to_owned(), value.clone()))
                .collect::<Tags>()
        });

        let mut tags = Tags::new();
        tags.insert(TAG_SOURCE_EVENT_ID.into(), self.dedupe_key.clone());
        tags.insert(TAG_CORRELATION_ID.into(), self.dedupe_key.clone());
        tags.insert(TAG_STATUS.into(), self.kind.ans_status().into());
        if let Some(url) = self.alarms.iter().find_map(|a| a.alarm_url.clone()) {
            tags.insert(TAG_DETAILS_LINK.into(), url);
        }
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                tags.insert(key.into(), value);
            }
        };
        put("oci:type", Some(self.raw_type.clone()));
        put("oci:severity", self.severity.clone());
        put("oci:alarmId", self.joined(|a| Some(a.id.clone())));
        put("oci:status", self.joined(|a| a.status.clone()));
        put("oci:namespace", self.joined(|a| a.namespace.clone()));
        put("oci:query", self.joined(|a| a.query.clone()));
        if !all_dimensions.is_empty() {
            put("oci:dimensions", Some(json_text(&all_dimensions)));
        }
        let values: Vec<_> = self.alarms.iter().flat_map(|a| &a.metric_values).collect();
        if !values.is_empty() {
            put("oci:metricValues", Some(json_text(&values)));
        }
        put("oci:notificationType", self.notification_type.clone());
        put("oci:version", self.version.clone());
        put(
            "oci:timestampEpochMillis",
            self.timestamp_millis.map(|m| m.to_string()),
        );
        if self.kind == AlarmType::Reset {
            put("oci:metricStreamAbsent", Some("true".into()));
        }
        put("oci:messageId", delivery.message_id.clone());
        put("oci:topicId", delivery.topic_id.clone());
        put("oci:topicName", delivery.topic_name.clone());

        ResourceEvent {
            id,
            event_type: EVENT_TYPE.into(),
            severity: self.severity(),
            // Closing messages keep the category (and severity) of the alarm, so that every
            // subscription that saw the alarm open also sees it close.
            category: Category::Alert,
            subject: format!("[{}] {title}", self.kind.label()),
            body: self.body_text(),
            resource: AffectedResource {
                resource_name,
                resource_type,
                resource_instance: first.map(|a| a.id.clone()),
                tags: resource_tags,
            },
            event_timestamp: self.timestamp_millis.map_or(now, |m| m / 1000),
            priority: None,
            tags: Some(tags),
        }
    }

    /// CRITICAL→FATAL, ERROR, WARNING, INFO; the message's own severity, else its first alarm's;
    /// WARNING for a value OCI does not document (the raw one stays in `oci:severity`).
    fn severity(&self) -> Severity {
        let raw = self
            .severity
            .as_deref()
            .or_else(|| self.alarms.iter().find_map(|a| a.severity.as_deref()));
        match raw.map(str::to_ascii_uppercase).as_deref() {
            Some("CRITICAL") => Severity::Fatal,
            Some("ERROR") => Severity::Error,
            Some("INFO") => Severity::Info,
            _ => Severity::Warning,
        }
    }

    /// The distinct values of one alarm field, joined with ", ".
    fn joined(&self, field: impl Fn(&Meta) -> Option<String>) -> Option<String> {
        let mut values: Vec<String> = Vec::new();
        for value in self.alarms.iter().filter_map(field) {
            if !values.contains(&value) {
                values.push(value);
            }
        }
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// The alarm's body, then per alarm: its state, summary, trigger rule, metric values, the
    /// resources it fires for, and the console link.
    fn body_text(&self) -> String {
        let mut out = String::new();
        if let Some(body) = &self.body {
            out.push_str(body.trim_end());
            out.push_str("\n\n");
        }
        for alarm in &self.alarms {
            let _ = write!(out, "Alarm {}", alarm.id);
            let state: Vec<String> = [
                alarm.status.clone(),
                alarm.severity.clone(),
                alarm
                    .total_metrics_firing
                    .map(|n| format!("{n} metric stream(s) firing")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !state.is_empty() {
                let _ = write!(out, ": {}", state.join(", "));
            }
            out.push('\n');
            if let Some(summary) = &alarm.alarm_summary {
                let _ = writeln!(out, "{summary}");
            }
            if let Some(query) = &alarm.query {
                let _ = write!(out, "Trigger rule: {query}");
                if let Some(namespace) = &alarm.namespace {
                    let _ = write!(out, " (namespace {namespace})");
                }
                out.push('\n');
            }
            let values: Vec<String> = alarm
                .metric_values
                .iter()
                .flatten()
                .map(|(expression, value)| format!("{expression} = {value}"))
                .collect();
            if !values.is_empty() {
                let _ = writeln!(out, "Metric values: {}", values.join("; "));
            }
            if !alarm.dimensions.is_empty() {
                let _ = writeln!(out, "Metric streams ({}):", alarm.dimensions.len());
                for dimensions in alarm.dimensions.iter().take(BODY_DIMENSIONS) {
                    let pairs: Vec<String> =
                        dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let _ = writeln!(out, "- {}", pairs.join(", "));
                }
                if alarm.dimensions.len() > BODY_DIMENSIONS {
                    let _ = writeln!(
                        out,
                        "- … and {} more (all in the oci:dimensions tag)",
                        alarm.dimensions.len() - BODY_DIMENSIONS
                    );
                }
            }
            if let Some(url) = &alarm.alarm_url {
                let _ = writeln!(out, "Console: {url}");
            }
            out.push('\n');
        }
        if self.kind == AlarmType::Reset {
            out.push_str(
                "RESET: a metric stream that made the alarm fire has been absent for the whole \
                 reset period and is no longer tracked; check the health of the resource.\n",
            );
        }
        let text = out.trim_end().to_owned();
        if text.is_empty() {
            format!("OCI alarm {}: {}", self.dedupe_key, self.raw_type)
        } else {
            text
        }
    }
}

/// The name a human knows a metric stream's resource by.
fn display_name(dimensions: &BTreeMap<String, String>) -> Option<&String> {
    const KEYS: [&str; 6] = [
        "resourceDisplayName",
        "resourceDisplayname",
        "displayName",
        "resourceName",
        "resourceId",
        "resourceID",
    ];
    KEYS.iter()
        .find_map(|key| dimensions.get(*key))
        .filter(|name| !name.trim().is_empty())
}

/// OCI spells some dimension keys two ways; resource tags use one.
fn canonical_dimension_key(key: &str) -> &str {
    match key {
        "resourceID" => "resourceId",
        "resourceDisplayname" => "resourceDisplayName",
        other => other,
    }
}

fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of strings serialize")
}

/// Whether a JSON body looks like an alarm message (rather than an OCI event).
pub fn looks_like(object: &Map<String, Value>) -> bool {
    object.contains_key("dedupeKey") || object.contains_key("alarmMetaData")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/oci")
            .join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    fn delivery() -> Delivery {
        Delivery {
            message_id: Some("msg-1".into()),
            topic_id: Some("ocid1.onstopic.oc1.phx.t".into()),
            topic_name: Some("alarms".into()),
            ..Delivery::default()
        }
    }

    fn normalize(value: &Value) -> ResourceEvent {
        Alarm::parse(value)
            .unwrap()
            .normalize(&delivery(), "id-1".into(), 1_800_000_000)
    }

    /// What each fixture must become: (file, subject, severity, status, resource name,
    /// resource type, timestamp, whether the body mentions the metric values).
    #[test]
    fn every_fixture_normalizes_as_the_table_says() {
        struct Expect {
            file: &'static str,
            subject: &'static str,
            severity: Severity,
            status: &'static str,
            resource_name: &'static str,
            resource_type: &'static str,
            timestamp: i64,
            body_has: &'static [&'static str],
        }
        let table = [
            Expect {
                file: "ok-to-firing.seed.json",
                subject: "[FIRING] Test Alert",
                severity: Severity::Info,
                status: "CREATE_OR_UPDATE",
                resource_name: "Test Alert",
                resource_type: "oci_alarm",
                timestamp: 1_597_101_180,
                body_has: &[
                    "An alert is firing that needs attention in CX Service",
                    "Trigger rule: PutRequests[1m]",
                    "resourceDisplayName=bucket-20200810-1902",
                ],
            },
            Expect {
                file: "firing-to-ok.seed.json",
                subject: "[OK] Test Alert",
                severity: Severity::Info,
                status: "CLOSE",
                resource_name: "Test Alert",
                resource_type: "oci_alarm",
                timestamp: 1_597_101_420,
                body_has: &["Alarm ocid1.alarm.oc1.iad.aaaaaaaaexamplealarm: OK, INFO"],
            },
            Expect {
                file: "split-v1.5.json",
                subject: "[FIRING] High CPU Utilization",
                severity: Severity::Fatal,
                status: "CREATE_OR_UPDATE",
                resource_name: "wordpress",
                resource_type: "oci_computeagent",
                timestamp: 1_684_337_663,
                body_has: &[
                    "Follow runbook at http://example.com/runbooks",
                    "is in a \"FIRING\" state",
                    "Metric values: CpuUtilization[1m].mean() = 92",
                    "Console: https://cloud.oracle.com/monitoring/alarms/",
                ],
            },
            Expect {
                file: "repeat-grouped-v1.3.json",
                subject: "[FIRING (repeat)] Memory above 90% on web tier",
                severity: Severity::Warning,
                status: "CREATE_OR_UPDATE",
                resource_name: "Memory above 90% on web tier",
                resource_type: "oci_computeagent",
                timestamp: 1_700_000_460,
                body_has: &["Metric streams (2):", "server-b", "server-c"],
            },
        ];
        for expect in table {
            let event = normalize(&fixture(expect.file));
            let file = expect.file;
            assert_eq!(event.event_type, "OCIAlarm", "{file}");
            assert_eq!(event.subject, expect.subject, "{file}");
            assert_eq!(event.severity, expect.severity, "{file}");
            assert_eq!(event.category, Category::Alert, "{file}");
            assert_eq!(event.tag("ans:status"), Some(expect.status), "{file}");
            assert_eq!(event.resource.resource_name, expect.resource_name, "{file}");
            assert_eq!(event.resource.resource_type, expect.resource_type, "{file}");
            assert!(event
                .resource
                .resource_instance
                .as_deref()
                .unwrap()
                .starts_with("ocid1.alarm."));
            assert_eq!(event.event_timestamp, expect.timestamp, "{file}");
            for needle in expect.body_has {
                assert!(
                    event.body.contains(needle),
                    "{file}: {needle:?} not in\n{}",
                    event.body
                );
            }
            assert_eq!(event.tag("oci:messageId"), Some("msg-1"));
            assert_eq!(event.tag("oci:topicName"), Some("alarms"));
            // The normalized event passes the same validation as a producer's event.
            let json = serde_json::to_vec(&event).unwrap();
            assert_eq!(
                model::parse_event(&json, "id-1".into(), 0).unwrap(),
                event,
                "{file}"
            );
        }
    }

    #[test]
    fn the_seed_pair_opens_then_closes_one_chain() {
        let open = normalize(&fixture("ok-to-firing.seed.json"));
        let close = normalize(&fixture("firing-to-ok.seed.json"));
        assert_eq!(
            open.source_event_id(),
            Some("9a38cd1c-f808-4871-8c2a-abc4a72a9868")
        );
        assert_eq!(open.source_event_id(), close.source_event_id());
        assert_eq!(open.correlation_id(), close.correlation_id());
        assert_eq!(open.tag("ans:status"), Some("CREATE_OR_UPDATE"));
        assert_eq!(close.tag("ans:status"), Some("CLOSE"));
        // Same routing properties, so that what saw the alarm open sees it close.
        assert_eq!(
            (
                open.event_type.as_str(),
                open.severity,
                open.category,
                &open.resource.resource_name
            ),
            (
                close.event_type.as_str(),
                close.severity,
                close.category,
                &close.resource.resource_name
            )
        );
        assert_ne!(
            Alarm::parse(&fixture("ok-to-firing.seed.json"))
                .unwrap()
                .occurrence_key(),
            Alarm::parse(&fixture("firing-to-ok.seed.json"))
                .unwrap()
                .occurrence_key()
        );
    }

    #[test]
    fn oci_specifics_are_tags_conditions_can_match() {
        let event = normalize(&fixture("split-v1.5.json"));
        assert_eq!(event.tag("oci:type"), Some("OK_TO_FIRING"));
        assert_eq!(event.tag("oci:severity"), Some("CRITICAL"));
        assert_eq!(event.tag("oci:namespace"), Some("oci_computeagent"));
        assert_eq!(
            event.tag("oci:query"),
            Some("CpuUtilization[1m].mean() > 90")
        );
        assert_eq!(
            event.tag("oci:alarmId"),
            Some("ocid1.alarm.oc1.iad.exampleuniqueID")
        );
        assert_eq!(event.tag("oci:version"), Some("1.5"));
        assert_eq!(event.tag("oci:timestampEpochMillis"), Some("1684337663852"));
        assert_eq!(
            event.tag("ans:detailsLink"),
            Some("https://cloud.oracle.com/monitoring/alarms/ocid1.alarm.oc1.iad.exampleid?region=us-ashburn-1")
        );
        let dimensions: Value = serde_json::from_str(event.tag("oci:dimensions").unwrap()).unwrap();
        assert_eq!(dimensions[0]["shape"], "VM.Standard.E4.Flex");
        let values: Value = serde_json::from_str(event.tag("oci:metricValues").unwrap()).unwrap();
        assert_eq!(values, json!([{"CpuUtilization[1m].mean()": "92"}]));
        let resource_tags = event.resource.tags.as_ref().unwrap();
        assert_eq!(
            resource_tags["resourceId"],
            "ocid1.instance.oc1.iad.exampleid"
        );
        assert_eq!(resource_tags["region"], "us-ashburn-1");
        assert_eq!(event.tag("oci:topicId"), Some("ocid1.onstopic.oc1.phx.t"));
    }

    fn variant(edit: impl FnOnce(&mut Value)) -> Value {
        let mut value = fixture("split-v1.5.json");
        edit(&mut value);
        value
    }

    #[test]
    fn the_documented_variants_are_accepted() {
        // body null: the body is built from the alarm alone.
        let event = normalize(&variant(|v| v["body"] = Value::Null));
        assert!(
            event.body.starts_with("Alarm ocid1.alarm"),
            "{}",
            event.body
        );

        // resourceID and resourceId both name the resource.
        let event = normalize(&variant(|v| {
            v["alarmMetaData"][0]["dimensions"] = json!([{"resourceID": "ocid1.instance.x"}])
        }));
        assert_eq!(event.resource.resource_name, "ocid1.instance.x");
        assert_eq!(
            event.resource.tags.unwrap()["resourceId"],
            "ocid1.instance.x"
        );

        // version as 1, 1.0, "1.3" — and missing.
        for (version, text) in [
            (json!(1), Some("1")),
            (json!(1.0), Some("1.0")),
            (json!("1.3"), Some("1.3")),
            (Value::Null, None),
        ] {
            let event = normalize(&variant(|v| v["version"] = version));
            assert_eq!(event.tag("oci:version"), text);
        }

        // metricValues outside alarmMetaData.
        let event = normalize(&variant(|v| {
            let values = v["alarmMetaData"][0]
                .as_object_mut()
                .unwrap()
                .remove("metricValues")
                .unwrap();
            v["metricValues"] = values;
        }));
        assert!(
            event
                .body
                .contains("Metric values: CpuUtilization[1m].mean() = 92"),
            "{}",
            event.body
        );
        assert!(event.tag("oci:metricValues").is_some());

        // 100 dimensions: all in the tag, 20 in the body.
        let dimensions: Vec<Value> = (0..100)
            .map(|i| json!({"resourceId": format!("ocid1.instance.{i}"), "resourceDisplayName": format!("vm-{i}")}))
            .collect();
        let event = normalize(&variant(|v| {
            v["alarmMetaData"][0]["dimensions"] = json!(dimensions);
            v["notificationType"] = json!("Grouped messages across metric streams");
        }));
        let tagged: Vec<Value> =
            serde_json::from_str(event.tag("oci:dimensions").unwrap()).unwrap();
        assert_eq!(tagged.len(), 100);
        assert!(event.body.contains("vm-19") && !event.body.contains("vm-20,"));
        assert!(event.body.contains("… and 80 more"), "{}", event.body);
        assert_eq!(
            event.resource.resource_name, "High CPU Utilization",
            "grouped: the alarm"
        );
        assert!(event.resource.tags.is_none());

        // An undocumented type is kept, as a comment on the chain.
        let event = normalize(&variant(|v| v["type"] = json!("RESEND")));
        assert_eq!(event.tag("ans:status"), Some("COMMENT"));
        assert_eq!(event.tag("oci:type"), Some("RESEND"));
        assert_eq!(event.subject, "[RESEND] High CPU Utilization");

        // RESET closes and says why.
        let event = normalize(&variant(|v| v["type"] = json!("RESET")));
        assert_eq!(event.tag("ans:status"), Some("CLOSE"));
        assert_eq!(event.tag("oci:metricStreamAbsent"), Some("true"));
        assert!(event.body.contains("no longer tracked"));

        // Old payloads: no timestamp, namespace, alarmUrl; numbers where strings are documented.
        let event = normalize(&json!({
            "dedupeKey": "k", "type": "OK_TO_FIRING", "severity": "ERROR",
            "timestampEpochMillis": "1597101180000",
            "alarmMetaData": [{"id": "ocid1.alarm.x", "dimensions": [{"resourceId": "r", "port": 443}],
                               "metricValues": [{"q": 92.5}]}],
            "version": 1.0, "futureField": {"x": 1}
        }));
        assert_eq!(event.severity, Severity::Error);
        assert_eq!(event.event_timestamp, 1_597_101_180);
        assert_eq!(event.resource.resource_type, "oci_alarm");
        assert!(
            event.body.contains("port=443") && event.body.contains("q = 92.5"),
            "{}",
            event.body
        );
        assert_eq!(event.tag("ans:detailsLink"), None);

        // The bare minimum: no alarmMetaData, no timestamp.
        let event = normalize(&json!({"dedupeKey": "k", "type": "FIRING_TO_OK"}));
        assert_eq!(event.event_timestamp, 1_800_000_000, "reception time");
        assert_eq!(event.subject, "[OK] OCI alarm k");
        assert_eq!(event.severity, Severity::Warning);
        assert!(Alarm::parse(&json!({"dedupeKey": "k", "type": "X"}))
            .unwrap()
            .occurrence_key()
            .is_none());
    }

    #[test]
    fn severities_map_onto_ans() {
        for (oci, ans) in [
            ("CRITICAL", Severity::Fatal),
            ("ERROR", Severity::Error),
            ("WARNING", Severity::Warning),
            ("INFO", Severity::Info),
            ("critical", Severity::Fatal),
            ("SEVERE", Severity::Warning),
        ] {
            let event = normalize(&variant(|v| v["severity"] = json!(oci)));
            assert_eq!(event.severity, ans, "{oci}");
        }
        let event = normalize(&variant(|v| {
            v.as_object_mut().unwrap().remove("severity");
            v["alarmMetaData"][0]["severity"] = json!("ERROR");
        }));
        assert_eq!(
            event.severity,
            Severity::Error,
            "from the alarm when the message has none"
        );
    }

    #[test]
    fn bad_messages_name_the_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                variant(|v| {
                    v.as_object_mut().unwrap().remove("dedupeKey");
                }),
                "dedupeKey",
                "`dedupeKey` is required",
            ),
            (
                variant(|v| v["dedupeKey"] = json!("")),
                "dedupeKey",
                "`dedupeKey` must not be empty",
            ),
            (
                variant(|v| {
                    v.as_object_mut().unwrap().remove("type");
                }),
                "type",
                "`type` is required",
            ),
            (
                variant(|v| {
                    v["alarmMetaData"][0].as_object_mut().unwrap().remove("id");
                }),
                "alarmMetaData[0].id",
                "`alarmMetaData[0].id` is required",
            ),
            (
                variant(|v| v["version"] = json!({"major": 1})),
                "version",
                "`version` is invalid",
            ),
            (
                variant(|v| v["timestampEpochMillis"] = json!(-5)),
                "timestampEpochMillis",
                "`timestampEpochMillis` is invalid",
            ),
            (
                variant(|v| v["alarmMetaData"] = json!({"id": "x"})),
                "alarmMetaData",
                "`alarmMetaData` is invalid",
            ),
            (
                variant(|v| v["alarmMetaData"][0]["dimensions"] = json!([{"a": ["b"]}])),
                "alarmMetaData[0].dimensions[0].a",
                "`alarmMetaData[0].dimensions[0].a` is invalid",
            ),
            (
                json!({"dedupeKey": "k", "type": "X", "metricValues": [{"q": "1"}]}),
                "metricValues",
                "`metricValues` needs an alarm",
            ),
        ];
        for (value, field, message) in cases {
            let err = Alarm::parse(&value).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.starts_with(message), "{field}: {}", err.message);
        }
    }
}
