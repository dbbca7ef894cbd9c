use super::*;
use crate::channels::tests::{action, attempt, job, tools};
use crate::failure::Retry;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ALERT_PATH: &str = "/integrations/generic/20131114/alert/api-key-123/ops-team";

fn victorops(server: &MockServer, extra: Value) -> Action {
    let mut properties = json!({
        "apiKey": "api-key-123", "routingKey": "ops-team",
        "apiUrl": format!("{}/integrations/generic/20131114/alert", server.uri())
    });
    properties
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    action("vo", "VICTOROPS", properties)
}

async fn answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(ALERT_PATH))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn success() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"result": "success", "entity_id": "db-1-disk"}))
}

async fn sent(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect()
}

#[tokio::test]
async fn an_incident_goes_critical_then_recovers_under_one_entity_id() {
    let server = answering(success()).await;
    let (tools, _dir) = tools();
    let channel = VictorOpsChannel::new(tools);
    let action = victorops(&server, json!({}));
    let firing = job(json!({"ans:sourceEventId": "db-1-disk",
                            "ans:detailsLink": "https://console.example/alarms/1"}));
    attempt(&channel, &firing, &action).await.unwrap();
    let comment = job(json!({"ans:sourceEventId": "db-1-disk", "ans:status": "COMMENT"}));
    attempt(&channel, &comment, &action).await.unwrap();
    let closing = job(json!({"ans:sourceEventId": "db-1-disk", "ans:status": "CLOSE"}));
    attempt(&channel, &closing, &action).await.unwrap();

    let sent = sent(&server).await;
    let types: Vec<&str> = sent
        .iter()
        .map(|a| a["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["CRITICAL", "INFO", "RECOVERY"], "FATAL is CRITICAL");
    assert!(sent.iter().all(|a| a["entity_id"] == "db-1-disk"));
    let first = &sent[0];
    assert_eq!(first["entity_display_name"], "CPU above 90%");
    assert_eq!(
        first["state_message"],
        "CPU has been above 90% for 5 minutes"
    );
    assert_eq!(first["hostname"], "web-1");
    assert_eq!(first["monitoring_tool"], "Tocsin");
    assert_eq!(first["state_start_time"], 1_700_000_000);
    assert_eq!(
        first["vo_annotate.u.Details"],
        "https://console.example/alarms/1"
    );
}

#[tokio::test]
async fn message_type_can_be_fixed_and_failures_are_classified() {
    let (tools, _dir) = tools();
    let channel = VictorOpsChannel::new(tools);
    let firing = job(json!({"ans:sourceEventId": "k"}));

    let server = answering(success()).await;
    attempt(
        &channel,
        &firing,
        &victorops(&server, json!({"messageType": "warning"})),
    )
    .await
    .unwrap();
    assert_eq!(sent(&server).await[0]["message_type"], "WARNING");

    let refused = answering(
        ResponseTemplate::new(200)
            .set_body_json(json!({"result": "failure", "message": "Missing fields: message_type"})),
    )
    .await;
    let failure = attempt(&channel, &firing, &victorops(&refused, json!({})))
        .await
        .unwrap_err();
    assert_eq!(failure.code, Code::BadAnswer);
    assert!(
        failure.reason.ends_with("Missing fields: message_type"),
        "{}",
        failure.reason
    );
    assert!(
        !failure.reason.contains("api-key-123"),
        "the key is in the path: {}",
        failure.reason
    );

    let down = answering(ResponseTemplate::new(503)).await;
    let failure = attempt(&channel, &firing, &victorops(&down, json!({})))
        .await
        .unwrap_err();
    assert_eq!(failure.code, Code::Http(503));
    assert_eq!(failure.retry, Retry::OnSchedule);
}

#[test]
fn keys_must_be_path_segments() {
    let outbound = crate::outbound::OutboundPolicy::default();
    let (tools, _dir) = tools();
    let channel = VictorOpsChannel::new(tools);
    for (properties, named) in [
        (json!({"routingKey": "ops"}), "apiKey"),
        (
            json!({"apiKey": "k", "routingKey": "../admin"}),
            "routingKey",
        ),
        (
            json!({"apiKey": "k", "routingKey": "ops", "messageType": "PAGE"}),
            "messageType",
        ),
        (
            json!({"apiKey": "k", "routingKey": "ops", "apiUrl": "http://10.0.0.1/alert"}),
            "apiUrl",
        ),
    ] {
        let action = action("vo", "VICTOROPS", properties);
        let error = channel
            .configure(&Properties::of(&action, &outbound))
            .err()
            .unwrap_or_else(|| panic!("{named}: accepted"));
        assert!(
            error.to_string().contains(&format!("`properties.{named}`")),
            "{error}"
        );
    }
    let action = action(
        "vo",
        "VICTOROPS",
        json!({"apiKey": "k", "routingKey": "ops"}),
    );
    let config = channel
        .configure(&Properties::of(&action, &outbound))
        .unwrap();
    assert_eq!(
        config.endpoint.as_str(),
        "https://alert.victorops.com/integrations/generic/20131114/alert/k/ops"
    );
}
