//! End to end: the real binary delivers OCI alarms and ANS events to an Oracle B2C Service
//! site — a stateful fake of the Connect REST API on loopback that keeps incidents, threads
//! and statuses and answers ROQL look-ups by custom field.
//!
//! The seed pair (OK_TO_FIRING, FIRING_TO_OK) with a REPEAT between them, posted as OCI
//! Notifications would, makes exactly one incident, adds one thread for the repeat, and closes
//! it with the mapped status. A create whose answer comes after Tocsin's request timeout is
//! found again by its custom field: still exactly one incident for its key.

use crate::common::{stand_in, Backend, Tocsin};
use crate::oci_notifications::fixture;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

const API: &str = "/services/rest/connect/v1.4";
const KEY_FIELD: &str = "oci_dedupe_key";

#[derive(Debug, Clone)]
pub(crate) struct Incident {
    pub subject: String,
    pub primary_contact: Value,
    pub severity: Value,
    pub status: String,
    pub key: String,
    pub threads: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Site {
    pub incidents: BTreeMap<i64, Incident>,
    /// Creates still to answer late (after the incident is made).
    pub slow_creates: usize,
    /// How long every other create takes to answer.
    pub create_delay: Duration,
    pub lookups: usize,
    pub contexts: Vec<Option<String>>,
}

/// The fake site: incidents in memory, answers as B2C documents them.
#[derive(Clone, Default)]
pub(crate) struct FakeB2c(pub Arc<Mutex<Site>>);

fn status_of(body: &Value) -> Option<String> {
    body["statusWithType"]["status"]["lookupName"]
        .as_str()
        .map(str::to_owned)
}

fn threads_of(body: &Value) -> Vec<String> {
    body["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["text"].as_str().map(str::to_owned))
        .collect()
}

impl Respond for FakeB2c {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut site = self.0.lock().unwrap();
        site.contexts.push(
            request
                .headers
                .get("osvc-crest-application-context")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let path = request.url.path().strip_prefix(API).unwrap_or_default();
        match (request.method.as_str(), path) {
            ("POST", "/incidents") => {
                let id = site.incidents.keys().max().map_or(1, |max| max + 1);
                let incident = Incident {
                    subject: body["subject"].as_str().unwrap_or_default().to_owned(),
                    primary_contact: body["primaryContact"].clone(),
                    severity: body["severity"].clone(),
                    status: status_of(&body).unwrap_or_else(|| "Unresolved".into()),
                    key: body["customFields"]["c"][KEY_FIELD]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    threads: threads_of(&body),
                };
                site.incidents.insert(id, incident);
                let answer = ResponseTemplate::new(201)
                    .set_body_json(json!({"id": id, "lookupName": format!("240101-{id:06}")}));
                if site.slow_creates > 0 {
                    site.slow_creates -= 1;
                    answer.set_delay(Duration::from_millis(2500))
                } else {
                    answer.set_delay(site.create_delay)
                }
            }
            ("PATCH", path) if path.starts_with("/incidents/") => {
                let id: i64 = path["/incidents/".len()..].parse().unwrap();
                let Some(incident) = site.incidents.get_mut(&id) else {
                    return ResponseTemplate::new(404);
                };
                incident.threads.extend(threads_of(&body));
                if let Some(status) = status_of(&body) {
                    incident.status = status;
                }
                ResponseTemplate::new(200)
            }
            ("GET", "/queryResults") => {
                site.lookups += 1;
                let query = request
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "query")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let prefix =
                    format!("SELECT id FROM incidents WHERE customFields.c.{KEY_FIELD} = '");
                let key = query
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix('\''))
                    .expect("the look-up Tocsin sends")
                    .replace("\\'", "'");
                let rows: Vec<Value> = site
                    .incidents
                    .iter()
                    .filter(|(_, incident)| incident.key == key)
                    .map(|(id, _)| json!([id.to_string()]))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"items": [
                    {"tableName": "incidents", "count": rows.len(), "columnNames": ["id"], "rows": rows}
                ]}))
            }
            _ => ResponseTemplate::new(404),
        }
    }
}

impl FakeB2c {
    /// A fake site, served while the returned server is kept.
    pub async fn serve() -> (MockServer, FakeB2c) {
        let fake = FakeB2c::default();
        (stand_in(fake.clone()).await, fake)
    }

    /// Waits until `done` holds for the site.
    pub async fn wait_for(&self, what: &str, tocsin: &Tocsin, done: impl Fn(&Site) -> bool) {
        let started = Instant::now();
        while !done(&self.0.lock().unwrap()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: not after 30 s; site holds {:?}\n{}",
                self.0.lock().unwrap().incidents,
                tocsin.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn incidents_for(&self, key: &str) -> Vec<Incident> {
        let site = self.0.lock().unwrap();
        site.incidents
            .values()
            .filter(|i| i.key == key)
            .cloned()
            .collect()
    }
}

/// The B2C action `b2c` to the fake site at `site` (its password: `agent-password`).
pub(crate) fn b2c_action(site: &str) -> Value {
    json!({
        "name": "b2c", "type": "ORACLE_B2C_INCIDENT", "state": "ENABLED",
        "properties": {
            "baseUrl": site, "username": "agent", "password": "agent-password",
            "primaryContactId": "635", "applicationContext": "Tocsin e2e",
            "severity_CRITICAL": "1 - Most Severe", "severity_ERROR": "2 - Severe",
            "severity_WARNING": "3 - Normal", "severity_INFO": "4 - Low",
            "status_FIRING": "Unresolved", "status_OK": "Solved"
        }
    })
}

fn routing(site: &str) -> Value {
    json!({
        "actions": [b2c_action(site)],
        "conditions": [
            {"name": "oci-alarms", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "OCIAlarm"},
            {"name": "disk-events", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "DiskFull"}
        ],
        "subscriptions": [{
            "name": "incidents", "state": "ENABLED",
            "conditions": ["oci-alarms", "disk-events"], "actions": ["b2c"]
        }]
    })
}

pub(crate) async fn post_alarm(tocsin: &Tocsin, alarm: &Value) {
    let response = tocsin
        .post("/oci/v1/notifications", alarm)
        .header("X-OCI-NS-MessageType", "Notification")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

pub(crate) fn disk_event(status: &str, body: &str) -> Value {
    json!({
        "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
        "subject": "Disk full on db-1", "body": body,
        "resource": {"resourceName": "db-1", "resourceType": "database"},
        "tags": {"ans:sourceEventId": "db-1-disk", "ans:status": status}
    })
}

/// The seed pair's OCI alarm messages, OK_TO_FIRING and FIRING_TO_OK, with a REPEAT of the
/// firing five minutes on between them: (firing, repeat, ok).
pub(crate) fn seed_pair_with_a_repeat() -> (Value, Value, Value) {
    let firing = fixture("ok-to-firing.seed.json");
    let mut repeat = firing.clone();
    repeat["type"] = json!("REPEAT");
    repeat["timestampEpochMillis"] = json!(1_597_101_300_000_i64);
    (firing, repeat, fixture("firing-to-ok.seed.json"))
}

/// Posts the seed pair's firing, a REPEAT of it and its OK to the three processes in turn
/// (each once the one before is on the site) and checks they made one incident with a thread
/// each, in order, and the close's status; returns the incident.
pub(crate) async fn seed_pair_is_one_incident(fake: &FakeB2c, to: [&Tocsin; 3]) -> Incident {
    let (firing, repeat, ok) = seed_pair_with_a_repeat();
    let dedupe_key = firing["dedupeKey"].as_str().unwrap().to_owned();

    post_alarm(to[0], &firing).await;
    fake.wait_for("the incident is created", to[0], |site| {
        !site.incidents.is_empty()
    })
    .await;
    post_alarm(to[1], &repeat).await;
    fake.wait_for("the repeat adds a thread", to[1], |site| {
        site.incidents.values().any(|i| i.threads.len() >= 2)
    })
    .await;
    post_alarm(to[2], &ok).await;
    fake.wait_for("the close sets the status", to[2], |site| {
        site.incidents.values().any(|i| i.status == "Solved")
    })
    .await;

    let incidents = fake.incidents_for(&dedupe_key);
    assert_eq!(
        incidents.len(),
        1,
        "one incident for the alarm: {incidents:?}"
    );
    let incident = incidents.into_iter().next().unwrap();
    assert_eq!(incident.status, "Solved", "status_OK");
    let threads = &incident.threads;
    assert_eq!(threads.len(), 3, "{threads:?}");
    assert!(
        threads[0].starts_with("[FIRING] Test Alert\n"),
        "{threads:?}"
    );
    assert!(
        threads[1].starts_with("[FIRING (repeat)] Test Alert"),
        "{threads:?}"
    );
    assert!(
        threads[2].starts_with("Resolved: [OK] Test Alert"),
        "{threads:?}"
    );
    incident
}

/// A fake site (served while the returned server is kept), and Tocsin on an embedded bus with
/// `env`, delivering to it.
pub(crate) async fn site_and_tocsin(env: &[(&str, &str)]) -> (MockServer, FakeB2c, Tocsin) {
    let (server, fake) = FakeB2c::serve().await;
    let tocsin = Tocsin::start(Backend::Embedded, &routing(&server.uri()), env).await;
    (server, fake, tocsin)
}

#[tokio::test]
async fn b2c_incident_follows_the_alarm_and_survives_a_timed_out_create() {
    let (_server, fake, tocsin) =
        site_and_tocsin(&[("TOCSIN_CHANNELS_REQUEST_TIMEOUT_MS", "1000")]).await;

    // The seed pair, with a REPEAT between them.
    let incident = seed_pair_is_one_incident(&fake, [&tocsin; 3]).await;
    assert_eq!(incident.subject, "[FIRING] Test Alert");
    assert_eq!(incident.primary_contact, json!({"id": 635}));
    assert_eq!(
        incident.severity,
        json!({"lookupName": "4 - Low"}),
        "severity_INFO"
    );
    assert!(incident.threads[0].contains("An alert is firing that needs attention in CX Service"));
    assert_eq!(fake.0.lock().unwrap().lookups, 0, "no look-up was needed");

    // A create answered after the request timeout (1 s): the incident exists on the site, but
    // Tocsin saw a timeout (905). The retry must find that incident, not create a second one.
    fake.0.lock().unwrap().slow_creates = 1;
    let timed_out = tocsin
        .send(&disk_event("CREATE_OR_UPDATE", "/var is 100% full"))
        .await;
    let attempts_path = format!(
        "/tocsin/v1/events/{}/attempts",
        timed_out["id"].as_str().unwrap()
    );
    let started = std::time::Instant::now();
    let attempts = loop {
        let attempts = tocsin.page(&attempts_path).await["attempts"].clone();
        if attempts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["outcome"] == "delivered")
        {
            break attempts;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{attempts}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(attempts[0]["code"], 905, "{attempts}");
    let reason = attempts[0]["reason"].as_str().unwrap();
    assert!(reason.ends_with("/…: no answer within 1000 ms"), "{reason}");
    assert_eq!(
        attempts[1]["outcome"], "delivered",
        "the retry found the incident: {attempts}"
    );
    assert_eq!(
        fake.incidents_for("db-1-disk").len(),
        1,
        "the site made it once"
    );

    tocsin
        .send(&disk_event("CREATE_OR_UPDATE", "/var is still 100% full"))
        .await;
    fake.wait_for("the repeat finds the incident", &tocsin, |site| {
        site.incidents
            .values()
            .any(|i| i.key == "db-1-disk" && i.threads.len() == 2)
    })
    .await;
    tocsin.send(&disk_event("CLOSE", "/var is at 60%")).await;
    fake.wait_for("the close reaches it", &tocsin, |site| {
        site.incidents
            .values()
            .any(|i| i.key == "db-1-disk" && i.status == "Solved")
    })
    .await;

    let incidents = fake.incidents_for("db-1-disk");
    assert_eq!(
        incidents.len(),
        1,
        "still exactly one incident: {incidents:?}"
    );
    assert_eq!(
        incidents[0].severity,
        json!({"lookupName": "1 - Most Severe"}),
        "FATAL as CRITICAL"
    );
    assert_eq!(incidents[0].threads.len(), 3, "{:?}", incidents[0].threads);
    {
        let site = fake.0.lock().unwrap();
        assert_eq!(
            site.lookups, 1,
            "one look-up, by the retry after the timed-out create"
        );
        assert!(
            site.contexts
                .iter()
                .all(|c| c.as_deref() == Some("Tocsin e2e")),
            "every request names the application context"
        );
    }
    let log = tocsin.log();
    assert!(!log.contains("agent-password"), "no secret in the log");
    tocsin.shutdown().await;
}
