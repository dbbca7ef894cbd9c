//! Duplicates at the door, end to end on both stacks (the embedded bus with SQLite; RabbitMQ
//! with two processes on one PostgreSQL database, and two processes on PostgreSQL each with its
//! own embedded bus): a producer request repeated with the same
//! `Idempotency-Key` — to the same process or another — publishes once and gets the first
//! answer again (the same event ids, `Idempotent-Replayed: true`); the same key with another
//! body is 422; a refused request leaves its key free; without the header every request
//! publishes. An Alertmanager notification sent again unchanged publishes its alerts once, and
//! a resolution publishes. What was published is counted once the bus is idle: the records
//! (every event is stored) and `tocsin_events_deduplicated_total`.

use crate::common::{event, postgres_schema, Backend, Tocsin};
use crate::oci_notifications::store_everything;
use crate::shared_store::shared_store;
use crate::sources_cloudevents_alertmanager::{alert, webhook};
use serde_json::{json, Value};

const ONE: &str = "/cf/producer/v1/resource-events";
const BATCH: &str = "/neo/producer/v1/resource-events-batch";
const CLOUD_EVENT: &str =
    "/cf/producer/v1/resource-events?schema_definition=cloud_events&version=1.0";
const WEBHOOK: &str = "/alertmanager/v1/webhook";
const MATCHED: &str = "/cf/consumer/v1/matched-events";

/// An answer: status, whether it was replayed, body.
struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

async fn post(tocsin: &Tocsin, path: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut request = tocsin.post(path, body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = match response.headers().get("idempotent-replayed") {
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
        None => false,
    };
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {e}: {text}"));
    Answer {
        status,
        replayed,
        body,
    }
}

/// The ids of the events an answer reports.
fn ids(body: &Value) -> Vec<String> {
    let listed = match body {
        Value::Array(events) => events.clone(),
        _ if body.get("published").is_some() => body["published"].as_array().unwrap().clone(),
        _ => vec![body.clone()],
    };
    listed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that the processes have stored `expected` records: as many arrive (records are
/// written after their jobs are taken, so an idle bus alone is no proof under load), and no
/// more once every process's bus is idle.
async fn assert_stored(processes: &[&Tocsin], expected: u64) {
    processes[0].wait_for_count(MATCHED, expected).await;
    for tocsin in processes {
        tocsin.wait_until_idle().await;
    }
    let total = processes[0].page(MATCHED).await["responseMetadata"]["totalResultsCount"].as_u64();
    assert_eq!(total, Some(expected), "records once every bus is idle");
}

/// `tocsin_events_deduplicated_total{source}`, summed over the processes.
async fn deduplicated(processes: &[&Tocsin], source: &str) -> u64 {
    let series = format!("tocsin_events_deduplicated_total{{source=\"{source}\"}} ");
    let mut total = 0;
    for tocsin in processes {
        let text = tocsin.metrics().await;
        let line = text
            .lines()
            .find(|l| l.starts_with(&series))
            .unwrap_or_else(|| panic!("no {series}"));
        total += line[series.len()..].parse::<u64>().unwrap();
    }
    total
}

/// `first` and `second`, once if they are one process.
fn distinct<'a>(first: &'a Tocsin, second: &'a Tocsin) -> Vec<&'a Tocsin> {
    if std::ptr::eq(first, second) {
        vec![first]
    } else {
        vec![first, second]
    }
}

/// The ANS producer routes with `Idempotency-Key`; `first` and `second` may be one process.
async fn the_same_key_publishes_once(first: &Tocsin, second: &Tocsin) {
    let processes = distinct(first, second);
    let one = event("Idem", "idem-1");
    let answer = post(first, ONE, Some("key-1"), &one).await;
    assert_eq!(
        (answer.status, answer.replayed),
        (202, false),
        "{}",
        answer.body
    );
    let first_ids = ids(&answer.body);
    for (to, name) in [(first, "the same process"), (second, "another process")] {
        let again = post(to, ONE, Some("key-1"), &one).await;
        assert_eq!(again.status, 202, "{name}: {}", again.body);
        assert!(again.replayed, "{name}: replayed");
        assert_eq!(again.body, answer.body, "{name}: the first answer again");
    }

    // A batch under its own key (the key is per route: `key-1` there is another key).
    let batch = json!([event("Idem", "idem-2"), event("Idem", "idem-3")]);
    let answer = post(second, BATCH, Some("key-1"), &batch).await;
    assert_eq!(
        (answer.status, answer.replayed),
        (202, false),
        "{}",
        answer.body
    );
    let again = post(first, BATCH, Some("key-1"), &batch).await;
    assert!(again.replayed);
    assert_eq!(ids(&again.body), ids(&answer.body), "the same ids");
    assert_eq!(ids(&again.body).len(), 2);

    // The same key for another request: 422, naming the header; nothing published.
    let other = event("Idem", "idem-other");
    for to in [first, second] {
        let refused = post(to, ONE, Some("key-1"), &other).await;
        assert_eq!(refused.status, 422, "{}", refused.body);
        let message = refused.body["message"].as_str().unwrap();
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    // The same body as a CloudEvent is another request too.
    let refused = post(first, CLOUD_EVENT, Some("key-1"), &one).await;
    assert_eq!(refused.status, 422, "{}", refused.body);

    // A malformed key: 400 naming the header, nothing published.
    for bad in ["", "with space", &"k".repeat(256)] {
        let refused = post(first, ONE, Some(bad), &one).await;
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.body);
        assert!(
            refused.body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{}",
            refused.body
        );
    }

    // A refused request (400) keeps nothing: the corrected one under its key publishes.
    let mut invalid = event("Idem", "idem-4");
    invalid.as_object_mut().unwrap().remove("severity");
    let refused = post(first, ONE, Some("key-4"), &invalid).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let corrected = post(second, ONE, Some("key-4"), &event("Idem", "idem-4")).await;
    assert_eq!(
        (corrected.status, corrected.replayed),
        (202, false),
        "{}",
        corrected.body
    );

    // Without the header, every request publishes.
    let plain = event("Idem", "idem-5");
    let a = post(first, ONE, None, &plain).await;
    let b = post(second, ONE, None, &plain).await;
    assert_eq!(
        (a.status, b.status, a.replayed, b.replayed),
        (202, 202, false, false)
    );
    assert_ne!(ids(&a.body), ids(&b.body));

    // Four copies at once, two to each process: one publishes; the others get its answer,
    // or 409 while it is still being published.
    let copy = event("Idem", "idem-6");
    let copies = [first, second, first, second].map(|to| {
        let copy = copy.clone();
        async move { post(to, ONE, Some("key-6"), &copy).await }
    });
    let answers = futures::future::join_all(copies).await;
    let new: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == 202 && !a.replayed)
        .collect();
    assert_eq!(new.len(), 1, "one copy publishes");
    for answer in &answers {
        match answer.status {
            202 => assert_eq!(ids(&answer.body), ids(&new[0].body)),
            409 => assert!(answer.body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")),
            other => panic!("{other}: {}", answer.body),
        }
    }

    // Published: key-1 (1), its batch (2), key-4 (1), without a key (2), key-6 (1).
    assert_stored(&processes, 7).await;
    let replayed_events = 2 + 2 + answers.iter().filter(|a| a.replayed).count() as u64;
    assert_eq!(deduplicated(&processes, "ans").await, replayed_events);
    let found = first.page(&format!("{MATCHED}?sourceEventId=idem-1")).await;
    assert_eq!(found["results"][0]["id"], first_ids[0].as_str(), "{found}");
}

/// Alertmanager re-sends; `first` and `second` may be one process.
async fn alertmanager_resends_publish_once(first: &Tocsin, second: &Tocsin, before: u64) {
    let processes = distinct(first, second);
    let firing = webhook(
        "firing",
        vec![
            alert("firing", "fp-am-cpu", "HighCPU"),
            alert("firing", "fp-am-disk", "DiskFull"),
        ],
    );
    let answer = post(first, WEBHOOK, None, &firing).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(ids(&answer.body).len(), 2);
    // repeat_interval (or a group_interval) later, unchanged, to either process.
    for to in [first, second] {
        let again = post(to, WEBHOOK, None, &firing).await;
        assert_eq!(
            (again.status, again.replayed),
            (202, false),
            "{}",
            again.body
        );
        assert_eq!(again.body, json!({"published": []}));
    }
    // The CPU alert resolves; the disk alert is still firing, unchanged.
    let resolved = webhook(
        "firing",
        vec![
            alert("resolved", "fp-am-cpu", "HighCPU"),
            alert("firing", "fp-am-disk", "DiskFull"),
        ],
    );
    let answer = post(second, WEBHOOK, None, &resolved).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let published = answer.body["published"].as_array().unwrap();
    assert_eq!(published.len(), 1, "{}", answer.body);
    assert_eq!(published[0]["tags"]["ans:status"], "CLOSE");
    let again = post(first, WEBHOOK, None, &resolved).await;
    assert_eq!(again.body, json!({"published": []}));

    assert_stored(&processes, before + 3).await;
    // 2 + 2 alerts re-sent unchanged, then 1, then 2.
    assert_eq!(deduplicated(&processes, "alertmanager").await, 7);
}

#[tokio::test]
async fn duplicates_at_the_door_on_the_embedded_bus_and_sqlite() {
    let tocsin = Tocsin::start(Backend::Embedded, &store_everything(), &[]).await;
    the_same_key_publishes_once(&tocsin, &tocsin).await;
    alertmanager_resends_publish_once(&tocsin, &tocsin, 7).await;
    // Kept across a restart.
    let mut tocsin = tocsin;
    tocsin.kill();
    tocsin.launch().await;
    let again = post(&tocsin, ONE, Some("key-1"), &event("Idem", "idem-1")).await;
    assert!(again.replayed, "{}", again.body);
    let again = post(
        &tocsin,
        WEBHOOK,
        None,
        &webhook("firing", vec![alert("firing", "fp-am-disk", "DiskFull")]),
    )
    .await;
    assert_eq!(again.body, json!({"published": []}));
    assert_stored(&[&tocsin], 10).await;
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_at_the_door_on_rabbitmq_and_postgres_across_two_processes() {
    let url = postgres_schema().await;
    let first = Tocsin::start(Backend::Rabbitmq, &store_everything(), &shared_store(&url)).await;
    let second = first.sibling().await;
    the_same_key_publishes_once(&first, &second).await;
    alertmanager_resends_publish_once(&first, &second, 7).await;
    second.shutdown().await;
    first.shutdown().await;
}

/// The same across two processes on one PostgreSQL database, each on its own embedded bus:
/// the window is all they share besides the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_at_the_door_on_postgres_across_two_processes_with_their_own_buses() {
    let url = postgres_schema().await;
    let first = Tocsin::start(Backend::Embedded, &store_everything(), &shared_store(&url)).await;
    let second = first.sibling().await;
    the_same_key_publishes_once(&first, &second).await;
    alertmanager_resends_publish_once(&first, &second, 7).await;
    second.shutdown().await;
    first.shutdown().await;
}
