//! `SLACK`: posts the event to a Slack incoming webhook as a Block Kit message, and builds that
//! message for `SLACK_THREADED` too.
//!
//! Properties: `webhookUrl` (required; a secret: reasons show `https://hooks.slack.com/…`
//! only), `subjectTemplate` and `bodyTemplate` (mrkdwn text; defaults: the subject, marked
//! `Resolved:` when the event closes its alert, and the body), or `payloadTemplate` for the
//! whole JSON payload, and `controls` (default `true`, as `SLACK_THREADED`'s: see below). The
//! default message is a fallback `text` plus an attachment coloured by severity (green once
//! resolved) holding the blocks: the subject and body, a context line (severity, resource,
//! time, event type) and buttons for the event's links.
//!
//! A message — one event's or a digest — of undelivered delivery-status events
//! ([`crate::delivery_status`]) carries, unless `controls` is `false`, a Redeliver button per
//! action that failed ([`with_redeliver`], [`model::alert::RedeliverControl`]), which Tocsin's
//! Slack app serves (the `chat` crate): a click sends that action's undelivered events again,
//! from the earliest the message reported on.
//!
//! Grouped (and storm-held) events go out as one digest ([`digest`]): a headline (`12 alerts
//! firing on db-1`) and one line per event — severity, subject (linked to its details), resource
//! and time — under *Firing* and *Resolved*, in sections of at most 3,000 characters (Slack's
//! limit for a section's text; a digest's 100 events at most fit its 50 blocks). A digest of one
//! event is that event's own message. Storm control: 60 messages a minute per action unless
//! `messagesPerMinute` says otherwise (Slack takes about one a second per channel).
//!
//! Slack answers 200 `ok`; an error is a status with a plain-text code (`400 invalid_payload`,
//! `403 invalid_token`, `404 channel_not_found`, `410 channel_is_archived`, …), which becomes
//! the failure's reason; 429 is retried after its `Retry-After`, 5xx retried, 4xx not.

use super::{Channel, ChatWebhook, Tools};
use crate::delivery_status::{self, Status};
use crate::failure::Failure;
use crate::grouping::Digest;
use crate::lifecycle::Transition;
use crate::properties::{Properties, PropertyError};
use crate::templates::{datetime, event_links, limit, mrkdwn, MessageTemplates, Scope};
use model::alert::RedeliverControl;
use model::{Action, DeliveryJob, ResourceEvent, Severity};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const SUBJECT: &str = "{% if resolved %}Resolved: {% endif %}{{ event.subject | mrkdwn }}";
const BODY: &str = "{{ event.body | mrkdwn | limit(2900) }}";
/// Slack's limit on a section block's text.
const SECTION_CHARS: usize = 3000;
/// Slack's limit on the elements of an actions block: Redeliver buttons one message carries.
const ACTIONS_ELEMENTS: usize = 25;

pub struct SlackChannel {
    tools: Tools,
}

impl SlackChannel {
    pub fn new(tools: Tools) -> Self {
        SlackChannel { tools }
    }
}

impl Channel for SlackChannel {
    const TYPE: &'static str = "SLACK";
    const PROPERTIES: &'static [&'static str] = ChatWebhook::PROPERTIES;
    const CREDENTIAL_URLS: &'static [&'static str] = ChatWebhook::CREDENTIAL_URLS;
    const DIGESTS: Option<u32> = Some(60);
    type Config = ChatWebhook;

    fn configure(&self, p: &Properties) -> Result<ChatWebhook, PropertyError> {
        ChatWebhook::read(p)
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &ChatWebhook,
    ) -> Result<(), Failure> {
        let mut payload = message(&self.tools, job, action, config.templates())?;
        if config.controls {
            payload = with_redeliver(payload, [&job.event]);
        }
        config.post(&self.tools.http, &payload).await.map(drop)
    }

    async fn deliver_digest(
        &self,
        digest: &Digest,
        _: &Action,
        config: &ChatWebhook,
    ) -> Result<(), Failure> {
        let mut payload = digest_message(digest);
        if config.controls {
            payload = with_redeliver(payload, digest.jobs.iter().map(|job| &job.event));
        }
        config.post(&self.tools.http, &payload).await.map(drop)
    }
}

/// `payload` with a Redeliver button for each action that `events`' undelivered
/// delivery-status events name — its `since` the earliest of them for that action — in an
/// actions block of its own (`tocsin_redeliver`); unchanged when there are none. At most 25
/// buttons (Slack's limit), by action name; a context line names how many actions are left
/// for the `/tocsin redeliver` command.
pub(super) fn with_redeliver<'e>(
    payload: Value,
    events: impl IntoIterator<Item = &'e ResourceEvent>,
) -> Value {
    let mut since = BTreeMap::<&str, i64>::new();
    for event in events {
        let undelivered = event.event_type == delivery_status::EVENT_TYPE
            && event.tag(delivery_status::TAG_STATUS) == Some(Status::Undelivered.as_str());
        if let Some(action) = event
            .tag(delivery_status::TAG_ACTION)
            .filter(|_| undelivered)
        {
            let earliest = since.entry(action).or_insert(event.event_timestamp);
            *earliest = (*earliest).min(event.event_timestamp);
        }
    }
    let controls: Vec<RedeliverControl> = since
        .into_iter()
        .map(|(action, since)| RedeliverControl {
            action: action.to_owned(),
            since,
        })
        // A value past Slack's limit (an action name no configuration allows) gets no button.
        .filter(|control| control.value().chars().count() <= RedeliverControl::VALUE_CHARS)
        .collect();
    if controls.is_empty() {
        return payload;
    }
    let buttons: Vec<Value> = controls
        .iter()
        .take(ACTIONS_ELEMENTS)
        .enumerate()
        .map(|(n, control)| {
            json!({
                "type": "button",
                "action_id": RedeliverControl::action_id(n),
                "text": {"type": "plain_text", "text": control.label()},
                "value": control.value(),
            })
        })
        .collect();
    let mut payload = with_block(
        payload,
        json!({"type": "actions", "block_id": RedeliverControl::ACTION_ID, "elements": buttons}),
    );
    let left = controls.len().saturating_sub(ACTIONS_ELEMENTS);
    if left > 0 {
        let text = format!(
            "{left} more action(s) have undelivered events: `/tocsin undelivered` lists them, \
             `/tocsin redeliver <action> since <duration>` sends them again."
        );
        payload = with_block(
            payload,
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}),
        );
    }
    payload
}

/// `payload` with `block` added: to its first attachment's blocks (the default message), else
/// to its own blocks. A payload that is not a JSON object (a custom template's) is left as is.
pub(super) fn with_block(mut payload: Value, block: Value) -> Value {
    if !payload.is_object() {
        return payload;
    }
    let blocks = match payload.pointer_mut("/attachments/0/blocks") {
        Some(Value::Array(blocks)) => blocks,
        _ => {
            if !payload["blocks"].is_array() {
                payload["blocks"] = json!([]);
            }
            payload["blocks"].as_array_mut().expect("made an array")
        }
    };
    blocks.push(block);
    payload
}

/// The digest of several events: the headline, then a line per event under *Firing* and
/// *Resolved*, in sections that keep to Slack's limit.
pub(super) fn digest_message(digest: &Digest) -> Value {
    let headline = digest.headline();
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", mrkdwn(&headline))}}),
    ];
    for (title, jobs) in [
        ("Firing", digest.firing().collect::<Vec<_>>()),
        ("Resolved", digest.resolved().collect()),
    ] {
        if jobs.is_empty() {
            continue;
        }
        let mut text = format!("*{title}*");
        for job in jobs {
            let line = digest_line(job);
            if text.chars().count() + 1 + line.chars().count() > SECTION_CHARS {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
                text = String::new();
            }
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&line);
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    json!({"text": headline, "blocks": blocks})
}

/// One event in a digest: `• [FATAL] <details|subject> · web-1 (vm) · time`, under 300
/// characters.
fn digest_line(job: &DeliveryJob) -> String {
    let event = &job.event;
    let subject = mrkdwn(&limit(&event.subject, 120));
    let subject = match event_links(event).first() {
        Some((_, url)) => format!("<{}|{subject}>", limit(url, 100)),
        None => subject,
    };
    format!(
        "• [{}] {subject} · {} ({}) · {}",
        event.severity,
        mrkdwn(&limit(&event.resource.resource_name, 20)),
        mrkdwn(&limit(&event.resource.resource_type, 10)),
        datetime(event.event_timestamp),
    )
}

/// The message for `job`: the action's `payloadTemplate`, or the default Block Kit message
/// from its subject and body templates.
pub(super) fn message(
    tools: &Tools,
    job: &DeliveryJob,
    action: &Action,
    own: &MessageTemplates,
) -> Result<Value, Failure> {
    let scope = Scope::new(job, action);
    let templates = &tools.templates;
    if let Some(template) = &own.payload {
        return templates.render_json("payloadTemplate", template, &scope);
    }
    let (subject, body) = templates.subject_and_body(&own.texts, &scope, SUBJECT, BODY)?;
    let event = &job.event;
    let resolved = Transition::of(event) == Transition::Close;
    let mut blocks = vec![
        // Slack refuses a section over 3000 characters and a message text over 4000.
        json!({"type": "section", "text": {"type": "mrkdwn", "text": limit(&format!("*{subject}*\n{body}"), 3000)}}),
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
            "{} · {} ({}) · {} · {}",
            event.severity,
            mrkdwn(&event.resource.resource_name),
            mrkdwn(&event.resource.resource_type),
            datetime(event.event_timestamp),
            mrkdwn(&event.event_type),
        )}]}),
    ];
    let buttons: Vec<Value> = event_links(event)
        .into_iter()
        .map(|(title, url)| {
            json!({"type": "button", "text": {"type": "plain_text", "text": title}, "url": url})
        })
        .collect();
    if !buttons.is_empty() {
        blocks.push(json!({"type": "actions", "elements": buttons}));
    }
    Ok(json!({
        "text": limit(&format!("[{}] {subject}", event.severity), 4000),
        "attachments": [{"color": colour(event.severity, resolved), "blocks": blocks}]
    }))
}

fn colour(severity: Severity, resolved: bool) -> &'static str {
    if resolved {
        return "#2eb67d";
    }
    match severity {
        Severity::Fatal => "#a30200",
        Severity::Error => "#e01e5a",
        Severity::Warning => "#ecb22e",
        Severity::Notice => "#36c5f0",
        Severity::Info => "#8d8d8d",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{
        action, assert_within_block_kit_limits, attempt, digest, job, numbered_jobs, tag, tools,
    };
    use crate::failure::{Code, Retry};
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[tokio::test]
    async fn posts_block_kit_with_colour_context_and_links() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/services/T0/B0/secret"))
            .and(header("content-type", "application/json"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .expect(1)
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackChannel::new(tools);
        let action = action(
            "slack",
            "SLACK",
            json!({"webhookUrl": format!("{}/services/T0/B0/secret", server.uri())}),
        );
        let job = job(json!({"ans:detailsLink": "https://console.example/alarms/1"}));
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
        let sent: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        assert_eq!(
            sent,
            json!({
                "text": "[FATAL] CPU above 90%",
                "attachments": [{"color": "#a30200", "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": "*CPU above 90%*\nCPU has been above 90% for 5 minutes"}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": "FATAL · web-1 (vm) · 2023-11-14 22:13:20 UTC · HighCPU"}]},
                    {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Details"}, "url": "https://console.example/alarms/1"}]}
                ]}]
            })
        );
    }

    #[tokio::test]
    async fn templates_and_resolution() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackChannel::new(tools);
        let resolved = job(json!({"ans:status": "CLOSE"}));
        let plain = action(
            "slack",
            "SLACK",
            json!({"webhookUrl": server.uri(), "bodyTemplate": "on {{ event.resource.resourceName }} <&>"}),
        );
        assert_eq!(attempt(&channel, &resolved, &plain).await, Ok(()));
        let custom = action(
            "slack",
            "SLACK",
            json!({"webhookUrl": server.uri(), "payloadTemplate": "{\"text\": {{ event.subject | limit(5) }}}"}),
        );
        assert_eq!(attempt(&channel, &resolved, &custom).await, Ok(()));
        let sent = server.received_requests().await.unwrap();
        let first: Value = sent[0].body_json().unwrap();
        assert_eq!(first["text"], "[FATAL] Resolved: CPU above 90%");
        assert_eq!(first["attachments"][0]["color"], "#2eb67d");
        assert_eq!(
            first["attachments"][0]["blocks"][0]["text"]["text"],
            "*Resolved: CPU above 90%*\non web-1 <&>",
            "a custom template's text is taken as mrkdwn, as written"
        );
        assert_eq!(
            sent[1].body_json::<Value>().unwrap(),
            json!({"text": "CPU …"})
        );
    }

    #[tokio::test]
    async fn a_digest_of_one_event_is_its_own_message() {
        use crate::channels::Registered;
        use crate::outbound::OutboundPolicy;
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackChannel::new(tools.clone());
        let action = action("slack", "SLACK", json!({"webhookUrl": server.uri()}));
        let policy = OutboundPolicy::new(crate::channels::tests::loopback());
        let prepared = Registered::prepare(&channel, &action, &policy).unwrap();
        let one = job(json!({}));
        let sent = Registered::deliver_digest(
            &channel,
            &digest(json!({}), vec![one.clone()]),
            &action,
            &prepared,
        )
        .await;
        assert_eq!(sent, Ok(()));
        let received: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        assert_eq!(
            received,
            message(&tools, &one, &action, &MessageTemplates::default()).unwrap()
        );
    }

    #[test]
    fn a_digest_names_every_event_in_sections_within_slacks_limits() {
        let long = "x".repeat(5_000);
        let jobs = numbered_jobs(100, |n, job| {
            tag(
                job,
                "ans:detailsLink",
                &format!("https://console.example/{n}?{long}"),
            );
            job.event.subject = format!("{n} disk <full> {long}");
            if n % 10 == 0 {
                tag(job, "ans:status", "CLOSE");
            }
        });
        let sent = digest_message(&digest(json!({"resource.resourceName": "web-1"}), jobs));
        assert_eq!(sent["text"], "90 alerts firing, 10 resolved on web-1");
        let blocks = sent["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{} blocks", blocks.len());
        let texts: Vec<&str> = blocks
            .iter()
            .map(|b| b["text"]["text"].as_str().unwrap())
            .collect();
        assert!(texts.iter().all(|t| t.chars().count() <= SECTION_CHARS));
        assert!(texts[1].starts_with("*Firing*\n• [FATAL] <https://console.example/1?xxx"));
        let all = texts.join("\n");
        for n in 0..100 {
            assert!(
                all.contains(&format!("|{n} disk &lt;full&gt; x")),
                "event {n} is named"
            );
        }
        let resolved = texts
            .iter()
            .position(|t| t.starts_with("*Resolved*"))
            .unwrap();
        assert!(texts[resolved].contains("|0 disk"), "{}", texts[resolved]);
    }

    /// The status event of `action`'s outcome `status` with an event, made at `at`, as the
    /// worker makes it, in a job of the Slack action.
    fn status_job(action: &str, status: Status, at: i64) -> DeliveryJob {
        let mut original = job(json!({}));
        original.action = action.into();
        DeliveryJob::new(delivery_status::event(&original, status, 1, at), 0, "slack")
    }

    /// The Redeliver buttons of `message`: (action id, value read back).
    fn redeliver_buttons(message: &Value) -> Vec<(String, RedeliverControl)> {
        let blocks = message
            .pointer("/attachments/0/blocks")
            .or(message.get("blocks"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        blocks
            .iter()
            .filter(|b| b["block_id"] == RedeliverControl::ACTION_ID)
            .flat_map(|b| b["elements"].as_array().unwrap().clone())
            .map(|button| {
                let id = button["action_id"].as_str().unwrap().to_owned();
                let value = RedeliverControl::parse(button["value"].as_str().unwrap()).unwrap();
                (id, value)
            })
            .collect()
    }

    #[tokio::test]
    async fn undelivered_status_events_carry_a_redeliver_button_per_failed_action() {
        use crate::channels::Registered;
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackChannel::new(tools);
        let on = action("slack", "SLACK", json!({"webhookUrl": server.uri()}));
        let off = action(
            "slack",
            "SLACK",
            json!({"webhookUrl": server.uri(), "controls": "false"}),
        );
        let one = status_job("to-hook", Status::Undelivered, 1_800_000_100);
        assert_eq!(attempt(&channel, &one, &on).await, Ok(()));
        assert_eq!(attempt(&channel, &one, &off).await, Ok(()));
        // A digest: the earliest event per action; a delivered one and an alert name none.
        let jobs = vec![
            status_job("to-hook", Status::Undelivered, 1_800_000_200),
            status_job("pager", Status::Undelivered, 1_800_000_150),
            status_job("to-hook", Status::Undelivered, 1_800_000_100),
            status_job("mail", Status::Delivered, 1_800_000_050),
            job(json!({})),
        ];
        let policy = crate::outbound::OutboundPolicy::new(crate::channels::tests::loopback());
        let prepared = Registered::prepare(&channel, &on, &policy).unwrap();
        let digest = digest(json!({}), jobs);
        let sent = Registered::deliver_digest(&channel, &digest, &on, &prepared).await;
        assert_eq!(sent, Ok(()));
        let alert = job(json!({}));
        assert_eq!(attempt(&channel, &alert, &on).await, Ok(()));

        let sent: Vec<Value> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| r.body_json().unwrap())
            .collect();
        sent.iter().for_each(assert_within_block_kit_limits);
        let to_hook = |since| RedeliverControl {
            action: "to-hook".into(),
            since,
        };
        assert_eq!(
            redeliver_buttons(&sent[0]),
            [("tocsin_redeliver".to_owned(), to_hook(1_800_000_100))]
        );
        assert_eq!(
            sent[0]["attachments"][0]["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap(),
            "*Undelivered by to-hook: CPU above 90%*\nEvent 0196a1b2-0000-7000-8000-000000000001 (HighCPU) could not be delivered by action to-hook:\n",
            "the event's own message, the button after it"
        );
        assert_eq!(redeliver_buttons(&sent[1]), [], "`controls` off");
        let pager = RedeliverControl {
            action: "pager".into(),
            since: 1_800_000_150,
        };
        assert_eq!(
            redeliver_buttons(&sent[2]),
            [
                ("tocsin_redeliver".to_owned(), pager),
                ("tocsin_redeliver.1".to_owned(), to_hook(1_800_000_100))
            ]
        );
        assert_eq!(
            sent[3],
            message(&channel.tools, &alert, &on, &MessageTemplates::default()).unwrap(),
            "no button on an alert"
        );
    }

    #[test]
    fn more_failed_actions_than_an_actions_block_holds_are_named_for_the_command() {
        let jobs: Vec<DeliveryJob> = (0..30)
            .map(|n| {
                status_job(
                    &format!("hook-{n:02}"),
                    Status::Undelivered,
                    1_800_000_000 + n,
                )
            })
            .collect();
        let sent = with_redeliver(
            digest_message(&digest(json!({}), jobs.clone())),
            jobs.iter().map(|job| &job.event),
        );
        assert_within_block_kit_limits(&sent);
        let buttons = redeliver_buttons(&sent);
        assert_eq!(buttons.len(), 25);
        assert_eq!(buttons[24].1.action, "hook-24");
        let last = sent["blocks"].as_array().unwrap().last().unwrap();
        let text = last["elements"][0]["text"].as_str().unwrap();
        assert!(text.starts_with("5 more action(s)"), "{text}");
        // A custom payload that is not an object is sent as written.
        assert_eq!(
            with_redeliver(json!("text"), [&jobs[0].event]),
            json!("text")
        );
    }

    #[tokio::test]
    async fn slack_errors_become_reasons_without_the_url() {
        let server = MockServer::start().await;
        for (route, status, text) in [
            ("/archived", 410, "channel_is_archived"),
            ("/missing", 404, "channel_not_found"),
            ("/bad", 400, "invalid_payload"),
            ("/broken", 500, "rollup_error"),
        ] {
            Mock::given(path(route))
                .respond_with(ResponseTemplate::new(status).set_body_string(text))
                .mount(&server)
                .await;
        }
        Mock::given(path("/throttled"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackChannel::new(tools);
        let fail = |route: &'static str| {
            let action = action(
                "slack",
                "SLACK",
                json!({"webhookUrl": format!("{}{route}", server.uri())}),
            );
            let channel = &channel;
            async move {
                match attempt(channel, &job(json!({})), &action).await {
                    Err(f) => f,
                    Ok(()) => panic!("{route} delivered"),
                }
            }
        };
        for (route, code, text) in [
            ("/archived", 410, "channel_is_archived"),
            ("/missing", 404, "channel_not_found"),
            ("/bad", 400, "invalid_payload"),
        ] {
            let failure = fail(route).await;
            assert_eq!(
                (failure.code, failure.retry),
                (Code::Http(code), Retry::Never),
                "{route}"
            );
            assert!(failure.reason.ends_with(text), "{}", failure.reason);
            assert!(
                !failure.reason.contains(route),
                "the path is a secret: {}",
                failure.reason
            );
        }
        let broken = fail("/broken").await;
        assert_eq!(
            (broken.code, broken.retry),
            (Code::Http(500), Retry::OnSchedule)
        );
        let throttled = fail("/throttled").await;
        assert_eq!(
            (throttled.code, throttled.retry),
            (
                Code::Http(429),
                Retry::After(std::time::Duration::from_secs(30))
            )
        );
    }
}
