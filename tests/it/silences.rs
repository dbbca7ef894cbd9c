//! Silences through the real binary: a silence holds back the matched events it covers (a
//! webhook stand-in receives none of them) while their alerts' timelines show them, marked with
//! the silence; an event it does not cover is delivered; the `CLOSE` of an alert delivered
//! before the silence still gets through; bad silences are refused naming the field; expiring
//! the silence early delivers each alert it held back that still fires exactly once, in its
//! latest state (checked once the bus is idle), and not the one that closed while silenced;
//! `tocsin_events_silenced_total` counts what was held back; a silence that ends on its own
//! releases what it held back at its end; the audit log names the API client who created and
//! expired the silence. On the embedded bus with SQLite,
//! and on RabbitMQ with PostgreSQL — there with a second process on the same store and broker,
//! which expires the silence the first one created. And `tocsin silence add|list|expire`
//! through the real binary.

use crate::common::{
    cli, error_message, event, postgres_schema, route_everything_to, webhook, Backend, Destination,
    Received, Tocsin,
};
use crate::shared_store::shared_store;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_holds_back_delivery_and_its_early_end_releases_embedded_and_sqlite() {
    silenced_and_released(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_holds_back_delivery_and_its_early_end_releases_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    silenced_and_released(Backend::Rabbitmq, &shared_store(&url)).await;
}

/// An event of alert `key` on `resource` at `severity`, with `status` (`ans:status`) if any.
fn alert_event(key: &str, resource: &str, severity: &str, status: Option<&str>) -> Value {
    let mut e = event("DiskFull", key);
    e["resource"]["resourceName"] = json!(resource);
    e["severity"] = json!(severity);
    e["subject"] = json!(format!("{key} {}", status.unwrap_or("OPEN")));
    if let Some(status) = status {
        e["tags"]["ans:status"] = json!(status);
    }
    e
}

/// What the stand-in received, as `subject`s (each names the alert key and its status).
fn subjects(received: &[Received]) -> Vec<String> {
    let mut subjects: Vec<String> = received
        .iter()
        .map(|r| r.body["subject"].as_str().unwrap().to_owned())
        .collect();
    subjects.sort();
    subjects
}

async fn delete(tocsin: &Tocsin, path: &str) -> reqwest::Response {
    tocsin
        .http
        .delete(tocsin.url(path))
        .basic_auth(&tocsin.user, Some(&tocsin.password))
        .send()
        .await
        .unwrap()
}

/// Creates the silence `body` (201 asserted) and returns it as answered.
async fn create(tocsin: &Tocsin, body: &Value) -> Value {
    let response = tocsin
        .post("/tocsin/v1/silences", body)
        .send()
        .await
        .unwrap();
    json_of(response, 201).await
}

async fn json_of(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{body}");
    body
}

/// The value of the series `name` in one scrape (0 if absent).
async fn metric(tocsin: &Tocsin, name: &str) -> f64 {
    tocsin
        .metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |value| value.parse().unwrap())
}

async fn silenced_and_released(backend: Backend, env: &[(&str, &str)]) {
    let hook = Destination::start(|_| 200).await;
    let routing = route_everything_to(vec![webhook("hook", &hook.url, json!({}))]);
    let tocsin = Tocsin::start(backend, &routing, env).await;

    // Two alerts on db-1 fire before the silence, and are delivered.
    tocsin
        .send(&alert_event("disk", "db-1", "FATAL", None))
        .await;
    tocsin
        .send(&alert_event("net", "db-1", "FATAL", None))
        .await;
    hook.wait_for("the alerts opened before the silence", |r| r.len() == 2)
        .await;

    // Bad silences are refused, naming the field.
    let matcher =
        json!({"propertyKey": "severity", "predicate": "EQUALS", "propertyValue": "FATAL"});
    let now = clock::now_epoch_millis();
    for (body, field) in [
        (
            json!({"matchers": [], "endsAtMs": now + 60_000}),
            "`matchers`",
        ),
        (
            json!({"matchers": [{"propertyKey": "severity", "predicate": "MATCHES_REGEX", "propertyValue": "(FATAL"}], "endsAtMs": now + 60_000}),
            "`matchers[0]`: `propertyValue` is not a valid regex",
        ),
        (
            json!({"matchers": [{"propertyKey": "severity", "predicate": "LOOKS_LIKE", "propertyValue": "x"}], "endsAtMs": now + 60_000}),
            "`matchers[0].predicate`",
        ),
        (
            json!({"matchers": [{"propertyKey": "colour", "predicate": "EQUALS", "propertyValue": "x"}], "endsAtMs": now + 60_000}),
            "`matchers[0]`: `propertyKey` `colour`",
        ),
        (
            json!({"matchers": [matcher], "startsAtMs": now + 120_000, "endsAtMs": now + 60_000}),
            "`endsAtMs`",
        ),
        (
            json!({"matchers": [matcher], "endsAtMs": now + 60_000, "comment": "x".repeat(1025)}),
            "`comment`",
        ),
    ] {
        let response = tocsin
            .post("/tocsin/v1/silences", &body)
            .send()
            .await
            .unwrap();
        let message = error_message(response, 400).await;
        assert!(message.contains(field), "{field}: {message}");
    }

    // On RabbitMQ with PostgreSQL a second process shares the store and the broker: it creates
    // and ends the silences, while the first one routes (its router hears of them only from
    // the store).
    let sibling = match backend {
        Backend::Rabbitmq => Some(tocsin.sibling().await),
        Backend::Embedded => None,
    };
    let other = sibling.as_ref().unwrap_or(&tocsin);

    // A pending silence, and the one that holds db-1's FATAL and ERROR events back for an hour.
    let pending =
        json!({"matchers": [matcher], "startsAtMs": now + 3_600_000, "endsAtMs": now + 7_200_000});
    let pending = create(other, &pending).await;
    assert_eq!(pending["state"], "pending");
    let silence = json!({
        "matchers": [
            {"propertyKey": "resource.resourceName", "predicate": "EQUALS", "propertyValue": "db-1"},
            {"propertyKey": "severity", "predicate": "MATCHES_REGEX", "propertyValue": "FATAL|ERROR"}
        ],
        "endsAtMs": now + 3_600_000,
        "comment": "disk swap"
    });
    let silence = create(other, &silence).await;
    assert_eq!(silence["state"], "active", "{silence}");
    assert_eq!(silence["createdBy"], other.user);
    assert_eq!(silence["comment"], "disk swap");
    let id = silence["id"].as_str().unwrap().to_owned();
    let one = tocsin.page(&format!("/tocsin/v1/silences/{id}")).await;
    assert_eq!(one["state"], "active", "{one}");
    let listed = tocsin.page("/tocsin/v1/silences?state=active").await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["results"][0]["id"], id.as_str());
    let listed = tocsin.page("/tocsin/v1/silences").await;
    assert_eq!(
        listed["results"][0]["id"],
        id.as_str(),
        "newest first: {listed}"
    );
    assert_eq!(listed["results"][1]["id"], pending["id"]);

    tocsin
        .send(&alert_event("disk", "db-1", "FATAL", Some("UPDATE")))
        .await; // held back
    tocsin
        .send(&alert_event("net", "db-1", "FATAL", Some("CLOSE")))
        .await; // gets through
    tocsin
        .send(&alert_event("memory", "db-1", "ERROR", None))
        .await; // held back
    tocsin
        .send(&alert_event("swap", "db-1", "FATAL", None))
        .await; // held back…
    tocsin
        .send(&alert_event("swap", "db-1", "FATAL", Some("CLOSE")))
        .await; // …and closed
    tocsin
        .send(&alert_event("cpu", "web-1", "FATAL", None))
        .await; // not covered
    tocsin
        .send(&alert_event("warn", "db-1", "WARNING", None))
        .await; // not covered
    tocsin.wait_until_idle().await;
    if let Some(sibling) = &sibling {
        sibling.wait_until_idle().await;
    }
    assert_eq!(
        subjects(&hook.received()),
        [
            "cpu OPEN",
            "disk OPEN",
            "net CLOSE",
            "net OPEN",
            "warn OPEN"
        ],
        "only what the silence does not cover, and the CLOSE of an alert delivered before"
    );
    let silenced = metric(&tocsin, "tocsin_events_silenced_total").await
        + match &sibling {
            Some(s) => metric(s, "tocsin_events_silenced_total").await,
            None => 0.0,
        };
    assert_eq!(silenced, 4.0, "disk UPDATE, memory, swap and its CLOSE");

    // The timelines show the events held back, marked with the silence.
    let disk = tocsin.page("/tocsin/v1/alerts/disk").await;
    let marks: Vec<(Value, Value)> = disk["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == "event")
        .map(|line| (line["status"].clone(), line["silencedBy"].clone()))
        .collect();
    assert_eq!(
        marks,
        [(Value::Null, Value::Null), (json!("UPDATE"), json!(id))],
        "{disk}"
    );
    let memory = tocsin.page("/tocsin/v1/alerts/memory").await;
    assert_eq!(memory["timeline"][0]["silencedBy"], id.as_str(), "{memory}");
    assert_eq!(memory["alert"]["state"], "firing");

    // Ending it early: each alert it held back that still fires is delivered once, in its
    // latest state; `swap` closed while silenced and stays quiet.
    let expired = json_of(
        delete(other, &format!("/tocsin/v1/silences/{id}")).await,
        200,
    )
    .await;
    assert_eq!(expired["state"], "expired", "{expired}");
    assert!(expired["endsAtMs"].as_i64().unwrap() <= clock::now_epoch_millis());
    let again = json_of(
        delete(other, &format!("/tocsin/v1/silences/{id}")).await,
        200,
    )
    .await;
    assert_eq!(
        again["endsAtMs"], expired["endsAtMs"],
        "expiring twice is once"
    );
    let message = error_message(delete(other, "/tocsin/v1/silences/nope").await, 404).await;
    assert!(message.contains("`nope`"), "{message}");
    // The audit log names the API client for each act, oldest last.
    let audit = tocsin.page(&format!("/tocsin/v1/audit?target={id}")).await;
    let acts: Vec<(&Value, &Value, &Value, &Value)> = audit["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (&e["who"], &e["via"], &e["action"], &e["outcome"]))
        .collect();
    let by = json!(other.user);
    assert_eq!(
        acts,
        [
            (
                &by,
                &json!("api"),
                &json!("expire-silence"),
                &json!("unchanged")
            ),
            (&by, &json!("api"), &json!("expire-silence"), &json!("done")),
            (&by, &json!("api"), &json!("silence"), &json!("done")),
        ],
        "{audit}"
    );
    let detail: Value =
        serde_json::from_str(audit["results"][2]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail, silence["matchers"], "the matchers: {audit}");
    hook.wait_for("the alerts released", |r| r.len() >= 7).await;
    tocsin.wait_until_idle().await;
    if let Some(sibling) = &sibling {
        sibling.wait_until_idle().await;
    }
    let received = hook.received();
    assert_eq!(
        subjects(&received),
        [
            "cpu OPEN",
            "disk OPEN",
            "disk UPDATE",
            "memory OPEN",
            "net CLOSE",
            "net OPEN",
            "warn OPEN"
        ],
        "each alert held back and still firing, once"
    );
    let released = received
        .iter()
        .find(|r| r.body["subject"] == "disk UPDATE")
        .unwrap();
    assert_eq!(released.body["tags"]["ans:sourceEventId"], "disk");
    let expired_list = tocsin.page("/tocsin/v1/silences?state=expired").await;
    assert_eq!(
        expired_list["results"][0]["id"],
        id.as_str(),
        "{expired_list}"
    );

    // Over: db-1's events are delivered again.
    tocsin
        .send(&alert_event("disk", "db-1", "FATAL", Some("CLOSE")))
        .await;
    hook.wait_for("the CLOSE after the silence", |r| r.len() == 8)
        .await;

    // A silence that ends on its own releases what it held back then.
    let short = json!({
        "matchers": [{"propertyKey": "resource.resourceName", "predicate": "EQUALS", "propertyValue": "db-2"}],
        "endsAtMs": clock::now_epoch_millis() + 1_500
    });
    let short = create(&tocsin, &short).await;
    tocsin
        .send(&alert_event("db2", "db-2", "FATAL", None))
        .await;
    let released = hook.wait_for("released at its end", |r| r.len() == 9).await;
    let ends_at_ms = short["endsAtMs"].as_i64().unwrap();
    assert!(
        clock::now_epoch_millis() >= ends_at_ms,
        "not before its end"
    );
    assert_eq!(released[8].body["subject"], "db2 OPEN");
    // Held back first (whenever the test got to look), then released as a copy.
    let db2 = tocsin.page("/tocsin/v1/alerts/db2").await;
    let events: Vec<&Value> = db2["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == "event")
        .collect();
    assert_eq!(events.len(), 2, "{db2}");
    assert_eq!(events[0]["silencedBy"], short["id"], "{db2}");
    assert_eq!(events[1]["silencedBy"], Value::Null, "{db2}");
    let released_at_ms = events[1]["atMs"].as_i64().unwrap();
    assert!(
        (ends_at_ms..ends_at_ms + 5_000).contains(&released_at_ms),
        "at its end, not at some later look: {db2}"
    );
    if let Some(sibling) = sibling {
        sibling.shutdown().await;
    }
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_expires_silences() {
    let hook = Destination::start(|_| 200).await;
    let routing = route_everything_to(vec![webhook("hook", &hook.url, json!({}))]);
    let tocsin = Tocsin::start(Backend::Embedded, &routing, &[]).await;
    let silence = |args: &[&str]| {
        let args: Vec<&str> = std::iter::once("silence")
            .chain(args.iter().copied())
            .collect();
        cli(&tocsin, &args)
    };
    let (ok, stdout, stderr) = silence(&[
        "add",
        "resource.resourceName=db-1",
        "severity=~FATAL|ERROR",
        "--for",
        "2h",
        "-c",
        "disk swap",
    ]);
    assert!(ok, "{stderr}");
    let id = stdout.split_whitespace().next().unwrap().to_owned();
    assert!(stdout.contains("(active until "), "{stdout}");
    let found = tocsin.page(&format!("/tocsin/v1/silences/{id}")).await;
    let ends = found["endsAtMs"].as_i64().unwrap() - found["startsAtMs"].as_i64().unwrap();
    assert!(
        (7_199_000..=7_200_000).contains(&ends),
        "two hours: {found}"
    );
    assert_eq!(found["matchers"][1]["predicate"], "MATCHES_REGEX");
    assert_eq!(found["comment"], "disk swap");

    let (ok, stdout, stderr) = silence(&["list", "--state", "active"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("ID "), "{stdout}");
    assert!(
        stdout.contains(&id) && stdout.contains("resource.resourceName=db-1 severity=~FATAL|ERROR"),
        "{stdout}"
    );
    let (ok, stdout, _) = silence(&["list", "--state", "expired", "--output", "json"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed["results"], json!([]));

    // The server's refusal, with its message.
    let (ok, _, stderr) = silence(&["add", "severity=~(", "--for", "1h"]);
    assert!(!ok);
    assert!(stderr.contains("not a valid regex"), "{stderr}");
    let (ok, _, stderr) = silence(&["add", "severity=FATAL"]);
    assert!(!ok, "--for or --until is required");
    assert!(stderr.contains("--for"), "{stderr}");

    let (ok, stdout, stderr) = silence(&["expire", &id]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with(&format!("{id} expired at ")), "{stdout}");
    let (ok, stdout, _) = silence(&["list", "--state", "expired"]);
    assert!(ok && stdout.contains(&id), "{stdout}");
    let (ok, _, stderr) = silence(&["expire", "nope"]);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    tocsin.shutdown().await;
}
