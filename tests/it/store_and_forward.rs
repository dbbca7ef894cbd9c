//! Store and forward, end to end through the real binary against a real local destination:
//! retries on schedule until the destination recovers, undelivered records with every reason,
//! the fallback after `fallbackTime`, per-key ordering while an earlier event is retried, a
//! SIGKILL while events wait for their next attempt, a SIGTERM while deliveries are in flight,
//! redelivery after a fix, and retention.

use crate::common::{event, route_everything_to, webhook, Backend, Destination, Tocsin, BACKENDS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn key(body: &Value) -> String {
    body["tags"]["ans:sourceEventId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A rule that fails the first `n` requests for each key with `status`, then accepts.
fn fail_first(n: usize, status: u16) -> impl FnMut(&Value) -> u16 + Send {
    let mut seen: HashMap<String, usize> = HashMap::new();
    move |body| {
        let count = seen.entry(key(body)).or_default();
        *count += 1;
        if *count <= n {
            status
        } else {
            200
        }
    }
}

async fn attempts(tocsin: &Tocsin, event_id: &str) -> Vec<Value> {
    let page = tocsin
        .page(&format!("/tocsin/v1/events/{event_id}/attempts"))
        .await;
    page["attempts"].as_array().unwrap().clone()
}

const FAST_RETRIES: &str = r#"{"retryInitialDelayMs": "300", "retryMaxDelayMs": "300"}"#;

async fn retries_until_the_destination_recovers(backend: Backend) {
    let destination = Destination::start(fail_first(3, 503)).await;
    let config = route_everything_to(vec![webhook(
        "hook",
        &destination.url,
        serde_json::from_str(FAST_RETRIES).unwrap(),
    )]);
    let tocsin = Tocsin::start(backend, &config, &[]).await;
    let accepted = tocsin.send(&event("Flaky", "flaky-1")).await;
    let received = destination
        .wait_for("four attempts", |r| r.len() >= 4)
        .await;
    // Once nothing is left on the bus, no fifth attempt can come.
    tocsin.wait_until_idle().await;
    let received_all = destination.received();
    assert_eq!(
        received_all.len(),
        4,
        "{backend:?}: delivered once, after 3 failures: {received_all:#?}"
    );
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 503, 200]
    );
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // 300 ms ± 20 % jitter: never before the schedule (and well before the 30 s default).
        assert!(
            gap >= Duration::from_millis(230) && gap < Duration::from_secs(5),
            "{backend:?}: gap {gap:?}"
        );
    }
    let id = accepted["id"].as_str().unwrap();
    let attempts = attempts(&tocsin, id).await;
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["retrying", "retrying", "retrying", "delivered"],
        "{attempts:#?}"
    );
    assert_eq!(attempts[0]["code"], 503);
    assert_eq!(
        attempts
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let undelivered = tocsin.page("/cf/consumer/v1/undelivered-events").await;
    assert_eq!(undelivered["responseMetadata"]["totalResultsCount"], 0);
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_the_destination_recovers_on_both_backends() {
    for backend in BACKENDS {
        retries_until_the_destination_recovers(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_exhausted_retries_end_undelivered_with_every_reason() {
    let refusing = Destination::start(|_| 400).await;
    let failing = Destination::start(|_| 500).await;
    let config = route_everything_to(vec![
        webhook("refused", &refusing.url, json!({})),
        webhook(
            "failing",
            &failing.url,
            json!({"retryMaxAttempts": "3", "retryInitialDelayMs": "100", "retryMaxDelayMs": "100"}),
        ),
    ]);
    let tocsin = Tocsin::start(Backend::Embedded, &config, &[]).await;
    let accepted = tocsin.send(&event("Doomed", "doomed-1")).await;
    let page = tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?include=FAILURE_REASON",
            2,
        )
        .await;
    let by_action: HashMap<&str, &Value> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metadata"]["affectedActionId"].as_str().unwrap(),
                &r["metadata"]["failureReasons"],
            )
        })
        .collect();
    let refused = by_action["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "a 400 is permanent: one attempt");
    assert_eq!(refused[0]["code"], 400);
    let failing_reasons = by_action["failing"].as_array().unwrap();
    assert_eq!(
        failing_reasons.len(),
        3,
        "every attempt's reason: {failing_reasons:#?}"
    );
    assert!(failing_reasons
        .iter()
        .all(|r| r["code"] == 500 && r["timestamp"].as_i64().unwrap() > 0));
    assert_eq!(refusing.received().len(), 1);
    assert_eq!(failing.received().len(), 3);
    assert_eq!(
        attempts(&tocsin, accepted["id"].as_str().unwrap())
            .await
            .len(),
        4
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_receives_the_event_after_fallback_time() {
    let primary = Destination::start(|_| 503).await;
    let backup = Destination::start(|_| 200).await;
    let mut main = webhook(
        "primary",
        &primary.url,
        json!({"retryInitialDelayMs": "200", "retryMaxDelayMs": "200"}),
    );
    main["fallbackAction"] = json!("backup");
    main["fallbackTime"] = json!(1);
    let config = json!({
        "actions": [main, webhook("backup", &backup.url, json!({}))],
        "subscriptions": [{"name": "s", "state": "ENABLED", "actions": ["primary"]}]
    });
    let tocsin = Tocsin::start(Backend::Embedded, &config, &[]).await;
    let accepted = tocsin.send(&event("Outage", "outage-1")).await;
    let got = backup
        .wait_for("the fallback delivery", |r| !r.is_empty())
        .await;
    let first_try = primary.received()[0].at;
    let waited = got[0].at - first_try;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "fallback after {waited:?}"
    );
    assert_eq!(got[0].body["id"], accepted["id"]);
    assert!(primary.received().len() >= 3, "retried until fallbackTime");
    let page = tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?include=FAILURE_REASON",
            1,
        )
        .await;
    assert_eq!(
        page["results"][0]["metadata"]["affectedActionId"],
        "primary"
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_never_overtakes_its_open_while_the_open_is_retried() {
    // The destination fails the first two attempts of each alert's open.
    let mut opens: HashMap<String, usize> = HashMap::new();
    let destination = Destination::start(move |body| {
        if body["subject"] == "open" {
            let count = opens.entry(key(body)).or_default();
            *count += 1;
            if *count <= 2 {
                return 503;
            }
        }
        200
    })
    .await;
    let config = route_everything_to(vec![webhook(
        "hook",
        &destination.url,
        json!({"retryInitialDelayMs": "300", "retryMaxDelayMs": "300"}),
    )]);
    for backend in BACKENDS {
        let tocsin = Tocsin::start(backend, &config, &[]).await;
        let before = destination.received().len();
        let key = format!("alarm-{backend:?}");
        for subject in ["open", "repeat", "close"] {
            let mut e = event("Alarm", &key);
            e["subject"] = json!(subject);
            tocsin.send(&e).await;
        }
        // An unrelated event is not held up behind the retried open.
        let mut other = event("Alarm", &format!("other-{backend:?}"));
        other["subject"] = json!("unrelated");
        tocsin.send(&other).await;
        let received = destination
            .wait_for("open, repeat and close delivered", |r| {
                r[before..]
                    .iter()
                    .filter(|x| x.status == 200 && x.body["subject"] != "unrelated")
                    .count()
                    >= 3
            })
            .await;
        let ours: Vec<&Received> = received[before..].iter().collect();
        let delivered: Vec<&str> = ours
            .iter()
            .filter(|r| r.status == 200 && key_of(r) == key)
            .map(|r| r.body["subject"].as_str().unwrap())
            .collect();
        assert_eq!(delivered, ["open", "repeat", "close"], "{backend:?}");
        let unrelated = ours
            .iter()
            .position(|r| r.body["subject"] == "unrelated")
            .unwrap();
        let open_delivered = ours
            .iter()
            .position(|r| r.status == 200 && r.body["subject"] == "open")
            .unwrap();
        assert!(
            unrelated < open_delivered,
            "{backend:?}: the unrelated event waited for the retried open"
        );
        let failed_opens = ours.iter().filter(|r| r.status == 503).count();
        assert_eq!(failed_opens, 2, "{backend:?}: the open was retried");
        tocsin.shutdown().await;
    }
}

use crate::common::Received;

fn key_of(received: &Received) -> String {
    key(&received.body)
}

async fn sigkill_while_waiting_for_a_retry(backend: Backend) {
    let destination = Destination::start(fail_first(1, 503)).await;
    let config = route_everything_to(vec![webhook(
        "hook",
        &destination.url,
        // Long enough that every retry is still waiting when the process dies, on a slow machine.
        json!({"retryInitialDelayMs": "4000", "retryMaxDelayMs": "4000"}),
    )]);
    let mut tocsin = Tocsin::start(backend, &config, &[]).await;
    let keys: Vec<String> = (0..5).map(|i| format!("wait-{backend:?}-{i}")).collect();
    for key in &keys {
        tocsin.send(&event("Waiting", key)).await;
    }
    let before_the_kill = destination
        .wait_for("a first failed attempt of each", |r| r.len() >= keys.len())
        .await;
    tocsin.kill();
    assert!(
        before_the_kill.iter().all(|r| r.status != 200),
        "{backend:?}: a retry ran before the kill, so nothing waited: {before_the_kill:#?}"
    );
    tocsin.launch().await;
    let received = destination
        .wait_for("every event delivered after the restart", |r| {
            r.iter().filter(|x| x.status == 200).count() >= keys.len()
        })
        .await;
    // Once nothing is left on the bus, no second copy can come.
    tocsin.wait_until_idle().await;
    let delivered: Vec<String> = destination
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(key_of)
        .collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        sorted, expected,
        "{backend:?}: each waiting event delivered exactly once: {received:#?}"
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_events_wait_for_their_next_attempt_loses_none_on_both_backends() {
    for backend in BACKENDS {
        sigkill_while_waiting_for_a_retry(backend).await;
    }
}

/// How long the slow destination holds each request: long enough for a SIGTERM to land while
/// deliveries are in flight.
const HOLD: Duration = Duration::from_secs(2);

async fn sigterm_while_delivering(backend: Backend) {
    let destination = Destination::start_holding(HOLD, |_| 200).await;
    let config = route_everything_to(vec![webhook("hook", &destination.url, json!({}))]);
    // Four jobs in progress at most: at the SIGTERM some are in flight, some wait in memory
    // behind their lane's head (taken, unacked), and the rest are still queued.
    let mut tocsin = Tocsin::start(backend, &config, &[("TOCSIN_DELIVERY_PREFETCH", "4")]).await;
    let lane = format!("lane-{backend:?}");
    // (event id, key), in the order accepted.
    let mut sent: Vec<(String, String)> = Vec::new();
    let keys = [0, 1, 2].map(|i| format!("alone-{backend:?}-{i}"));
    for key in [&lane, &lane, &lane].into_iter().chain(&keys) {
        let accepted = tocsin.send(&event("Slow", key)).await;
        sent.push((accepted["id"].as_str().unwrap().to_owned(), key.clone()));
    }
    let id_of = |r: &Received| r.body["id"].as_str().unwrap().to_owned();
    destination
        .wait_for("a first delivery in flight", |r| !r.is_empty())
        .await;
    let signalled = Instant::now();
    let status = tokio::task::block_in_place(|| tocsin.terminate());
    let exited = Instant::now();
    assert!(status.success(), "{backend:?}: {status}\n{}", tocsin.log());
    assert!(tocsin.log().contains("stopped cleanly"), "{}", tocsin.log());
    // The requests that had arrived by the SIGTERM were still unanswered (held for HOLD), and
    // the process exited only after their answers.
    let in_flight: Vec<Received> = destination
        .received()
        .into_iter()
        .filter(|r| r.at <= signalled && signalled < r.at + HOLD)
        .collect();
    assert!(!in_flight.is_empty());
    for r in &in_flight {
        assert!(
            exited >= r.at + HOLD,
            "{backend:?}: exited {:?} after the SIGTERM, before the answer to {}",
            exited - signalled,
            id_of(r)
        );
    }
    let in_flight: Vec<String> = in_flight.iter().map(id_of).collect();
    let stopping = exited - signalled;

    tocsin.launch().await;
    destination
        .wait_for("every accepted event delivered after the restart", |r| {
            sent.iter().all(|(id, _)| r.iter().any(|x| &id_of(x) == id))
        })
        .await;
    // A request that arrived may have been dropped before its answer; delivered is what
    // Tocsin recorded as such.
    let started = Instant::now();
    for (id, _) in &sent {
        loop {
            let attempts = attempts(&tocsin, id).await;
            if attempts.iter().any(|a| a["outcome"] == "delivered") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{backend:?}: {id} never recorded as delivered: {attempts:#?}\n{}",
                tocsin.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let received = destination.received();
    // What arrived when, relative to the SIGTERM, for the messages below.
    let timeline: Vec<String> = received
        .iter()
        .map(|r| {
            let ms = |d: Duration| d.as_millis() as i64;
            let at = ms(r.at.saturating_duration_since(signalled))
                - ms(signalled.saturating_duration_since(r.at));
            format!("{at:+} ms {} {}", key_of(r), id_of(r))
        })
        .collect();
    // Nothing lost, nothing unfinished acked: the wait above.
    let copies = |id: &String| received.iter().filter(|r| &id_of(r) == id).count();
    let again: Vec<&String> = in_flight.iter().filter(|id| copies(id) > 1).collect();
    // Finished in hand: what was in flight at the SIGTERM was answered and acked before the
    // exit, so it does not come again. A copy would come first after the restart (ahead of the
    // queued events, and of its lane's later events, which have arrived by now), so there is
    // no need to wait longer for one. (On RabbitMQ the consumer keeps its channel open until
    // the jobs in hand are settled: acks on a closed channel would be lost.)
    assert!(
        again.is_empty(),
        "{backend:?}: in flight at the SIGTERM and delivered again: {again:?}\n{timeline:#?}\n{}",
        tocsin.log()
    );
    // Nor does a job finished before the exit come back at all (its ack was sent in time).
    assert!(
        !tocsin
            .log()
            .contains("delivered before, by a copy of this job"),
        "{backend:?}: a job finished before the exit came back after the restart\n{}",
        tocsin.log()
    );
    // The lane's events came in the order they were accepted, across the restart.
    let lane_ids: Vec<&String> = sent
        .iter()
        .filter(|(_, key)| key == &lane)
        .map(|(id, _)| id)
        .collect();
    let mut first_arrivals: Vec<String> = Vec::new();
    for r in received.iter().filter(|r| key_of(r) == lane) {
        if !first_arrivals.contains(&id_of(r)) {
            first_arrivals.push(id_of(r));
        }
    }
    assert_eq!(
        first_arrivals.iter().collect::<Vec<_>>(),
        lane_ids,
        "{backend:?}: the lane's order"
    );
    eprintln!(
        "{backend:?}: {} in flight at the SIGTERM, stopped in {stopping:?}, {} of them delivered \
         again after the restart, {} requests for {} events",
        in_flight.len(),
        again.len(),
        received.len(),
        sent.len()
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_delivering_finishes_what_is_in_flight_and_loses_nothing_on_the_embedded_backend(
) {
    sigterm_while_delivering(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_delivering_finishes_what_is_in_flight_and_loses_nothing_on_rabbitmq() {
    sigterm_while_delivering(Backend::Rabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_after_the_destination_is_fixed() {
    let destination = Destination::start(|_| 500).await;
    let config = route_everything_to(vec![webhook(
        "hook",
        &destination.url,
        json!({"retryMaxAttempts": "2", "retryInitialDelayMs": "100", "retryMaxDelayMs": "100"}),
    )]);
    let tocsin = Tocsin::start(Backend::Embedded, &config, &[]).await;
    let first = tocsin.send(&event("Broken", "broken-1")).await;
    let second = tocsin.send(&event("Broken", "broken-2")).await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 2)
        .await;
    destination.answer(200);

    let id = first["id"].as_str().unwrap();
    let response = tocsin
        .post(
            &format!("/tocsin/v1/undelivered-events/{id}/redeliver"),
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["redelivered"], 1);
    destination
        .wait_for("the redelivered event", |r| {
            r.iter()
                .any(|x| x.status == 200 && x.body["id"] == first["id"])
        })
        .await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;
    assert_eq!(
        attempts(&tocsin, id).await.len(),
        3,
        "two failed attempts, then the redelivery"
    );

    // All of an action's undelivered events since a time.
    let response = tocsin
        .post(
            "/tocsin/v1/undelivered-events/redeliver?action=hook&since=0",
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["redelivered"], 1);
    destination
        .wait_for("the second event", |r| {
            r.iter()
                .any(|x| x.status == 200 && x.body["id"] == second["id"])
        })
        .await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 0)
        .await;

    let missing = tocsin
        .post("/tocsin/v1/undelivered-events/nope/redeliver", &json!({}))
        .send()
        .await
        .unwrap();
    let message = crate::common::error_message(missing, 404).await;
    assert!(message.contains("`nope`"), "{message}");
    let no_action = tocsin
        .post("/tocsin/v1/undelivered-events/redeliver", &json!({}))
        .send()
        .await
        .unwrap();
    let message = crate::common::error_message(no_action, 400).await;
    assert!(message.contains("`action`"), "{message}");
    tocsin.shutdown().await;
}

#[tokio::test]
async fn old_records_are_purged() {
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &crate::common::store_configuration("Old"),
        &[
            ("TOCSIN_DELIVERY_RETENTION_HOURS", "0"),
            ("TOCSIN_DELIVERY_RETENTION_SWEEP_SECONDS", "1"),
        ],
    )
    .await;
    let accepted = tocsin.send(&event("Old", "old-1")).await;
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 1)
        .await;
    assert_eq!(
        attempts(&tocsin, accepted["id"].as_str().unwrap())
            .await
            .len(),
        1
    );
    let started = std::time::Instant::now();
    let count = |page: Value| {
        page["responseMetadata"]["totalResultsCount"]
            .as_u64()
            .unwrap()
    };
    while count(tocsin.page("/cf/consumer/v1/matched-events").await) > 0
        || !attempts(&tocsin, accepted["id"].as_str().unwrap())
            .await
            .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "records and attempts purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tocsin.shutdown().await;
}

/// Polls the metrics until `done` holds for the text of a scrape.
async fn metrics_until(tocsin: &Tocsin, what: &str, done: impl Fn(&str) -> bool) {
    let started = Instant::now();
    loop {
        let text = tocsin.metrics().await;
        if done(&text) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}:\n{text}\n{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn order_across_a_crash(backend: Backend) {
    // The alert's open fails once, then waits 3 s for its retry; its later events wait behind it.
    let mut failed_open = false;
    let destination = Destination::start(move |body| {
        if body["subject"] == "open" && !failed_open {
            failed_open = true;
            return 503;
        }
        200
    })
    .await;
    let config = route_everything_to(vec![webhook(
        "hook",
        &destination.url,
        json!({"retryInitialDelayMs": "3000", "retryMaxDelayMs": "3000"}),
    )]);
    let mut tocsin = Tocsin::start(backend, &config, &[]).await;
    let key = format!("crash-lane-{backend:?}");
    for subject in ["open", "repeat", "close"] {
        let mut e = event("Alarm", &key);
        e["subject"] = json!(subject);
        tocsin.send(&e).await;
    }
    destination
        .wait_for("the open's failed first attempt", |r| !r.is_empty())
        .await;
    // The later events are off the queue (parked behind the open) and the open waits for its
    // retry: what the crash below finds.
    metrics_until(
        &tocsin,
        "the later events parked, the open waiting",
        |text| {
            text.contains("tocsin_queue_depth{queue=\"deliveries\"} 0\n")
                && text.contains("tocsin_delivery_retry_backlog 1\n")
        },
    )
    .await;
    assert_eq!(
        destination.received().len(),
        1,
        "{backend:?}: an event overtook its retried open before the crash"
    );
    tocsin.kill();
    tocsin.launch().await;
    destination
        .wait_for("open, repeat and close delivered after the restart", |r| {
            r.iter().filter(|x| x.status == 200).count() >= 3
        })
        .await;
    tocsin.wait_until_idle().await;
    let received: Vec<(u16, String)> = destination
        .received()
        .iter()
        .map(|r| (r.status, r.body["subject"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(u16, String)> = [
        (503, "open"),
        (200, "open"),
        (200, "repeat"),
        (200, "close"),
    ]
    .map(|(s, subject)| (s, subject.to_owned()))
    .into();
    assert_eq!(
        received,
        expected,
        "{backend:?}: in order across the crash, each once\n{}",
        tocsin.log()
    );
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_a_crash_while_later_events_wait_on_both_backends() {
    for backend in BACKENDS {
        order_across_a_crash(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_more_undelivered_records_than_one_batch_in_one_sweep() {
    // 1,200 undelivered events (two and a half batches of 500), kept while retention is long.
    const EVENTS: usize = 1200;
    let mut tocsin = Tocsin::start(
        Backend::Embedded,
        &crate::common::store_configuration("Kept"),
        &[],
    )
    .await;
    for chunk in 0..EVENTS / 200 {
        let batch: Vec<Value> = (0..200)
            .map(|i| event("Unsupported", &format!("purge-{chunk}-{i}")))
            .collect();
        let response = tocsin
            .post("/cf/producer/v1/resource-events-batch", &json!(batch))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?pageSize=1",
            EVENTS as u64,
        )
        .await;
    // Records are dated in seconds: once this second is over, all of them are older than a
    // retention of zero hours.
    let recorded = clock::now_epoch_seconds();
    while clock::now_epoch_seconds() <= recorded {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One sweep at start, the next an hour later: everything must go in the first.
    tocsin.kill();
    tocsin.set_env("TOCSIN_DELIVERY_RETENTION_HOURS", "0");
    tocsin.set_env("TOCSIN_DELIVERY_RETENTION_SWEEP_SECONDS", "3600");
    tocsin.launch().await;
    let started = Instant::now();
    loop {
        let page = tocsin
            .page("/cf/consumer/v1/undelivered-events?pageSize=1")
            .await;
        let left = page["responseMetadata"]["totalResultsCount"]
            .as_u64()
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{left} undelivered records left by the first sweep\n{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_one_event_carries_the_same_webhook_id() {
    let destination = Destination::start(fail_first(2, 503)).await;
    let mut properties: Value = serde_json::from_str(FAST_RETRIES).unwrap();
    properties["signingSecret"] = json!("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let config = route_everything_to(vec![webhook("hook", &destination.url, properties)]);
    let tocsin = Tocsin::start(Backend::Embedded, &config, &[]).await;
    let first = tocsin.send(&event("Signed", "signed-1")).await;
    let second = tocsin.send(&event("Signed", "signed-2")).await;
    let received = destination
        .wait_for("both delivered after two failures each", |r| {
            r.iter().filter(|x| x.status == 200).count() == 2
        })
        .await;
    let ids_of = |event: &Value| -> Vec<String> {
        received
            .iter()
            .filter(|r| r.body["id"] == event["id"])
            .map(|r| {
                let id = r.headers.get("webhook-id").expect("a signed request");
                id.to_str().unwrap().to_owned()
            })
            .collect()
    };
    let (first_ids, second_ids) = (ids_of(&first), ids_of(&second));
    assert_eq!(first_ids.len(), 3, "{received:#?}");
    assert!(
        first_ids.iter().all(|id| id == &first_ids[0]),
        "one id for every attempt: {first_ids:?}"
    );
    assert_eq!(second_ids.len(), 3);
    assert!(second_ids.iter().all(|id| id == &second_ids[0]));
    assert_ne!(first_ids[0], second_ids[0], "another event, another id");
    tocsin.shutdown().await;
}
