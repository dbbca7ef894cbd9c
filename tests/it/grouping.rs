//! Grouping and storm control through the real binary, with loopback stand-ins:
//! - a storm of 500 events over 50 resources within 10 s reaches one Slack channel stand-in as
//!   digests within its default rate (no more than four at once and one a second after, seen
//!   in the stand-in's request times), every event named in exactly one message, and few
//!   messages in all;
//! - a webhook action that groups by resource receives one digest per resource after its group
//!   wait (the documented payload: `events`, `groupLabels`, `firing`, `resolved`), and what
//!   comes after a digest waits for the group interval; every member's attempt is recorded,
//!   and each member's alert timeline marks it as a digest's, naming the group and its size
//!   (the plain STORE attempt beside it unchanged);
//! - with `repeatIntervalSeconds`, an alert that stays firing reaches the webhook again after
//!   the repeat interval — a repeat that fails is not retried, the next comes after another
//!   interval — and after its `CLOSE` no repeat comes; each repeat is a `repeat` line of the
//!   alert's timeline (failed or delivered), its delivery lines and records as the digests
//!   left them;
//! - grouping on an incident channel (B2C), by an unknown property, or repeating more often
//!   than the group interval is refused when saved, 400 naming the property, changing nothing;
//! - a `kill -9` while a group waits: after the restart the group is delivered exactly once,
//!   and every member has its record.
//!
//! On the embedded bus with SQLite, and on RabbitMQ with PostgreSQL.

use crate::common::{error_message, postgres_schema, Backend, Destination, Received, Tocsin};
use crate::shared_store::shared_store;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Event `n` of a storm: on resource `db-{n % 50}`, its subject naming it (`disk 007 full`).
fn storm_event(n: usize) -> Value {
    json!({
        "eventType": "DiskFull", "severity": "ERROR", "category": "ALERT",
        "subject": format!("disk {n:03} full"), "body": "no space left",
        "resource": {"resourceName": format!("db-{}", n % 50), "resourceType": "database"},
        "tags": {"ans:sourceEventId": format!("disk-{n}")}
    })
}

/// Every action gets every event, and a STORE action keeps a record of each.
fn routing(action: Value) -> Value {
    json!({
        "actions": [action, {"name": "store", "type": "STORE", "state": "ENABLED"}],
        "subscriptions": [{"name": "all", "state": "ENABLED", "actions": ["grouped", "store"]}]
    })
}

/// The settings of a stack: the embedded bus with SQLite, or RabbitMQ with PostgreSQL.
async fn stack(backend: Backend) -> Vec<(&'static str, String)> {
    match backend {
        Backend::Embedded => Vec::new(),
        Backend::Rabbitmq => {
            let url = postgres_schema().await;
            shared_store(&url)
                .iter()
                .map(|(k, v)| (*k, v.to_string()))
                .collect()
        }
    }
}

async fn start(backend: Backend, configuration: &Value) -> Tocsin {
    let settings = stack(backend).await;
    let env: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Tocsin::start(backend, configuration, &env).await
}

/// In how many of the messages the stand-in received each `disk NNN full` subject appears.
fn named(received: &[Received], events: usize) -> Vec<usize> {
    let bodies: Vec<String> = received.iter().map(|r| r.body.to_string()).collect();
    (0..events)
        .map(|n| {
            let subject = format!("disk {n:03} full");
            bodies.iter().filter(|b| b.contains(&subject)).count()
        })
        .collect()
}

async fn storm_reaches_slack_as_digests_within_its_rate(backend: Backend) {
    const EVENTS: usize = 500;
    let slack = Destination::start(|_| 200).await;
    let action = json!({"name": "grouped", "type": "SLACK", "state": "ENABLED",
        "properties": {"webhookUrl": slack.url}});
    let tocsin = start(backend, &routing(action)).await;

    // 50 events every second for 10 s, ten at a time.
    let started = Instant::now();
    for second in 0..10 {
        for batch in 0..5 {
            let events: Vec<Value> = (0..10)
                .map(|i| storm_event(second * 50 + batch * 10 + i))
                .collect();
            futures::future::join_all(events.iter().map(|e| tocsin.send(e))).await;
        }
        let next = started + Duration::from_secs(second as u64 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    slack
        .wait_for("every storm event named in a Slack message", |r| {
            named(r, EVENTS).iter().all(|&n| n > 0)
        })
        .await;
    tocsin.wait_until_idle().await;
    let received = &slack.received();
    let counts = named(received, EVENTS);
    assert!(
        counts.iter().all(|&n| n == 1),
        "{backend:?}: every event in exactly one message: {:?}",
        counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != 1)
            .collect::<Vec<_>>()
    );
    // Within the bucket's rate: a burst of four, then one a second (a little slack for the
    // time between Tocsin taking a token and the stand-in seeing the request).
    let times: Vec<Instant> = received.iter().map(|r| r.at).collect();
    for (i, first) in times.iter().enumerate() {
        for window in [1, 3, 10] {
            let within = times[i..]
                .iter()
                .filter(|t| t.duration_since(*first) < Duration::from_secs(window))
                .count();
            assert!(
                within as u64 <= 4 + window + 1,
                "{backend:?}: {within} messages within {window} s"
            );
        }
    }
    assert!(
        received.len() < 40,
        "{backend:?}: {} messages for {EVENTS} events",
        received.len()
    );
    let digests = received
        .iter()
        .filter(|r| {
            r.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("alerts firing"))
        })
        .count();
    assert!(
        digests > 0,
        "{backend:?}: no digest among {} messages",
        received.len()
    );
    let metrics = tocsin.metrics().await;
    assert!(
        metrics.contains("tocsin_delivery_events_held_total{reason=\"storm\"}"),
        "{backend:?}: storm holds are counted"
    );
    eprintln!(
        "{backend:?}: {EVENTS} events in {} Slack messages ({digests} digests)",
        received.len()
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_reaches_slack_as_digests_within_its_rate_embedded_and_sqlite() {
    storm_reaches_slack_as_digests_within_its_rate(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_reaches_slack_as_digests_within_its_rate_rabbitmq_and_postgres() {
    storm_reaches_slack_as_digests_within_its_rate(Backend::Rabbitmq).await;
}

/// An event of alert `key` on `resource`; `CLOSE` resolves it.
fn alert_event(key: &str, resource: &str, status: Option<&str>) -> Value {
    let mut event = storm_event(0);
    event["subject"] = json!(format!("{key} {}", status.unwrap_or("OPEN")));
    event["resource"]["resourceName"] = json!(resource);
    event["tags"]["ans:sourceEventId"] = json!(key);
    if let Some(status) = status {
        event["tags"]["ans:status"] = json!(status);
    }
    event
}

/// The subjects of a digest's events, in order.
fn subjects(digest: &Value) -> Vec<&str> {
    digest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect()
}

/// The lines of alert `key`'s timeline of `kind` (`delivery` or `repeat`) to `action`.
async fn timeline_lines(tocsin: &Tocsin, key: &str, kind: &str, action: &str) -> Vec<Value> {
    let found = tocsin.page(&format!("/tocsin/v1/alerts/{key}")).await;
    found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == kind && line["action"] == action)
        .cloned()
        .collect()
}

/// The group key of the digests of resource `resource` (grouped by `resource.resourceName`).
fn resource_group(resource: &str) -> String {
    json!({"resource.resourceName": resource}).to_string()
}

async fn webhook_gets_one_digest_per_group(backend: Backend) {
    let hook = Destination::start(|_| 200).await;
    let action = json!({"name": "grouped", "type": "WEB_HOOK", "state": "ENABLED", "properties": {
        "destination": hook.url, "groupBy": "resource.resourceName",
        "groupWaitSeconds": "2", "groupIntervalSeconds": "3"}});
    let tocsin = start(backend, &routing(action)).await;
    let sent_at = Instant::now();
    let mut ids = Vec::new();
    for (key, resource, status) in [
        ("a", "db-1", None),
        ("b", "db-2", None),
        ("c", "db-1", None),
        ("d", "db-1", Some("CLOSE")),
    ] {
        ids.push(tocsin.send(&alert_event(key, resource, status)).await["id"].clone());
    }
    let first = hook
        .wait_for("a digest per resource", |r| r.len() == 2)
        .await;
    for digest in &first {
        assert!(
            digest.at.duration_since(sent_at) >= Duration::from_millis(1_800),
            "{backend:?}: a group waits for company first"
        );
        assert_eq!(digest.body["type"], "tocsin.digest");
        assert_eq!(digest.body["action"], "grouped");
    }
    let by_resource = |resource: &str| {
        first
            .iter()
            .find(|d| d.body["groupLabels"]["resource.resourceName"] == resource)
            .unwrap_or_else(|| panic!("{backend:?}: no digest for {resource}: {first:#?}"))
            .body
            .clone()
    };
    let db1 = by_resource("db-1");
    assert_eq!(
        subjects(&db1),
        ["a OPEN", "c OPEN", "d CLOSE"],
        "{backend:?}"
    );
    assert_eq!(
        (db1["firing"].as_u64(), db1["resolved"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(subjects(&by_resource("db-2")), ["b OPEN"]);
    let digested_at = first.iter().map(|d| d.at).max().unwrap();

    // After a digest, what comes waits for the group interval.
    tocsin.send(&alert_event("e", "db-1", None)).await;
    let second = hook.wait_for("the next digest", |r| r.len() == 3).await;
    let waited = second[2].at.duration_since(digested_at);
    assert!(
        waited >= Duration::from_millis(2_800),
        "{backend:?}: the next digest came {waited:?} after the first"
    );
    assert_eq!(subjects(&second[2].body), ["e OPEN"]);

    // Every member's attempt is recorded, as delivered.
    for id in ids {
        let attempts = tocsin
            .page(&format!(
                "/tocsin/v1/events/{}/attempts",
                id.as_str().unwrap()
            ))
            .await;
        let delivered = attempts["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "grouped" && a["outcome"] == "delivered");
        assert!(delivered, "{backend:?}: {attempts}");
    }

    // Each member's timeline marks its attempt as a digest's: the group and how many events
    // the digest named. The plain STORE attempt beside it says nothing of digests.
    for (key, resource, events) in [("a", "db-1", 3), ("c", "db-1", 3), ("b", "db-2", 1)] {
        let lines = timeline_lines(&tocsin, key, "delivery", "grouped").await;
        assert_eq!(lines.len(), 1, "{backend:?}: {key}: {lines:#?}");
        assert_eq!(lines[0]["outcome"], "delivered");
        assert_eq!(lines[0]["attempt"], 1);
        assert_eq!(
            lines[0]["digest"],
            json!({"group": resource_group(resource), "events": events}),
            "{backend:?}: {key}"
        );
        let plain = timeline_lines(&tocsin, key, "delivery", "store").await;
        assert_eq!(plain.len(), 1, "{backend:?}: {key}: {plain:#?}");
        assert_eq!(plain[0].get("digest"), None, "{backend:?}: {plain:#?}");
    }
    let e = timeline_lines(&tocsin, "e", "delivery", "grouped").await;
    assert_eq!(
        e[0]["digest"],
        json!({"group": resource_group("db-1"), "events": 1}),
        "{backend:?}: the next digest held e alone"
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_one_digest_per_group_after_its_wait_and_interval_embedded_and_sqlite() {
    webhook_gets_one_digest_per_group(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_one_digest_per_group_after_its_wait_and_interval_rabbitmq_and_postgres() {
    webhook_gets_one_digest_per_group(Backend::Rabbitmq).await;
}

async fn a_firing_alert_is_repeated_until_it_resolves(backend: Backend) {
    // The first repeat fails: it is not retried, and the next comes an interval later.
    let mut requests = 0;
    let hook = Destination::start(move |_| {
        requests += 1;
        if requests == 2 {
            503
        } else {
            200
        }
    })
    .await;
    let action = json!({"name": "grouped", "type": "WEB_HOOK", "state": "ENABLED", "properties": {
        "destination": hook.url, "groupBy": "resource.resourceName",
        "groupWaitSeconds": "1", "groupIntervalSeconds": "2", "repeatIntervalSeconds": "3"}});
    let tocsin = start(backend, &routing(action)).await;
    let opened = tocsin.send(&alert_event("a", "db-1", None)).await["id"].clone();
    let repeated = hook
        .wait_for("the digest, then two repeats", |r| r.len() == 3)
        .await;
    assert_eq!(subjects(&repeated[0].body), ["a OPEN"], "{backend:?}");
    for (earlier, repeat) in repeated.iter().zip(&repeated[1..]) {
        assert_eq!(
            subjects(&repeat.body),
            ["a OPEN"],
            "{backend:?}: the same alert again"
        );
        let after = repeat.at.duration_since(earlier.at);
        assert!(
            after >= Duration::from_millis(2_800),
            "{backend:?}: repeated {after:?} after the one before"
        );
    }

    // Resolved: the CLOSE goes out, and no repeat follows it.
    let closed_id = tocsin.send(&alert_event("a", "db-1", Some("CLOSE"))).await["id"].clone();
    let closed = hook.wait_for("the CLOSE", |r| r.len() >= 4).await;
    assert_eq!(subjects(&closed[3].body), ["a CLOSE"], "{backend:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        hook.received().len(),
        4,
        "{backend:?}: nothing repeated after the CLOSE"
    );

    // The timeline: each digest's delivery of its event, then each repeat as a line of its
    // own — the failed one and the delivered one — naming the repeated event.
    let deliveries = timeline_lines(&tocsin, "a", "delivery", "grouped").await;
    let delivered: Vec<(&Value, &Value, &Value)> = deliveries
        .iter()
        .map(|l| (&l["eventId"], &l["outcome"], &l["attempt"]))
        .collect();
    assert_eq!(
        delivered,
        [
            (&opened, &json!("delivered"), &json!(1)),
            (&closed_id, &json!("delivered"), &json!(1))
        ],
        "{backend:?}: the repeats changed no delivery: {deliveries:#?}"
    );
    let digest = json!({"group": resource_group("db-1"), "events": 1});
    assert!(
        deliveries.iter().all(|l| l["digest"] == digest),
        "{backend:?}: {deliveries:#?}"
    );
    let repeats = timeline_lines(&tocsin, "a", "repeat", "grouped").await;
    let outcomes: Vec<(&Value, &Value, &Value)> = repeats
        .iter()
        .map(|l| (&l["eventId"], &l["outcome"], &l["code"]))
        .collect();
    assert_eq!(
        outcomes,
        [
            (&opened, &json!("failed"), &json!(503)),
            (&opened, &json!("delivered"), &Value::Null)
        ],
        "{backend:?}: {repeats:#?}"
    );
    let repeat_digest = json!({"group": resource_group("db-1"), "events": 1, "repeat": true});
    for line in &repeats {
        assert_eq!(line["digest"], repeat_digest, "{backend:?}: {line}");
        assert!(line["durationMs"].is_i64(), "{backend:?}: {line}");
    }
    assert!(
        repeats[0]["atMs"].as_i64() > deliveries[0]["atMs"].as_i64(),
        "{backend:?}: in order"
    );
    let undelivered = tocsin.page("/cf/consumer/v1/undelivered-events").await;
    assert_eq!(
        undelivered["responseMetadata"]["totalResultsCount"], 0,
        "{backend:?}: a failed repeat leaves nothing undelivered"
    );
    let metrics = tocsin.metrics().await;
    assert!(
        metrics.contains("tocsin_digest_repeats_total{"),
        "{backend:?}: repeats are counted"
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_is_repeated_until_it_resolves_embedded_and_sqlite() {
    a_firing_alert_is_repeated_until_it_resolves(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_is_repeated_until_it_resolves_rabbitmq_and_postgres() {
    a_firing_alert_is_repeated_until_it_resolves(Backend::Rabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_an_incident_channel_or_by_an_unknown_property_is_refused_when_saved() {
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    const PATH: &str = "/cf/configuration/v1/configuration";
    let before = tocsin.page(PATH).await;
    for (action, expected) in [
        (
            json!({"name": "incidents", "type": "ORACLE_B2C_INCIDENT", "state": "ENABLED",
                "properties": {"siteUrl": "https://site.example", "groupBy": "resource.resourceName"}}),
            "`properties.groupBy`",
        ),
        (
            json!({"name": "chat", "type": "SLACK", "state": "ENABLED",
                "properties": {"webhookUrl": "https://hooks.slack.com/services/T/B/x", "groupBy": "resource.nope"}}),
            "`properties.groupBy`",
        ),
        (
            json!({"name": "chat", "type": "SLACK", "state": "ENABLED",
                "properties": {"webhookUrl": "https://hooks.slack.com/services/T/B/x", "messagesPerMinute": "-1"}}),
            "`properties.messagesPerMinute`",
        ),
        (
            json!({"name": "chat", "type": "SLACK", "state": "ENABLED",
                "properties": {"webhookUrl": "https://hooks.slack.com/services/T/B/x", "repeatIntervalSeconds": "0"}}),
            "`properties.repeatIntervalSeconds`",
        ),
        (
            json!({"name": "chat", "type": "SLACK", "state": "ENABLED",
                "properties": {"webhookUrl": "https://hooks.slack.com/services/T/B/x",
                    "groupIntervalSeconds": "60", "repeatIntervalSeconds": "30"}}),
            "`properties.repeatIntervalSeconds`",
        ),
    ] {
        let body = json!({"actions": [action]});
        let response = tocsin.post(PATH, &body).send().await.unwrap();
        let message = error_message(response, 400).await;
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
    assert_eq!(tocsin.page(PATH).await, before, "nothing changed");
}

async fn a_group_waiting_at_a_kill_is_delivered_once_after_restart(backend: Backend) {
    const EVENTS: usize = 5;
    let hook = Destination::start(|_| 200).await;
    let action = json!({"name": "grouped", "type": "WEB_HOOK", "state": "ENABLED", "properties": {
        "destination": hook.url, "groupBy": "eventType", "groupWaitSeconds": "4"}});
    let mut tocsin = start(backend, &routing(action)).await;
    for n in 0..EVENTS {
        tocsin.send(&storm_event(n)).await;
    }
    // Every job is in its group (and every event stored) before the kill.
    let started = Instant::now();
    while !tocsin.metrics().await.contains(&format!(
        "tocsin_delivery_events_held_total{{reason=\"group\"}} {EVENTS}"
    )) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{backend:?}: not held in time\n{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tocsin.kill();
    assert!(
        hook.received().is_empty(),
        "{backend:?}: sent before its wait"
    );
    tocsin.launch().await;
    let received = hook
        .wait_for("the group after the restart", |r| !r.is_empty())
        .await;
    assert_eq!(
        received[0].body["events"].as_array().map(Vec::len),
        Some(EVENTS)
    );
    // Once: nothing more comes, though the old claim and the redelivered jobs had the chance.
    tokio::time::sleep(Duration::from_secs(3)).await;
    tocsin.wait_until_idle().await;
    assert_eq!(hook.received().len(), 1, "{backend:?}: delivered once");
    assert_eq!(named(&hook.received(), EVENTS), vec![1; EVENTS]);
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", EVENTS as u64)
        .await;
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_waiting_at_a_kill_is_delivered_once_after_restart_embedded_and_sqlite() {
    a_group_waiting_at_a_kill_is_delivered_once_after_restart(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_waiting_at_a_kill_is_delivered_once_after_restart_rabbitmq_and_postgres() {
    a_group_waiting_at_a_kill_is_delivered_once_after_restart(Backend::Rabbitmq).await;
}

/// A digest that cannot be delivered: every event in it is recorded undelivered with the
/// reason, handed to the action's fallback, and reported by a delivery-status event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_digest_records_falls_back_and_reports_every_event() {
    const EVENTS: usize = 3;
    let refusing = Destination::start(|_| 400).await;
    let configuration = json!({
        "actions": [
            {"name": "grouped", "type": "WEB_HOOK", "state": "ENABLED",
             "enableDeliveryStatus": true, "fallbackAction": "rescue",
             "properties": {"destination": refusing.url, "groupBy": "eventType", "groupWaitSeconds": "1"}},
            {"name": "rescue", "type": "STORE", "state": "ENABLED"},
            {"name": "store", "type": "STORE", "state": "ENABLED"}
        ],
        "conditions": [
            {"name": "disks", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "DiskFull"},
            {"name": "statuses", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "TocsinDeliveryStatus"}
        ],
        "subscriptions": [
            {"name": "disks", "state": "ENABLED", "conditions": ["disks"], "actions": ["grouped", "store"]},
            {"name": "statuses", "state": "ENABLED", "conditions": ["statuses"], "actions": ["store"]}
        ]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &configuration, &[]).await;
    for n in 0..EVENTS {
        tocsin.send(&storm_event(n)).await;
    }
    let undelivered = tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?include=FAILURE_REASON",
            EVENTS as u64,
        )
        .await;
    for event in undelivered["results"].as_array().unwrap() {
        let reasons = &event["metadata"]["failureReasons"];
        assert_eq!(reasons[0]["code"], 400, "{event}");
    }
    assert_eq!(refusing.received().len(), 1, "one digest for the three");
    // The originals in `store`, again in `rescue` (the fallback), and their status events.
    let matched = tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 3 * EVENTS as u64)
        .await;
    let statuses = matched["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["eventType"] == "TocsinDeliveryStatus")
        .filter(|e| e["tags"]["tocsin:deliveryStatus"] == "UNDELIVERED")
        .count();
    assert_eq!(statuses, EVENTS);
    tocsin.shutdown().await;
}
