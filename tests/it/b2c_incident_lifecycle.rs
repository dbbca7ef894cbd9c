//! End to end: the real binary delivers OCI alarms and ANS events to an Oracle B2C Service
//! site — a stateful fake of the Connect REST API on loopback that keeps incidents, threads
//! and statuses and answers ROQL look-ups by custom field.
//!
//! The seed pair (OK_TO_FIRING, FIRING_TO_OK) with a REPEAT between them, posted as OCI
//! Notifications would, makes exactly one incident, adds one thread for the repeat, and closes
//! it with the mapped status. A create whose answer comes after Tocsin's request timeout is
//! found again by its custom field: still exactly one incident for its key.

use crate::common::{Backend, Tocsin};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const API: &str = "/services/rest/connect/v1.4";
const KEY_FIELD: &str = "oci_dedupe_key";

#[derive(Debug, Clone)]
struct Incident {
    subject: String,
    primary_contact: Value,
    severity: Value,
    status: String,
    key: String,
    threads: Vec<String>,
}

#[derive(Default)]
struct Site {
    incidents: BTreeMap<i64, Incident>,
    /// Creates still to answer late (after the incident is made).
    slow_creates: usize,
    lookups: usize,
    contexts: Vec<Option<String>>,
}

/// The fake site: incidents in memory, answers as B2C documents them.
#[derive(Clone, Default)]
struct FakeB2c(Arc<Mutex<Site>>);

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
                    answer
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
    /// Waits until `done` holds for the site.
    async fn wait_for(&self, what: &str, tocsin: &Tocsin, done: impl Fn(&Site) -> bool) {
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

    fn incidents_for(&self, key: &str) -> Vec<Incident> {
        let site = self.0.lock().unwrap();
        site.incidents
            .values()
            .filter(|i| i.key == key)
            .cloned()
            .collect()
    }
}

fn routing(site: &str) -> Value {
    json!({
        "actions": [{
            "name": "b2c", "type": "ORACLE_B2C_INCIDENT", "state": "ENABLED",
            "properties": {
                "baseUrl": site, "username": "agent", "password": "agent-password",
                "primaryContactId": "635", "applicationContext": "Tocsin e2e",
                "severity_CRITICAL": "1 - Most Severe", "severity_ERROR": "2 - Severe",
                "severity_WARNING": "3 - Normal", "severity_INFO": "4 - Low",
                "status_FIRING": "Unresolved", "status_OK": "Solved"
            }
        }],
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

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oci")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn post_alarm(tocsin: &Tocsin, alarm: &Value) {
    let response = tocsin
        .post("/oci/v1/notifications", alarm)
        .header("X-OCI-NS-MessageType", "Notification")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

fn disk_event(status: &str, body: &str) -> Value {
    json!({
        "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
        "subject": "Disk full on db-1", "body": body,
        "resource": {"resourceName": "db-1", "resourceType": "database"},
        "tags": {"ans:sourceEventId": "db-1-disk", "ans:status": status}
    })
}

#[tokio::test]
async fn b2c_incident_follows_the_alarm_and_survives_a_timed_out_create() {
    let server = MockServer::start().await;
    let fake = FakeB2c::default();
    Mock::given(any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &routing(&server.uri()),
        &[("TOCSIN_CHANNELS_REQUEST_TIMEOUT_MS", "1000")],
    )
    .await;

    // The seed pair, with a REPEAT between them.
    let firing = fixture("ok-to-firing.seed.json");
    let dedupe_key = firing["dedupeKey"].as_str().unwrap().to_owned();
    let mut repeat = firing.clone();
    repeat["type"] = json!("REPEAT");
    repeat["timestampEpochMillis"] = json!(1_597_101_300_000_i64);
    let ok = fixture("firing-to-ok.seed.json");

    post_alarm(&tocsin, &firing).await;
    fake.wait_for("the incident is created", &tocsin, |site| {
        !site.incidents.is_empty()
    })
    .await;
    post_alarm(&tocsin, &repeat).await;
    fake.wait_for("the repeat adds a thread", &tocsin, |site| {
        site.incidents.values().any(|i| i.threads.len() == 2)
    })
    .await;
    post_alarm(&tocsin, &ok).await;
    fake.wait_for("the close sets the status", &tocsin, |site| {
        site.incidents.values().any(|i| i.status == "Solved")
    })
    .await;

    let incidents = fake.incidents_for(&dedupe_key);
    assert_eq!(
        incidents.len(),
        1,
        "one incident for the alarm: {incidents:?}"
    );
    let incident = &incidents[0];
    assert_eq!(incident.subject, "[FIRING] Test Alert");
    assert_eq!(incident.primary_contact, json!({"id": 635}));
    assert_eq!(
        incident.severity,
        json!({"lookupName": "4 - Low"}),
        "severity_INFO"
    );
    assert_eq!(incident.status, "Solved", "status_OK");
    assert_eq!(incident.threads.len(), 3, "{:?}", incident.threads);
    assert!(
        incident.threads[0].starts_with("[FIRING] Test Alert\n"),
        "{:?}",
        incident.threads
    );
    assert!(incident.threads[0].contains("An alert is firing that needs attention in CX Service"));
    assert!(
        incident.threads[1].starts_with("[FIRING (repeat)] Test Alert"),
        "{:?}",
        incident.threads
    );
    assert!(
        incident.threads[2].starts_with("Resolved: [OK] Test Alert"),
        "{:?}",
        incident.threads
    );
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
