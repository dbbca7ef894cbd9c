use super::*;
use crate::channels::tests::{action, attempt, job, tools};
use crate::failure::Retry;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "R0123456789abcdef0123456789abcde";

fn pagerduty(server: &MockServer) -> Action {
    action(
        "pd",
        "PAGERDUTY",
        json!({"routingKey": KEY, "url": format!("{}/v2/enqueue", server.uri()),
               "component": "disk", "group": "db"}),
    )
}

async fn answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn success() -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(
        json!({"status": "success", "message": "Event processed", "dedup_key": "db-1-disk"}),
    )
}

#[tokio::test]
async fn an_alert_is_triggered_then_resolved_under_one_dedup_key() {
    let server = answering(success()).await;
    let (tools, _dir) = tools();
    let channel = PagerDutyChannel::new(tools);
    let action = pagerduty(&server);
    let firing = job(json!({"ans:sourceEventId": "db-1-disk",
                            "ans:detailsLink": "https://console.example/alarms/1"}));
    attempt(&channel, &firing, &action).await.unwrap();
    let closing = job(json!({"ans:sourceEventId": "db-1-disk", "ans:status": "CLOSE"}));
    attempt(&channel, &closing, &action).await.unwrap();

    let sent: Vec<Value> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect();
    assert_eq!(sent.len(), 2);
    let trigger = &sent[0];
    assert_eq!(trigger["routing_key"], KEY);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], "db-1-disk");
    let payload = &trigger["payload"];
    assert_eq!(payload["summary"], "CPU above 90%");
    assert_eq!(payload["source"], "web-1");
    assert_eq!(payload["severity"], "critical", "FATAL is critical");
    assert_eq!(payload["timestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(payload["class"], "HighCPU");
    assert_eq!(payload["component"], "disk");
    assert_eq!(payload["group"], "db");
    assert_eq!(
        payload["custom_details"]["body"],
        "CPU has been above 90% for 5 minutes"
    );
    assert_eq!(
        trigger["links"],
        json!([{"href": "https://console.example/alarms/1", "text": "Details"}])
    );
    // A resolve carries the key and nothing else.
    assert_eq!(
        sent[1],
        json!({"routing_key": KEY, "dedup_key": "db-1-disk", "event_action": "resolve"})
    );
}

#[tokio::test]
async fn failures_are_classified_with_what_pagerduty_said() {
    let (tools, _dir) = tools();
    let channel = PagerDutyChannel::new(tools);
    let firing = job(json!({"ans:sourceEventId": "k"}));

    let invalid = answering(ResponseTemplate::new(400).set_body_json(json!({
        "status": "invalid event", "message": "Event object is invalid",
        "errors": ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    })))
    .await;
    let failure = attempt(&channel, &firing, &pagerduty(&invalid))
        .await
        .unwrap_err();
    assert_eq!(failure.code, Code::Http(400));
    assert_eq!(failure.retry, Retry::Never);
    assert!(
        failure.reason.ends_with(
            "answered 400 Bad Request: Length of 'routing_key' is incorrect (should be 32 characters)"
        ),
        "{}",
        failure.reason
    );

    let limited = answering(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "30")
            .set_body_string("Request Limit Exceeded"),
    )
    .await;
    let failure = attempt(&channel, &firing, &pagerduty(&limited))
        .await
        .unwrap_err();
    assert_eq!(failure.code, Code::Http(429));
    assert_eq!(failure.retry, Retry::After(Duration::from_secs(30)));

    let odd =
        answering(ResponseTemplate::new(202).set_body_json(json!({"status": "queued"}))).await;
    let failure = attempt(&channel, &firing, &pagerduty(&odd))
        .await
        .unwrap_err();
    assert_eq!(failure.code, Code::BadAnswer, "{}", failure.reason);
}

#[test]
fn a_routing_key_that_cannot_be_one_is_refused_and_long_alert_keys_are_hashed() {
    let outbound = crate::outbound::OutboundPolicy::default();
    let (tools, _dir) = tools();
    let channel = PagerDutyChannel::new(tools);
    for (key, refused) in [
        ("", "is required"),
        ("short", "32-character"),
        ("R0123456789abcdef0123456789abcd!", "32-character"),
    ] {
        let action = action("pd", "PAGERDUTY", json!({"routingKey": key}));
        let error = channel
            .configure(&Properties::of(&action, &outbound))
            .err()
            .unwrap_or_else(|| panic!("`{key}` accepted"));
        assert!(
            error.to_string().contains("`properties.routingKey`")
                && error.to_string().contains(refused),
            "{error}"
        );
    }
    let long = "k".repeat(300);
    let event = job(json!({"ans:sourceEventId": long})).event;
    let key = alert_key(&event, MAX_DEDUP_KEY);
    assert_eq!(key.len(), 64);
    assert_eq!(
        key,
        alert_key(&event, MAX_DEDUP_KEY),
        "the same alert, the same key"
    );
}
