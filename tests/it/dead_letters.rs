//! Dead letters end to end, on both backends: a delivery job the worker cannot record (its
//! records file refuses the write, as a full disk would) comes back after a growing delay,
//! reaches the dead letters at `bus.delivery_limit`, shows in `tocsin_dead_letters` and the
//! API, and is delivered once replayed after the cause is fixed. Then the CLI, against a
//! running server.

use crate::common::{cli, route_everything_to, webhook, Backend, Destination, Tocsin, BACKENDS};
use crate::observability::scrape_until;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Makes the records file refuse undelivered records, as a full disk would.
fn refuse_undelivered_records(records: &Path) {
    let conn = rusqlite::Connection::open(records).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER disk_full BEFORE INSERT ON records WHEN NEW.status = 'UNDELIVERED' \
         BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
    )
    .unwrap();
}

fn fix_records(records: &Path) {
    let conn = rusqlite::Connection::open(records).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch("DROP TRIGGER disk_full").unwrap();
}

/// Tocsin with one webhook to `destination` that gives up at the first failure, and a
/// delivery limit of `limit`.
async fn start(backend: Backend, destination: &Destination, limit: &str) -> Tocsin {
    let hook = webhook("hook", &destination.url, json!({"retryMaxAttempts": "1"}));
    let tocsin = Tocsin::start(
        backend,
        &route_everything_to(vec![hook]),
        &[("TOCSIN_BUS_DELIVERY_LIMIT", limit)],
    )
    .await;
    refuse_undelivered_records(&tocsin.records_db());
    tocsin
}

/// An event that is its own alert (`ans:sourceEventId` = `subject`): a job the worker hands
/// back gives up its ordering lane, so that its redelivery does not wait behind itself.
fn keyed_event(subject: &str) -> Value {
    let mut event = crate::common::event("HighCPU", subject);
    event["subject"] = json!(subject);
    event
}

/// Waits until the dead-letters API lists `count` dead letters; returns the page.
async fn wait_for_dead_letters(tocsin: &Tocsin, count: u64) -> Value {
    let started = Instant::now();
    loop {
        let page = tocsin.page("/tocsin/v1/dead-letters").await;
        if page["responseMetadata"]["totalResultsCount"] == count {
            return page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{count} dead letters expected: {page}\n{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn poison_backs_off_dies_and_replays(backend: Backend) {
    let destination = Destination::start(|_| 400).await;
    let tocsin = start(backend, &destination, "3").await;
    tocsin.send(&keyed_event("poison-1")).await;

    // Each delivery fails at the destination, gives up, and cannot record that: handed back,
    // it comes again after 1 s, then after 2 s, and the third time it is dead.
    let attempts = destination
        .wait_for("three attempts", |r| r.len() == 3)
        .await;
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(950), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1950), "{gaps:?}");
    let page = wait_for_dead_letters(&tocsin, 1).await;
    let letter = &page["results"][0];
    assert_eq!(
        (
            &letter["queue"],
            &letter["reason"],
            &letter["deliveries"],
            &letter["payload"]["action"],
            &letter["payload"]["event"]["subject"],
        ),
        (
            &json!("deliveries"),
            &json!("delivery_limit"),
            &json!(3),
            &json!("hook"),
            &json!("poison-1")
        ),
        "{letter}"
    );
    scrape_until(&tocsin, "one dead letter", |s| {
        s.value("tocsin_dead_letters") == 1.0
    })
    .await;
    assert_eq!(destination.received().len(), 3, "nothing retries it now");

    // The operator fixes the disk and the destination, and replays it.
    fix_records(&tocsin.records_db());
    destination.answer(200);
    let id = letter["id"].as_str().unwrap();
    let replay = tocsin
        .post(&format!("/tocsin/v1/dead-letters/{id}/replay"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(
        replay.json::<Value>().await.unwrap(),
        json!({"replayed": 1})
    );
    let delivered = destination
        .wait_for("the replayed job delivered", |r| r.len() == 4)
        .await;
    assert_eq!(delivered[3].status, 200);
    assert_eq!(
        delivered[3].body["subject"], "poison-1",
        "{:?}",
        delivered[3].body
    );
    wait_for_dead_letters(&tocsin, 0).await;
    scrape_until(&tocsin, "no dead letters", |s| {
        s.value("tocsin_dead_letters") == 0.0
    })
    .await;
    let again = tocsin
        .post(&format!("/tocsin/v1/dead-letters/{id}/replay"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    assert!(again.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains(id));
    tocsin.shutdown().await;
}

#[tokio::test]
async fn a_poison_job_backs_off_reaches_the_dead_letters_and_replays_on_both_backends() {
    for backend in BACKENDS {
        poison_backs_off_dies_and_replays(backend).await;
    }
}

#[tokio::test]
async fn the_cli_lists_and_replays_dead_letters_of_a_running_tocsin() {
    let destination = Destination::start(|_| 400).await;
    // A limit of 1: the first hand-back is already past it.
    let tocsin = start(Backend::Embedded, &destination, "1").await;
    for id in ["cli-1", "cli-2", "cli-3"] {
        tocsin.send(&keyed_event(id)).await;
    }
    wait_for_dead_letters(&tocsin, 3).await;

    let (ok, stdout, stderr) = cli(&tocsin, &["dead-letters", "list", "--page-size", "2"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("3 dead letters"), "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    let results = listed["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "one page of two");
    let newest = results[0]["id"].as_str().unwrap();

    fix_records(&tocsin.records_db());
    destination.answer(200);
    let (ok, _, stderr) = cli(&tocsin, &["dead-letters", "replay", newest]);
    assert!(ok && stderr.contains("replayed 1"), "{stderr}");
    destination
        .wait_for("the replayed one delivered", |r| {
            r.iter().filter(|r| r.status == 200).count() == 1
        })
        .await;
    let (ok, _, stderr) = cli(&tocsin, &["dead-letters", "replay", "--all"]);
    assert!(ok && stderr.contains("replayed 2"), "{stderr}");
    destination
        .wait_for("all delivered", |r| {
            r.iter().filter(|r| r.status == 200).count() == 3
        })
        .await;

    let (ok, _, stderr) = cli(&tocsin, &["dead-letters", "replay", newest]);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (ok, _, stderr) = cli(&tocsin, &["dead-letters", "replay"]);
    assert!(!ok && stderr.contains("--all"), "an id or --all: {stderr}");
    let bad = tocsin
        .get("/tocsin/v1/dead-letters?pageSize=0")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("pageSize"));
    tocsin.shutdown().await;
}
