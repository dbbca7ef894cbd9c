//! One broker across processes: Tocsin processes on one PostgreSQL database
//! (`store.backend = "postgres"`) share the records, so any one's consumer and attempts APIs
//! answer for every event, whichever process accepted and delivered it; the OCI dedupe window
//! and subscriptions, so a redelivery to another process is published once; and the link map
//! with its per-key lock, so an alert whose events reach different processes is one incident.
//!
//! The link tests run each process on its own embedded bus: every event is then delivered by
//! the process that accepted it, so the test decides which process delivers what, and the
//! link map is all they share.

use crate::b2c_incident_lifecycle::{disk_event, seed_pair_is_one_incident, site_and_tocsin};
use crate::common::{event, postgres_schema, route_everything_to, Backend, Tocsin};
use crate::oci_notifications::{
    confirmation, deliver, fake_oci, fixture, status_and_body, store_everything, subscriptions,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_answer_for_every_record() {
    let url = postgres_schema().await;
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    let first = Tocsin::start(
        Backend::Rabbitmq,
        &route_everything_to(vec![store]),
        &[
            ("TOCSIN_STORE_BACKEND", "postgres"),
            ("TOCSIN_STORE_URL", &url),
        ],
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

/// Settings of processes that share the database at `url`.
fn on_postgres(url: &str) -> [(&'static str, &str); 2] {
    [
        ("TOCSIN_STORE_BACKEND", "postgres"),
        ("TOCSIN_STORE_URL", url),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_message_redelivered_to_another_process_is_published_once() {
    let url = postgres_schema().await;
    let first = Tocsin::start_with_settings(
        Backend::Rabbitmq,
        &store_everything(),
        "[sources.oci]\nconfirm_allow_hosts = [\"127.0.0.1\"]\n",
        &on_postgres(&url),
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
    let (_server, fake, first) = site_and_tocsin(&on_postgres(&url)).await;
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
    let (_server, fake, first) = site_and_tocsin(&on_postgres(&url)).await;
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
