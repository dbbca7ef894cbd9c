//! The circuit breaker end to end through the real binary: a 5xx, a 429 and a timeout in a
//! row open a destination's circuit; the next event is then refused at once with 908, without
//! a request, and recorded as undelivered; `tocsin_delivery_circuits` shows the circuit open,
//! then half open after the cooldown; the probe that succeeds closes it.

use crate::common::{event, route_everything_to, webhook, Backend, Destination, Reply, Tocsin};
use crate::observability::scrape_until;
use serde_json::{json, Value};
use std::time::Duration;

/// The attempt of `event_id`'s one action, once it is on record as undelivered.
async fn undelivered_reasons(tocsin: &Tocsin, count: u64, event_id: &str) -> Vec<Value> {
    let page = tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?include=FAILURE_REASON",
            count,
        )
        .await;
    let record = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == event_id)
        .unwrap_or_else(|| panic!("{event_id} is not undelivered: {page:#}"))
        .clone();
    record["metadata"]["failureReasons"]
        .as_array()
        .unwrap()
        .clone()
}

fn circuits(state: &str) -> String {
    format!("tocsin_delivery_circuits{{state=\"{state}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_a_429_and_a_timeout_open_the_circuit_and_a_probe_closes_it() {
    // Each event's subject says how the destination answers it.
    let destination = Destination::start_replying(|body| match body["subject"].as_str() {
        Some("503") => Reply {
            status: 503,
            hold: Duration::ZERO,
        },
        Some("429") => Reply {
            status: 429,
            hold: Duration::ZERO,
        },
        // Longer than the action's timeout: no answer in time.
        Some("slow") => Reply {
            status: 200,
            hold: Duration::from_secs(3),
        },
        _ => Reply {
            status: 200,
            hold: Duration::ZERO,
        },
    })
    .await;
    let config = route_everything_to(vec![webhook(
        "hook",
        &destination.url,
        json!({"retryMaxAttempts": "1", "timeoutSeconds": "1"}),
    )]);
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &config,
        &[
            ("TOCSIN_CHANNELS_CIRCUIT_FAILURE_THRESHOLD", "3"),
            // Long enough to see the circuit open on a slow machine, short enough to wait out.
            ("TOCSIN_CHANNELS_CIRCUIT_COOLDOWN_MS", "4000"),
        ],
    )
    .await;
    let send = |subject: &str, key: &str| {
        let mut e = event("Breaker", key);
        e["subject"] = json!(subject);
        e
    };
    // Three failures in a row, one at a time: each counts toward the threshold.
    for (n, (subject, code)) in [("503", 503), ("429", 429), ("slow", 905)]
        .into_iter()
        .enumerate()
    {
        let accepted = tocsin.send(&send(subject, &format!("failing-{n}"))).await;
        let reasons =
            undelivered_reasons(&tocsin, n as u64 + 1, accepted["id"].as_str().unwrap()).await;
        assert_eq!(reasons.len(), 1, "{reasons:#?}");
        assert_eq!(reasons[0]["code"], code, "{subject}: {reasons:#?}");
    }
    assert_eq!(destination.received().len(), 3);

    // Open: the next event fails at once with 908 and no request.
    let refused = tocsin.send(&send("fine", "refused")).await;
    let reasons = undelivered_reasons(&tocsin, 4, refused["id"].as_str().unwrap()).await;
    assert_eq!(reasons[0]["code"], 908, "{reasons:#?}");
    assert!(
        reasons[0]["reason"]
            .as_str()
            .unwrap()
            .contains("circuit open after 3 failures in a row"),
        "{reasons:#?}"
    );
    assert!(
        !destination
            .received()
            .iter()
            .any(|r| r.body["id"] == refused["id"]),
        "an open circuit sent the request"
    );
    let open = scrape_until(&tocsin, "the circuit open", |s| {
        s.value(&circuits("open")) == 1.0
    })
    .await;
    assert_eq!(open.value(&circuits("half_open")), 0.0);
    // After the cooldown: half open, and its one probe succeeds and closes the circuit.
    scrape_until(&tocsin, "the circuit half open after the cooldown", |s| {
        s.value(&circuits("half_open")) == 1.0 && s.value(&circuits("open")) == 0.0
    })
    .await;
    let probe = tocsin.send(&send("fine", "probe")).await;
    destination
        .wait_for("the probe", |r| {
            r.iter().any(|x| x.body["id"] == probe["id"])
        })
        .await;
    scrape_until(&tocsin, "the circuit closed by the probe", |s| {
        s.value(&circuits("half_open")) == 0.0 && s.value(&circuits("open")) == 0.0
    })
    .await;
    let attempts = tocsin
        .page(&format!(
            "/tocsin/v1/events/{}/attempts",
            probe["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        attempts["attempts"][0]["outcome"], "delivered",
        "{attempts}"
    );
    tocsin.shutdown().await;
}
