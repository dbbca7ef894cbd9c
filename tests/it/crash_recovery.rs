//! Accepted means durably queued: a SIGKILL after the 202s and before routing finishes loses
//! nothing and duplicates nothing, on both backends — each event is stored once and reaches its
//! webhook at least once. And the converse: an event the bus cannot take (the broker gone) is
//! answered 503 and not queued at all.

use crate::common::{
    count_records, event, route_everything_to, webhook, Backend, BrokerProxy, Destination, Tocsin,
};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const EVENTS: usize = 400;

async fn kill_after_accept_then_recover(backend: Backend) {
    // Each event goes to the store and to a webhook that answers slowly, one request at a
    // time, until the kill: by then events already recorded by the store still wait for their
    // webhook request, which the records alone would not show lost.
    let destination = Destination::start_holding(Duration::from_millis(100), |_| 200).await;
    let configuration = route_everything_to(vec![
        json!({"name": "to-store", "type": "STORE", "state": "ENABLED"}),
        webhook("hook", &destination.url, json!({})),
    ]);
    // A small router batch makes routing lag behind a burst, so the kill lands mid-routing.
    let mut tocsin = Tocsin::start(
        backend,
        &configuration,
        &[
            ("TOCSIN_ROUTER_PREFETCH", "1"),
            ("TOCSIN_CHANNELS_MAX_IN_FLIGHT_PER_DESTINATION", "1"),
        ],
    )
    .await;
    let accepted: Vec<String> = futures::stream::iter(0..EVENTS)
        .map(|i| {
            let tocsin = &tocsin;
            async move {
                let accepted = tocsin.send(&event("Crash", &format!("crash-{i}"))).await;
                accepted["id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    tocsin.kill();
    let stored_before_kill = count_records(&tocsin.records_db(), "MATCHED");
    let requested_before_kill = destination.received().len();
    destination.answer(200);
    assert!(
        (stored_before_kill as usize) < EVENTS,
        "{backend:?}: the kill must interrupt routing (all {EVENTS} were already stored)"
    );

    tocsin.launch().await;
    let mut stored = BTreeSet::new();
    let mut page = 0;
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", EVENTS as u64)
        .await;
    loop {
        let found = tocsin
            .page(&format!(
                "/cf/consumer/v1/matched-events?pageSize=1000&page={page}"
            ))
            .await;
        let results = found["results"].as_array().unwrap();
        if results.is_empty() {
            break;
        }
        for result in results {
            assert!(
                stored.insert(result["id"].as_str().unwrap().to_owned()),
                "stored twice: {result}"
            );
        }
        page += 1;
    }
    let accepted: BTreeSet<String> = accepted.into_iter().collect();
    assert_eq!(
        stored, accepted,
        "{backend:?}: every accepted event stored exactly once"
    );
    // And every one reached the webhook, at least once (a request in flight at the kill may
    // be sent again).
    let started = Instant::now();
    let requests = loop {
        let received = destination.received();
        let reached: BTreeSet<String> = received
            .iter()
            .filter_map(|r| r.body["id"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = accepted.difference(&reached).collect();
        if missing.is_empty() {
            break received.len();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{backend:?}: {} of {EVENTS} accepted events never reached the webhook, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(3)],
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "{backend:?}: {stored_before_kill} of {EVENTS} stored and {requested_before_kill} sent \
         to the webhook before the kill, all after recovery; {requests} webhook requests"
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_routing_loses_nothing_on_the_embedded_backend() {
    kill_after_accept_then_recover(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_routing_loses_nothing_on_rabbitmq() {
    kill_after_accept_then_recover(Backend::Rabbitmq).await;
}

/// Waits until `/readyz` reports the bus `state` (`ok` or `unavailable`).
async fn wait_for_bus(tocsin: &Tocsin, state: &str) {
    let started = Instant::now();
    loop {
        let response = tocsin.http.get(tocsin.url("/readyz")).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        if body["checks"]["bus"] == state {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the bus is not {state} after 30 s: {body}\n{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn source_event_id(body: &Value) -> &str {
    body["tags"]["ans:sourceEventId"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_broker_cannot_take_gets_503_and_is_not_queued() {
    let destination = Destination::start(|_| 200).await;
    // Tocsin reaches RabbitMQ through a relay the test can cut: the broker goes away for this
    // process only, not for the other tests sharing it.
    let broker = BrokerProxy::start().await;
    let configuration = route_everything_to(vec![
        json!({"name": "to-store", "type": "STORE", "state": "ENABLED"}),
        webhook("hook", &destination.url, json!({})),
    ]);
    let tocsin = Tocsin::start(
        Backend::Rabbitmq,
        &configuration,
        &[
            ("TOCSIN_BUS_URL", &broker.uri),
            // The default, stated: shorter, the start itself (whose configuration import is
            // shared over the bus) fails now and then on a busy machine.
            ("TOCSIN_BUS_PUBLISH_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    const SINGLE: &str = "/cf/producer/v1/resource-events";
    // Through the relay, events flow.
    tocsin.send(&event("BusDown", "before-the-cut")).await;
    destination
        .wait_for("the event sent before the cut", |r| {
            r.iter()
                .any(|x| source_event_id(&x.body) == "before-the-cut")
        })
        .await;

    broker.cut();
    wait_for_bus(&tocsin, "unavailable").await;
    let started = Instant::now();
    let response = tocsin
        .post(SINGLE, &event("BusDown", "refused"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not accepted") && message.contains("retry"),
        "the answer says the event was not taken and to retry: {body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "nothing but the message: {body}"
    );
    // It waited for the broker to come back before refusing (bus.publish_timeout_ms).
    assert!(
        waited >= Duration::from_millis(4500),
        "refused after {waited:?}"
    );

    broker.restore();
    wait_for_bus(&tocsin, "ok").await;
    tocsin.send(&event("BusDown", "after-the-return")).await;
    // Events are routed in the order they were queued, so once a later one is delivered and
    // stored, a refused one that had been queued after all would have been too.
    destination
        .wait_for("the event sent after the broker came back", |r| {
            r.iter()
                .any(|x| source_event_id(&x.body) == "after-the-return")
        })
        .await;
    tocsin
        .wait_for_count(
            "/cf/consumer/v1/matched-events?sourceEventId=after-the-return",
            1,
        )
        .await;
    for api in ["matched-events", "undelivered-events"] {
        let page = tocsin
            .page(&format!("/cf/consumer/v1/{api}?sourceEventId=refused"))
            .await;
        assert_eq!(
            page["responseMetadata"]["totalResultsCount"], 0,
            "{api}: the refused event was recorded: {page}"
        );
    }
    // (The one before the cut may come twice, if the cut beat its ack: at least once.)
    let received = destination.received();
    assert!(
        received
            .iter()
            .all(|r| source_event_id(&r.body) != "refused"),
        "the refused event was delivered: {received:#?}"
    );
    tocsin.shutdown().await;
}
