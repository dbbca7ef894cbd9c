//! Prometheus Alertmanager as a source: point a `webhook_configs` receiver at
//! `POST /alertmanager/v1/webhook` (with `basic_auth` or `authorization` of a producer-scope
//! client) and every alert of each notification becomes one resource event, so that
//! Alertmanager users get Tocsin's store-and-forward delivery and history.
//!
//! Flow: the webhook body (version 4) is parsed and each alert normalized by
//! [`normalize`] — pure, unit-tested — then the events are published together, in order, and
//! answered 202 once durably queued. An alert's `fingerprint` is its identity
//! (`ans:sourceEventId`), so a firing alert and its resolution form one chain:
//!
//! | Alertmanager | resource event |
//! |---|---|
//! | label `alertname` | `eventType` (`PrometheusAlert` without one) |
//! | label `severity`: critical/fatal/page → FATAL, error → ERROR, warning/warn → WARNING, notice → NOTICE, info/none → INFO, other or none → WARNING | `severity` |
//! | — | `category` ALERT |
//! | `[FIRING]`/`[RESOLVED]` + annotation `summary` (else `alertname` on `instance`) | `subject` |
//! | annotations `description`/`message`, then the labels | `body` |
//! | label `instance`, else `job`, else `alertname` | `resource.resourceName` |
//! | label `job`, else `prometheus` | `resource.resourceType` |
//! | `startsAt` (firing) or `endsAt` (resolved) | `eventTimestamp` |
//! | `fingerprint` (else the label set) | tag `ans:sourceEventId` |
//! | `groupKey` | tag `ans:correlationId` |
//! | `status`: firing → CREATE_OR_UPDATE, resolved → CLOSE | tag `ans:status` |
//! | `generatorURL`, annotation `runbook_url` | tags `ans:detailsLink`, `ans:recommendedActionLink` |
//! | every label; `receiver`, `externalURL` | tags `label:<name>`; `alertmanager:receiver`, `alertmanager:externalURL` |
//!
//! Re-sends: Alertmanager sends a group again on every `group_interval` that brings a change
//! and every `repeat_interval` anyway, with all its alerts, firing and resolved. Each alert's
//! occurrence — `fingerprint`, `status`, `startsAt`, `endsAt` (cleared on a firing alert) — is
//! claimed in the producer APIs' dedupe window ([`super::idempotency`]); an alert already
//! published within the window is left out, and the answer (202) lists what was published.
//! A resolution, or a new firing of the same alert (a new `startsAt`), is a new occurrence.
//! An `Idempotency-Key` header works as on the ANS routes.

use super::idempotency::{self, Idempotency, Outcome, Request};
use super::{from_value, invalid, new_event_id, parse_json, published_outcome, rfc3339_seconds};
use crate::EventPublisher;
use bytes::Bytes;
use model::event::{TAG_CORRELATION_ID, TAG_SOURCE_EVENT_ID, TAG_STATUS};
use model::{AffectedResource, Category, ResourceEvent, Severity, Tags, ValidationError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};
use web::ApiError;

/// `eventType` of an alert without an `alertname` label.
const DEFAULT_EVENT_TYPE: &str = "PrometheusAlert";

pub const DESCRIPTION: super::Description = super::Description {
    label: "alertmanager",
    routes: &[super::intake("/alertmanager/v1/webhook")],
};

/// `POST /alertmanager/v1/webhook`, behind the producer-scope credential check.
pub fn mount(mount: &super::Mount) -> BoxedFilter<(Response,)> {
    let publisher = mount.publisher(&DESCRIPTION);
    let idempotency = mount.idempotency.clone();
    let context = warp::any().map(move || (publisher.clone(), idempotency.clone()));
    warp::path!("alertmanager" / "v1" / "webhook")
        .and(warp::post())
        .and(mount.producer.clone())
        .and(warp::header::optional::<String>(idempotency::HEADER))
        .and(web::body::json(mount.body_limit))
        .and(context)
        .then(
            |client: String,
             key: Option<String>,
             body: Bytes,
             (publisher, idempotency): (EventPublisher, Idempotency)| async move {
                let request = Request {
                    key,
                    client: &client,
                    route: "alertmanager/webhook",
                    variant: "",
                    body: &body,
                };
                let handle = accept(&client, &body, &publisher, &idempotency);
                idempotency.once(request, &publisher, handle).await
            },
        )
        .boxed()
}

/// Publishes the alerts of the notification not published within the window.
async fn accept(
    client: &str,
    body: &[u8],
    publisher: &EventPublisher,
    window: &Idempotency,
) -> Outcome {
    let alerts = match parse_json(body)
        .and_then(|value| occurrences(&value, clock::now_epoch_seconds(), new_event_id))
    {
        Ok(alerts) => alerts,
        Err(e) => return ApiError::bad_request(e.message).into_response().into(),
    };
    let keys: Vec<String> = alerts
        .iter()
        .map(|(_, occurrence)| format!("alertmanager:{client}:{occurrence}"))
        .collect();
    let tickets = match window.claim_each(&keys).await {
        Ok(tickets) => tickets,
        Err(e) => return idempotency::window_unavailable(e).into(),
    };
    let sent = alerts.len();
    let (events, tickets): (Vec<ResourceEvent>, Vec<_>) = alerts
        .into_iter()
        .zip(tickets)
        .filter_map(|((event, _), ticket)| Some((event, ticket?)))
        .unzip();
    if !events.is_empty() {
        // On failure the tickets are dropped: the alerts are given back for the retry.
        if let Err(e) = publisher.publish(&events).await {
            return super::queue_unavailable(e).into();
        }
    }
    for ticket in tickets {
        idempotency::commit(ticket.commit());
    }
    let again = sent - events.len();
    if again > 0 {
        tracing::debug!(
            again,
            "Alertmanager re-sent alerts already published; not published again"
        );
        publisher.deduplicated(again as u64);
    }
    published_outcome(&events)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    version: Option<String>,
    group_key: Option<String>,
    receiver: Option<String>,
    #[serde(rename = "externalURL")]
    external_url: Option<String>,
    truncated_alerts: Option<u64>,
    alerts: Option<Vec<Alert>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    generator_url: Option<String>,
    fingerprint: Option<String>,
}

/// The events of one webhook notification, in the order of its alerts; `id` gives each its id.
pub fn normalize(
    value: &serde_json::Value,
    now: i64,
    id: impl FnMut() -> String,
) -> Result<Vec<ResourceEvent>, ValidationError> {
    Ok(occurrences(value, now, id)?
        .into_iter()
        .map(|(event, _)| event)
        .collect())
}

/// [`normalize`], each event with its alert's occurrence: `fingerprint|status|startsAt|endsAt`.
fn occurrences(
    value: &serde_json::Value,
    now: i64,
    mut id: impl FnMut() -> String,
) -> Result<Vec<(ResourceEvent, String)>, ValidationError> {
    if !value.is_object() {
        return Err(ValidationError {
            field: String::new(),
            message: "the body must be an Alertmanager webhook notification (a JSON object)".into(),
        });
    }
    let notification: Notification = from_value(value)?;
    if let Some(version) = notification.version.as_deref().filter(|v| *v != "4") {
        tracing::debug!(
            version,
            "Alertmanager webhook version other than 4; reading it as 4"
        );
    }
    if let Some(truncated) = notification.truncated_alerts.filter(|n| *n > 0) {
        tracing::warn!(truncated, group = ?notification.group_key, "Alertmanager truncated this notification (max_alerts); the rest of the group is not here");
    }
    let alerts = notification
        .alerts
        .ok_or_else(|| invalid("alerts", "is required"))?;
    let mut events = Vec::with_capacity(alerts.len());
    for (index, alert) in alerts.into_iter().enumerate() {
        let field = |name: &str| format!("alerts[{index}].{name}");
        let status = alert
            .status
            .ok_or_else(|| invalid(&field("status"), "is required"))?;
        let (label, ans_status, time) = match status.as_str() {
            "firing" => ("FIRING", "CREATE_OR_UPDATE", &alert.starts_at),
            "resolved" => ("RESOLVED", "CLOSE", &alert.ends_at),
            other => {
                return Err(invalid(
                    &field("status"),
                    format_args!("must be firing or resolved, got `{other}`"),
                ))
            }
        };
        let labels = alert
            .labels
            .ok_or_else(|| invalid(&field("labels"), "is required"))?;
        let label_of = |name: &str| labels.get(name).filter(|v| !v.trim().is_empty());
        let event_type = label_of("alertname")
            .cloned()
            .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into());
        let resource_name = label_of("instance")
            .or_else(|| label_of("job"))
            .cloned()
            .unwrap_or_else(|| event_type.clone());
        let annotation = |name: &str| alert.annotations.get(name).filter(|v| !v.trim().is_empty());
        let headline = annotation("summary")
            .cloned()
            .unwrap_or_else(|| format!("{event_type} on {resource_name}"));
        let mut body = String::new();
        for text in [annotation("description"), annotation("message")]
            .into_iter()
            .flatten()
        {
            let _ = writeln!(body, "{}\n", text.trim_end());
        }
        let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(body, "Labels: {}", pairs.join(", "));
        if let Some(url) = &alert.generator_url {
            let _ = write!(body, "\nSource: {url}");
        }
        let fingerprint = alert
            .fingerprint
            .filter(|f| !f.trim().is_empty())
            .unwrap_or_else(|| format!("{{{}}}", pairs.join(",")));
        let occurrence = format!(
            "{fingerprint}|{status}|{}|{}",
            alert.starts_at.as_deref().unwrap_or_default(),
            alert.ends_at.as_deref().unwrap_or_default()
        );

        let mut tags = Tags::new();
        tags.insert(TAG_SOURCE_EVENT_ID.into(), fingerprint);
        tags.insert(TAG_STATUS.into(), ans_status.into());
        let mut put = |key: &str, value: Option<&String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                tags.insert(key.into(), value.clone());
            }
        };
        put(TAG_CORRELATION_ID, notification.group_key.as_ref());
        put("ans:detailsLink", alert.generator_url.as_ref());
        put("ans:recommendedActionLink", annotation("runbook_url"));
        put("alertmanager:receiver", notification.receiver.as_ref());
        put(
            "alertmanager:externalURL",
            notification.external_url.as_ref(),
        );
        for (name, value) in &labels {
            put(&format!("label:{name}"), Some(value));
        }

        let event = ResourceEvent {
            id: id(),
            severity: severity(label_of("severity").map(String::as_str)),
            category: Category::Alert,
            subject: format!("[{label}] {headline}"),
            body,
            resource: AffectedResource {
                resource_name,
                resource_type: label_of("job")
                    .cloned()
                    .unwrap_or_else(|| "prometheus".into()),
                resource_instance: None,
                tags: None,
            },
            event_timestamp: time.as_deref().and_then(rfc3339_seconds).unwrap_or(now),
            event_type,
            priority: None,
            tags: Some(tags),
        };
        events.push((event, occurrence));
    }
    Ok(events)
}

fn severity(label: Option<&str>) -> Severity {
    match label.map(str::to_ascii_lowercase).as_deref() {
        Some("critical" | "fatal" | "page") => Severity::Fatal,
        Some("error") => Severity::Error,
        Some("notice") => Severity::Notice,
        Some("info" | "none") => Severity::Info,
        _ => Severity::Warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// An Alertmanager 0.27 webhook body: one group, one alert firing, one resolved.
    fn notification() -> Value {
        json!({
            "receiver": "tocsin",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "HighCPU", "instance": "db-1:9100", "job": "node", "severity": "critical"},
                    "annotations": {"summary": "CPU above 90% on db-1", "description": "5m average is 97%", "runbook_url": "https://runbooks/cpu"},
                    "startsAt": "2023-11-14T22:13:20.123456789Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph?g0.expr=cpu",
                    "fingerprint": "c1b2a3"
                },
                {
                    "status": "resolved",
                    "labels": {"alertname": "DiskFull", "instance": "db-2:9100", "job": "node", "severity": "warning"},
                    "annotations": {},
                    "startsAt": "2023-11-14T20:00:00Z",
                    "endsAt": "2023-11-14T22:00:00Z",
                    "fingerprint": "d4e5f6"
                }
            ],
            "groupLabels": {"job": "node"},
            "commonLabels": {"job": "node"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "version": "4",
            "groupKey": "{}:{job=\"node\"}",
            "truncatedAlerts": 0
        })
    }

    fn run(value: &Value) -> Result<Vec<ResourceEvent>, ValidationError> {
        let mut n = 0;
        normalize(value, 1_800_000_000, || {
            n += 1;
            format!("id-{n}")
        })
    }

    #[test]
    fn each_alert_becomes_an_event_and_resolved_closes() {
        let events = run(&notification()).unwrap();
        assert_eq!(events.len(), 2);
        let (firing, resolved) = (&events[0], &events[1]);
        assert_eq!(firing.id, "id-1");
        assert_eq!(firing.event_type, "HighCPU");
        assert_eq!(firing.severity, Severity::Fatal);
        assert_eq!(firing.category, Category::Alert);
        assert_eq!(firing.subject, "[FIRING] CPU above 90% on db-1");
        assert!(
            firing
                .body
                .starts_with("5m average is 97%\n\nLabels: alertname=HighCPU"),
            "{}",
            firing.body
        );
        assert!(firing
            .body
            .ends_with("Source: http://prometheus:9090/graph?g0.expr=cpu"));
        assert_eq!(firing.resource.resource_name, "db-1:9100");
        assert_eq!(firing.resource.resource_type, "node");
        assert_eq!(firing.event_timestamp, 1_700_000_000, "startsAt");
        assert_eq!(firing.source_event_id(), Some("c1b2a3"));
        assert_eq!(firing.correlation_id(), Some("{}:{job=\"node\"}"));
        assert_eq!(firing.tag("ans:status"), Some("CREATE_OR_UPDATE"));
        assert_eq!(
            firing.tag("ans:recommendedActionLink"),
            Some("https://runbooks/cpu")
        );
        assert_eq!(
            firing.tag("ans:detailsLink"),
            Some("http://prometheus:9090/graph?g0.expr=cpu")
        );
        assert_eq!(firing.tag("label:severity"), Some("critical"));
        assert_eq!(firing.tag("alertmanager:receiver"), Some("tocsin"));

        assert_eq!(resolved.id, "id-2");
        assert_eq!(resolved.tag("ans:status"), Some("CLOSE"));
        assert_eq!(resolved.subject, "[RESOLVED] DiskFull on db-2:9100");
        assert_eq!(resolved.severity, Severity::Warning);
        assert_eq!(resolved.event_timestamp, 1_699_999_200, "endsAt");
        assert_eq!(resolved.source_event_id(), Some("d4e5f6"));
    }

    #[test]
    fn sparse_alerts_get_defaults() {
        let events = run(&json!({"alerts": [
            {"status": "firing", "labels": {"team": "db"}},
            {"status": "firing", "labels": {"alertname": "X", "severity": "info"}, "startsAt": "garbage"}
        ]}))
        .unwrap();
        assert_eq!(events[0].event_type, "PrometheusAlert");
        assert_eq!(events[0].resource.resource_name, "PrometheusAlert");
        assert_eq!(events[0].resource.resource_type, "prometheus");
        assert_eq!(events[0].severity, Severity::Warning);
        assert_eq!(
            events[0].source_event_id(),
            Some("{team=db}"),
            "the label set without a fingerprint"
        );
        assert_eq!(events[0].event_timestamp, 1_800_000_000);
        assert_eq!(events[1].severity, Severity::Info);
        assert_eq!(
            events[1].event_timestamp, 1_800_000_000,
            "unparseable time: reception time"
        );
        assert!(run(&json!({"alerts": []})).unwrap().is_empty());
        for (label, severity) in [
            ("page", Severity::Fatal),
            ("ERROR", Severity::Error),
            ("notice", Severity::Notice),
            ("none", Severity::Info),
        ] {
            assert_eq!(super::severity(Some(label)), severity);
        }
    }

    #[test]
    fn bad_notifications_name_the_field() {
        let mut no_status = notification();
        no_status["alerts"][1]
            .as_object_mut()
            .unwrap()
            .remove("status");
        let mut odd_status = notification();
        odd_status["alerts"][0]["status"] = json!("pending");
        let mut no_labels = notification();
        no_labels["alerts"][0]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let mut numeric_label = notification();
        numeric_label["alerts"][0]["labels"]["port"] = json!(9100);
        for (value, field, message) in [
            (json!({"receiver": "x"}), "alerts", "`alerts` is required"),
            (
                no_status,
                "alerts[1].status",
                "`alerts[1].status` is required",
            ),
            (
                odd_status,
                "alerts[0].status",
                "`alerts[0].status` must be firing or resolved",
            ),
            (
                no_labels,
                "alerts[0].labels",
                "`alerts[0].labels` is required",
            ),
            (
                numeric_label,
                "alerts[0].labels.port",
                "`alerts[0].labels.port` is invalid",
            ),
            (
                json!([]),
                "",
                "the body must be an Alertmanager webhook notification",
            ),
        ] {
            let err = run(&value).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.starts_with(message), "{}", err.message);
        }
    }
}
