//! `MICROSOFT_TEAMS`: posts the event as an Adaptive Card to a Teams incoming webhook or a
//! Power Automate Workflows URL ("When a Teams webhook request is received").
//!
//! Properties: `webhookUrl` (required; a secret: it carries its signature, so reasons show
//! `https://host/…` only), `subjectTemplate` and `bodyTemplate` (plain text; defaults: the
//! subject, marked `Resolved:` when the event closes its alert, and the body), or
//! `payloadTemplate` for the whole JSON payload, and `controls` (default `true`). The default
//! card: the subject in bold, coloured by severity (green once resolved), the body, a fact set
//! (severity, resource, time, event type) and `Action.OpenUrl` buttons for the event's links —
//! and, while the alert fires and `[links] public_url` is set, Acknowledge, Resolve and
//! Silence 1 h buttons: a Teams webhook card cannot call back, so each opens a signed,
//! expiring, single-use action link (`web::act_link`) whose page asks the person to confirm,
//! signed in to the console (everyone in the channel saw the card).
//!
//! Grouped (and storm-held) events go out as one digest card: the headline (`12 alerts firing
//! on db-1`) and, under *Firing* and *Resolved*, one line per event — severity, subject linked
//! to its details, resource, time — each under 200 characters, so that a digest's 100 events
//! stay well inside Teams' 28 KB message limit. A digest of one event is that event's own
//! card. Storm control: 60 messages a minute per action unless `messagesPerMinute` says
//! otherwise (a Teams webhook throttles beyond a few a second).
//!
//! Any 2xx is success (classic webhooks answer 200 `1`, Workflows 202 with no body) — except
//! that classic connectors report throttling inside a 200 (`Microsoft Teams endpoint returned
//! HTTP error 429`), which is a retryable 429. 429 is retried after its `Retry-After`, 5xx
//! retried, other statuses (400, 404, 413 too large) not.

use super::{Channel, ChatWebhook, Tools};
use crate::failure::{Code, Failure};
use crate::grouping::Digest;
use crate::lifecycle::Transition;
use crate::properties::{Properties, PropertyError};
use crate::templates::{datetime, event_links, limit, Scope};
use model::{Action, DeliveryJob, Severity};
use serde_json::{json, Value};
use web::act_link::Audience;

const SUBJECT: &str = "{% if resolved %}Resolved: {% endif %}{{ event.subject }}";
const BODY: &str = "{{ event.body | limit(4000) }}";
/// The subject's length at most, in characters.
const MAX_SUBJECT: usize = 1000;
/// How a classic connector reports throttling inside a 200.
const THROTTLED_IN_BODY: &str = "HTTP error 429";

pub struct TeamsChannel {
    tools: Tools,
}

impl TeamsChannel {
    pub fn new(tools: Tools) -> Self {
        TeamsChannel { tools }
    }

    fn card(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &ChatWebhook,
    ) -> Result<Value, Failure> {
        let scope = Scope::new(job, action);
        let templates = &self.tools.templates;
        let own = config.templates();
        if let Some(template) = &own.payload {
            return templates.render_json("payloadTemplate", template, &scope);
        }
        let (subject, body) = templates.subject_and_body(&own.texts, &scope, SUBJECT, BODY)?;
        let event = &job.event;
        let resolved = Transition::of(event) == Transition::Close;
        let resource = format!(
            "{} ({})",
            event.resource.resource_name, event.resource.resource_type
        );
        let mut actions: Vec<Value> = event_links(event)
            .into_iter()
            .map(|(title, url)| json!({"type": "Action.OpenUrl", "title": title, "url": url}))
            .collect();
        if let Some(links) = self
            .tools
            .act_links
            .as_ref()
            .filter(|_| config.controls && !resolved)
        {
            let audience = Audience::Channel(action.name.clone());
            let now = clock::now_epoch_seconds();
            actions.extend(
                links
                    .for_alert(event.alert_key(), &audience, now)
                    .into_iter()
                    .map(|(title, url)| json!({"type": "Action.OpenUrl", "title": title, "url": url})),
            );
        }
        let mut content = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.2",
            "body": [
                // Cut so that the card stays far below Teams' 28 KB (a longer one is refused).
                {"type": "TextBlock", "text": limit(&subject, MAX_SUBJECT), "weight": "Bolder", "size": "Medium",
                 "wrap": true, "color": colour(event.severity, resolved)},
                {"type": "TextBlock", "text": body, "wrap": true},
                {"type": "FactSet", "facts": [
                    {"title": "Severity", "value": event.severity.as_str()},
                    {"title": "Resource", "value": resource},
                    {"title": "Time", "value": datetime(event.event_timestamp)},
                    {"title": "Event type", "value": event.event_type}
                ]}
            ]
        });
        if !actions.is_empty() {
            content["actions"] = Value::Array(actions);
        }
        Ok(message(content))
    }

    /// Posts `payload`; a classic connector's throttling inside a 200 is a 429.
    async fn send(&self, payload: &Value, config: &ChatWebhook) -> Result<(), Failure> {
        let reply = config.post(&self.tools.http, payload).await?;
        if reply.text().contains(THROTTLED_IN_BODY) {
            return Err(Failure::transient_after(
                Code::Http(429),
                format!(
                    "{} throttled the message: {}",
                    reply.destination,
                    reply.quote()
                ),
                reply.retry_after(),
            ));
        }
        Ok(())
    }
}

/// A Teams message carrying the Adaptive Card `content`.
fn message(content: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": content
        }]
    })
}

/// The digest card of several events: the headline, then a line per event under *Firing* and
/// *Resolved*.
fn digest_card(digest: &Digest) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock", "text": digest.headline(), "weight": "Bolder", "size": "Medium",
        "wrap": true, "color": if digest.firing().next().is_some() { "Attention" } else { "Good" }
    })];
    for (title, jobs) in [
        ("Firing", digest.firing().collect::<Vec<_>>()),
        ("Resolved", digest.resolved().collect()),
    ] {
        if jobs.is_empty() {
            continue;
        }
        let lines: Vec<String> = jobs.into_iter().map(digest_line).collect();
        body.push(json!({"type": "TextBlock", "text": title, "weight": "Bolder", "wrap": true}));
        body.push(json!({"type": "TextBlock", "text": lines.join("\n\n"), "wrap": true}));
    }
    message(json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.2",
        "body": body
    }))
}

/// One event in a digest: `[FATAL] [subject](details) · web-1 (vm) · time`, under 200
/// characters (markdown brackets in the subject are dropped so that the link holds).
fn digest_line(job: &DeliveryJob) -> String {
    let event = &job.event;
    let subject = limit(&event.subject.replace(['[', ']'], ""), 60);
    let subject = match event_links(event).first() {
        Some((_, url)) if url.len() <= 60 => format!("[{subject}]({url})"),
        _ => subject,
    };
    format!(
        "[{}] {subject} · {} ({}) · {}",
        event.severity,
        limit(&event.resource.resource_name, 20),
        limit(&event.resource.resource_type, 10),
        datetime(event.event_timestamp),
    )
}

impl Channel for TeamsChannel {
    const TYPE: &'static str = "MICROSOFT_TEAMS";
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
        let payload = self.card(job, action, config)?;
        self.send(&payload, config).await
    }

    async fn deliver_digest(
        &self,
        digest: &Digest,
        _: &Action,
        config: &ChatWebhook,
    ) -> Result<(), Failure> {
        self.send(&digest_card(digest), config).await
    }
}

/// Adaptive Card text colours.
fn colour(severity: Severity, resolved: bool) -> &'static str {
    match (resolved, severity) {
        (true, _) => "Good",
        (false, Severity::Fatal | Severity::Error) => "Attention",
        (false, Severity::Warning) => "Warning",
        (false, Severity::Notice | Severity::Info) => "Accent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{action, attempt, digest, job, numbered_jobs, tag, tools};
    use crate::failure::{Code, Retry};
    use model::alert::Control;
    use std::sync::Arc;
    use std::time::Duration;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[test]
    fn a_digest_card_names_every_event_within_teams_size_limit() {
        let long = "x".repeat(5_000);
        let jobs = numbered_jobs(100, |n, job| {
            tag(job, "ans:detailsLink", &format!("https://c.example/{n}"));
            job.event.subject = format!("{n} [disk] full {long}");
            job.event.resource.resource_name = format!("db-{n}-{long}");
        });
        let card = digest_card(&digest(json!({}), jobs));
        let size = serde_json::to_vec(&card).unwrap().len();
        assert!(size < 28_000, "{size} bytes");
        let body = &card["attachments"][0]["content"]["body"];
        assert_eq!(body[0]["text"], "100 alerts firing");
        let lines = body[2]["text"].as_str().unwrap();
        for n in 0..100 {
            assert!(
                lines.contains(&format!("[{n} disk full x"))
                    && lines.contains(&format!("](https://c.example/{n})")),
                "event {n} is named and linked"
            );
        }
    }

    #[tokio::test]
    async fn posts_an_adaptive_card_and_accepts_any_2xx() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/workflows/abc/triggers/manual/paths/invoke"))
            .and(header("content-type", "application/json"))
            .respond_with(ResponseTemplate::new(202))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/webhookb2/classic"))
            .respond_with(ResponseTemplate::new(200).set_body_string("1"))
            .expect(1)
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = TeamsChannel::new(tools);
        let workflow = action(
            "teams",
            "MICROSOFT_TEAMS",
            json!({"webhookUrl": format!("{}/workflows/abc/triggers/manual/paths/invoke?sig=s3cret", server.uri())}),
        );
        let job = job(json!({"ans:recommendedActionLink": "https://runbooks.example/cpu"}));
        assert_eq!(attempt(&channel, &job, &workflow).await, Ok(()));
        let classic = action(
            "teams",
            "MICROSOFT_TEAMS",
            json!({"webhookUrl": format!("{}/webhookb2/classic", server.uri())}),
        );
        assert_eq!(attempt(&channel, &job, &classic).await, Ok(()));
        let sent: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        assert_eq!(
            sent,
            json!({"type": "message", "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard", "version": "1.2",
                    "body": [
                        {"type": "TextBlock", "text": "CPU above 90%", "weight": "Bolder", "size": "Medium", "wrap": true, "color": "Attention"},
                        {"type": "TextBlock", "text": "CPU has been above 90% for 5 minutes", "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Severity", "value": "FATAL"},
                            {"title": "Resource", "value": "web-1 (vm)"},
                            {"title": "Time", "value": "2023-11-14 22:13:20 UTC"},
                            {"title": "Event type", "value": "HighCPU"}
                        ]}
                    ],
                    "actions": [{"type": "Action.OpenUrl", "title": "Recommended action", "url": "https://runbooks.example/cpu"}]
                }
            }]})
        );
    }

    #[tokio::test]
    async fn throttling_in_status_or_body_and_refusals() {
        let server = MockServer::start().await;
        Mock::given(path("/status429"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "5"))
            .mount(&server)
            .await;
        Mock::given(path("/body429"))
            .respond_with(ResponseTemplate::new(200).set_body_string(
                "Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429 with ContextId …",
            ))
            .mount(&server)
            .await;
        Mock::given(path("/large"))
            .respond_with(ResponseTemplate::new(413).set_body_string("Payload too large"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = TeamsChannel::new(tools);
        let fail = |route: &'static str| {
            let action = action(
                "teams",
                "MICROSOFT_TEAMS",
                json!({"webhookUrl": format!("{}{route}?sig=s3cret", server.uri())}),
            );
            let channel = &channel;
            async move {
                match attempt(channel, &job(json!({"ans:status": "CLOSE"})), &action).await {
                    Err(f) => f,
                    Ok(()) => panic!("{route} delivered"),
                }
            }
        };
        let throttled = fail("/status429").await;
        assert_eq!(
            (throttled.code, throttled.retry),
            (Code::Http(429), Retry::After(Duration::from_secs(5)))
        );
        let in_body = fail("/body429").await;
        assert_eq!(
            (in_body.code, in_body.retry),
            (Code::Http(429), Retry::OnSchedule)
        );
        assert!(
            in_body.reason.contains("returned HTTP error 429"),
            "{}",
            in_body.reason
        );
        let large = fail("/large").await;
        assert_eq!((large.code, large.retry), (Code::Http(413), Retry::Never));
        for failure in [throttled, in_body, large] {
            assert!(!failure.reason.contains("s3cret"), "{}", failure.reason);
        }
        let sent: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        let title = &sent["attachments"][0]["content"]["body"][0];
        assert_eq!(
            (title["text"].as_str(), title["color"].as_str()),
            (Some("Resolved: CPU above 90%"), Some("Good"))
        );
    }

    /// What a Teams webhook takes (the `chat` crate's notes, `chat-control-and-destinations.md`
    /// §5): a `message` whose attachments are Adaptive Cards of version ≤ 1.5, actions that need
    /// no bot (`Action.OpenUrl`, `ShowCard`, `ToggleVisibility`; never `Action.Submit` or
    /// `Action.Execute`), each link with its title and URL, and at most 28 KB in all.
    fn assert_within_teams_limits(message: &Value) {
        assert_eq!(message["type"], "message");
        assert!(message.to_string().len() <= 28 * 1024, "over 28 KB");
        for attachment in message["attachments"].as_array().unwrap() {
            assert_eq!(
                attachment["contentType"],
                "application/vnd.microsoft.card.adaptive"
            );
            let card = &attachment["content"];
            assert_eq!(card["type"], "AdaptiveCard");
            let version: f64 = card["version"].as_str().unwrap().parse().unwrap();
            assert!(version <= 1.5, "Teams renders up to 1.5");
            for element in card["body"].as_array().unwrap() {
                let kind = element["type"].as_str().unwrap();
                assert!(["TextBlock", "FactSet"].contains(&kind), "{kind}");
            }
            for action in card["actions"].as_array().into_iter().flatten() {
                let kind = action["type"].as_str().unwrap();
                assert!(
                    [
                        "Action.OpenUrl",
                        "Action.ShowCard",
                        "Action.ToggleVisibility"
                    ]
                    .contains(&kind),
                    "{kind} needs a bot"
                );
                assert!(action["title"].as_str().is_some_and(|t| !t.is_empty()));
                if kind == "Action.OpenUrl" {
                    assert!(reqwest::Url::parse(action["url"].as_str().unwrap()).is_ok());
                }
            }
        }
    }

    #[tokio::test]
    async fn the_card_keeps_within_what_teams_takes_even_for_a_huge_event() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = TeamsChannel::new(tools);
        let teams = action(
            "teams",
            "MICROSOFT_TEAMS",
            json!({"webhookUrl": format!("{}/workflows/abc", server.uri())}),
        );
        let mut huge = job(json!({
            "ans:recommendedActionLink": "https://runbooks.example/cpu",
            "ans:detailsLink": "https://console.example/alarms/1"
        }));
        huge.event.subject = "S".repeat(50_000);
        huge.event.body = "B".repeat(50_000);
        assert_eq!(attempt(&channel, &huge, &teams).await, Ok(()));
        let sent: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        assert_within_teams_limits(&sent);
        let actions = sent["attachments"][0]["content"]["actions"]
            .as_array()
            .unwrap();
        assert_eq!(actions.len(), 2, "{actions:?}");
    }

    #[tokio::test]
    async fn a_firing_alerts_card_carries_signed_action_links_for_its_channel() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        let (mut tools, _dir) = tools();
        let links = crate::channels::tests::act_links();
        tools.act_links = Some(Arc::clone(&links));
        let channel = TeamsChannel::new(tools);
        let url = format!("{}/workflows/abc", server.uri());
        let teams = action("teams-ops", "MICROSOFT_TEAMS", json!({"webhookUrl": url}));
        let quiet = action(
            "teams-quiet",
            "MICROSOFT_TEAMS",
            json!({"webhookUrl": url, "controls": false}),
        );
        let firing = job(json!({
            "ans:sourceEventId": "disk-db-1",
            "ans:recommendedActionLink": "https://runbooks.example/cpu",
            "ans:detailsLink": "https://console.example/alarms/1"
        }));
        let mut closing = firing.clone();
        tag(&mut closing, "ans:status", "CLOSE");
        for (job, action) in [(&firing, &teams), (&closing, &teams), (&firing, &quiet)] {
            assert_eq!(attempt(&channel, job, action).await, Ok(()));
        }
        let sent = server.received_requests().await.unwrap();
        let actions = |n: usize| -> Vec<Value> {
            let card: Value = sent[n].body_json().unwrap();
            assert_within_teams_limits(&card);
            card["attachments"][0]["content"]["actions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let firing_actions = actions(0);
        assert!(firing_actions.len() <= 6, "Teams shows six actions at most");
        let titles: Vec<&str> = firing_actions
            .iter()
            .map(|a| a["title"].as_str().unwrap())
            .collect();
        assert_eq!(
            titles,
            [
                "Details",
                "Recommended action",
                "Acknowledge",
                "Resolve",
                "Silence 1 h"
            ]
        );
        for (action, control) in firing_actions[2..].iter().zip(Control::ALL) {
            let url = action["url"].as_str().unwrap();
            let token = url
                .strip_prefix("https://tocsin.example/tocsin/v1/act/")
                .unwrap();
            let claims = links.read(token, clock::now_epoch_seconds()).unwrap();
            assert_eq!(claims.control(), Some(control));
            assert_eq!(claims.alert, "disk-db-1");
            assert_eq!(claims.audience, Audience::Channel("teams-ops".into()));
        }
        assert_eq!(actions(1).len(), 2, "a resolve carries no act");
        assert_eq!(actions(2).len(), 2, "controls off");
    }
}
