//! `tocsin alerts …` against a running Tocsin, through the real binary: `list` shows the alert
//! (table and JSON, filters applied), `show` its timeline, `ack` with a comment and `resolve`
//! change it (read back through the API), an act on a resolved alert or on an unknown key
//! fails with the API's message. Then the alert metrics say exactly that: one alert resolved,
//! one time to acknowledge and one to resolve, each act counted once on the `api` channel —
//! and on a shared PostgreSQL store, another process counts the same alerts. On the embedded
//! bus with SQLite, and on RabbitMQ with PostgreSQL.

use crate::common::{cli, event, postgres_schema, route_everything_to, Backend, Tocsin};
use crate::observability::scrape_until;
use crate::shared_store::shared_store;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The alert `key` and its timeline through the API, once it is in `state`.
async fn wait_for_state(tocsin: &Tocsin, key: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let response = tocsin
            .get(&format!("/tocsin/v1/alerts/{key}"))
            .send()
            .await
            .unwrap();
        let found: Value = response.json().await.unwrap_or(Value::Null);
        if found["alert"]["state"] == state {
            return found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "alert {key} never became {state}: {found}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `tocsin alerts ARGS`, which must succeed; returns its stdout.
fn alerts(tocsin: &Tocsin, args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("alerts")
        .chain(args.iter().copied())
        .collect();
    let (ok, stdout, stderr) = cli(tocsin, &args);
    assert!(ok, "tocsin {args:?} failed:\n{stderr}");
    stdout
}

/// Runs `tocsin alerts ARGS`, which must fail; returns its stderr.
fn alerts_failing(tocsin: &Tocsin, args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("alerts")
        .chain(args.iter().copied())
        .collect();
    let (ok, stdout, stderr) = cli(tocsin, &args);
    assert!(!ok, "tocsin {args:?} succeeded:\n{stdout}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acts_on_alerts_and_the_metrics_count_it_embedded_and_sqlite() {
    let tocsin = acted_on_through_the_cli(Backend::Embedded, &[]).await;
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acts_on_alerts_and_the_metrics_count_it_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    let tocsin = acted_on_through_the_cli(Backend::Rabbitmq, &shared_store(&url)).await;
    // Another process on the store counts the same alerts, and none of the acts: the process
    // that folded them counted them.
    let sibling = tocsin.sibling().await;
    let scrape = scrape_until(&sibling, "the sibling counts the resolved alert", |s| {
        s.value("tocsin_alerts{severity=\"FATAL\",state=\"resolved\"}") == 1.0
    })
    .await;
    assert_eq!(
        scrape.value("tocsin_alert_acts_total{channel=\"api\",kind=\"acknowledge\"}"),
        0.0
    );
    assert_eq!(
        scrape.value("tocsin_alert_time_to_resolve_seconds_count"),
        0.0
    );
    sibling.shutdown().await;
    tocsin.shutdown().await;
}

/// Opens an alert on `backend` (with `env`), lists, shows and acts on it through the CLI, and
/// checks the metrics of the process that folded the acts; returns that process.
async fn acted_on_through_the_cli(backend: Backend, env: &[(&str, &str)]) -> Tocsin {
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    let tocsin = Tocsin::start(backend, &route_everything_to(vec![store]), env).await;
    let mut open = event("DiskFull", "disk-db-1");
    open["subject"] = json!("Disk full on db-1");
    open["severity"] = json!("FATAL");
    tocsin.send(&open).await;
    wait_for_state(&tocsin, "disk-db-1", "firing").await;
    tocsin.wait_until_idle().await;

    let table = alerts(&tocsin, &["list"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in ["KEY", "STATE", "SEVERITY", "EVENTS", "LAST SEEN", "SUBJECT"] {
        assert!(header.contains(column), "{table}");
    }
    let row: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect();
    assert_eq!(row[..4], ["disk-db-1", "firing", "FATAL", "1"], "{table}");
    assert!(row[4].ends_with(" UTC"), "{table}");
    assert_eq!(row[5], "Disk full on db-1", "{table}");
    let listed: Value = serde_json::from_str(&alerts(
        &tocsin,
        &[
            "list",
            "--state",
            "firing",
            "--severity",
            "fatal",
            "-q",
            "DISK",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(
        listed["responseMetadata"]["totalResultsCount"], 1,
        "{listed}"
    );
    assert_eq!(listed["results"][0]["key"], "disk-db-1", "{listed}");
    let none = alerts(&tocsin, &["list", "--state", "resolved"]);
    assert_eq!(none.lines().count(), 1, "only the header: {none}");

    let shown = alerts(&tocsin, &["show", "disk-db-1"]);
    assert!(shown.contains("state:        firing"), "{shown}");
    assert!(
        shown.contains("  event     Disk full on db-1 (event "),
        "the event in the timeline: {shown}"
    );
    assert!(
        shown.contains("to store (attempt 1, event ") && shown.contains("): delivered"),
        "its delivery in the timeline: {shown}"
    );
    let found: Value =
        serde_json::from_str(&alerts(&tocsin, &["show", "disk-db-1", "--output", "json"])).unwrap();
    assert_eq!(found["alert"]["key"], "disk-db-1", "{found}");
    assert_eq!(found["timeline"].as_array().unwrap().len(), 2, "{found}");

    let acked = alerts(&tocsin, &["ack", "disk-db-1", "-c", "on it"]);
    assert!(
        acked.starts_with("acknowledged disk-db-1: now acknowledged (event "),
        "{acked}"
    );
    let found = wait_for_state(&tocsin, "disk-db-1", "acknowledged").await;
    let act = found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["kind"] == "action")
        .unwrap_or_else(|| panic!("no act in the timeline: {found}"));
    assert_eq!(
        (&act["action"], &act["who"], &act["comment"]),
        (&json!("acknowledge"), &json!("admin"), &json!("on it")),
        "{found}"
    );
    let again = alerts(&tocsin, &["ack", "disk-db-1"]);
    assert_eq!(again, "disk-db-1 is already acknowledged: nothing done\n");

    let resolved = alerts(
        &tocsin,
        &["resolve", "disk-db-1", "--comment", "disk swapped"],
    );
    assert!(
        resolved.starts_with("resolved disk-db-1: now resolved"),
        "{resolved}"
    );
    wait_for_state(&tocsin, "disk-db-1", "resolved").await;

    let refused = alerts_failing(&tocsin, &["comment", "disk-db-1", "-c", "too late"]);
    assert!(
        refused.contains("409 Conflict: alert `disk-db-1` is resolved"),
        "{refused}"
    );
    // A key with a slash and a space reaches the API as one path segment.
    let unknown = alerts_failing(&tocsin, &["unack", "no/such key"]);
    assert!(
        unknown.contains("404 Not Found: alert `no/such key` does not exist"),
        "{unknown}"
    );

    // The gauge is read at scrape time; the rest was counted as the acts were folded.
    let scrape = scrape_until(&tocsin, "one FATAL alert resolved", |s| {
        s.value("tocsin_alerts{severity=\"FATAL\",state=\"resolved\"}") == 1.0
    })
    .await;
    for (series, expected) in [
        ("tocsin_alerts{severity=\"FATAL\",state=\"firing\"}", 0.0),
        (
            "tocsin_alerts{severity=\"WARNING\",state=\"resolved\"}",
            0.0,
        ),
        ("tocsin_alert_time_to_acknowledge_seconds_count", 1.0),
        ("tocsin_alert_time_to_resolve_seconds_count", 1.0),
        (
            "tocsin_alert_acts_total{channel=\"api\",kind=\"acknowledge\"}",
            1.0,
        ),
        (
            "tocsin_alert_acts_total{channel=\"api\",kind=\"resolve\"}",
            1.0,
        ),
        (
            "tocsin_alert_acts_total{channel=\"api\",kind=\"unacknowledge\"}",
            0.0,
        ),
        (
            "tocsin_alert_acts_total{channel=\"api\",kind=\"comment\"}",
            0.0,
        ),
    ] {
        assert_eq!(scrape.value(series), expected, "{series}");
    }
    tocsin
}
