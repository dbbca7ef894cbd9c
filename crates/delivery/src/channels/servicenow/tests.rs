//! The ServiceNow record lifecycle against a loopback stand-in of the Table API.

use super::*;
use crate::channels::tests::{action, attempt, job_with_id, loopback, tools};
use crate::channels::ChannelSettings;
use crate::failure::Retry;
use wiremock::matchers::{
    basic_auth, bearer_token, body_string_contains, header, method, path, query_param,
};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TABLE: &str = "/api/now/table/incident";
const SYS_ID: &str = "9d385017c611228701d22104cc95c371";

fn servicenow(server: &MockServer, extra: Value) -> Action {
    let mut properties = json!({
        "instanceUrl": server.uri(), "username": "tocsin.integration", "password": "pw"
    });
    properties
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    action("sn", "SERVICE_NOW", properties)
}

/// An event of alert `key` with `ans:status` `status`.
fn alarm(id: &str, key: &str, status: &str, subject: &str) -> DeliveryJob {
    let mut job = job_with_id(id, json!({"ans:sourceEventId": key, "ans:status": status}));
    job.event.subject = subject.into();
    job
}

fn created(sys_id: &str) -> ResponseTemplate {
    ResponseTemplate::new(201)
        .insert_header("Location", format!("https://x{TABLE}/{sys_id}").as_str())
        .set_body_json(json!({"result": {"sys_id": sys_id, "number": "INC0010001", "state": "1"}}))
}

fn updated() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}}))
}

fn found(records: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ "result": records }))
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

fn summary(sent: &[(String, String, Value)]) -> Vec<(&str, &str)> {
    sent.iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect()
}

/// A channel whose requests time out after 500 ms.
fn impatient() -> (ServiceNowChannel, tempfile::TempDir) {
    let (tools, dir) = crate::channels::tests::tools_with(ChannelSettings {
        max_in_flight_per_destination: 4,
        request_timeout_ms: 500,
        outbound_allow: loopback(),
        ..ChannelSettings::default()
    });
    (ServiceNowChannel::new(tools), dir)
}

#[tokio::test]
async fn the_incident_follows_the_alert() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .and(basic_auth("tocsin.integration", "pw"))
        .and(header("accept", "application/json"))
        .respond_with(created(SYS_ID))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{TABLE}/{SYS_ID}")))
        .and(basic_auth("tocsin.integration", "pw"))
        .respond_with(updated())
        .expect(4)
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = servicenow(
        &server,
        json!({"assignmentGroup": "287ebd7da9fe198100f92cc8d1d2154e",
               "callerId": "6816f79cc0a8016401c5a33be04be441",
               "urgency_FATAL": "2", "resolveState": "7",
               "closeCode": "Closed/Resolved by Caller",
               "closeNotesTemplate": "Cleared: {{ event.subject }}"}),
    );
    let firing = alarm("e1", "db-1-disk", "CREATE_OR_UPDATE", "[FIRING] Disk full");
    let repeat = alarm(
        "e2",
        "db-1-disk",
        "CREATE_OR_UPDATE",
        "[FIRING] Disk still full",
    );
    let comment = alarm("e3", "db-1-disk", "COMMENT", "Someone looks at it");
    let ok = alarm("e4", "db-1-disk", "CLOSE", "[OK] Disk full");
    let again = alarm(
        "e5",
        "db-1-disk",
        "CREATE_OR_UPDATE",
        "[FIRING] Disk full again",
    );
    for job in [&firing, &repeat, &repeat, &comment, &ok, &again] {
        assert_eq!(attempt(&channel, job, &action).await, Ok(()));
    }
    let linked = channel.tools.links.of_keys(&["db-1-disk"]).await.unwrap();
    let link = &linked[0].link;
    assert_eq!(
        (link.state, link.target.as_str(), link.name.as_str()),
        (LinkState::Open, SYS_ID, "INC0010001"),
        "the number the create answered stays with the record through its updates"
    );

    let sent = requests(&server).await;
    let record = format!("{TABLE}/{SYS_ID}");
    assert_eq!(
        summary(&sent),
        [
            ("POST", TABLE),
            ("PATCH", record.as_str()),
            ("PATCH", record.as_str()),
            ("PATCH", record.as_str()),
            ("PATCH", record.as_str())
        ],
        "one create, then updates of the same record; the redelivered repeat sent nothing"
    );
    let create = &sent[0].2;
    assert_eq!(create["short_description"], "[FIRING] Disk full");
    assert!(
        create["description"]
            .as_str()
            .unwrap()
            .starts_with("[FIRING] Disk full\n\nCPU has been above 90%"),
        "{create}"
    );
    assert_eq!(create["urgency"], "2", "urgency_FATAL overrides");
    assert_eq!(create["impact"], "1", "FATAL is high impact by default");
    assert_eq!(create["correlation_id"], "tocsin:db-1-disk");
    assert_eq!(
        create["assignment_group"],
        "287ebd7da9fe198100f92cc8d1d2154e"
    );
    assert_eq!(create["caller_id"], "6816f79cc0a8016401c5a33be04be441");
    assert_eq!(
        create.get("state"),
        None,
        "the instance sets the first state"
    );

    let note = &sent[1].2;
    assert_eq!(
        note.as_object().unwrap().len(),
        1,
        "a repeat only adds a work note"
    );
    assert!(note["work_notes"]
        .as_str()
        .unwrap()
        .starts_with("[FIRING] Disk still full"));
    assert_eq!(
        sent[2].2.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["work_notes"]
    );
    assert_eq!(
        sent[3].2,
        json!({"state": "7", "close_code": "Closed/Resolved by Caller",
               "close_notes": "Cleared: [OK] Disk full"}),
        "the close resolves with the configured state, code and notes"
    );
    let reopen = &sent[4].2;
    assert_eq!(reopen["state"], "2", "a firing after the close reopens");
    assert!(reopen["work_notes"]
        .as_str()
        .unwrap()
        .starts_with("[FIRING] Disk full again"));
}

#[tokio::test]
async fn a_case_table_gets_its_own_resolution_field_and_defaults_apply() {
    let server = MockServer::start().await;
    let cases = "/api/now/table/sn_customerservice_case";
    Mock::given(method("POST"))
        .and(path(cases))
        .respond_with(created(SYS_ID))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{cases}/{SYS_ID}")))
        .respond_with(updated())
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = servicenow(
        &server,
        json!({"table": "sn_customerservice_case", "closeCodeField": "resolution_code",
               "resolveState": "6", "reopenState": "10"}),
    );
    let mut warning = alarm("c1", "case-1", "CREATE_OR_UPDATE", "Slow checkout");
    warning.event.severity = model::Severity::Warning;
    attempt(&channel, &warning, &action).await.unwrap();
    let close = alarm("c2", "case-1", "CLOSE", "Checkout fast again");
    attempt(&channel, &close, &action).await.unwrap();
    let again = alarm("c3", "case-1", "CREATE_OR_UPDATE", "Slow checkout");
    attempt(&channel, &again, &action).await.unwrap();

    let sent = requests(&server).await;
    assert_eq!(sent[0].2["urgency"], "2", "WARNING: medium urgency");
    assert_eq!(sent[0].2["impact"], "3", "WARNING: low impact");
    let resolution = sent[1].2.as_object().unwrap();
    assert_eq!(resolution["state"], "6");
    assert_eq!(resolution["resolution_code"], "Solved (Permanently)");
    assert!(!resolution.contains_key("close_code"));
    assert!(
        resolution["close_notes"]
            .as_str()
            .unwrap()
            .starts_with("Resolved: Checkout fast again"),
        "close notes default to the body: {resolution:?}"
    );
    assert_eq!(sent[2].2["state"], "10");
}

/// The stand-in creates the record but its answer is lost (too slow, or a proxy's 502): the
/// next attempt looks the record up by `correlation_id` and does not create it twice.
#[tokio::test]
async fn a_create_whose_answer_was_lost_is_found_not_repeated() {
    for lost in [
        created(SYS_ID).set_delay(Duration::from_millis(1500)),
        ResponseTemplate::new(502).set_body_string("Bad Gateway"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(TABLE))
            .respond_with(lost)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(TABLE))
            .and(query_param(
                "sysparm_query",
                "correlation_id=tocsin:db-1-disk^active=true^ORDERBYDESCsys_created_on",
            ))
            .and(query_param("sysparm_limit", "2"))
            .respond_with(found(json!([{"sys_id": SYS_ID, "number": "INC0010001",
                                         "state": "1", "correlation_id": "tocsin:db-1-disk"}])))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("PATCH"))
            .and(path(format!("{TABLE}/{SYS_ID}")))
            .respond_with(updated())
            .expect(1)
            .mount(&server)
            .await;
        let (channel, _dir) = impatient();
        let action = servicenow(&server, json!({}));
        let firing = alarm("e1", "db-1-disk", "CREATE_OR_UPDATE", "a");
        let Err(failure) = attempt(&channel, &firing, &action).await else {
            panic!("the create's answer arrived");
        };
        assert!(failure.is_retryable(), "{failure:?}");
        // The retry of the same event finds the record its create made: nothing more to send.
        assert_eq!(attempt(&channel, &firing, &action).await, Ok(()));
        // The repeat goes to that record.
        let repeat = alarm("e2", "db-1-disk", "CREATE_OR_UPDATE", "b");
        assert_eq!(attempt(&channel, &repeat, &action).await, Ok(()));
    }
}

#[tokio::test]
async fn a_lost_create_that_made_nothing_is_made_again_and_strangers_are_not_taken() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .respond_with(created(SYS_ID))
        .mount(&server)
        .await;
    // A table that ignored the `correlation_id` part of the query answers with another record.
    Mock::given(method("GET"))
        .and(path(TABLE))
        .respond_with(found(json!([{"sys_id": "0000000000000000000000000000beef",
                                     "correlation_id": ""}])))
        .expect(1)
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = servicenow(&server, json!({}));
    let firing = alarm("e1", "k", "CREATE_OR_UPDATE", "a");
    let failure = attempt(&channel, &firing, &action).await.unwrap_err();
    assert_eq!(
        (failure.code, failure.retry),
        (Code::Http(503), Retry::OnSchedule)
    );
    assert_eq!(attempt(&channel, &firing, &action).await, Ok(()));
    assert_eq!(
        summary(&requests(&server).await),
        [("POST", TABLE), ("GET", TABLE), ("POST", TABLE)]
    );
}

#[tokio::test]
async fn a_close_for_an_unknown_key_looks_the_record_up() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(TABLE))
        .respond_with(found(
            json!([{"sys_id": SYS_ID, "correlation_id": "tocsin:lost"}]),
        ))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{TABLE}/{SYS_ID}")))
        .respond_with(updated())
        .expect(1)
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = servicenow(&server, json!({}));
    let close = alarm("e9", "lost", "CLOSE", "ok");
    assert_eq!(attempt(&channel, &close, &action).await, Ok(()));
    let sent = requests(&server).await;
    assert_eq!(sent[1].2["state"], "6");
    assert_eq!(sent[1].2["close_code"], "Solved (Permanently)");
}

#[tokio::test]
async fn an_oauth_token_is_fetched_once_and_reused_and_renewed_when_refused() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth_token.do"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("grant_type=password"))
        .and(body_string_contains("client_id=c1"))
        .and(body_string_contains("client_secret=s%26cret"))
        .and(body_string_contains("username=tocsin.integration"))
        .and(body_string_contains("password=pw"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "scope": "useraccount", "token_type": "Bearer", "expires_in": 1799,
            "refresh_token": "r1", "access_token": "tok-1"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .and(bearer_token("tok-1"))
        .respond_with(created(SYS_ID))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(bearer_token("tok-1"))
        .respond_with(updated())
        .expect(2)
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = servicenow(
        &server,
        json!({"oauthClientId": "c1", "oauthClientSecret": "s&cret"}),
    );
    for (id, status) in [
        ("e1", "CREATE_OR_UPDATE"),
        ("e2", "CREATE_OR_UPDATE"),
        ("e3", "COMMENT"),
    ] {
        let job = alarm(id, "k", status, "s");
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()), "{id}");
    }
    server.verify().await;
    // The instance revokes tok-1: a 401 gets a new token and the request goes again.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/oauth_token.do"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": "1799", "access_token": "tok-2"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(bearer_token("tok-1"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": {"message": "User Not Authenticated",
                      "detail": "Required to provide Auth information"},
            "status": "failure"})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(bearer_token("tok-2"))
        .respond_with(updated())
        .expect(2)
        .mount(&server)
        .await;
    for id in ["e4", "e5"] {
        let job = alarm(id, "k", "COMMENT", "s");
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()), "{id}");
    }
}

#[tokio::test]
async fn failures_are_classified_with_what_servicenow_said() {
    let server = MockServer::start().await;
    let refuse = |status: u16, message: &str, detail: &str| {
        ResponseTemplate::new(status).set_body_json(json!({
            "error": {"message": message, "detail": detail}, "status": "failure"}))
    };
    for (instance, answer) in [
        (
            "bad",
            refuse(400, "Invalid request", "Field urgency: invalid value 9"),
        ),
        (
            "locked",
            refuse(
                401,
                "User Not Authenticated",
                "Required to provide Auth information",
            ),
        ),
        (
            "acl",
            refuse(
                403,
                "Operation Failed",
                "ACL Exception Insert Failed due to security constraints",
            ),
        ),
        ("gone", refuse(404, "Invalid table nope", "")),
        (
            "limited",
            refuse(
                429,
                "Rate limit exceeded",
                "Rate limit of 10 requests per hour for Table API exceeded",
            )
            .insert_header("Retry-After", "30"),
        ),
        (
            "down",
            ResponseTemplate::new(503).set_body_string("<html>Hibernating</html>"),
        ),
    ] {
        Mock::given(method("POST"))
            .and(path(format!("/{instance}{TABLE}")))
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/oauth/oauth_token.do"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error_description": "access_denied", "error": "server_error"})))
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let fail = |instance: &'static str, extra: Value| {
        let mut action = servicenow(&server, extra);
        action.properties.insert(
            "instanceUrl".into(),
            model::config::PropertyValue::Text(format!("{}/{instance}", server.uri())),
        );
        let channel = &channel;
        async move {
            match attempt(
                channel,
                &alarm("e1", instance, "CREATE_OR_UPDATE", "s"),
                &action,
            )
            .await
            {
                Err(f) => f,
                Ok(()) => panic!("{instance} delivered"),
            }
        }
    };
    for (instance, code, said) in [
        (
            "bad",
            400,
            "Invalid request: Field urgency: invalid value 9",
        ),
        (
            "locked",
            401,
            "User Not Authenticated: Required to provide Auth information",
        ),
        (
            "acl",
            403,
            "Operation Failed: ACL Exception Insert Failed due to security constraints",
        ),
        ("gone", 404, "Invalid table nope"),
    ] {
        let failure = fail(instance, json!({})).await;
        assert_eq!(
            (failure.code, failure.retry),
            (Code::Http(code), Retry::Never)
        );
        assert!(failure.reason.ends_with(said), "{}", failure.reason);
        assert!(!failure.reason.contains("pw"), "{}", failure.reason);
    }
    let limited = fail("limited", json!({})).await;
    assert_eq!(
        (limited.code, limited.retry),
        (Code::Http(429), Retry::After(Duration::from_secs(30)))
    );
    assert!(
        limited
            .reason
            .contains("Rate limit exceeded: Rate limit of 10"),
        "{}",
        limited.reason
    );
    let down = fail("down", json!({})).await;
    assert_eq!(
        (down.code, down.retry),
        (Code::Http(503), Retry::OnSchedule)
    );
    let denied = fail(
        "oauth",
        json!({"oauthClientId": "c1", "oauthClientSecret": "topsecret"}),
    )
    .await;
    assert_eq!((denied.code, denied.retry), (Code::Http(401), Retry::Never));
    assert!(
        denied.reason.starts_with("OAuth token: ")
            && denied.reason.ends_with("server_error: access_denied"),
        "{}",
        denied.reason
    );
    assert!(!denied.reason.contains("topsecret"));
}

#[test]
fn properties_that_cannot_work_are_refused_and_odd_keys_are_hashed() {
    let outbound = crate::outbound::OutboundPolicy::new(loopback());
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let base =
        json!({"instanceUrl": "https://acme.service-now.com", "username": "u", "password": "p"});
    for (extra, complaint) in [
        (json!({"instanceUrl": null}), "`properties.instanceUrl`"),
        (
            json!({"instanceUrl": "https://acme.service-now.com/?x=1"}),
            "`properties.instanceUrl`",
        ),
        (
            json!({"instanceUrl": "http://169.254.169.254"}),
            "`properties.instanceUrl`",
        ),
        (json!({"password": null}), "`properties.password`"),
        (
            json!({"oauthClientId": "c1"}),
            "`properties.oauthClientSecret`",
        ),
        (
            json!({"oauthClientSecret": "s"}),
            "`properties.oauthClientId`",
        ),
        (
            json!({"table": "incident/../sys_user"}),
            "`properties.table`",
        ),
        (
            json!({"closeCodeField": "close code"}),
            "`properties.closeCodeField`",
        ),
        (json!({"urgency_FATAL": "4"}), "`properties.urgency_FATAL`"),
        (
            json!({"impact_CRITICAL": "1"}),
            "`properties.impact_CRITICAL`",
        ),
        (
            json!({"resolveState": "Resolved"}),
            "`properties.resolveState`",
        ),
        (
            json!({"closeNotesTemplate": "{{ x"}),
            "`properties.closeNotesTemplate`",
        ),
    ] {
        let mut properties = base.clone();
        for (name, value) in extra.as_object().unwrap() {
            match value {
                Value::Null => drop(properties.as_object_mut().unwrap().remove(name)),
                value => properties[name] = value.clone(),
            }
        }
        let action = action("sn", "SERVICE_NOW", properties);
        let error = channel
            .configure(&Properties::of(&action, &outbound))
            .err()
            .unwrap_or_else(|| panic!("{extra} accepted"));
        assert!(error.to_string().contains(complaint), "{extra}: {error}");
    }
    assert_eq!(correlation_id("db-1-disk"), "tocsin:db-1-disk");
    for odd in ["a^active=false".to_owned(), "k".repeat(100), String::new()] {
        let id = correlation_id(&odd);
        assert_eq!(id.len(), "tocsin:".len() + 64, "{odd}");
        assert_eq!(id, correlation_id(&odd), "the same key, the same id");
    }
}

/// A firing after the incident was closed for good (read-only: 403) opens a new incident; a
/// lost answer to that create is not mistaken for the old one.
#[tokio::test]
async fn a_firing_after_a_final_close_opens_a_new_incident() {
    const NEW: &str = "00000000000000000000000000000002";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .respond_with(created(SYS_ID))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(TABLE))
        .respond_with(created(NEW))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{TABLE}/{SYS_ID}")))
        .and(wiremock::matchers::body_partial_json(json!({"state": "2"})))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "error": {"message": "Operation Failed",
                      "detail": "ACL Exception Update Failed due to security constraints"},
            "status": "failure"})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(updated())
        .mount(&server)
        .await;
    // The look-up after the lost create sees only the old incident (still active).
    Mock::given(method("GET"))
        .and(path(TABLE))
        .respond_with(found(
            json!([{"sys_id": SYS_ID, "correlation_id": "tocsin:k"}]),
        ))
        .mount(&server)
        .await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = servicenow(&server, json!({}));
    for job in [
        alarm("e1", "k", "CREATE_OR_UPDATE", "a"),
        alarm("e2", "k", "CLOSE", "b"),
    ] {
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
    }
    let again = alarm("e3", "k", "CREATE_OR_UPDATE", "c");
    let lost = attempt(&channel, &again, &action).await.unwrap_err();
    assert_eq!(lost.code, Code::Http(502));
    assert_eq!(attempt(&channel, &again, &action).await, Ok(()));
    let repeat = alarm("e4", "k", "CREATE_OR_UPDATE", "d");
    assert_eq!(attempt(&channel, &repeat, &action).await, Ok(()));
    let sent = requests(&server).await;
    let new = format!("{TABLE}/{NEW}");
    let old = format!("{TABLE}/{SYS_ID}");
    assert_eq!(
        summary(&sent),
        [
            ("POST", TABLE),
            ("PATCH", old.as_str()),
            ("PATCH", old.as_str()),
            ("POST", TABLE),
            ("GET", TABLE),
            ("POST", TABLE),
            ("PATCH", new.as_str())
        ],
        "create, resolve, reopen refused, lost create, look-up (only the old one), create, note"
    );
}

/// A stand-in on a raw socket that reads the create and drops the connection without an
/// answer (the instance made the record all the same), then answers the look-up and the work
/// note. Returns its address and the request lines it read.
async fn dropping_stand_in() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                loop {
                    // One request: headers, then `content-length` bytes of body.
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    let head_end = loop {
                        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while request.len() < head_end + length {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    log.lock().unwrap().push(line.clone());
                    let body = if line.starts_with("POST") {
                        return; // the connection drops: no answer
                    } else if line.starts_with("GET") {
                        json!({"result": [{"sys_id": SYS_ID, "correlation_id": "tocsin:k"}]})
                    } else {
                        json!({"result": {"sys_id": SYS_ID}})
                    }
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, seen)
}

#[tokio::test]
async fn a_create_whose_connection_dropped_is_found_not_repeated() {
    let (address, seen) = dropping_stand_in().await;
    let (tools, _dir) = tools();
    let channel = ServiceNowChannel::new(tools);
    let action = action(
        "sn",
        "SERVICE_NOW",
        json!({"instanceUrl": address, "username": "u", "password": "p"}),
    );
    let firing = alarm("e1", "k", "CREATE_OR_UPDATE", "a");
    let dropped = attempt(&channel, &firing, &action).await.unwrap_err();
    assert_eq!(
        (dropped.code, dropped.retry),
        (Code::Connection, Retry::OnSchedule),
        "{}",
        dropped.reason
    );
    assert_eq!(attempt(&channel, &firing, &action).await, Ok(()));
    let repeat = alarm("e2", "k", "CREATE_OR_UPDATE", "b");
    assert_eq!(attempt(&channel, &repeat, &action).await, Ok(()));
    let methods: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|line| line.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(methods, ["POST", "GET", "PATCH"], "one create only");
}
