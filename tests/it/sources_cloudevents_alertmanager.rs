//! The CloudEvents variant of the ANS producer API and the Alertmanager webhook, end to end
//! against the real binary: each is accepted, normalized, routed and stored; its bad input is a
//! 4xx naming the field, and stores nothing.

use crate::common::{Backend, Tocsin};
use serde_json::{json, Value};

const MATCHED: &str = "/cf/consumer/v1/matched-events";
const CE_PATH: &str = "/cf/producer/v1/resource-events?schema_definition=cloud_events&version=1.0";

fn store_everything() -> Value {
    json!({
        "actions": [{"name": "to-store", "type": "STORE", "state": "ENABLED"}],
        "conditions": [],
        "subscriptions": [{"name": "all", "state": "ENABLED", "conditions": [], "actions": ["to-store"]}]
    })
}

fn cloud_event(id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/default/sap.lmc/prod",
        "type": "ce/sap/lmc/Activity/STOPSERVICE/v1",
        "subject": "PRD",
        "time": "2023-11-14T22:13:20Z",
        "severity": "ERROR",
        "category": "ALERT",
        "data": {"activityId": "42", "status": "failed"}
    })
}

async fn post_raw(tocsin: &Tocsin, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
    let response = tocsin
        .http
        .post(tocsin.url(path))
        .basic_auth(&tocsin.user, Some(&tocsin.password))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn total(tocsin: &Tocsin) -> u64 {
    tocsin.page(MATCHED).await["responseMetadata"]["totalResultsCount"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn cloud_events_on_the_ans_producer_path() {
    let tocsin = Tocsin::start(Backend::Embedded, &store_everything(), &[]).await;

    // One event, structured mode: the CE type is the eventType.
    let (status, echo) = post_raw(
        &tocsin,
        CE_PATH,
        "application/cloudevents+json",
        &cloud_event("ce-1"),
    )
    .await;
    assert_eq!(status, 202, "{echo}");
    assert_eq!(echo["eventType"], "ce/sap/lmc/Activity/STOPSERVICE/v1");
    assert_eq!(echo["severity"], "ERROR");
    assert_eq!(echo["category"], "ALERT");
    assert_eq!(echo["subject"], "ce/sap/lmc/Activity/STOPSERVICE/v1: PRD");
    assert_eq!(echo["eventTimestamp"], 1_700_000_000);
    assert_eq!(echo["tags"]["ans:sourceEventId"], "ce-1");

    // A batch of CloudEvents, under /neo too.
    let (status, batch) = post_raw(
        &tocsin,
        "/neo/producer/v1/resource-events-batch?schema_definition=cloud_events",
        "application/json",
        &json!([cloud_event("ce-2"), cloud_event("ce-3")]),
    )
    .await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(batch.as_array().unwrap().len(), 2);

    let page = tocsin.wait_for_count(MATCHED, 3).await;
    let stored = &page["results"].as_array().unwrap()[0];
    assert_eq!(stored["eventType"], "ce/sap/lmc/Activity/STOPSERVICE/v1");
    assert_eq!(stored["resource"]["resourceName"], "/default/sap.lmc/prod");

    // Bad input: named, and nothing stored.
    let mut untyped = cloud_event("ce-4");
    untyped.as_object_mut().unwrap().remove("type");
    for (path, body, status, message) in [
        (CE_PATH.to_owned(), untyped, 400, "`type` is required"),
        (
            CE_PATH.to_owned(),
            json!({"specversion": "0.3", "id": "x", "source": "s", "type": "t"}),
            400,
            "`specversion` must be 1.0",
        ),
        (
            "/cf/producer/v1/resource-events?schema_definition=avro".to_owned(),
            cloud_event("ce-5"),
            400,
            "`schema_definition` `avro` is not supported",
        ),
        (
            "/cf/producer/v1/resource-events?schema_definition=cloud_events&version=0.3".to_owned(),
            cloud_event("ce-6"),
            400,
            "`version` 0.3 is not supported",
        ),
    ] {
        let (got, answer) = post_raw(&tocsin, &path, "application/json", &body).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(message),
            "{answer}"
        );
    }
    // The native path is unchanged by all this.
    tocsin
        .send(&crate::common::event("HighCPU", "native-1"))
        .await;
    tocsin.wait_for_count(MATCHED, 4).await;
    tocsin.wait_until_idle().await;
    assert_eq!(total(&tocsin).await, 4);
    tocsin.shutdown().await;
}

pub(crate) fn alert(status: &str, fingerprint: &str, name: &str) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": name, "instance": "db-1:9100", "job": "node", "severity": "critical"},
        "annotations": {"summary": format!("{name} on db-1")},
        "startsAt": "2023-11-14T22:13:20Z",
        "endsAt": if status == "resolved" { "2023-11-14T22:30:00Z" } else { "0001-01-01T00:00:00Z" },
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint
    })
}

pub(crate) fn webhook(status: &str, alerts: Vec<Value>) -> Value {
    json!({
        "version": "4", "groupKey": "{}:{job=\"node\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "tocsin",
        "groupLabels": {"job": "node"}, "commonLabels": {"job": "node"}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": alerts
    })
}

#[tokio::test]
async fn alertmanager_alerts_become_events_and_resolution_closes_them() {
    let tocsin = Tocsin::start(Backend::Embedded, &store_everything(), &[]).await;
    let path = "/alertmanager/v1/webhook";

    let firing = webhook(
        "firing",
        vec![
            alert("firing", "fp-cpu", "HighCPU"),
            alert("firing", "fp-disk", "DiskFull"),
        ],
    );
    let (status, answer) = post_raw(&tocsin, path, "application/json", &firing).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["published"].as_array().unwrap().len(), 2);

    let resolved = webhook("resolved", vec![alert("resolved", "fp-cpu", "HighCPU")]);
    let (status, _) = post_raw(&tocsin, path, "application/json", &resolved).await;
    assert_eq!(status, 202);

    tocsin.wait_for_count(MATCHED, 3).await;
    let chain = tocsin
        .page(&format!("{MATCHED}?sourceEventId=fp-cpu"))
        .await["results"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(chain.len(), 2);
    let status_of = |subject_prefix: &str| {
        chain
            .iter()
            .find(|e| e["subject"].as_str().unwrap().starts_with(subject_prefix))
            .unwrap_or_else(|| panic!("{subject_prefix} in {chain:?}"))
            .clone()
    };
    let open = status_of("[FIRING]");
    let close = status_of("[RESOLVED]");
    assert_eq!(open["tags"]["ans:status"], "CREATE_OR_UPDATE");
    assert_eq!(close["tags"]["ans:status"], "CLOSE");
    assert_eq!(open["eventType"], "HighCPU");
    assert_eq!(open["severity"], "FATAL");
    assert_eq!(open["resource"]["resourceName"], "db-1:9100");
    assert_eq!(open["eventTimestamp"], 1_700_000_000);
    assert_eq!(close["eventTimestamp"], 1_700_001_000);
    assert_eq!(open["tags"]["ans:correlationId"], "{}:{job=\"node\"}");
    assert_eq!(open["tags"]["label:job"], "node");

    // Bad input and no credentials: 4xx, nothing stored.
    let mut unlabelled = webhook("firing", vec![alert("firing", "fp-x", "X")]);
    unlabelled["alerts"][0]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    let (status, answer) = post_raw(&tocsin, path, "application/json", &unlabelled).await;
    assert_eq!(status, 400);
    assert_eq!(answer["message"], "`alerts[0].labels` is required");
    let (status, answer) = post_raw(&tocsin, path, "text/plain", &firing).await;
    assert_eq!(status, 415);
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("text/plain"),
        "{answer}"
    );
    let anonymous = tocsin
        .http
        .post(tocsin.url(path))
        .json(&firing)
        .send()
        .await
        .unwrap();
    crate::common::error_message(anonymous, 401).await;
    tocsin.wait_until_idle().await;
    assert_eq!(total(&tocsin).await, 3);
    tocsin.shutdown().await;
}
