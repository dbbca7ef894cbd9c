//! One alert's whole life through the real binary, to a Slack thread and a B2C incident at
//! once (issue 13): an OCI Monitoring alarm opens (OK_TO_FIRING), repeats (REPEAT), is
//! acknowledged with a comment through the alerts API, and closes (FIRING_TO_OK). The alert's
//! answer lists it all in order, the person's act with who and the comment, and what each
//! destination made for it (the Slack thread's `ts`, the incident's id); the site got the
//! acknowledgement as a thread and the close as the status, the Slack thread the replies and
//! its parent the resolution. Then a person resolves a second, firing alert: the close takes
//! the same path. On the embedded bus with SQLite, and on RabbitMQ with PostgreSQL.
//!
//! Slack is a stateful stand-in of the Web API on loopback (`chat.postMessage` answers a new
//! `ts`, `chat.update` ok), B2C the fake site of [`crate::b2c_incident_lifecycle`].

use crate::alerts::{delivered, stored_lines, Client, CLIENTS};
use crate::b2c_incident_lifecycle::{
    b2c_action, disk_event, post_alarm, seed_pair_with_a_repeat, FakeB2c, Incident,
};
use crate::common::{postgres_schema, route_everything_to, stand_in, Backend, Tocsin};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

const SLACK_TOKEN: &str = "xoxb-e2e-secret-token";
const SLACK_CHANNEL: &str = "C0ALERTS";

/// One Web API call the Slack stand-in got: the method and its JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: String,
    pub body: Value,
}

/// The Slack stand-in: keeps every call; `chat.postMessage` answers ts `1700000000.00000N`.
#[derive(Clone, Default)]
pub(crate) struct FakeSlack(Arc<Mutex<Vec<Call>>>);

impl Respond for FakeSlack {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut calls = self.0.lock().unwrap();
        let authorized = request
            .headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap() == format!("Bearer {SLACK_TOKEN}"));
        if !authorized {
            return ResponseTemplate::new(200)
                .set_body_json(json!({"ok": false, "error": "invalid_auth"}));
        }
        let method = request.url.path().rsplit('/').next().unwrap().to_owned();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let answer = match method.as_str() {
            "chat.postMessage" => {
                let posts = calls.iter().filter(|c| c.method == method).count();
                json!({"ok": true, "channel": body["channel"], "ts": format!("1700000000.{:06}", posts + 1)})
            }
            "chat.update" => json!({"ok": true, "channel": body["channel"], "ts": body["ts"]}),
            _ => json!({"ok": false, "error": "unknown_method"}),
        };
        calls.push(Call { method, body });
        ResponseTemplate::new(200).set_body_json(answer)
    }
}

impl FakeSlack {
    pub async fn serve() -> (MockServer, FakeSlack) {
        let fake = FakeSlack::default();
        (stand_in(fake.clone()).await, fake)
    }

    /// Waits until the calls number `count`, and returns them.
    pub async fn wait_for(&self, what: &str, count: usize, tocsin: &Tocsin) -> Vec<Call> {
        let started = Instant::now();
        loop {
            let calls = self.0.lock().unwrap().clone();
            if calls.len() >= count {
                return calls;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: Slack got {calls:#?}\n{}",
                tocsin.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Everything goes to a Slack thread per alert and to a B2C incident.
pub(crate) fn routing(slack: &str, site: &str) -> Value {
    route_everything_to(vec![
        json!({"name": "slack-threads", "type": "SLACK_THREADED", "state": "ENABLED", "properties": {
            "token": SLACK_TOKEN, "channel": SLACK_CHANNEL, "apiUrl": format!("{slack}/api/")
        }}),
        b2c_action(site),
    ])
}

/// The one incident of the site, once `done` holds for it.
pub(crate) async fn incident(
    fake: &FakeB2c,
    what: &str,
    tocsin: &Tocsin,
    key: &str,
    done: impl Fn(&Incident) -> bool,
) -> Incident {
    fake.wait_for(what, tocsin, |site| {
        site.incidents.values().any(|i| i.key == key && done(i))
    })
    .await;
    let incidents = fake.incidents_for(key);
    assert_eq!(incidents.len(), 1, "one incident for {key}: {incidents:?}");
    incidents.into_iter().next().unwrap()
}

/// The alert's destinations as (action, type, state, what was created).
fn destinations(found: &Value) -> Vec<(String, String, String, Value)> {
    found["destinations"]
        .as_array()
        .unwrap_or_else(|| panic!("no destinations: {found}"))
        .iter()
        .map(|d| {
            let text = |field: &str| d[field].as_str().unwrap_or_default().to_owned();
            (
                text("action"),
                text("type"),
                text("state"),
                d["created"].clone(),
            )
        })
        .collect()
}

/// Waits until both destinations applied `event_id`, the alert's last event, and returns the
/// alert's answer then.
async fn applied_everywhere(oncall: &Client<'_>, key: &str, event_id: &str) -> Value {
    let what = format!("had {event_id} applied by both destinations");
    oncall
        .wait_for_alert(key, &what, |found| {
            found["destinations"].as_array().is_some_and(|all| {
                all.len() == 2 && all.iter().all(|d| d["lastEventId"] == event_id)
            })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_lives_in_a_slack_thread_and_a_b2c_incident_embedded_and_sqlite() {
    lifecycle(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_lives_in_a_slack_thread_and_a_b2c_incident_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    lifecycle(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn lifecycle(backend: Backend, env: &[(&str, &str)]) {
    let (slack_server, slack) = FakeSlack::serve().await;
    let (site_server, site) = FakeB2c::serve().await;
    let routing = routing(&slack_server.uri(), &site_server.uri());
    let mut tocsin = Tocsin::start_with_settings(backend, &routing, CLIENTS, env).await;
    // The alarms and events come in as the producer client of CLIENTS.
    (tocsin.user, tocsin.password) = ("ops".into(), "ops-password".into());
    let oncall = Client {
        tocsin: &tocsin,
        name: "oncall",
        password: "oncall-password",
    };
    let (firing, repeat, ok) = seed_pair_with_a_repeat();
    let key = firing["dedupeKey"].as_str().unwrap().to_owned();

    // Open, then repeat.
    post_alarm(&tocsin, &firing).await;
    slack.wait_for("the thread's parent", 1, &tocsin).await;
    incident(&site, "the incident is created", &tocsin, &key, |_| true).await;
    post_alarm(&tocsin, &repeat).await;
    slack.wait_for("the repeat's reply", 2, &tocsin).await;
    incident(&site, "the repeat's thread", &tocsin, &key, |i| {
        i.threads.len() == 2
    })
    .await;

    // Acknowledged with a comment, through the API.
    let path = format!("/tocsin/v1/alerts/{key}/acknowledge");
    let (status, acked) = oncall
        .post(&path, Some(json!({"comment": "looking at the disk"})))
        .await;
    assert_eq!(status, 202, "{acked}");
    let calls = slack
        .wait_for("the acknowledgement's reply", 3, &tocsin)
        .await;
    let on_site = incident(&site, "the acknowledgement's thread", &tocsin, &key, |i| {
        i.threads.len() == 3
    })
    .await;
    assert!(
        on_site.threads[2].contains("Acknowledged by oncall (api): looking at the disk"),
        "the acknowledgement as a thread: {:?}",
        on_site.threads
    );
    assert_eq!(on_site.status, "Unresolved", "acknowledged is not solved");
    let reply = &calls[2];
    assert_eq!(reply.method, "chat.postMessage");
    assert_eq!(reply.body["thread_ts"], "1700000000.000001", "{reply:?}");
    assert_eq!(reply.body["reply_broadcast"], false);
    assert!(
        reply.body.to_string().contains("looking at the disk"),
        "the comment in the thread: {reply:?}"
    );

    // While it fires, both are open: the thread and the incident the acknowledgement went to.
    let found = applied_everywhere(&oncall, &key, acked["eventId"].as_str().unwrap()).await;
    let incident_id = site.0.lock().unwrap().incidents.keys().next().copied();
    let both = |state: &str| {
        [
            (
                "b2c".to_owned(),
                "ORACLE_B2C_INCIDENT".to_owned(),
                state.to_owned(),
                json!({"incidentId": incident_id, "lookupName": format!("240101-{:06}", incident_id.unwrap())}),
            ),
            (
                "slack-threads".to_owned(),
                "SLACK_THREADED".to_owned(),
                state.to_owned(),
                json!({"channel": SLACK_CHANNEL, "ts": "1700000000.000001"}),
            ),
        ]
    };
    assert_eq!(destinations(&found), both("open"), "{found}");

    // Closed by OCI.
    post_alarm(&tocsin, &ok).await;
    let calls = slack
        .wait_for("the resolution and the parent's update", 5, &tocsin)
        .await;
    let on_site = incident(&site, "the close solves it", &tocsin, &key, |i| {
        i.status == "Solved"
    })
    .await;
    assert_eq!(on_site.threads.len(), 4, "{:?}", on_site.threads);
    let shape: Vec<(&str, Option<&str>, Option<bool>)> = calls
        .iter()
        .map(|c| {
            (
                c.method.as_str(),
                c.body["thread_ts"].as_str().or(c.body["ts"].as_str()),
                c.body["reply_broadcast"].as_bool(),
            )
        })
        .collect();
    let ts = Some("1700000000.000001");
    assert_eq!(
        shape,
        [
            ("chat.postMessage", None, None),
            ("chat.postMessage", ts, Some(false)),
            ("chat.postMessage", ts, Some(false)),
            ("chat.postMessage", ts, Some(true)),
            ("chat.update", ts, None),
        ],
        "one thread: the parent, the repeat, the acknowledgement, the resolution broadcast, \
         the parent marked resolved"
    );
    assert!(calls.iter().all(|c| c.body["channel"] == SLACK_CHANNEL));

    let found = oncall.wait_for_state(&key, "resolved").await;
    let close = found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|line| line["kind"] == "event")
        .map(|line| line["eventId"].as_str().unwrap().to_owned())
        .unwrap();
    applied_everywhere(&oncall, &key, &close).await;
    // The attempts are recorded after the destinations answered: wait for all eight.
    let found = oncall
        .wait_for_alert(&key, "its 8 deliveries recorded", |found| {
            delivered(found) == 8
        })
        .await;
    assert_eq!(
        stored_lines(&found),
        [
            "event CREATE_OR_UPDATE",
            "event CREATE_OR_UPDATE",
            "acknowledge by oncall: looking at the disk",
            "event COMMENT",
            "event CLOSE"
        ],
        "{found}"
    );
    assert_eq!(destinations(&found), both("closed"), "{found}");
    assert_eq!(delivered(&found), 8, "4 events × (Slack, B2C): {found}");
    let text = found.to_string();
    for secret in [
        SLACK_TOKEN,
        "agent-password",
        &site_server.uri(),
        &slack_server.uri(),
    ] {
        assert!(!text.contains(secret), "`{secret}` in the answer: {found}");
    }

    // A second alert, resolved by a person: the close takes the same path.
    // Its Slack thread is filed under its correlation id, which differs from the alert key.
    let mut second = disk_event("CREATE_OR_UPDATE", "/var is 100% full");
    second["tags"]["ans:correlationId"] = json!("db-1");
    tocsin.send(&second).await;
    slack
        .wait_for("the second thread's parent", 6, &tocsin)
        .await;
    incident(&site, "the second incident", &tocsin, "db-1-disk", |_| true).await;
    oncall.wait_for_state("db-1-disk", "firing").await;
    let (status, resolved) = oncall
        .post(
            "/tocsin/v1/alerts/db-1-disk/resolve",
            Some(json!({"comment": "freed /var"})),
        )
        .await;
    assert_eq!(status, 202, "{resolved}");
    let calls = slack.wait_for("the second resolution", 8, &tocsin).await;
    let on_site = incident(
        &site,
        "the person's resolve solves it",
        &tocsin,
        "db-1-disk",
        |i| i.status == "Solved",
    )
    .await;
    assert!(
        on_site.threads[1].contains("Resolved by oncall (api): freed /var"),
        "{:?}",
        on_site.threads
    );
    let second_ts = "1700000000.000005";
    assert_eq!(calls[5].body["thread_ts"], Value::Null, "a new thread");
    assert_eq!(calls[6].body["thread_ts"], second_ts, "{:?}", calls[6]);
    assert_eq!(calls[6].body["reply_broadcast"], true);
    assert!(calls[6].body.to_string().contains("freed /var"));
    assert_eq!(
        (calls[7].method.as_str(), &calls[7].body["ts"]),
        ("chat.update", &json!(second_ts))
    );
    let found =
        applied_everywhere(&oncall, "db-1-disk", resolved["eventId"].as_str().unwrap()).await;
    assert_eq!(found["alert"]["state"], "resolved");
    assert_eq!(
        stored_lines(&found),
        [
            "event CREATE_OR_UPDATE",
            "resolve by oncall: freed /var",
            "event CLOSE"
        ],
        "{found}"
    );
    let filed: Vec<(&str, &str, &str)> = found["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let text = |field: &str| d[field].as_str().unwrap();
            (text("action"), text("key"), text("state"))
        })
        .collect();
    assert_eq!(
        filed,
        [
            ("b2c", "db-1-disk", "closed"),
            ("slack-threads", "db-1", "closed")
        ],
        "{found}"
    );
    assert_eq!(found["destinations"][1]["created"]["ts"], second_ts);
    tocsin.shutdown().await;
}
