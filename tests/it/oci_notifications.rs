//! The OCI Notifications endpoint, end to end against the real binary: the confirmation
//! handshake with a local server standing in for OCI (its host on the allow-list) and the SSRF
//! refusal of a foreign host; every fixture and documented variant accepted, normalized and
//! stored; redeliveries acknowledged and published once, also after a restart; bad input
//! answered 4xx with nothing published; credentials scoped to the endpoint.

use crate::common::{Backend, Tocsin};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use warp::Filter;

const ENDPOINT: &str = "/oci/v1/notifications";
const MATCHED: &str = "/cf/consumer/v1/matched-events";

/// STORE every event, whatever it is: what is published is what is stored.
pub(crate) fn store_everything() -> Value {
    json!({
        "actions": [{"name": "to-store", "type": "STORE", "state": "ENABLED"}],
        "conditions": [],
        "subscriptions": [{"name": "all", "state": "ENABLED", "conditions": [], "actions": ["to-store"]}]
    })
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oci")
}

pub(crate) fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// Starts Tocsin with `toml` as its settings file.
async fn start(toml: &str, env: &[(&str, &str)]) -> Tocsin {
    Tocsin::start_with_settings(Backend::Embedded, &store_everything(), toml, env).await
}

/// POSTs `body` as OCI Notifications would, with message id `message_id`.
pub(crate) async fn deliver(tocsin: &Tocsin, body: &Value, message_id: &str) -> reqwest::Response {
    tocsin
        .post(ENDPOINT, body)
        .header("X-OCI-NS-MessageType", "Notification")
        .header("X-OCI-NS-MessageId", message_id)
        .header("X-OCI-NS-TopicOcid", "ocid1.onstopic.oc1.phx.exampletopic")
        .header("X-OCI-NS-TopicName", "alarms")
        .send()
        .await
        .unwrap()
}

pub(crate) async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A stand-in for the OCI Notifications service: records every request it gets, and answers
/// 500 to those under a `/failing/` path.
pub(crate) async fn fake_oci() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let routes = warp::path::full()
        .and(warp::method())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(
            move |path: warp::path::FullPath, method: warp::http::Method, query: String| {
                record
                    .lock()
                    .unwrap()
                    .push(format!("{method} {}?{query}", path.as_str()));
                let status = if path.as_str().contains("/failing/") {
                    warp::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    warp::http::StatusCode::OK
                };
                warp::reply::with_status(warp::reply::json(&json!({"status": "ACTIVE"})), status)
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    (format!("http://{address}"), seen)
}

/// Sends the fixture's confirmation handshake with `url` as the ConfirmationURL.
pub(crate) async fn confirmation(
    tocsin: &Tocsin,
    url: &str,
    subscription: &str,
) -> reqwest::Response {
    let headers =
        std::fs::read_to_string(fixtures().join("subscription-confirmation.headers")).unwrap();
    let mut request = tocsin
        .http
        .post(tocsin.url(ENDPOINT))
        .basic_auth(&tocsin.user, Some(&tocsin.password))
        .json(&json!({"ConfirmationURL": url}));
    for line in headers.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line.split_once(": ").unwrap();
        if name.eq_ignore_ascii_case("content-type") {
            continue; // set by .json()
        }
        let value = match name {
            "X-OCI-NS-ConfirmationURL" => url,
            "X-OCI-NS-SubscriptionId" => subscription,
            _ => value,
        };
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

pub(crate) async fn subscriptions(tocsin: &Tocsin) -> Vec<Value> {
    let response = tocsin.get("/oci/v1/subscriptions").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["subscriptions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_confirmation_handshake_is_completed_only_with_allowed_hosts() {
    let (oci, requests) = fake_oci().await;
    let tocsin = start(
        "[sources.oci]\nconfirm_allow_hosts = [\"127.0.0.1\"]\n",
        &[],
    )
    .await;

    // The stand-in's host is on the allow-list: Tocsin fetches the URL, token and all.
    let url = format!(
        "{oci}/20181201/subscriptions/ocid1.onssubscription.oc1.phx.local/confirmation?token=tok-123&protocol=CUSTOM_HTTPS"
    );
    let (status, body) =
        status_and_body(confirmation(&tocsin, &url, "ocid1.onssubscription.oc1.phx.local").await)
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "CONFIRMED");
    assert_eq!(
        *requests.lock().unwrap(),
        ["GET /20181201/subscriptions/ocid1.onssubscription.oc1.phx.local/confirmation?token=tok-123&protocol=CUSTOM_HTTPS"]
    );

    // A confirmation URL on a foreign host is refused and never fetched.
    let foreign = format!("https://attacker.example/steal?token=tok-456&next={oci}");
    let (status, body) = status_and_body(
        confirmation(&tocsin, &foreign, "ocid1.onssubscription.oc1.phx.evil").await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("`ConfirmationURL` has host `attacker.example`"),
        "{message}"
    );
    // Not even the stand-in, named in the foreign URL, was asked for anything.
    assert_eq!(requests.lock().unwrap().len(), 1);

    // An allowed URL that does not answer 2xx: 502 FAILED, and OCI may try again.
    let failing = format!("{oci}/20181201/subscriptions/failing/confirmation?token=tok-789");
    let (status, body) = status_and_body(
        confirmation(&tocsin, &failing, "ocid1.onssubscription.oc1.phx.failing").await,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("could not be confirmed") && message.contains("500"),
        "{body}"
    );
    assert!(!body.to_string().contains("tok-789"), "{body}");
    assert_eq!(requests.lock().unwrap().len(), 2, "it was fetched");

    // Both outcomes are visible to an operator, and in the log without the tokens.
    let listed = subscriptions(&tocsin).await;
    let state = |id: &str| {
        listed
            .iter()
            .find(|s| s["subscriptionId"] == id)
            .unwrap_or_else(|| panic!("{id} in {listed:?}"))
            .clone()
    };
    let confirmed = state("ocid1.onssubscription.oc1.phx.local");
    assert_eq!(confirmed["state"], "CONFIRMED");
    assert_eq!(confirmed["topicName"], "alarms");
    assert_eq!(confirmed["host"], "127.0.0.1");
    assert_eq!(confirmed["attempts"], 1);
    assert!(
        confirmed.get("confirmationUrl").is_none(),
        "no token kept once confirmed"
    );
    assert_eq!(
        state("ocid1.onssubscription.oc1.phx.evil")["state"],
        "REFUSED"
    );
    assert_eq!(
        state("ocid1.onssubscription.oc1.phx.failing")["state"],
        "FAILED"
    );
    let log = tocsin.log();
    assert!(log.contains("OCI subscription confirmed"), "{log}");
    assert!(
        log.contains("OCI subscription confirmation refused"),
        "{log}"
    );
    assert!(
        !log.contains("tok-123") && !log.contains("tok-456") && !log.contains("tok-789"),
        "{log}"
    );

    // A confirmation publishes nothing: once the bus is idle, nothing was stored.
    tocsin.wait_until_idle().await;
    assert_eq!(
        tocsin.page(MATCHED).await["responseMetadata"]["totalResultsCount"],
        0
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn with_auto_confirm_off_the_url_waits_for_a_human() {
    let (oci, requests) = fake_oci().await;
    let tocsin = start(
        "[sources.oci]\nconfirm_allow_hosts = [\"127.0.0.1\"]\n",
        &[("TOCSIN_SOURCES_OCI_AUTO_CONFIRM", "false")],
    )
    .await;
    let url = format!("{oci}/20181201/subscriptions/s1/confirmation?token=t");
    let (status, body) = status_and_body(confirmation(&tocsin, &url, "s1").await).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "PENDING");
    assert!(requests.lock().unwrap().is_empty(), "not fetched");
    let listed = subscriptions(&tocsin).await;
    assert_eq!(listed[0]["state"], "PENDING");
    assert_eq!(
        listed[0]["confirmationUrl"], url,
        "the operator gets the URL to open"
    );
    tocsin.shutdown().await;
}

/// The variants `oci-and-destinations.md` §1 names, each under its own dedupeKey.
fn variants() -> Vec<(String, Value)> {
    let base = fixture("split-v1.5.json");
    let with = |key: &str, edit: &dyn Fn(&mut Value)| {
        let mut value = base.clone();
        value["dedupeKey"] = json!(key);
        edit(&mut value);
        (key.to_owned(), value)
    };
    let dimensions: Vec<Value> = (0..100)
        .map(|i| json!({"resourceId": format!("ocid1.instance.{i}"), "resourceDisplayName": format!("vm-{i}")}))
        .collect();
    vec![
        with("null-body", &|v| v["body"] = Value::Null),
        with("resource-ID", &|v| {
            v["alarmMetaData"][0]["dimensions"] = json!([{"resourceID": "ocid1.instance.upper"}])
        }),
        with("version-1", &|v| v["version"] = json!(1)),
        with("version-1.0", &|v| v["version"] = json!(1.0)),
        with("version-text", &|v| v["version"] = json!("1.3")),
        with("metric-values-outside", &|v| {
            let values = v["alarmMetaData"][0]
                .as_object_mut()
                .unwrap()
                .remove("metricValues")
                .unwrap();
            v["metricValues"] = values;
        }),
        with("hundred-dimensions", &|v| {
            v["alarmMetaData"][0]["dimensions"] = json!(dimensions)
        }),
        with("unknown-type", &|v| v["type"] = json!("RESEND")),
    ]
}

async fn stored_by_source_event_id(tocsin: &Tocsin, id: &str) -> Vec<Value> {
    let page = tocsin.page(&format!("{MATCHED}?sourceEventId={id}")).await;
    page["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn alarms_are_normalized_stored_and_redeliveries_published_once() {
    let mut tocsin = start("", &[]).await;

    // Every fixture and every variant: 202, published once, stored as normalized.
    let mut messages: Vec<(String, Value)> = [
        "ok-to-firing.seed.json",
        "firing-to-ok.seed.json",
        "split-v1.5.json",
        "repeat-grouped-v1.3.json",
    ]
    .iter()
    .map(|name| (name.to_string(), fixture(name)))
    .collect();
    messages.extend(variants());
    for (index, (name, body)) in messages.iter().enumerate() {
        let (status, answer) =
            status_and_body(deliver(&tocsin, body, &format!("msg-{index}")).await).await;
        assert_eq!(status, 202, "{name}: {answer}");
        let published = answer["published"].as_array().unwrap();
        assert_eq!(published.len(), 1, "{name}");
        assert_eq!(published[0]["eventType"], "OCIAlarm", "{name}");
        assert_eq!(
            published[0]["tags"]["oci:messageId"],
            format!("msg-{index}"),
            "{name}"
        );
    }
    let total = messages.len() as u64;
    tocsin.wait_for_count(MATCHED, total).await;

    // The seed pair: two events of one chain, the second closing it.
    let mut chain =
        stored_by_source_event_id(&tocsin, "9a38cd1c-f808-4871-8c2a-abc4a72a9868").await;
    assert_eq!(chain.len(), 2);
    chain.sort_by_key(|e| e["eventTimestamp"].as_i64());
    assert_eq!(chain[0]["tags"]["ans:status"], "CREATE_OR_UPDATE");
    assert_eq!(chain[0]["subject"], "[FIRING] Test Alert");
    assert_eq!(chain[1]["tags"]["ans:status"], "CLOSE");
    assert_eq!(chain[1]["subject"], "[OK] Test Alert");
    assert_eq!(
        chain[0]["tags"]["ans:correlationId"],
        chain[1]["tags"]["ans:correlationId"]
    );

    // The split fixture as the table says.
    let split = &stored_by_source_event_id(&tocsin, "exampleuniqueID").await[0];
    assert_eq!(split["severity"], "FATAL");
    assert_eq!(split["category"], "ALERT");
    assert_eq!(split["resource"]["resourceName"], "wordpress");
    assert_eq!(split["resource"]["resourceType"], "oci_computeagent");
    assert_eq!(
        split["resource"]["resourceInstance"],
        "ocid1.alarm.oc1.iad.exampleuniqueID"
    );
    assert_eq!(split["eventTimestamp"], 1_684_337_663);
    assert_eq!(split["tags"]["oci:topicName"], "alarms");
    assert_eq!(split["tags"]["oci:query"], "CpuUtilization[1m].mean() > 90");
    assert!(split["body"]
        .as_str()
        .unwrap()
        .contains("CpuUtilization[1m].mean() = 92"));
    let unknown = &stored_by_source_event_id(&tocsin, "unknown-type").await[0];
    assert_eq!(unknown["tags"]["ans:status"], "COMMENT");
    let wide = &stored_by_source_event_id(&tocsin, "hundred-dimensions").await[0];
    let tagged: Vec<Value> =
        serde_json::from_str(wide["tags"]["oci:dimensions"].as_str().unwrap()).unwrap();
    assert_eq!(tagged.len(), 100);

    // OCI redelivers: the same message id, or the same dedupeKey+timestamp through another
    // topic, is acknowledged 200 and not published again.
    let split_body = fixture("split-v1.5.json");
    for message_id in ["msg-2", "msg-other-topic"] {
        let (status, answer) =
            status_and_body(deliver(&tocsin, &split_body, message_id).await).await;
        assert_eq!(
            (status, answer),
            (200, json!({"published": [], "duplicate": true})),
            "{message_id}"
        );
    }
    // Also after a restart: the window is on disk.
    assert!(tocsin.terminate().success());
    tocsin.launch().await;
    let (status, _) =
        status_and_body(deliver(&tocsin, &fixture("ok-to-firing.seed.json"), "msg-0").await).await;
    assert_eq!(status, 200);
    // The next evaluation of the same alarm is new.
    let mut next = split_body.clone();
    next["timestampEpochMillis"] = json!(1_684_337_723_852_i64);
    let (status, _) = status_and_body(deliver(&tocsin, &next, "msg-next").await).await;
    assert_eq!(status, 202);
    tocsin.wait_for_count(MATCHED, total + 1).await;
    tocsin.wait_until_idle().await;
    assert_eq!(
        tocsin.page(MATCHED).await["responseMetadata"]["totalResultsCount"],
        total + 1,
        "no redelivery was published"
    );
    assert_eq!(
        stored_by_source_event_id(&tocsin, "exampleuniqueID")
            .await
            .len(),
        2
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_publishes_nothing() {
    let tocsin = start("", &[("TOCSIN_BODY_LIMIT_BYTES", "4096")]).await;
    let raw = |body: String, content_type: &str| {
        tocsin
            .http
            .post(tocsin.url(ENDPOINT))
            .basic_auth(&tocsin.user, Some(&tocsin.password))
            .header("content-type", content_type)
            .header("X-OCI-NS-MessageId", "bad")
            .body(body)
    };
    let split = fixture("split-v1.5.json").to_string();
    let mut no_key = fixture("split-v1.5.json");
    no_key.as_object_mut().unwrap().remove("dedupeKey");
    let mut no_alarm_id = fixture("split-v1.5.json");
    no_alarm_id["alarmMetaData"][0]["id"] = json!("");
    let oversized =
        json!({"dedupeKey": "big", "type": "REPEAT", "body": "x".repeat(5000)}).to_string();
    let cases = [
        (
            raw("{\"dedupeKey\": ".into(), "application/json"),
            400,
            "malformed JSON",
        ),
        (
            raw(split.clone(), "text/plain"),
            415,
            "Content-Type must be application/json",
        ),
        (
            raw(oversized, "application/json"),
            413,
            "exceeds the limit of 4096 bytes",
        ),
        (
            raw(no_key.to_string(), "application/json"),
            400,
            "`dedupeKey` is required",
        ),
        (
            raw(json!({"hello": "world"}).to_string(), "application/json"),
            400,
            "the body is neither an OCI alarm message",
        ),
        (
            raw(json!({"dedupeKey": "k"}).to_string(), "application/json"),
            400,
            "`type` is required",
        ),
        (
            raw(no_alarm_id.to_string(), "application/json"),
            400,
            "`alarmMetaData[0].id` must not be empty",
        ),
        (
            raw("[1, 2]".into(), "application/json"),
            400,
            "must be a JSON object",
        ),
        (
            raw(
                json!({"ConfirmationURL": "http://169.254.169.254/latest/meta-data"}).to_string(),
                "application/json",
            ),
            400,
            "`ConfirmationURL` has host `169.254.169.254`",
        ),
    ];
    for (request, status, message) in cases {
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(got, status, "{message}: {body}");
        let text = body["message"].as_str().unwrap();
        assert!(text.contains(message), "{message}: {text}");
    }
    // Then one good message: it is the only thing ever stored.
    assert_eq!(
        deliver(&tocsin, &fixture("split-v1.5.json"), "good")
            .await
            .status(),
        202
    );
    tocsin.wait_for_count(MATCHED, 1).await;
    tocsin.wait_until_idle().await;
    assert_eq!(
        tocsin.page(MATCHED).await["responseMetadata"]["totalResultsCount"],
        1
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn the_endpoint_takes_its_own_basic_credentials_and_only_there() {
    let tocsin = start(
        "[sources.oci]\nusername = \"oci-topic\"\n",
        &[("TOCSIN_SOURCES_OCI_PASSWORD", "p@ss:word")],
    )
    .await;
    let body = fixture("split-v1.5.json");
    let post = |user: Option<(&str, &str)>| {
        let request = tocsin.http.post(tocsin.url(ENDPOINT)).json(&body);
        match user {
            Some((name, password)) => request.basic_auth(name, Some(password)),
            None => request,
        }
    };
    // OCI first asks without credentials and needs a Basic challenge to send them.
    let response = post(None).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    let admin = (tocsin.user.as_str(), tocsin.password.as_str());
    assert_eq!(
        post(Some(admin)).send().await.unwrap().status(),
        401,
        "API clients are not these credentials"
    );
    assert_eq!(
        post(Some(("oci-topic", "wrong")))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post(Some(("oci-topic", "p@ss:word")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    // Scoped to this endpoint: they open nothing else.
    let producer = tocsin
        .http
        .post(tocsin.url("/cf/producer/v1/resource-events"))
        .basic_auth("oci-topic", Some("p@ss:word"))
        .json(&crate::common::event("HighCPU", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(producer.status(), 401);
    let listing = tocsin
        .http
        .get(tocsin.url("/oci/v1/subscriptions"))
        .basic_auth("oci-topic", Some("p@ss:word"))
        .send()
        .await
        .unwrap();
    crate::common::error_message(listing, 401).await;
    tocsin.wait_for_count(MATCHED, 1).await;
    tocsin.shutdown().await;
}
