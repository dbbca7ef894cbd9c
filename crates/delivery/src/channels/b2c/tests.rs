//! The B2C incident lifecycle against a loopback stand-in of the Connect REST API.

use super::*;
use crate::channels::tests::{action, attempt, job_with_id, tools};
use crate::channels::ChannelSettings;
use crate::failure::{Code, Retry};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const API: &str = "/services/rest/connect/v1.4";

fn b2c_action(server: &MockServer, extra: Value) -> Action {
    let mut properties = json!({
        "baseUrl": server.uri(), "username": "agent", "password": "pw",
        "primaryContactId": "635",
        "severity_CRITICAL": "1 - Most Severe", "severity_INFO": "4 - Low",
        "status_FIRING": "Unresolved", "status_OK": "Solved"
    });
    properties
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    action("b2c", "ORACLE_B2C_INCIDENT", properties)
}

/// An OCI alarm event for dedupe key `key`.
fn alarm(id: &str, key: &str, status: &str, subject: &str) -> DeliveryJob {
    let mut job = job_with_id(
        id,
        json!({"ans:sourceEventId": key, "ans:status": status, "oci:severity": "CRITICAL"}),
    );
    job.event.subject = subject.into();
    job
}

async fn requests(server: &MockServer) -> Vec<(String, String, Value)> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.method.to_string(), r.url.path().to_owned(), body)
        })
        .collect()
}

fn thread(text_start: &str, thread: &Value) {
    let text = thread["threads"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(text_start), "{text}");
    assert_eq!(
        thread["threads"][0]["entryType"],
        json!({"lookupName": "Note"})
    );
}

#[tokio::test]
async fn the_incident_follows_the_alert() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{API}/incidents")))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": 42, "lookupName": "200101-000001"}))
                .insert_header(ACCESS_TOKEN, "tok-1"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{API}/incidents/42")))
        .respond_with(ResponseTemplate::new(200))
        .expect(3)
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = B2cIncidentChannel::new(tools);
    let action = b2c_action(&server, json!({}));
    let firing = alarm("e1", "dk-1", "CREATE_OR_UPDATE", "[FIRING] Test Alert");
    let repeat = alarm(
        "e2",
        "dk-1",
        "CREATE_OR_UPDATE",
        "[FIRING (repeat)] Test Alert",
    );
    let ok = alarm("e3", "dk-1", "CLOSE", "[OK] Test Alert");
    let again = alarm("e4", "dk-1", "CREATE_OR_UPDATE", "[FIRING] Test Alert");
    for job in [&firing, &repeat, &repeat, &ok, &again] {
        assert_eq!(attempt(&channel, job, &action).await, Ok(()));
    }

    let sent = requests(&server).await;
    let summary: Vec<(&str, &str)> = sent
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    let incident = format!("{API}/incidents/42");
    assert_eq!(
        summary,
        [
            ("POST", format!("{API}/incidents").as_str()),
            ("PATCH", incident.as_str()),
            ("PATCH", incident.as_str()),
            ("PATCH", incident.as_str())
        ],
        "one create, then threads on the same incident; the redelivered repeat sent nothing"
    );
    let created = &sent[0].2;
    assert_eq!(created["subject"], "[FIRING] Test Alert");
    assert_eq!(created["primaryContact"], json!({"id": 635}));
    assert_eq!(
        created["severity"],
        json!({"lookupName": "1 - Most Severe"})
    );
    assert_eq!(
        created["statusWithType"],
        json!({"status": {"lookupName": "Unresolved"}})
    );
    assert_eq!(
        created["customFields"],
        json!({"c": {"oci_dedupe_key": "dk-1"}})
    );
    thread("[FIRING] Test Alert\n\nCPU has been above 90%", created);
    assert_eq!(
        sent[1].2.as_object().unwrap().len(),
        1,
        "a repeat only adds a thread"
    );
    thread("[FIRING (repeat)] Test Alert", &sent[1].2);
    assert_eq!(
        sent[2].2["statusWithType"],
        json!({"status": {"lookupName": "Solved"}})
    );
    thread("Resolved: [OK] Test Alert", &sent[2].2);
    assert_eq!(
        sent[3].2["statusWithType"],
        json!({"status": {"lookupName": "Unresolved"}}),
        "a firing after the close reopens"
    );

    let raw = server.received_requests().await.unwrap();
    let header = |i: usize, name: &str| {
        raw[i]
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header(0, "authorization"),
        Some(format!("Basic {}", BASE64.encode("agent:pw")))
    );
    assert_eq!(
        header(0, "osvc-crest-application-context").as_deref(),
        Some("Tocsin")
    );
    assert_eq!(header(0, "accept").as_deref(), Some("application/json"));
    assert_eq!(header(0, ACCESS_TOKEN), None);
    assert_eq!(header(1, ACCESS_TOKEN).as_deref(), Some("tok-1"), "echoed");
}

#[tokio::test]
async fn without_reopen_a_new_firing_opens_a_new_incident() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 42})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 43})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = B2cIncidentChannel::new(tools);
    let action = b2c_action(&server, json!({"reopen": false}));
    for job in [
        alarm("e1", "dk", "CREATE_OR_UPDATE", "a"),
        alarm("e2", "dk", "CLOSE", "b"),
        alarm("e3", "dk", "CREATE_OR_UPDATE", "c"),
        alarm("e4", "dk", "COMMENT", "d"),
    ] {
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
    }
    let sent = requests(&server).await;
    let summary: Vec<(&str, &str)> = sent
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("POST", format!("{API}/incidents").as_str()),
            ("PATCH", format!("{API}/incidents/42").as_str()),
            ("POST", format!("{API}/incidents").as_str()),
            ("PATCH", format!("{API}/incidents/43").as_str())
        ]
    );
    assert_eq!(
        sent[3].2.get("statusWithType"),
        None,
        "a comment changes no status"
    );
}

#[tokio::test]
async fn a_create_that_timed_out_is_looked_up_not_repeated() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": 7}))
                .set_delay(Duration::from_millis(1500)),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{API}/queryResults")))
        .and(query_param(
            "query",
            "SELECT id FROM incidents WHERE customFields.c.oci_dedupe_key = 'dk-\\'q'",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [
            {"tableName": "incidents", "count": 1, "columnNames": ["id"], "rows": [["7"]]}
        ]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{API}/incidents/7")))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let (tools, _dir) = crate::channels::tests::tools_with(ChannelSettings {
        max_in_flight_per_destination: 4,
        request_timeout_ms: 500,
        outbound_allow: crate::channels::tests::loopback(),
        ..ChannelSettings::default()
    });
    let channel = B2cIncidentChannel::new(tools);
    let action = b2c_action(&server, json!({}));
    let firing = alarm("e1", "dk-'q", "CREATE_OR_UPDATE", "a");
    let Err(timeout) = attempt(&channel, &firing, &action).await else {
        panic!("the create was answered in time");
    };
    assert_eq!(
        (timeout.code, timeout.retry),
        (Code::Timeout, Retry::OnSchedule)
    );
    // The retry of the same event finds the incident its create made: nothing more to send.
    assert_eq!(attempt(&channel, &firing, &action).await, Ok(()));
    // The repeat goes to that incident.
    let repeat = alarm("e2", "dk-'q", "CREATE_OR_UPDATE", "b");
    assert_eq!(attempt(&channel, &repeat, &action).await, Ok(()));
}

#[tokio::test]
async fn site_errors_keep_status_and_code_and_throttling_says_when() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/throttled/services/rest/connect/v1.4/incidents"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header(NEXT_REQUEST_AFTER, "2500")
                .set_body_json(json!({"type": "https://x/services/rest/connect/exceptions/OSC-CREST-00035", "title": "Too many requests", "status": 503, "o:errorCode": "OSC-CREST-00035"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/refused/services/rest/connect/v1.4/incidents"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "type": "https://x/services/rest/connect/exceptions/OSC-CREST-00006",
            "title": "An attempt to write a resource failed", "status": 400,
            "detail": "Invalid ID: No such Contact with ID = 209",
            "o:errorCode": "OSC-CREST-00006"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/locked/services/rest/connect/v1.4/incidents"))
        .respond_with(ResponseTemplate::new(401).set_body_string("Access Denied"))
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = B2cIncidentChannel::new(tools);
    let fail = |site: &'static str, extra: Value| {
        let mut action = b2c_action(&server, extra);
        if !site.is_empty() {
            action.properties.insert(
                "baseUrl".into(),
                model::config::PropertyValue::Text(format!("{}/{site}", server.uri())),
            );
        }
        let channel = &channel;
        async move {
            match attempt(
                channel,
                &alarm("e1", site, "CREATE_OR_UPDATE", "s"),
                &action,
            )
            .await
            {
                Err(f) => f,
                Ok(()) => panic!("{site} delivered"),
            }
        }
    };
    let throttled = fail("throttled", json!({})).await;
    assert_eq!(
        (throttled.code, throttled.retry),
        (Code::Http(503), Retry::After(Duration::from_millis(2500)))
    );
    assert!(
        throttled
            .reason
            .contains("OSC-CREST-00035: Too many requests"),
        "{}",
        throttled.reason
    );
    let refused = fail("refused", json!({})).await;
    assert_eq!(
        (refused.code, refused.retry),
        (Code::Http(400), Retry::Never)
    );
    assert!(
        refused.reason.ends_with("OSC-CREST-00006: An attempt to write a resource failed: Invalid ID: No such Contact with ID = 209"),
        "{}",
        refused.reason
    );
    let locked = fail("locked", json!({})).await;
    assert_eq!((locked.code, locked.retry), (Code::Http(401), Retry::Never));
    assert!(!locked.reason.contains("pw"));
    for (extra, complaint) in [
        (
            json!({"primaryContactId": "someone"}),
            "`properties.primaryContactId`",
        ),
        (
            json!({"applicationContext": "x".repeat(41)}),
            "`properties.applicationContext`",
        ),
        (json!({"keyField": "a = 1 OR 1"}), "`properties.keyField`"),
        (json!({"apiVersion": "../v1"}), "`properties.apiVersion`"),
    ] {
        let failure = fail("", extra).await;
        assert_eq!(
            (failure.code, failure.retry),
            (Code::BadAction, Retry::Never)
        );
        assert!(failure.reason.contains(complaint), "{}", failure.reason);
    }
}
