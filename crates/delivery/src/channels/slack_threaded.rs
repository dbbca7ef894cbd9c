//! `SLACK_THREADED`: one Slack thread per alert, through the Web API's `chat.postMessage` and
//! `chat.update` with a bot token.
//!
//! Properties: `token` (the bot token, `xoxb-…`, scope `chat:write`; a secret), `channel`
//! (the channel ID), `apiUrl` (default `https://slack.com/api/`), `controls` (default `true`:
//! a new thread's parent carries the Acknowledge, Resolve and Silence 1 h buttons that Tocsin's
//! Slack app serves, see the `chat` crate, and a message of an undelivered delivery-status
//! event its Redeliver button, as `SLACK`'s), and the message templates of `SLACK`
//! (`subjectTemplate`, `bodyTemplate`, or `payloadTemplate`; see [`super::slack`]).
//!
//! The alert is the event's `ans:correlationId` (else its `ans:sourceEventId`; with neither,
//! each event is a message of its own). Under the alert's lock, with the link map
//! ([`crate::links`]) holding the thread (channel and parent `ts`):
//! - no open thread: the event is posted as a new parent message, and its thread recorded;
//! - an open thread: the event is posted as a reply in it;
//! - a close (`ans:status` `CLOSE`): the reply is broadcast to the channel
//!   (`reply_broadcast`), the parent is updated to the resolved message (green), and the
//!   thread is closed: the next firing starts a new one.
//!
//! Slack answers errors as HTTP 200 with `{"ok": false, "error": "…"}`: a 907 failure whose
//! reason is the error (`channel_not_found`, `not_in_channel`, `invalid_auth`, …), retryable for
//! `ratelimited` (after `Retry-After`), `service_unavailable`, `internal_error`, `fatal_error`
//! and `request_timeout`. HTTP 429 is retried after `Retry-After`. A parent update that fails
//! after the resolution was posted is logged, not retried: the resolution reached the channel.
//! A post whose answer never came may have been made; retrying it can post it twice.

use super::slack::{message, with_block, with_redeliver};
use super::{Channel, Tools};
use crate::failure::{Code, Failure};
use crate::lifecycle::Transition;
use crate::links::{Link, LinkState};
use crate::properties::{Properties, PropertyError};
use crate::templates::MessageTemplates;
use model::alert::Control;
use model::{Action, DeliveryJob};
use reqwest::{Method, Url};
use serde_json::{json, Value};

/// Slack's limit on a button's `value` (the alert key): a longer key gets no buttons.
const MAX_BUTTON_VALUE: usize = 2000;

/// Slack errors that a later attempt can get past.
const RETRYABLE: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "service_unavailable",
    "internal_error",
    "fatal_error",
    "request_timeout",
];

pub struct SlackThreadedChannel {
    tools: Tools,
}

/// A `SLACK_THREADED` action's properties, parsed: where the messages go, and how they read.
pub struct Conversation {
    api: Url,
    token: String,
    channel: String,
    /// Whether a new thread's parent carries the alert's controls.
    controls: bool,
    templates: MessageTemplates,
}

/// A posted message: its channel ID and timestamp.
struct Posted {
    channel: String,
    ts: String,
}

impl SlackThreadedChannel {
    pub fn new(tools: Tools) -> Self {
        SlackThreadedChannel { tools }
    }

    /// `chat.postMessage`: a new message, or a reply in `thread_ts` (broadcast if asked).
    async fn post(
        &self,
        to: &Conversation,
        payload: &Value,
        thread_ts: Option<&str>,
        broadcast: bool,
    ) -> Result<Posted, Failure> {
        let mut body = payload.clone();
        body["channel"] = to.channel.clone().into();
        if let Some(ts) = thread_ts {
            body["thread_ts"] = ts.into();
            body["reply_broadcast"] = broadcast.into();
        }
        let answer = self.call(to, "chat.postMessage", &body).await?;
        match (answer["channel"].as_str(), answer["ts"].as_str()) {
            (Some(channel), Some(ts)) => Ok(Posted {
                channel: channel.to_owned(),
                ts: ts.to_owned(),
            }),
            _ => Err(Failure::permanent(
                Code::BadAnswer,
                "chat.postMessage answered ok without the message's channel and ts",
            )),
        }
    }

    /// `chat.update` of the parent to the resolved message; a failure is only logged.
    async fn update_parent(&self, to: &Conversation, parent: &Posted, payload: &Value) {
        let mut body = payload.clone();
        body["channel"] = parent.channel.clone().into();
        body["ts"] = parent.ts.clone().into();
        if let Err(failure) = self.call(to, "chat.update", &body).await {
            tracing::warn!(code = failure.code.number(), reason = %failure.reason, "cannot mark the Slack thread's parent resolved");
        }
    }

    /// Calls a Web API method; `ok:false` and non-2xx answers are failures.
    async fn call(&self, to: &Conversation, method: &str, body: &Value) -> Result<Value, Failure> {
        let url = to.api.join(method).expect("a method name joins");
        let request = self
            .tools
            .http
            .request(Method::POST, url, false)
            .bearer_auth(&to.token)
            .json(body);
        let reply = self.tools.http.send(request).await?;
        if !reply.is_success() {
            return Err(reply.failure(&reply.quote()));
        }
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if answer["ok"] == Value::Bool(true) {
            return Ok(answer);
        }
        let error = answer["error"].as_str().unwrap_or("no `ok` in the answer");
        let reason = format!("{method}: {error}");
        Err(if RETRYABLE.contains(&error) {
            Failure::transient_after(Code::BadAnswer, reason, reply.retry_after())
        } else {
            Failure::permanent(Code::BadAnswer, reason)
        })
    }
}

impl Channel for SlackThreadedChannel {
    const TYPE: &'static str = "SLACK_THREADED";
    const PROPERTIES: &'static [&'static str] = &[
        "token",
        "channel",
        "apiUrl",
        "controls",
        "subjectTemplate",
        "bodyTemplate",
        "payloadTemplate",
    ];
    type Config = Conversation;

    fn configure(&self, p: &Properties) -> Result<Conversation, PropertyError> {
        let mut api = p
            .url("apiUrl")?
            .unwrap_or_else(|| Url::parse("https://slack.com/api/").expect("a URL"));
        if !api.path().ends_with('/') {
            api.set_path(&format!("{}/", api.path()));
        }
        Ok(Conversation {
            api,
            token: p.required("token")?,
            channel: p.required("channel")?,
            controls: p.flag("controls", true)?,
            templates: MessageTemplates::read(p)?,
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        to: &Conversation,
    ) -> Result<(), Failure> {
        let mut payload = message(&self.tools, job, action, &to.templates)?;
        let event = &job.event;
        if to.controls {
            payload = with_redeliver(payload, [event]);
        }
        let closes = Transition::of(event) == Transition::Close;
        let Some(key) = event.correlation_id().or(event.source_event_id()) else {
            return self.post(to, &payload, None, false).await.map(drop);
        };
        let scope = store::links::scope(&action.name, &to.channel);
        let (locked, thread) =
            crate::links::lock_and_get(&self.tools.links, &scope, key, "the Slack thread map")
                .await?;
        if thread.as_ref().is_some_and(|t| t.last_event == event.id) {
            return Ok(()); // a redelivered job: its effect is on record
        }
        let parent = thread.filter(|t| t.state == LinkState::Open).and_then(|t| {
            let (channel, ts) = t.target.split_once(' ')?;
            Some(Posted {
                channel: channel.to_owned(),
                ts: ts.to_owned(),
            })
        });
        let (state, thread) = match parent {
            None => {
                let parent = if to.controls && !closes {
                    with_controls(payload.clone(), event.alert_key())
                } else {
                    payload.clone()
                };
                let posted = self.post(to, &parent, None, false).await?;
                let state = if closes {
                    LinkState::Closed
                } else {
                    LinkState::Open
                };
                (state, posted)
            }
            Some(parent) => {
                self.post(to, &payload, Some(&parent.ts), closes).await?;
                if closes {
                    self.update_parent(to, &parent, &payload).await;
                    (LinkState::Closed, parent)
                } else {
                    (LinkState::Open, parent)
                }
            }
        };
        let link = Link::new(state, format!("{} {}", thread.channel, thread.ts), event);
        locked
            .put(&link)
            .await
            .map_err(|e| crate::links::unavailable("the Slack thread map", e))
    }
}

/// `payload` with an actions block of the alert's controls (their `value` the alert key) —
/// in its first attachment's blocks (the default message), else in its own blocks.
pub(crate) fn with_controls(payload: Value, alert_key: &str) -> Value {
    if alert_key.is_empty() || alert_key.len() > MAX_BUTTON_VALUE {
        return payload;
    }
    let buttons: Vec<Value> = Control::ALL
        .into_iter()
        .map(|control| {
            let mut button = json!({
                "type": "button",
                "action_id": control.action_id(),
                "text": {"type": "plain_text", "text": control.label()},
                "value": alert_key,
            });
            match control {
                Control::Acknowledge => button["style"] = "primary".into(),
                Control::Resolve | Control::SilenceHour => {}
            }
            button
        })
        .collect();
    with_block(
        payload,
        json!({"type": "actions", "block_id": "tocsin_controls", "elements": buttons}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{
        action, assert_within_block_kit_limits, attempt, job_with_id, tools,
    };
    use crate::failure::{Code, Retry};
    use serde_json::json;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, Request, ResponseTemplate};

    fn threaded(server: &MockServer) -> Action {
        action(
            "slack-threads",
            "SLACK_THREADED",
            json!({"token": "xoxb-test", "channel": "C0ALERTS", "apiUrl": format!("{}/api", server.uri())}),
        )
    }

    fn alert(id: &str, correlation: &str, status: &str) -> DeliveryJob {
        job_with_id(
            id,
            json!({"ans:correlationId": correlation, "ans:status": status}),
        )
    }

    /// Answers every chat.postMessage with a new ts, 1000.000001, 1000.000002, …
    fn post_message_answers() -> impl Fn(&Request) -> ResponseTemplate + Send + Sync {
        let next = AtomicU32::new(0);
        move |_: &Request| {
            let n = next.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(
                json!({"ok": true, "channel": "C0ALERTS", "ts": format!("1000.{n:06}")}),
            )
        }
    }

    #[tokio::test]
    async fn one_thread_per_correlation_id_resolved_with_a_broadcast() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/chat.postMessage"))
            .and(header("authorization", "Bearer xoxb-test"))
            .respond_with(post_message_answers())
            .mount(&server)
            .await;
        Mock::given(path("/api/chat.update"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
            .expect(1)
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackThreadedChannel::new(tools);
        let action = threaded(&server);
        for job in [
            alert("e1", "c-1", "CREATE_OR_UPDATE"),
            alert("e2", "c-1", "CREATE_OR_UPDATE"),
            alert("e2", "c-1", "CREATE_OR_UPDATE"), // redelivered: nothing posted
            alert("e3", "c-2", "CREATE_OR_UPDATE"),
            alert("e4", "c-1", "CLOSE"),
            alert("e5", "c-1", "CREATE_OR_UPDATE"),
        ] {
            assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
        }
        let sent: Vec<(String, Value)> = server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.url.path().to_owned(), r.body_json().unwrap()))
            .collect();
        let shape: Vec<(&str, Option<&str>, Option<bool>)> = sent
            .iter()
            .map(|(path, body)| {
                (
                    path.as_str(),
                    body["thread_ts"].as_str().or(body["ts"].as_str()),
                    body["reply_broadcast"].as_bool(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("/api/chat.postMessage", None, None), // c-1 parent: 1000.000001
                ("/api/chat.postMessage", Some("1000.000001"), Some(false)), // c-1 reply
                ("/api/chat.postMessage", None, None), // c-2 parent
                ("/api/chat.postMessage", Some("1000.000001"), Some(true)), // c-1 resolved, broadcast
                ("/api/chat.update", Some("1000.000001"), None),            // c-1 parent updated
                ("/api/chat.postMessage", None, None), // c-1 fires again: new thread
            ]
        );
        assert!(sent.iter().all(|(_, body)| body["channel"] == "C0ALERTS"));
        let update = &sent[4].1;
        assert_eq!(
            update["attachments"][0]["color"], "#2eb67d",
            "the parent turns green"
        );
        assert_eq!(update["text"], "[FATAL] Resolved: CPU above 90%");
        assert_eq!(sent[0].1["attachments"][0]["color"], "#a30200");
    }

    #[tokio::test]
    async fn slack_errors_in_ok_false_and_429() {
        let server = MockServer::start().await;
        Mock::given(path("/missing/chat.postMessage"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"ok": false, "error": "channel_not_found"})),
            )
            .mount(&server)
            .await;
        Mock::given(path("/limited/chat.postMessage"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("Retry-After", "3")
                    .set_body_json(json!({"ok": false, "error": "ratelimited"})),
            )
            .mount(&server)
            .await;
        Mock::given(path("/throttled/chat.postMessage"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "20"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackThreadedChannel::new(tools);
        let fail = |api: &'static str| {
            let action = action(
                "slack-threads",
                "SLACK_THREADED",
                json!({"token": "xoxb-secret", "channel": "C0ALERTS", "apiUrl": format!("{}/{api}/", server.uri())}),
            );
            let channel = &channel;
            async move {
                match attempt(channel, &alert("e1", api, "CREATE_OR_UPDATE"), &action).await {
                    Err(f) => f,
                    Ok(()) => panic!("{api} delivered"),
                }
            }
        };
        let missing = fail("missing").await;
        assert_eq!(
            (missing.code, missing.retry),
            (Code::BadAnswer, Retry::Never)
        );
        assert_eq!(missing.reason, "chat.postMessage: channel_not_found");
        let limited = fail("limited").await;
        assert_eq!(
            (limited.code, limited.retry),
            (Code::BadAnswer, Retry::After(Duration::from_secs(3)))
        );
        let throttled = fail("throttled").await;
        assert_eq!(
            (throttled.code, throttled.retry),
            (Code::Http(429), Retry::After(Duration::from_secs(20)))
        );
        assert!(!throttled.reason.contains("xoxb"), "{}", throttled.reason);
    }

    #[tokio::test]
    async fn a_new_threads_parent_carries_the_controls_within_block_kit_limits() {
        let server = MockServer::start().await;
        Mock::given(path("/api/chat.postMessage"))
            .respond_with(post_message_answers())
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackThreadedChannel::new(tools);
        let action = threaded(&server);
        // A huge subject and body: the message still keeps within the limits.
        let mut first = alert("e1", "c-1", "CREATE_OR_UPDATE");
        first.event.subject = "S".repeat(5000);
        first.event.body = "B".repeat(10_000);
        first
            .event
            .tags
            .get_or_insert_with(Default::default)
            .insert("ans:sourceEventId".into(), "disk-db-1".into());
        assert_eq!(attempt(&channel, &first, &action).await, Ok(()));
        assert_eq!(
            attempt(&channel, &alert("e2", "c-1", "CREATE_OR_UPDATE"), &action).await,
            Ok(())
        );
        let sent: Vec<Value> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| r.body_json().unwrap())
            .collect();
        let parent = &sent[0];
        assert_within_block_kit_limits(parent);
        let controls = parent["attachments"][0]["blocks"]
            .as_array()
            .unwrap()
            .last()
            .unwrap();
        let ids: Vec<&str> = controls["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["action_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["tocsin_acknowledge", "tocsin_resolve", "tocsin_silence_1h"]
        );
        assert!(controls["elements"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["value"] == "disk-db-1"));
        let reply = &sent[1];
        assert_within_block_kit_limits(reply);
        assert!(
            !reply.to_string().contains("tocsin_acknowledge"),
            "a reply carries no controls"
        );
        // Off by the action's `controls`; a key past Slack's value limit gets none either.
        let plain = action_with_controls(&server, "false");
        assert!(!with_controls(json!(null), "k").is_object());
        assert_eq!(
            with_controls(json!({"text": "t"}), &"k".repeat(2001)),
            json!({"text": "t"})
        );
        assert_eq!(
            with_controls(json!({"text": "t"}), "k")["blocks"][0]["block_id"],
            "tocsin_controls"
        );
        let policy = crate::outbound::OutboundPolicy::new(crate::channels::tests::loopback());
        let configured = channel.configure(&Properties::of(&plain, &policy));
        assert!(configured.is_ok_and(|c| !c.controls));
    }

    #[tokio::test]
    async fn an_undelivered_status_event_carries_redeliver_unless_controls_are_off() {
        use crate::delivery_status::{self, Status};
        let server = MockServer::start().await;
        Mock::given(path("/api/chat.postMessage"))
            .respond_with(post_message_answers())
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = SlackThreadedChannel::new(tools);
        let mut original = alert("e1", "c-1", "CREATE_OR_UPDATE");
        original.action = "to-hook".into();
        let status = delivery_status::event(&original, Status::Undelivered, 1, 1_800_000_000);
        let job = DeliveryJob::new(status, 0, "slack-threads");
        assert_eq!(attempt(&channel, &job, &threaded(&server)).await, Ok(()));
        let off = action_with_controls(&server, "false");
        assert_eq!(attempt(&channel, &job, &off).await, Ok(()));
        let sent: Vec<Value> = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| r.body_json().unwrap())
            .collect();
        assert_within_block_kit_limits(&sent[0]);
        let blocks = sent[0]["attachments"][0]["blocks"].as_array().unwrap();
        let redeliver = blocks.last().unwrap();
        assert_eq!(redeliver["block_id"], "tocsin_redeliver", "{}", sent[0]);
        assert_eq!(
            redeliver["elements"][0]["value"],
            r#"{"action":"to-hook","since":1800000000}"#
        );
        assert!(
            !sent[0].to_string().contains("tocsin_acknowledge"),
            "a status event is no alert: no alert controls"
        );
        assert!(
            !sent[1].to_string().contains("tocsin_redeliver"),
            "controls off"
        );
    }

    fn action_with_controls(server: &MockServer, controls: &str) -> Action {
        action(
            "slack-threads",
            "SLACK_THREADED",
            json!({"token": "xoxb-test", "channel": "C0ALERTS", "controls": controls, "apiUrl": format!("{}/api", server.uri())}),
        )
    }
}
