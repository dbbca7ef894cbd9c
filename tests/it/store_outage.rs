//! PostgreSQL goes away mid-load: producers still get 202 (the queue is durable), delivery
//! pauses — `/readyz` and `tocsin_store_available` say so — and when the database answers
//! again every event is delivered once and recorded once.

use crate::common::{
    event, relayed_postgres_schema, route_everything_to, webhook, Backend, Destination, Tocsin,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_mid_load_loses_nothing_and_delivers_nothing_twice() {
    let (url, database) = relayed_postgres_schema().await;
    let hook = Destination::start(|_| 200).await;
    let routing = route_everything_to(vec![
        webhook("hook", &hook.url, json!({})),
        json!({"name": "store", "type": "STORE", "state": "ENABLED"}),
    ]);
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &routing,
        &crate::shared_store::shared_store(&url),
    )
    .await;
    let mut accepted = Vec::new();
    for i in 0..10 {
        accepted.push(tocsin.send(&event("Outage", &format!("before-{i}"))).await);
    }
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events?pageSize=1", 10)
        .await;

    database.cut();
    // Producers are not refused while the store is gone: events wait on the queue.
    for i in 0..30 {
        accepted.push(tocsin.send(&event("Outage", &format!("during-{i}"))).await);
    }
    let readiness = wait_until(
        &tocsin,
        "the store to be reported unavailable",
        |t| async move {
            let ready = t.get("/readyz").send().await.unwrap();
            let status = ready.status();
            let body: Value = ready.json().await.unwrap();
            (status == 503 && body["checks"]["records"] == "unavailable").then_some(body)
        },
    )
    .await;
    assert_eq!(readiness["checks"]["bus"], "ok", "{readiness}");
    wait_until(&tocsin, "tocsin_store_available 0", |t| async move {
        (store_available(t).await == 0.0).then_some(())
    })
    .await;
    // Paused, not failing through its events: a moment later most are still undelivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_cut = hook.received().len();
    assert!(
        while_cut < 40,
        "delivery went on without its store: {while_cut} delivered"
    );

    database.restore();
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events?pageSize=1", 40)
        .await;
    let received = hook
        .wait_for("every event delivered", |r| r.len() >= 40)
        .await;
    // Nothing more comes: no event is delivered twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
    for request in hook.received() {
        *per_event
            .entry(request.body["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(per_event.len(), 40, "{} requests", received.len());
    for event in &accepted {
        assert!(per_event.contains_key(event["id"].as_str().unwrap()));
    }
    let undelivered = tocsin
        .page("/cf/consumer/v1/undelivered-events?pageSize=1")
        .await;
    assert_eq!(undelivered["responseMetadata"]["totalResultsCount"], 0);
    assert_eq!(store_available(&tocsin).await, 1.0);
    let ready = tocsin.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

async fn store_available(tocsin: &Tocsin) -> f64 {
    let text = tocsin.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix("tocsin_store_available "))
        .unwrap_or_else(|| panic!("tocsin_store_available is not exported:\n{text}"))
        .parse()
        .unwrap()
}

/// Polls `check` until it gives a value, for at most 30 s.
async fn wait_until<'a, T, F>(tocsin: &'a Tocsin, what: &str, check: impl Fn(&'a Tocsin) -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check(tocsin).await {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}\n{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
