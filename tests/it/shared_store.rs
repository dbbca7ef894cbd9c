//! One broker across processes: two Tocsin processes on one RabbitMQ and one PostgreSQL
//! database (`store.backend = "postgres"`) share the records, so either one's consumer and
//! attempts APIs answer for every event, whichever process accepted and delivered it.

use crate::common::{event, postgres_schema, route_everything_to, Backend, Tocsin};
use serde_json::json;

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
