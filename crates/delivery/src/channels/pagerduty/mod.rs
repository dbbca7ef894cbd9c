//! `PAGERDUTY`: turns an alert's events into PagerDuty alerts through the Events API v2
//! (`POST /v2/enqueue`; the contract, with sources, is in `CONTRACT.md` beside this file).
//!
//! One alert in Tocsin is one PagerDuty alert: the alert key (`ans:sourceEventId`, else the
//! event's id) is the `dedup_key`, so every event of the alert lands on the same PagerDuty
//! alert. An event that closes its alert (`ans:status` `CLOSE`) sends `resolve`; any other
//! sends `trigger` — PagerDuty folds a trigger with an open alert's key into that alert, which
//! is also how a `COMMENT` reaches it. (`acknowledge` will follow people acknowledging alerts
//! in Tocsin, once alerts have a state.)
//!
//! Properties: `routingKey` (required: the 32-character integration key, a secret, masked),
//! `url` (default `https://events.pagerduty.com/v2/enqueue`; EU accounts use
//! `https://events.eu.pagerduty.com/v2/enqueue`), `subjectTemplate` (the summary; default the
//! subject, cut to 1,024 characters), `bodyTemplate` (`custom_details.body`; default the body),
//! `component`, `group`, `class` (default: the event type), `clientUrl`. The payload's
//! `source` is the resource name, `severity` maps FATAL → critical, ERROR → error, WARNING →
//! warning, NOTICE and INFO → info, and the event's details links become `links`.
//!
//! PagerDuty answers 202 with `status: success`; a 2xx saying otherwise is a 907. 400 (invalid
//! event) is permanent, its `errors` quoted in the reason; 429 and 5xx are retried, 429 after
//! its `Retry-After` when given.

use super::{Channel, Tools};
use crate::failure::{Code, Failure};
use crate::lifecycle::{alert_key, Transition};
use crate::properties::{Properties, PropertyError};
use crate::templates::{datetime, event_links, limit, Scope, Texts};
use model::{Action, DeliveryJob, Severity};
use reqwest::Url;
use serde_json::{json, Map, Value};

const EVENTS_API: &str = "https://events.pagerduty.com/v2/enqueue";
const SUMMARY: &str = "{{ event.subject }}";
const BODY: &str = "{{ event.body }}";
/// PagerDuty's limits on `payload.summary` and `dedup_key`.
const MAX_SUMMARY: usize = 1024;
const MAX_DEDUP_KEY: usize = 255;

pub struct PagerDutyChannel {
    tools: Tools,
}

pub struct PagerDutyConfig {
    routing_key: String,
    url: Url,
    texts: Texts,
    component: Option<String>,
    group: Option<String>,
    class: Option<String>,
    client_url: Option<String>,
}

impl PagerDutyChannel {
    pub fn new(tools: Tools) -> Self {
        PagerDutyChannel { tools }
    }

    /// The Events API v2 body for `job`.
    fn event(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &PagerDutyConfig,
    ) -> Result<Value, Failure> {
        let event = &job.event;
        let mut body = json!({
            "routing_key": config.routing_key,
            "dedup_key": alert_key(event, MAX_DEDUP_KEY),
        });
        if Transition::of(event) == Transition::Close {
            body["event_action"] = json!("resolve");
            return Ok(body);
        }
        let scope = Scope::new(job, action);
        let (summary, details) =
            self.tools
                .templates
                .subject_and_body(&config.texts, &scope, SUMMARY, BODY)?;
        let mut custom_details = Map::new();
        custom_details.insert("body".into(), details.into());
        custom_details.insert("eventId".into(), event.id.clone().into());
        custom_details.insert("category".into(), event.category.as_str().into());
        custom_details.insert(
            "resourceType".into(),
            event.resource.resource_type.clone().into(),
        );
        if let Some(tags) = &event.tags {
            custom_details.insert("tags".into(), json!(tags));
        }
        let mut payload = json!({
            "summary": limit(&summary, MAX_SUMMARY),
            "source": event.resource.resource_name,
            "severity": severity(event.severity),
            "timestamp": iso8601(event.event_timestamp),
            "class": config.class.as_deref().unwrap_or(&event.event_type),
            "custom_details": custom_details,
        });
        for (field, value) in [("component", &config.component), ("group", &config.group)] {
            if let Some(value) = value {
                payload[field] = json!(value);
            }
        }
        body["event_action"] = json!("trigger");
        body["payload"] = payload;
        body["client"] = json!("Tocsin");
        if let Some(url) = &config.client_url {
            body["client_url"] = json!(url);
        }
        let links: Vec<Value> = event_links(event)
            .into_iter()
            .map(|(text, href)| json!({"href": href, "text": text}))
            .collect();
        if !links.is_empty() {
            body["links"] = Value::Array(links);
        }
        Ok(body)
    }
}

impl Channel for PagerDutyChannel {
    const TYPE: &'static str = "PAGERDUTY";
    const PROPERTIES: &'static [&'static str] = &[
        "routingKey",
        "url",
        "subjectTemplate",
        "bodyTemplate",
        "component",
        "group",
        "class",
        "clientUrl",
    ];
    const SECRETS: &'static [&'static str] = &["routingKey"];
    type Config = PagerDutyConfig;

    fn configure(&self, p: &Properties) -> Result<PagerDutyConfig, PropertyError> {
        let routing_key = p.required("routingKey")?.trim().to_owned();
        if routing_key.len() != 32 || !routing_key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PropertyError::property(
                "routingKey",
                "must be the 32-character integration key of a PagerDuty service or ruleset",
            ));
        }
        let url = match p.url("url")? {
            Some(url) => url,
            None => Url::parse(EVENTS_API).expect("a valid URL"),
        };
        Ok(PagerDutyConfig {
            routing_key,
            url,
            texts: Texts::read(p)?,
            component: p.text("component"),
            group: p.text("group"),
            class: p.text("class"),
            client_url: p.url("clientUrl")?.map(String::from),
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &PagerDutyConfig,
    ) -> Result<(), Failure> {
        let body = self.event(job, action, config)?;
        let reply = self.tools.http.send(
            self.tools
                .http
                .request(reqwest::Method::POST, config.url.clone(), false)
                .json(&body),
        );
        let reply = reply.await?;
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if !reply.is_success() {
            // `errors` says what was invalid (400); otherwise quote what came back.
            let detail = match answer["errors"].as_array() {
                Some(errors) => errors
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; "),
                None => reply.quote(),
            };
            return Err(reply.failure(&detail));
        }
        if answer["status"] != "success" {
            return Err(Failure::permanent(
                Code::BadAnswer,
                format!(
                    "{} answered {} without `status: success`: {}",
                    reply.destination,
                    reply.status,
                    reply.quote()
                ),
            ));
        }
        Ok(())
    }
}

fn severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Fatal => "critical",
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Notice | Severity::Info => "info",
    }
}

/// Epoch seconds as ISO 8601 (`2026-11-26T01:02:03Z`).
fn iso8601(seconds: i64) -> String {
    let shown = datetime(seconds);
    format!("{}Z", shown.trim_end_matches(" UTC").replacen(' ', "T", 1))
}

#[cfg(test)]
mod tests;
