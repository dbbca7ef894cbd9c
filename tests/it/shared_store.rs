//! One broker across processes: Tocsin processes on one RabbitMQ and one PostgreSQL database
//! (`store.backend = "postgres"`) share the records, so either one's consumer and attempts
//! APIs answer for every event, whichever process accepted and delivered it; and they share
//! the configuration, so that a change made through any of them routes the next event any of
//! them accepts, with nothing about it on the broker.

use crate::common::{event, postgres_schema, route_everything_to, Backend, Tocsin};
use crate::configuration_api::{call, change_then_send, type_condition, BASE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The key every process on one PostgreSQL store seals the configuration with.
pub const SHARED_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The settings of a process on the shared store at `url`.
pub fn shared_store(url: &str) -> [(&'static str, &str); 3] {
    [
        ("TOCSIN_STORE_BACKEND", "postgres"),
        ("TOCSIN_STORE_URL", url),
        ("TOCSIN_STORE_SECRET_KEY", SHARED_KEY),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_answer_for_every_record() {
    let url = postgres_schema().await;
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    let first = Tocsin::start(
        Backend::Rabbitmq,
        &route_everything_to(vec![store]),
        &shared_store(&url),
    )
    .await;
    let second = first.sibling().await;
    let mut accepted = Vec::new();
    for i in 0..40 {
        let to = if i % 2 == 0 { &first } else { &second };
        accepted.push(to.send(&event("Shared", &format!("shared-{i}"))).await);
    }
    for tocsin in [&first, &second] {
        let page = tocsin
            .wait_for_count("/cf/consumer/v1/matched-events?pageSize=100", 40)
            .await;
        let mut ids: Vec<&str> = page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<&str> = accepted.iter().map(|a| a["id"].as_str().unwrap()).collect();
        expected.sort_unstable();
        assert_eq!(ids, expected, "each process answers for all 40");
    }
    // An event accepted by the second process: its attempt, seen from the first.
    let id = accepted[1]["id"].as_str().unwrap();
    let attempts = first
        .page(&format!("/tocsin/v1/events/{id}/attempts"))
        .await;
    assert_eq!(
        attempts["attempts"][0]["outcome"], "delivered",
        "{attempts}"
    );
    second.shutdown().await;
    first.shutdown().await;
}

const CANARY: &str = "canary-shared-s3cret-51d2";

/// The events `tocsin` has routed since it started, matched or not.
async fn routed(tocsin: &Tocsin) -> u64 {
    let response = tocsin.get("/metrics").send().await.unwrap();
    let text = response.text().await.unwrap();
    ["matched", "unmatched"]
        .iter()
        .filter_map(|outcome| {
            let series = format!("tocsin_events_routed_total{{outcome=\"{outcome}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&series))?;
            line[series.len()..].parse::<u64>().ok()
        })
        .sum()
}

/// Takes what waits in the broker's queue of the latest configuration snapshot of `tocsin`'s
/// processes (each broadcast lands there too).
pub async fn take_latest_config_snapshot(tocsin: &Tocsin) -> Option<Vec<u8>> {
    let connection = lapin::Connection::connect(&crate::common::amqp_uri(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("{}.config.latest", tocsin.bus_prefix());
    let taken = lapin::options::BasicGetOptions { no_ack: true };
    let message = channel
        .basic_get(queue.as_str().into(), taken)
        .await
        .unwrap();
    message.map(|m| m.delivery.data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_change_on_one_process_routes_the_next_event_posted_to_another() {
    use reqwest::Method;
    let url = postgres_schema().await;
    let first = Tocsin::start(Backend::Rabbitmq, &Value::Null, &shared_store(&url)).await;
    let second = first.sibling().await;
    // An action with a secret, which must never reach the broker.
    let hook = json!({
        "name": "secret-hook", "type": "WEB_HOOK", "state": "ENABLED",
        "properties": {"destination": "https://example.com/hook", "username": "ops", "password": CANARY}
    });
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    for (body, path) in [
        (hook, "action"),
        (store, "action"),
        (type_condition("Round0"), "condition"),
    ] {
        let (status, answer) =
            call(&first, Method::POST, &format!("{BASE}/{path}"), Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    // The second process builds on what the first created, at once.
    let subscription =
        json!({"name": "shared", "state": "ENABLED", "conditions": ["type"], "actions": ["store"]});
    let (status, answer) = call(
        &second,
        Method::POST,
        &format!("{BASE}/subscription"),
        Some(subscription),
    )
    .await;
    assert_eq!(status, 201, "{answer}");

    let mut processes = vec![first, second];
    let mut sent = 0;
    for round in 1..=6 {
        if round == 4 {
            // A process started later catches up: it has the configuration as it is now.
            let third = processes[0].sibling().await;
            let (status, answer) =
                call(&third, Method::GET, &format!("{BASE}/condition/type"), None).await;
            assert_eq!(
                (status, &answer["propertyValue"]),
                (200, &json!("Round3")),
                "{answer}"
            );
            processes.push(third);
        }
        // Change through one process, and at once send one event of the old type and one of
        // the new to another: only the new one may be stored, whichever router takes it.
        let changer = &processes[round % processes.len()];
        let sender = &processes[(round + 1) % processes.len()];
        change_then_send(changer, sender, round).await;
        sent += 2;
        sender
            .wait_for_count("/cf/consumer/v1/matched-events", round as u64)
            .await;
    }
    // Every event has been routed (by one of the three) before the records are judged.
    let started = Instant::now();
    loop {
        let mut all = 0;
        for tocsin in &processes {
            all += routed(tocsin).await;
        }
        if all == sent {
            break;
        }
        assert!(all < sent, "{all} events routed, {sent} sent");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{all} of {sent} events routed after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = processes[2]
        .wait_for_count("/cf/consumer/v1/matched-events?pageSize=100", 6)
        .await;
    for result in page["results"].as_array().unwrap() {
        let source = result["tags"]["ans:sourceEventId"].as_str().unwrap();
        assert!(
            source.starts_with("new-"),
            "{source} was routed by a stale configuration"
        );
    }
    // Nothing about the configuration went over the broker: no snapshot at all, so no secret.
    assert_eq!(take_latest_config_snapshot(&processes[0]).await, None);
    for tocsin in &processes {
        assert!(!tocsin.log().contains(CANARY), "a secret in the log");
    }
    for tocsin in processes.into_iter().rev() {
        tocsin.shutdown().await;
    }
}

#[test]
fn a_postgres_store_without_a_shared_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = crate::common::serve_to_end(
        &dir.path().join("data"),
        &[
            ("TOCSIN_STORE_BACKEND", "postgres"),
            (
                "TOCSIN_STORE_URL",
                "postgres://tocsin:unused@127.0.0.1:1/tocsin",
            ),
        ],
    );
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("store.secret_key") && log.contains("every process"),
        "{log}"
    );
    assert!(
        !dir.path().join("data/secret.key").exists(),
        "no key generated for it"
    );
    // `tocsin check` says so before a start.
    let settings = dir.path().join("shared.toml");
    std::fs::write(&settings, "[store]\nbackend = \"postgres\"\n").unwrap();
    let checked = crate::common::run_to_end(
        crate::common::tocsin_command()
            .args(["check", "--settings"])
            .arg(&settings),
    );
    assert!(!checked.status.success());
    let report = String::from_utf8_lossy(&checked.stderr);
    assert!(report.contains("store.secret_key"), "{report}");
}
