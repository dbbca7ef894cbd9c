//! One broker across processes: Tocsin processes on one PostgreSQL database
//! (`store.backend = "postgres"`) share the records, so any one's consumer and attempts APIs
//! answer for every event, whichever process accepted and delivered it; the OCI dedupe window
//! and subscriptions, so a redelivery to another process is published once; and the link map
//! with its per-key lock, so an alert whose events reach different processes is one incident;
//! the ordering lanes, so one key's events keep their order across processes; and the
//! configuration, so that a change made through any of them routes the next event any of them
//! accepts, with nothing about it on the broker.
//!
//! The link tests run each process on its own embedded bus: every event is then delivered by
//! the process that accepted it, so the test decides which process delivers what, and the
//! link map is all they share.

use crate::b2c_incident_lifecycle::{disk_event, seed_pair_is_one_incident, site_and_tocsin};
use crate::common::{event, postgres_schema, route_everything_to, Backend, Tocsin};
use crate::configuration_api::{call, change_then_send, type_condition, BASE};
use crate::oci_notifications::{
    confirmation, deliver, fake_oci, fixture, status_and_body, store_everything, subscriptions,
};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_message_redelivered_to_another_process_is_published_once() {
    let url = postgres_schema().await;
    let first = Tocsin::start_with_settings(
        Backend::Rabbitmq,
        &store_everything(),
        "[sources.oci]\nconfirm_allow_hosts = [\"127.0.0.1\"]\n",
        &shared_store(&url),
    )
    .await;
    let second = first.sibling().await;
    let third = first.sibling().await;
    oci_state_is_shared([&first, &second, &third]).await;
    for tocsin in [third, second, first] {
        tocsin.shutdown().await;
    }
}

async fn oci_state_is_shared(processes: [&Tocsin; 3]) {
    let [first, second, third] = processes;
    // Posted to one process, redelivered to another: acknowledged there, not published.
    let firing = fixture("ok-to-firing.seed.json");
    let (status, answer) = status_and_body(deliver(first, &firing, "msg-a").await).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = status_and_body(deliver(second, &firing, "msg-a").await).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");

    // Three copies at the same moment, one per process: one is published. A copy that finds
    // another still being published may be asked to come again (503), as OCI would.
    let ok = fixture("firing-to-ok.seed.json");
    let copies = processes.map(|tocsin| {
        let ok = ok.clone();
        async move {
            let started = Instant::now();
            loop {
                let (status, answer) = status_and_body(deliver(tocsin, &ok, "msg-b").await).await;
                if status != 503 {
                    return (status, answer);
                }
                assert!(started.elapsed() < Duration::from_secs(30), "{answer}");
            }
        }
    });
    let [a, b, c] = copies;
    let answers = tokio::join!(a, b, c);
    let answers = [answers.0, answers.1, answers.2];
    let published = answers.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(published, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, answer)| *status == 202 || answer["duplicate"] == true),
        "{answers:?}"
    );
    for tocsin in processes {
        tocsin
            .wait_for_count("/cf/consumer/v1/matched-events", 2)
            .await;
    }

    // A subscription confirmed through one process is listed by every other.
    let (oci, _requests) = fake_oci().await;
    let subscription = "ocid1.onssubscription.oc1.phx.shared";
    let confirmation_url =
        format!("{oci}/20181201/subscriptions/{subscription}/confirmation?token=t");
    let (status, answer) =
        status_and_body(confirmation(first, &confirmation_url, subscription).await).await;
    assert_eq!(status, 200, "{answer}");
    for tocsin in [second, third] {
        let listed = subscriptions(tocsin).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["subscriptionId"], subscription);
        assert_eq!(listed[0]["state"], "CONFIRMED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_whose_open_repeat_and_close_reach_three_processes_is_one_incident() {
    let url = postgres_schema().await;
    let (_server, fake, first) = site_and_tocsin(&shared_store(&url)).await;
    let second = first.sibling().await;
    let third = first.sibling().await;

    seed_pair_is_one_incident(&fake, [&first, &second, &third]).await;
    assert_eq!(
        fake.0.lock().unwrap().lookups,
        0,
        "every process found the link the others wrote: no look-up"
    );
    for tocsin in [third, second, first] {
        tocsin.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_and_its_repeat_at_two_processes_at_once_create_one_incident() {
    let url = postgres_schema().await;
    let (_server, fake, first) = site_and_tocsin(&shared_store(&url)).await;
    let second = first.sibling().await;
    // A create takes a while, so that the repeat arrives while the open's create is in flight.
    fake.0.lock().unwrap().create_delay = Duration::from_millis(300);

    let alerts: Vec<String> = (0..4).map(|i| format!("db-{i}-disk")).collect();
    let copy = |key: &str, body: &str| -> Value {
        let mut event = disk_event("CREATE_OR_UPDATE", body);
        event["tags"]["ans:sourceEventId"] = json!(key);
        event
    };
    for key in &alerts {
        let (open, repeat) = (copy(key, "/var is full"), copy(key, "/var is still full"));
        tokio::join!(first.send(&open), second.send(&repeat));
    }
    fake.wait_for(
        "every alert has its incident and both threads",
        &first,
        |site| {
            alerts.iter().all(|key| {
                site.incidents
                    .values()
                    .filter(|i| &i.key == key)
                    .map(|i| i.threads.len())
                    .sum::<usize>()
                    == 2
            })
        },
    )
    .await;
    for key in &alerts {
        let incidents = fake.incidents_for(key);
        assert_eq!(incidents.len(), 1, "{key}: one incident: {incidents:?}");
    }
    second.shutdown().await;
    first.shutdown().await;
}

/// Per-key order across processes: three processes on one RabbitMQ (partitioned deliveries)
/// and one PostgreSQL database, the ordering lanes shared.
mod per_key_order {
    use crate::common::{
        event, postgres_schema, route_everything_to, webhook, Backend, Destination, Received,
        Tocsin,
    };
    use futures::StreamExt;
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::time::Duration;

    fn key(received: &Received) -> String {
        received.body["tags"]["ans:sourceEventId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A destination rule: each key's `open` fails `times` times (503), everything else is
    /// accepted.
    fn failing_opens(times: usize) -> impl FnMut(&Value) -> u16 + Send {
        let mut failures: HashMap<String, usize> = HashMap::new();
        move |body| {
            if body["subject"] == "open" {
                let count = failures
                    .entry(body["tags"]["ans:sourceEventId"].to_string())
                    .or_default();
                *count += 1;
                if *count <= times {
                    return 503;
                }
            }
            200
        }
    }

    fn id(received: &Received) -> String {
        received.body["id"].as_str().unwrap().to_owned()
    }

    /// The first process and two siblings, on a fresh schema, with `partitions` partitions.
    async fn three(configuration: &Value, partitions: &str) -> (Tocsin, Vec<Tocsin>, String) {
        let url = postgres_schema().await;
        let first = Tocsin::start(
            Backend::Rabbitmq,
            configuration,
            &[
                ("TOCSIN_STORE_BACKEND", "postgres"),
                ("TOCSIN_STORE_URL", &url),
                ("TOCSIN_STORE_SECRET_KEY", super::SHARED_KEY),
                ("TOCSIN_BUS_DELIVERY_PARTITIONS", partitions),
                // The retried opens fail in a row: the circuit breaker is not what is tested.
                ("TOCSIN_CHANNELS_CIRCUIT_FAILURE_THRESHOLD", "1000"),
            ],
        )
        .await;
        let siblings = vec![first.sibling().await, first.sibling().await];
        (first, siblings, url)
    }

    /// Jobs parked behind a retrying head, in the shared database.
    async fn parked(url: &str) -> i64 {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .query_one("SELECT COUNT(*) FROM parked", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Per key, the ids of the events first delivered (200), in the order they arrived.
    fn first_deliveries(received: &[Received]) -> BTreeMap<String, Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in received.iter().filter(|r| r.status == 200) {
            if seen.insert(id(r)) {
                by_key.entry(key(r)).or_default().push(id(r));
            }
        }
        by_key
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_key_posted_to_three_processes_in_turn_arrives_in_accepted_order_across_a_retry() {
        // The first event of each key fails twice; the later ones are accepted meanwhile.
        let destination = Destination::start(failing_opens(2)).await;
        let configuration = route_everything_to(vec![webhook(
            "hook",
            &destination.url,
            json!({"retryInitialDelayMs": "300", "retryMaxDelayMs": "300"}),
        )]);
        let (first, siblings, _) = three(&configuration, "4").await;
        let processes = [&first, &siblings[0], &siblings[1]];
        let keys: Vec<String> = (0..4).map(|k| format!("turns-{k}")).collect();
        let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in 0..6 {
            for (k, key) in keys.iter().enumerate() {
                let mut e = event("Turns", key);
                e["subject"] = json!(if n == 0 { "open" } else { "update" });
                let to = processes[(n + k) % processes.len()];
                let answer = to.send(&e).await;
                accepted
                    .entry(key.clone())
                    .or_default()
                    .push(answer["id"].as_str().unwrap().to_owned());
            }
        }
        let received = destination
            .wait_for("every event delivered", |r| {
                r.iter().filter(|r| r.status == 200).count() >= 24
            })
            .await;
        assert_eq!(
            first_deliveries(&received),
            accepted,
            "each key in the order accepted"
        );
        assert_eq!(
            received.iter().filter(|r| r.status == 503).count(),
            8,
            "each open was retried twice"
        );
        assert_eq!(
            received.iter().filter(|r| r.status == 200).count(),
            24,
            "none twice"
        );
        drop(siblings);
        first.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_held_by_a_process_that_dies_is_carried_on_in_order_by_another() {
        let destination = Destination::start(failing_opens(1)).await;
        // Long enough for the later events to be parked and the process killed meanwhile.
        let configuration = route_everything_to(vec![webhook(
            "hook",
            &destination.url,
            json!({"retryInitialDelayMs": "3000", "retryMaxDelayMs": "3000"}),
        )]);
        let (mut first, siblings, url) = three(&configuration, "2").await;
        let mut accepted = Vec::new();
        for (n, subject) in ["open", "repeat", "repeat", "close"].iter().enumerate() {
            let mut e = event("Held", "held-1");
            e["subject"] = json!(subject);
            let to = if n == 0 { &first } else { &siblings[n % 2] };
            accepted.push(to.send(&e).await["id"].as_str().unwrap().to_owned());
        }
        // The first process delivers (it subscribed first): its open failed, and the rest
        // are parked in the shared database behind it.
        let started = std::time::Instant::now();
        while parked(&url).await < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the later events were not parked: {:#?}\n{}",
                destination.received(),
                first.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        first.kill();
        let received = destination
            .wait_for("the held lane delivered by another process", |r| {
                r.iter().filter(|r| r.status == 200).count() >= 4
            })
            .await;
        assert_eq!(received[0].status, 503, "the open failed first");
        assert_eq!(
            first_deliveries(&received)["held-1"],
            accepted,
            "in the order accepted, across the handover"
        );
        let mut siblings = siblings;
        siblings.pop().unwrap().shutdown().await;
    }

    /// Posts `count` events of each of `keys` in turn to `processes`, each key's one after
    /// another (so that their accepted order is defined), the keys side by side; adds the
    /// accepted ids to `accepted`.
    async fn post_in_turns(
        processes: &[&Tocsin],
        keys: &[String],
        count: usize,
        accepted: &mut BTreeMap<String, Vec<String>>,
    ) {
        let posted: Vec<(String, Vec<String>)> = futures::stream::iter(keys.iter().enumerate())
            .map(|(k, key)| async move {
                let mut ids = Vec::new();
                for n in 0..count {
                    let mut e = event("Load", key);
                    e["subject"] = json!(format!("{n}"));
                    let answer = processes[(k + n) % processes.len()].send(&e).await;
                    ids.push(answer["id"].as_str().unwrap().to_owned());
                }
                (key.clone(), ids)
            })
            .buffer_unordered(keys.len())
            .collect()
            .await;
        for (key, ids) in posted {
            accepted.entry(key).or_default().extend(ids);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kill_mid_load_loses_no_accepted_event_records_none_twice_and_keeps_order() {
        // A slow destination, so that a backlog is still being delivered at the kill.
        let destination = Destination::start_holding(Duration::from_millis(100), |_| 200).await;
        let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
        let configuration =
            route_everything_to(vec![webhook("hook", &destination.url, json!({})), store]);
        let (mut first, siblings, _) = three(&configuration, "4").await;
        let keys: Vec<String> = (0..12).map(|k| format!("load-{k}")).collect();
        let mut accepted = BTreeMap::new();
        post_in_turns(
            &[&first, &siblings[0], &siblings[1]],
            &keys,
            8,
            &mut accepted,
        )
        .await;
        // The first process subscribed first, so it routes and delivers: kill it mid-delivery.
        first.kill();
        let delivered_at_kill = destination.received().len();
        assert!(
            delivered_at_kill < 96,
            "the kill must land mid-load ({delivered_at_kill} of 96 already delivered)"
        );
        post_in_turns(&[&siblings[0], &siblings[1]], &keys, 16, &mut accepted).await;
        let total: usize = accepted.values().map(Vec::len).sum();
        let received = destination
            .wait_for("every accepted event delivered", |r| {
                r.iter().map(id).collect::<BTreeSet<_>>().len() >= total
            })
            .await;
        assert_eq!(
            first_deliveries(&received),
            accepted,
            "every accepted event, each key in the order accepted"
        );
        // At least once: a request the killed process had in flight may be sent again by
        // the one that took over, and no other.
        let mut requests: BTreeMap<String, usize> = BTreeMap::new();
        for r in &received {
            *requests.entry(id(r)).or_default() += 1;
        }
        let twice: Vec<_> = requests.iter().filter(|(_, n)| **n > 1).collect();
        eprintln!(
            "{delivered_at_kill} requests before the kill; {} of {total} events requested more than once",
            twice.len()
        );
        assert!(
            twice.len() <= 64 + 256,
            "duplicates beyond what was in flight (delivery and router prefetch): {twice:?}"
        );
        // The records: each event stored once, seen from either survivor.
        let page = siblings[0]
            .wait_for_count("/cf/consumer/v1/matched-events?pageSize=1000", total as u64)
            .await;
        let stored: BTreeSet<&str> = page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(stored.len(), total, "each accepted event recorded once");
        let mut siblings = siblings;
        siblings.pop().unwrap().shutdown().await;
    }
}

const CANARY: &str = "canary-shared-s3cret-51d2";

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
            all += tocsin.routed().await;
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
