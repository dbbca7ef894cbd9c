//! Accepted means durably queued: a SIGKILL after the 202s and before routing finishes loses
//! nothing and duplicates nothing, on both backends.

use crate::common::{count_records, event, store_configuration, Backend, Tocsin};
use futures::StreamExt;
use std::collections::BTreeSet;

const EVENTS: usize = 400;

async fn kill_after_accept_then_recover(backend: Backend) {
    // A small router batch makes routing lag behind a burst, so the kill lands mid-routing.
    let mut tocsin = Tocsin::start(
        backend,
        &store_configuration("Crash"),
        &[("TOCSIN_ROUTER_PREFETCH", "1")],
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
    eprintln!(
        "{backend:?}: {stored_before_kill} of {EVENTS} stored before the kill, all after recovery"
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
