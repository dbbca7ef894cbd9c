//! `VICTOROPS`: turns an alert's events into one Splunk On-Call (VictorOps) incident through
//! its REST endpoint integration (the contract, with sources, is in `CONTRACT.md` beside this
//! file).
//!
//! The alert key (`ans:sourceEventId`, else the event's id) is the `entity_id`, which Splunk
//! On-Call keeps for the incident's whole life: a firing event sends `CRITICAL` (FATAL, ERROR),
//! `WARNING` or `INFO` (NOTICE, INFO) — or `messageType` when the action sets one — an event
//! that only comments sends `INFO` (timeline only), a `CLOSE` sends `RECOVERY`.
//!
//! Properties, as Alertmanager names them: `apiKey` (required, the integration's REST API key, a
//! secret), `routingKey` (required), `apiUrl` (default
//! `https://alert.victorops.com/integrations/generic/20131114/alert/`); the request goes to
//! `{apiUrl}{apiKey}/{routingKey}`, so reasons show its host only. `subjectTemplate` is the
//! `entity_display_name` (default the subject), `bodyTemplate` the `state_message` (default the
//! body, cut to 20,480 characters), `messageType` (`CRITICAL`, `WARNING`, `INFO`) fixes the type
//! of firing events. `hostname` is the resource name, `monitoring_tool` is `Tocsin`, the
//! details link becomes a `vo_annotate.u.Details` annotation.
//!
//! Splunk On-Call answers `{"result":"success"}`; a 2xx saying otherwise is a 907 quoting its
//! `message`; 429 and 5xx are retried, other statuses not.

use super::{Channel, Tools};
use crate::failure::{Code, Failure};
use crate::lifecycle::{alert_key, Transition};
use crate::properties::{Properties, PropertyError};
use crate::templates::{event_links, limit, Scope, Texts};
use model::{Action, DeliveryJob, Severity};
use reqwest::Url;
use serde_json::{json, Value};

const REST_ENDPOINT: &str = "https://alert.victorops.com/integrations/generic/20131114/alert/";
const DISPLAY_NAME: &str = "{{ event.subject }}";
const STATE_MESSAGE: &str = "{{ event.body }}";
/// Splunk On-Call's limits on `state_message`, `entity_id` and annotations.
const MAX_STATE_MESSAGE: usize = 20_480;
const MAX_ENTITY_ID: usize = 512;
const MAX_ANNOTATION: usize = 1_124;

pub struct VictorOpsChannel {
    tools: Tools,
}

pub struct VictorOpsConfig {
    /// `{apiUrl}{apiKey}/{routingKey}`.
    endpoint: Url,
    texts: Texts,
    message_type: Option<&'static str>,
}

impl VictorOpsChannel {
    pub fn new(tools: Tools) -> Self {
        VictorOpsChannel { tools }
    }

    /// The alert body for `job`.
    fn alert(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &VictorOpsConfig,
    ) -> Result<Value, Failure> {
        let event = &job.event;
        let message_type = match Transition::of(event) {
            Transition::Close => "RECOVERY",
            Transition::Comment => "INFO",
            Transition::Open => config
                .message_type
                .unwrap_or_else(|| message_type(event.severity)),
        };
        let scope = Scope::new(job, action);
        let (display_name, state_message) = self.tools.templates.subject_and_body(
            &config.texts,
            &scope,
            DISPLAY_NAME,
            STATE_MESSAGE,
        )?;
        let mut alert = json!({
            "message_type": message_type,
            "entity_id": alert_key(event, MAX_ENTITY_ID),
            "entity_display_name": display_name,
            "state_message": limit(&state_message, MAX_STATE_MESSAGE),
            "monitoring_tool": "Tocsin",
            "hostname": event.resource.resource_name,
            "state_start_time": event.event_timestamp,
        });
        for (title, url) in event_links(event) {
            let field = format!("vo_annotate.u.{}", title.replace(' ', "_"));
            alert[field] = json!(limit(url, MAX_ANNOTATION));
        }
        Ok(alert)
    }
}

impl Channel for VictorOpsChannel {
    const TYPE: &'static str = "VICTOROPS";
    const PROPERTIES: &'static [&'static str] = &[
        "apiKey",
        "routingKey",
        "apiUrl",
        "subjectTemplate",
        "bodyTemplate",
        "messageType",
    ];
    type Config = VictorOpsConfig;

    fn configure(&self, p: &Properties) -> Result<VictorOpsConfig, PropertyError> {
        let segment = |name: &str| -> Result<String, PropertyError> {
            let value = p.required(name)?.trim().to_owned();
            if value.contains(['/', '?', '#', ' ']) {
                return Err(PropertyError::property(
                    name,
                    "must be one path segment (no `/`, `?`, `#` or spaces)",
                ));
            }
            Ok(value)
        };
        let (api_key, routing_key) = (segment("apiKey")?, segment("routingKey")?);
        let base = match p.text("apiUrl") {
            Some(text) => text.trim().trim_end_matches('/').to_owned() + "/",
            None => REST_ENDPOINT.to_owned(),
        };
        let endpoint = p.url_in("apiUrl", &format!("{base}{api_key}/{routing_key}"))?;
        Ok(VictorOpsConfig {
            endpoint,
            texts: Texts::read(p)?,
            message_type: p.one_of("messageType", &["CRITICAL", "WARNING", "INFO"])?,
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &VictorOpsConfig,
    ) -> Result<(), Failure> {
        let alert = self.alert(job, action, config)?;
        let reply = self
            .tools
            .http
            .send(
                self.tools
                    .http
                    .request(reqwest::Method::POST, config.endpoint.clone(), false)
                    .json(&alert),
            )
            .await?;
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let said = answer["message"]
            .as_str()
            .map_or_else(|| reply.quote(), str::to_owned);
        if !reply.is_success() {
            return Err(reply.failure(&said));
        }
        if answer["result"] != "success" {
            return Err(Failure::permanent(
                Code::BadAnswer,
                format!(
                    "{} answered {} without `result: success`: {said}",
                    reply.destination, reply.status
                ),
            ));
        }
        Ok(())
    }
}

fn message_type(severity: Severity) -> &'static str {
    match severity {
        Severity::Fatal | Severity::Error => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Notice | Severity::Info => "INFO",
    }
}

#[cfg(test)]
mod tests;
