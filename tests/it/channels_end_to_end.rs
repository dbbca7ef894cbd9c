//! End to end: one event through the real binary fans out to a signed WEB_HOOK, SLACK and
//! MICROSOFT_TEAMS on a loopback HTTP server; a Slack webhook that answers
//! `404 channel_not_found` ends as an undelivered record whose reason names the error and
//! shows the webhook URL only as `http://host:port/…` — in the record and in the log.

use crate::common::{Backend, Tocsin};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET_PATH: &str = "/services/T000/B000/XXXXsecretXXXX";

fn routing(base: &str) -> Value {
    json!({
        "actions": [
            {"name": "hook", "type": "WEB_HOOK", "state": "ENABLED", "properties": {
                "destination": format!("{base}/hook"), "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "header.X-Team": "ops"}},
            {"name": "slack", "type": "SLACK", "state": "ENABLED", "properties": {
                "webhookUrl": format!("{base}/services/T000/B000/ok")}},
            {"name": "teams", "type": "MICROSOFT_TEAMS", "state": "ENABLED", "properties": {
                "webhookUrl": format!("{base}/workflows/1/triggers/manual/paths/invoke?sig=abc")}},
            {"name": "slack-gone", "type": "SLACK", "state": "ENABLED", "properties": {
                "webhookUrl": format!("{base}{SECRET_PATH}")}}
        ],
        "conditions": [
            {"name": "deploys", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "DeployFailed"}
        ],
        "subscriptions": [{
            "name": "notify", "state": "ENABLED", "conditions": ["deploys"],
            "actions": ["hook", "slack", "teams", "slack-gone"]
        }]
    })
}

/// What `server` received, once it has at least `count` requests (30 s at most).
async fn requests_received(
    server: &MockServer,
    count: usize,
    tocsin: &Tocsin,
) -> Vec<wiremock::Request> {
    let started = Instant::now();
    loop {
        let received = server.received_requests().await.unwrap();
        if received.len() >= count {
            return received;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {count} requests\n{}",
            received.len(),
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_event_reaches_every_channel_and_a_refusal_is_recorded() {
    let server = MockServer::start().await;
    for (route, answer) in [
        ("/hook", ResponseTemplate::new(204)),
        (
            "/services/T000/B000/ok",
            ResponseTemplate::new(200).set_body_string("ok"),
        ),
        (
            "/workflows/1/triggers/manual/paths/invoke",
            ResponseTemplate::new(202),
        ),
        (
            SECRET_PATH,
            ResponseTemplate::new(404).set_body_string("channel_not_found"),
        ),
    ] {
        Mock::given(method("POST"))
            .and(path(route))
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    let tocsin = Tocsin::start(Backend::Embedded, &routing(&server.uri()), &[]).await;
    let accepted = tocsin
        .send(&json!({
            "eventType": "DeployFailed", "severity": "ERROR", "category": "ALERT",
            "subject": "Deploy of shop failed", "body": "step 3 of 5: migration timed out",
            "resource": {"resourceName": "shop", "resourceType": "service"},
            "tags": {"ans:detailsLink": "https://ci.example/runs/77"}
        }))
        .await;

    let undelivered = tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?include=FAILURE_REASON",
            1,
        )
        .await;
    let record = &undelivered["results"][0];
    assert_eq!(record["metadata"]["affectedActionId"], "slack-gone");
    let reason = &record["metadata"]["failureReasons"][0];
    assert_eq!(reason["code"], 404);
    let text = reason["reason"].as_str().unwrap();
    assert_eq!(
        text,
        format!(
            "{}/… answered 404 Not Found: channel_not_found",
            server.uri()
        )
    );

    let received = requests_received(&server, 4, &tocsin).await;
    let by_path = |p: &str| {
        received
            .iter()
            .find(|r| r.url.path() == p)
            .unwrap_or_else(|| panic!("nothing sent to {p}"))
    };
    let hook = by_path("/hook");
    let event: Value = hook.body_json().unwrap();
    assert_eq!(event["id"], accepted["id"], "the webhook carries the event");
    assert_eq!(event["subject"], "Deploy of shop failed");
    assert_eq!(hook.headers.get("x-team").unwrap(), "ops");
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(hook.headers.contains_key(name), "{name} missing");
    }
    let slack: Value = by_path("/services/T000/B000/ok").body_json().unwrap();
    assert_eq!(slack["text"], "[ERROR] Deploy of shop failed");
    let teams: Value = by_path("/workflows/1/triggers/manual/paths/invoke")
        .body_json()
        .unwrap();
    assert_eq!(teams["type"], "message");
    assert_eq!(
        teams["attachments"][0]["content"]["actions"][0]["url"],
        "https://ci.example/runs/77"
    );

    let log = tocsin.log();
    assert!(log.contains("channel_not_found"), "the failure is logged");
    for secret in [
        "XXXXsecretXXXX",
        "sig=abc",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    tocsin.shutdown().await;
}

/// Sends the firing and then the closing event of one alert (`db-1-disk`, of `severity`) and
/// returns the two JSON bodies the stand-in received.
async fn open_then_close(tocsin: &Tocsin, server: &MockServer, severity: &str) -> Vec<Value> {
    for status in ["CREATE_OR_UPDATE", "CLOSE"] {
        tocsin
            .send(&json!({
                "eventType": "DiskFull", "severity": severity, "category": "ALERT",
                "subject": "Disk full on db-1", "body": "/var at 100%",
                "resource": {"resourceName": "db-1", "resourceType": "host"},
                "tags": {"ans:sourceEventId": "db-1-disk", "ans:status": status}
            }))
            .await;
    }
    requests_received(server, 2, tocsin)
        .await
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect()
}

/// A PagerDuty stand-in that checks the Events API v2 shape: an alert's firing and closing
/// events reach one PagerDuty alert (trigger, then resolve, one `dedup_key`), and the routing
/// key is never shown.
#[tokio::test]
async fn pagerduty_follows_an_alert_under_one_dedup_key() {
    const KEY: &str = "R0123456789abcdef0123456789abcde";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(ResponseTemplate::new(202).set_body_json(
            json!({"status": "success", "message": "Event processed", "dedup_key": "db-1-disk"}),
        ))
        .mount(&server)
        .await;
    let routing = json!({
        "actions": [{"name": "pd", "type": "PAGERDUTY", "state": "ENABLED", "properties": {
            "routingKey": KEY, "url": format!("{}/v2/enqueue", server.uri())}}],
        "subscriptions": [{"name": "all", "state": "ENABLED", "conditions": [], "actions": ["pd"]}]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    let shown: Value = tocsin
        .get("/cf/configuration/v1/action/pd")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["properties"]["routingKey"], "********", "{shown}");
    let sent = open_then_close(&tocsin, &server, "FATAL").await;
    let actions: Vec<&str> = sent
        .iter()
        .map(|b| b["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "resolve"], "in order: {sent:#?}");
    assert!(sent
        .iter()
        .all(|b| b["dedup_key"] == "db-1-disk" && b["routing_key"] == KEY));
    assert_eq!(sent[0]["payload"]["summary"], "Disk full on db-1");
    assert_eq!(sent[0]["payload"]["severity"], "critical");
    assert!(
        !tocsin.log().contains(KEY),
        "the routing key is never logged"
    );
    tocsin.shutdown().await;
}

/// A Splunk On-Call stand-in: an alert's firing and closing events reach one incident
/// (`CRITICAL`, then `RECOVERY`, one `entity_id`) at `{apiUrl}{apiKey}/{routingKey}`.
#[tokio::test]
async fn victorops_follows_an_alert_under_one_entity_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/alert/api-key-123/database-team"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"result": "success", "entity_id": "x"})),
        )
        .mount(&server)
        .await;
    let routing = json!({
        "actions": [{"name": "vo", "type": "VICTOROPS", "state": "ENABLED", "properties": {
            "apiKey": "api-key-123", "routingKey": "database-team",
            "apiUrl": format!("{}/alert/", server.uri())}}],
        "subscriptions": [{"name": "all", "state": "ENABLED", "conditions": [], "actions": ["vo"]}]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    let sent = open_then_close(&tocsin, &server, "ERROR").await;
    let types: Vec<&str> = sent
        .iter()
        .map(|b| b["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["CRITICAL", "RECOVERY"], "in order: {sent:#?}");
    assert!(sent.iter().all(|b| b["entity_id"] == "db-1-disk"));
    assert_eq!(sent[0]["entity_display_name"], "Disk full on db-1");
    assert!(
        !tocsin.log().contains("api-key-123"),
        "the API key is never logged"
    );
    tocsin.shutdown().await;
}

/// Test events: one attempt through an action now, its outcome in the answer (and from the
/// CLI), nothing queued or recorded.
#[tokio::test]
async fn an_action_is_tested_now_and_nothing_is_recorded() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ok"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/down"))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance until 04:00"))
        .mount(&server)
        .await;
    let hook = |name: &str, route: &str| {
        json!({"name": name, "type": "WEB_HOOK", "state": "ENABLED",
               "properties": {"destination": format!("{}{route}", server.uri())}})
    };
    let routing = json!({"actions": [hook("ok-hook", "/ok"), hook("down-hook", "/down")]});
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    let test = |name: &str, body: Option<Value>| {
        let request = tocsin.post(&format!("/tocsin/v1/actions/{name}/test"), &Value::Null);
        let request = match body {
            Some(body) => request.json(&body),
            None => request.body(""),
        };
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };

    let (status, outcome) = test("ok-hook", None).await;
    assert_eq!(
        (status, &outcome["delivered"]),
        (200, &json!(true)),
        "{outcome}"
    );
    let sample: Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(sample["eventType"], "TocsinTestEvent");
    assert_eq!(sample["id"], outcome["eventId"]);

    let event = json!({
        "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
        "subject": "Disk full", "body": "/var at 100%",
        "resource": {"resourceName": "db-1", "resourceType": "host"}
    });
    let (status, outcome) = test("down-hook", Some(event.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(outcome["delivered"], false);
    assert_eq!(outcome["code"], 503);
    assert_eq!(outcome["retryable"], true);
    let reason = outcome["reason"].as_str().unwrap();
    assert!(reason.contains("maintenance until 04:00"), "{reason}");

    let (status, missing) = test("nope", None).await;
    assert_eq!(
        (status, missing["message"].as_str()),
        (404, Some("no action `nope`"))
    );
    let mut bad = event;
    bad["severity"] = json!("LOUD");
    let (status, refused) = test("ok-hook", Some(bad)).await;
    assert_eq!(status, 400);
    assert!(
        refused["message"].as_str().unwrap().contains("severity"),
        "{refused}"
    );

    // From the CLI: the outcome on stdout, exit 1 when not delivered.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args(["config", "test-action", "down-hook"])
        .args(["--url", &tocsin.base, "--user", &tocsin.user])
        .env("TOCSIN_PASSWORD", &tocsin.password)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["code"], 503);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not delivered"));

    // Nothing was recorded: no outcome, no attempt.
    for records in ["matched-events", "undelivered-events"] {
        let page = tocsin.page(&format!("/cf/consumer/v1/{records}")).await;
        assert_eq!(
            page["responseMetadata"]["totalResultsCount"], 0,
            "{records}"
        );
    }
    let attempts = tocsin
        .page(&format!(
            "/tocsin/v1/events/{}/attempts",
            outcome["eventId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(attempts["attempts"], json!([]));
    tocsin.shutdown().await;
}

/// Delivery-status events: the outcomes of actions with `enableDeliveryStatus` become events
/// that a subscription routes to a STORE action — visible in `matched-events` for both
/// outcomes — and a status event never produces another.
#[tokio::test]
async fn delivery_status_events_are_routed_like_any_event() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/ok"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/refusing"))
        .respond_with(ResponseTemplate::new(400).set_body_string("no such channel"))
        .mount(&server)
        .await;
    let hook = |name: &str, route: &str| {
        json!({"name": name, "type": "WEB_HOOK", "state": "ENABLED", "enableDeliveryStatus": true,
               "properties": {"destination": format!("{}{route}", server.uri())}})
    };
    let of_type = |name: &str, event_type: &str| json!({"name": name, "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": event_type});
    let routing = json!({
        "actions": [
            hook("ok-hook", "/ok"), hook("refusing-hook", "/refusing"),
            // It asks for status events too: reporting on status events would loop.
            {"name": "keep", "type": "STORE", "state": "ENABLED", "enableDeliveryStatus": true}
        ],
        "conditions": [of_type("disk", "DiskFull"), of_type("statuses", "TocsinDeliveryStatus"),
                       of_type("markers", "Marker")],
        "subscriptions": [
            {"name": "alerts", "state": "ENABLED", "conditions": ["disk"], "actions": ["ok-hook", "refusing-hook"]},
            {"name": "watch-delivery", "state": "ENABLED", "conditions": ["statuses"], "actions": ["keep"]},
            {"name": "markers", "state": "ENABLED", "conditions": ["markers"], "actions": ["keep"]}
        ]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    let original = tocsin
        .send(&crate::common::event("DiskFull", "db-1-disk"))
        .await;
    let page = tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 2)
        .await;
    let mut statuses: Vec<(String, String, Value)> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["eventType"], "TocsinDeliveryStatus");
            let tags = &r["tags"];
            assert_eq!(tags["tocsin:originalEventId"], original["id"]);
            assert_eq!(r["resource"]["resourceName"], "web-1");
            (
                tags["tocsin:action"].as_str().unwrap().to_owned(),
                tags["tocsin:deliveryStatus"].as_str().unwrap().to_owned(),
                tags["tocsin:failureReasons"].clone(),
            )
        })
        .collect();
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        (statuses[0].0.as_str(), statuses[0].1.as_str()),
        ("ok-hook", "DELIVERED")
    );
    assert_eq!(
        (statuses[1].0.as_str(), statuses[1].1.as_str()),
        ("refusing-hook", "UNDELIVERED")
    );
    let reasons: Value = serde_json::from_str(statuses[1].2.as_str().unwrap()).unwrap();
    assert_eq!(reasons[0]["code"], 400);

    // `keep` asks for status events too: storing the marker (an ordinary event) reports one,
    // which `keep` stores — and storing that reports nothing. Four records, then no more.
    tocsin
        .send(&crate::common::event("Marker", "marker-1"))
        .await;
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 4)
        .await;
    // Once the bus is idle, every status event there was to report has been stored.
    tocsin.wait_until_idle().await;
    let page = tocsin.page("/cf/consumer/v1/matched-events").await;
    let stored = page["results"].as_array().unwrap();
    assert_eq!(
        stored.len(),
        4,
        "a status event about a status event: {stored:#?}"
    );
    let about_the_marker = stored
        .iter()
        .filter(|r| r["tags"]["tocsin:originalEventType"] == "Marker")
        .count();
    assert_eq!(about_the_marker, 1, "{stored:#?}");
    tocsin.shutdown().await;
}

/// A ServiceNow stand-in that checks the Table API shape: an alert's firing, repeat and closing
/// events make one incident (`correlation_id` `tocsin:<key>`), a work note on it, and its
/// resolution; the password is never shown.
#[tokio::test]
async fn servicenow_incident_is_created_noted_and_resolved() {
    const SYS_ID: &str = "9d385017c611228701d22104cc95c371";
    let server = MockServer::start().await;
    let table = "/api/now/table/incident";
    Mock::given(method("POST"))
        .and(path(table))
        .and(wiremock::matchers::basic_auth(
            "tocsin.integration",
            "sn-Pa55",
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({"result": {"sys_id": SYS_ID, "number": "INC0010001", "state": "1"}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{table}/{SYS_ID}")))
        .and(wiremock::matchers::basic_auth(
            "tocsin.integration",
            "sn-Pa55",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let routing = json!({
        "actions": [{"name": "sn", "type": "SERVICE_NOW", "state": "ENABLED", "properties": {
            "instanceUrl": server.uri(), "username": "tocsin.integration",
            "password": "sn-Pa55"}}],
        "subscriptions": [{"name": "all", "state": "ENABLED", "conditions": [], "actions": ["sn"]}]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    let shown: Value = tocsin
        .get("/cf/configuration/v1/action/sn")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["properties"]["password"], "********", "{shown}");
    for (status, subject) in [
        ("CREATE_OR_UPDATE", "Disk full on db-1"),
        ("CREATE_OR_UPDATE", "Disk still full on db-1"),
        ("CLOSE", "Disk fine on db-1"),
    ] {
        tocsin
            .send(&json!({
                "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
                "subject": subject, "body": "/var at 100%",
                "resource": {"resourceName": "db-1", "resourceType": "host"},
                "tags": {"ans:sourceEventId": "db-1-disk", "ans:status": status}
            }))
            .await;
    }
    let sent: Vec<(String, Value)> = requests_received(&server, 3, &tocsin)
        .await
        .iter()
        .map(|r| (r.method.to_string(), r.body_json().unwrap()))
        .collect();
    let methods: Vec<&str> = sent.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["POST", "PATCH", "PATCH"], "{sent:#?}");
    let incident = &sent[0].1;
    assert_eq!(incident["short_description"], "Disk full on db-1");
    assert_eq!(incident["correlation_id"], "tocsin:db-1-disk");
    assert_eq!(
        (&incident["urgency"], &incident["impact"]),
        (&json!("1"), &json!("1"))
    );
    assert!(sent[1].1["work_notes"]
        .as_str()
        .unwrap()
        .starts_with("Disk still full on db-1"));
    assert_eq!(sent[2].1["state"], "6");
    assert_eq!(sent[2].1["close_code"], "Solved (Permanently)");
    assert!(
        !tocsin.log().contains("sn-Pa55"),
        "the password is never logged"
    );
    tocsin.shutdown().await;
}

/// The instance creates the incident but a proxy loses its answer (502): the retry finds it by
/// `correlation_id` instead of creating a second, and the repeat and close that waited behind
/// it reach that incident.
#[tokio::test]
async fn servicenow_finds_a_create_whose_answer_was_lost() {
    const SYS_ID: &str = "9d385017c611228701d22104cc95c371";
    let server = MockServer::start().await;
    let table = "/api/now/table/incident";
    Mock::given(method("POST"))
        .and(path(table))
        .respond_with(ResponseTemplate::new(502).set_body_string("Bad Gateway"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(table))
        .and(wiremock::matchers::query_param(
            "sysparm_query",
            "correlation_id=tocsin:db-2-disk^active=true^ORDERBYDESCsys_created_on",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": [
            {"sys_id": SYS_ID, "number": "INC0010002", "state": "1",
             "correlation_id": "tocsin:db-2-disk"}]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{table}/{SYS_ID}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let routing = json!({
        "actions": [{"name": "sn", "type": "SERVICE_NOW", "state": "ENABLED", "properties": {
            "instanceUrl": server.uri(), "username": "tocsin.integration",
            "password": "sn-Pa55", "retryInitialDelayMs": "200"}}],
        "subscriptions": [{"name": "all", "state": "ENABLED", "conditions": [], "actions": ["sn"]}]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    for status in ["CREATE_OR_UPDATE", "CREATE_OR_UPDATE", "CLOSE"] {
        tocsin
            .send(&json!({
                "eventType": "DiskFull", "severity": "ERROR", "category": "ALERT",
                "subject": "Disk full on db-2", "body": "/var at 100%",
                "resource": {"resourceName": "db-2", "resourceType": "host"},
                "tags": {"ans:sourceEventId": "db-2-disk", "ans:status": status}
            }))
            .await;
    }
    let sent: Vec<String> = requests_received(&server, 4, &tocsin)
        .await
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(sent, ["POST", "GET", "PATCH", "PATCH"], "one create only");
    tocsin.wait_until_idle().await;
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
    tocsin.shutdown().await;
}
