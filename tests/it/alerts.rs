//! Alerts as first-class state, through the real binary: events of one alert key make one
//! alert; a person acknowledges, comments and resolves it through the API, each act reaching
//! the destinations as an event of the chain; the timeline lists it all in order with the
//! delivery attempts; a resolved alert refuses acts; a `responder` client acts on alerts and
//! reads nothing else. On the embedded bus with SQLite, and on RabbitMQ with PostgreSQL.

use crate::common::{
    event, postgres_schema, route_everything_to, webhook, Backend, Destination, Tocsin,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub(crate) const CLIENTS: &str = r#"
[[auth.clients]]
name = "ops"
password = "ops-password"
scopes = ["producer", "consumer", "configuration"]

[[auth.clients]]
name = "oncall"
password = "oncall-password"
scopes = ["responder"]
"#;

/// A client of `CLIENTS`, calling the API as itself.
pub(crate) struct Client<'a> {
    pub tocsin: &'a Tocsin,
    pub name: &'static str,
    pub password: &'static str,
}

impl Client<'_> {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .tocsin
            .http
            .get(self.tocsin.url(path))
            .basic_auth(self.name, Some(self.password))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .tocsin
            .http
            .post(self.tocsin.url(path))
            .basic_auth(self.name, Some(self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the alert `key` is in `state`, and returns it with its timeline.
    pub async fn wait_for_state(&self, key: &str, state: &str) -> Value {
        self.wait_for_alert(key, &format!("became {state}"), |found| {
            found["alert"]["state"] == state
        })
        .await
    }

    /// Waits until the answer for alert `key` satisfies `done` (`what` says what it waits
    /// for), and returns it.
    pub async fn wait_for_alert(
        &self,
        key: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let (status, found) = self.get(&format!("/tocsin/v1/alerts/{key}")).await;
            if status == 200 && done(&found) {
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "alert {key} never {what}: {status} {found}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How many delivery attempts in the alert's timeline delivered.
pub(crate) fn delivered(found: &Value) -> usize {
    found["timeline"].as_array().map_or(0, |timeline| {
        timeline
            .iter()
            .filter(|line| line["kind"] == "delivery" && line["outcome"] == "delivered")
            .count()
    })
}

/// The timeline's events and acts, one line each: `event <ans:status>` or
/// `<act> by <who>: <comment>`.
pub(crate) fn stored_lines(found: &Value) -> Vec<String> {
    found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] != "delivery")
        .map(|line| match line["kind"].as_str().unwrap() {
            "event" => format!("event {}", line["status"].as_str().unwrap_or("-")),
            _ => format!(
                "{} by {}: {}",
                line["action"].as_str().unwrap(),
                line["who"].as_str().unwrap(),
                line["comment"].as_str().unwrap_or("")
            ),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_acknowledged_and_resolved_through_the_api_embedded_and_sqlite() {
    acknowledged_and_resolved(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_is_acknowledged_and_resolved_through_the_api_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    acknowledged_and_resolved(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn acknowledged_and_resolved(backend: Backend, env: &[(&str, &str)]) {
    let hook = Destination::start(|_| 200).await;
    let routing = route_everything_to(vec![
        webhook("hook", &hook.url, json!({})),
        json!({"name": "store", "type": "STORE", "state": "ENABLED"}),
    ]);
    let tocsin = Tocsin::start_with_settings(backend, &routing, CLIENTS, env).await;
    let ops = Client {
        tocsin: &tocsin,
        name: "ops",
        password: "ops-password",
    };
    let oncall = Client {
        tocsin: &tocsin,
        name: "oncall",
        password: "oncall-password",
    };
    let mut open = event("DiskFull", "disk-db-1");
    open["subject"] = json!("Disk full on db-1");
    let mut repeat = open.clone();
    repeat["tags"]["ans:status"] = json!("UPDATE");
    for e in [&open, &repeat] {
        let (status, _) = ops
            .post("/cf/producer/v1/resource-events", Some(e.clone()))
            .await;
        assert_eq!(status, 202);
    }
    hook.wait_for("open and repeat delivered", |r| r.len() == 2)
        .await;

    let (status, page) = oncall.get("/tocsin/v1/alerts?state=firing").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["responseMetadata"]["totalResultsCount"], 1, "{page}");
    assert_eq!(page["results"][0]["key"], "disk-db-1");
    assert_eq!(page["results"][0]["events"], 2);
    // A responder acts on alerts and reads nothing else; a consumer cannot act.
    let (status, _) = oncall.get("/cf/consumer/v1/matched-events").await;
    assert_eq!(status, 403);
    let (status, body) = ops
        .post("/tocsin/v1/alerts/disk-db-1/acknowledge", None)
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, acked) = oncall
        .post(
            "/tocsin/v1/alerts/disk-db-1/acknowledge",
            Some(json!({"comment": "on it"})),
        )
        .await;
    assert_eq!(status, 202, "{acked}");
    assert_eq!(acked["alert"]["state"], "acknowledged");
    assert_eq!(acked["changed"], true);
    let received = hook
        .wait_for("the acknowledgement delivered", |r| r.len() == 3)
        .await;
    let note = &received[2].body;
    assert_eq!(note["id"], acked["eventId"]);
    assert_eq!(note["subject"], "Acknowledged by oncall: Disk full on db-1");
    assert_eq!(note["tags"]["ans:status"], "COMMENT");
    assert_eq!(note["tags"]["ans:sourceEventId"], "disk-db-1");
    oncall.wait_for_state("disk-db-1", "acknowledged").await;
    let (status, again) = oncall
        .post("/tocsin/v1/alerts/disk-db-1/acknowledge", None)
        .await;
    assert_eq!(
        (status, &again["changed"]),
        (200, &json!(false)),
        "acknowledging twice is once"
    );

    let (status, refused) = oncall
        .post("/tocsin/v1/alerts/disk-db-1/comment", Some(json!({})))
        .await;
    assert_eq!(status, 400);
    assert!(
        refused["message"].as_str().unwrap().contains("`comment`"),
        "{refused}"
    );

    let (status, resolved) = oncall
        .post(
            "/tocsin/v1/alerts/disk-db-1/resolve",
            Some(json!({"comment": "swapped the disk"})),
        )
        .await;
    assert_eq!(status, 202, "{resolved}");
    let received = hook
        .wait_for("the resolution delivered", |r| r.len() == 4)
        .await;
    assert_eq!(received[3].body["tags"]["ans:status"], "CLOSE");
    assert_eq!(
        received[3].body["body"],
        "Resolved by oncall (api): swapped the disk"
    );
    // The hook answered; the attempts are recorded after the answers, so wait for them too.
    let found = oncall
        .wait_for_alert("disk-db-1", "resolved with its 8 deliveries", |found| {
            found["alert"]["state"] == "resolved" && delivered(found) == 8
        })
        .await;
    let alert = &found["alert"];
    assert_eq!(alert["events"], 4, "{found}");
    assert!(alert["acknowledgedAtMs"].as_i64().unwrap() <= alert["resolvedAtMs"].as_i64().unwrap());
    // The timeline, in order: the events, the acts (each before the event that carried it)
    // and every delivery attempt of each event.
    let timeline = found["timeline"].as_array().unwrap();
    assert_eq!(
        stored_lines(&found),
        [
            "event -",
            "event UPDATE",
            "acknowledge by oncall: on it",
            "event COMMENT",
            "resolve by oncall: swapped the disk",
            "event CLOSE"
        ],
        "{found}"
    );
    assert_eq!(delivered(&found), 8, "4 events × (hook, store): {found}");
    let times: Vec<i64> = timeline
        .iter()
        .map(|l| l["atMs"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );

    let (status, body) = oncall
        .post("/tocsin/v1/alerts/disk-db-1/acknowledge", None)
        .await;
    assert_eq!(status, 409);
    assert!(
        body["message"].as_str().unwrap().contains("resolved"),
        "{body}"
    );
    let (status, body) = oncall.post("/tocsin/v1/alerts/nope/resolve", None).await;
    assert_eq!(status, 404);
    assert!(
        body["message"].as_str().unwrap().contains("`nope`"),
        "{body}"
    );
    let (status, _) = oncall
        .post("/tocsin/v1/alerts/disk-db-1/snooze", None)
        .await;
    assert_eq!(status, 404);
    // Firing again reopens it.
    let (status, _) = ops
        .post("/cf/producer/v1/resource-events", Some(open))
        .await;
    assert_eq!(status, 202);
    oncall.wait_for_state("disk-db-1", "firing").await;
    tocsin.shutdown().await;
}
