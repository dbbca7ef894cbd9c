//! The ANS configuration API through the real binary: CRUD by name with paging, validation and
//! conflicts with clear errors, masked secrets, atomic import/export, changes that apply to
//! the very next event on both backends, and the official SAP Node client's configuration calls.

use crate::common::{event, Backend, Tocsin, BACKENDS};
use serde_json::{json, Value};

pub(crate) const BASE: &str = "/cf/configuration/v1";

pub(crate) async fn call(
    tocsin: &Tocsin,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = tocsin
        .http
        .request(method, tocsin.url(path))
        .basic_auth(&tocsin.user, Some(&tocsin.password));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The condition `type`: events of type `value`.
pub(crate) fn type_condition(value: &str) -> Value {
    json!({"name": "type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": value})
}

/// Changes the condition `type` through `changer` to `Round{round}`, and at once sends
/// `sender` one event of the type before (`old-{round}`) and one of the new (`new-{round}`):
/// only the new one may be routed to what subscribes to `type`.
pub(crate) async fn change_then_send(changer: &Tocsin, sender: &Tocsin, round: usize) {
    let current = format!("Round{round}");
    let (status, body) = call(
        changer,
        reqwest::Method::PUT,
        &format!("{BASE}/condition/type"),
        Some(type_condition(&current)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    sender
        .send(&event(
            &format!("Round{}", round - 1),
            &format!("old-{round}"),
        ))
        .await;
    sender.send(&event(&current, &format!("new-{round}"))).await;
}

/// The configuration as stored, read from the SQLite file directly and opened with the key
/// generated into the data directory.
fn stored_document(tocsin: &Tocsin) -> String {
    use base64::Engine;
    let conn = rusqlite::Connection::open(tocsin.data_dir.join("config.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row("SELECT document FROM configuration", [], |r| r.get(0))
        .unwrap();
    let key = std::fs::read_to_string(tocsin.data_dir.join("secret.key")).unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .unwrap();
    let keys = router::sealing::Keys::new(&key.try_into().unwrap(), &[]);
    String::from_utf8(keys.open(&sealed).unwrap().0).unwrap()
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn crud_validation_conflicts_and_secrets() {
    use reqwest::Method;
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;

    let webhook = json!({"name": "slack-ops", "type": "SLACK", "state": "ENABLED", "description": "ops channel",
        "labels": ["ops"], "properties": {"webhookUrl": "https://hooks.slack.com/services/T0/B0/SECRETPATH", "subjectTemplate": "#ops"}});
    let (status, created) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(webhook.clone()),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert!(
        created["id"].is_string()
            && created["timeCreated"].is_i64()
            && created["lastModified"].is_i64()
    );
    assert_eq!(created["labels"], json!(["ops"]));
    assert_eq!(created["properties"]["subjectTemplate"], "#ops");
    assert_eq!(
        created["properties"]["webhookUrl"],
        "https://hooks.slack.com/********"
    );
    assert!(!created.to_string().contains("SECRETPATH"));

    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(webhook.clone()),
    )
    .await;
    assert_eq!(status, 409, "duplicate name");
    assert!(message(&body).contains("slack-ops"));
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(json!({"name": "x", "type": "PAGER", "state": "ENABLED"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message(&body).contains("`type`") && message(&body).contains("PAGER"),
        "{body}"
    );
    let (status, body) = call(&tocsin, Method::POST, &format!("{BASE}/condition"), Some(json!({"name": "c", "propertyKey": "severity", "predicate": "LOOKS_LIKE", "propertyValue": "x"}))).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("predicate"), "{body}");
    let (status, body) = call(&tocsin, Method::POST, &format!("{BASE}/condition"), Some(json!({"name": "c", "propertyKey": "priority", "predicate": "GREATER_THAN", "propertyValue": "high"}))).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("propertyValue"), "{body}");
    let (status, body) = call(&tocsin, Method::POST, &format!("{BASE}/condition"), Some(json!({"name": "c", "propertyKey": "colour", "predicate": "EQUALS", "propertyValue": "x"}))).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("propertyKey"), "{body}");

    let (status, _) = call(&tocsin, Method::POST, &format!("{BASE}/condition"), Some(json!({"name": "is fatal", "propertyKey": "severity", "predicate": "EQUALS", "propertyValue": "FATAL", "mandatory": true}))).await;
    assert_eq!(status, 201);
    let (status, body) = call(&tocsin, Method::POST, &format!("{BASE}/subscription"), Some(json!({"name": "s", "state": "ENABLED", "conditions": ["is fatal", "missing"], "actions": ["slack-ops"]}))).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("`missing`"), "{body}");
    let (status, _) = call(&tocsin, Method::POST, &format!("{BASE}/subscription"), Some(json!({"name": "s", "state": "ENABLED", "conditions": ["is fatal"], "actions": ["slack-ops"]}))).await;
    assert_eq!(status, 201);

    // Names with spaces travel percent-encoded in the path.
    let (status, condition) = call(
        &tocsin,
        Method::GET,
        &format!("{BASE}/condition/is%20fatal"),
        None,
    )
    .await;
    assert_eq!((status, condition["mandatory"].clone()), (200, json!(true)));
    let (status, body) = call(
        &tocsin,
        Method::GET,
        &format!("{BASE}/condition/nope"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(message(&body).contains("`nope`"), "{body}");

    // Deleting what a subscription uses is a conflict that names the user.
    let (status, body) = call(
        &tocsin,
        Method::DELETE,
        &format!("{BASE}/action/slack-ops"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert!(message(&body).contains("subscription `s`"), "{body}");

    // Update: masked secrets sent back keep the stored ones; the id and creation time stay.
    let mut update = created.clone();
    update["description"] = json!("renamed channel");
    update["properties"]["subjectTemplate"] = json!("#ops-2");
    let (status, updated) = call(
        &tocsin,
        Method::PUT,
        &format!("{BASE}/action/slack-ops"),
        Some(update),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["timeCreated"], created["timeCreated"]);
    assert_eq!(updated["properties"]["subjectTemplate"], "#ops-2");
    let stored = stored_document(&tocsin);
    assert!(stored.contains("SECRETPATH"), "the real secrets are kept");
    let (status, body) = call(
        &tocsin,
        Method::PUT,
        &format!("{BASE}/action/other"),
        Some(json!({"name": "slack-ops", "type": "SLACK", "state": "ENABLED"})),
    )
    .await;
    assert_eq!(status, 400, "body name must match the path");
    assert!(message(&body).contains("`name`"), "{body}");

    // Fallback actions must exist and must not loop.
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(json!({"name": "a1", "type": "STORE", "state": "ENABLED", "fallbackAction": "a1"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("loops"), "{body}");
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(json!({"name": "a1", "type": "STORE", "state": "ENABLED", "fallbackAction": "ghost"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("ghost"), "{body}");

    // Paging metadata as the Java client reads it.
    for i in 0..3 {
        let (status, _) = call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/action"),
            Some(json!({"name": format!("store-{i}"), "type": "STORE", "state": "ENABLED"})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, page) = call(
        &tocsin,
        Method::GET,
        &format!("{BASE}/action?page=1&pageSize=3"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        page["metadata"],
        json!({"page": 1, "pageSize": 3, "totalPages": 2, "totalCount": 4})
    );
    assert_eq!(page["results"][0]["name"], "store-2");
    let (status, page) = call(&tocsin, Method::GET, &format!("{BASE}/action"), None).await;
    assert_eq!(
        (status, page["metadata"]["pageSize"].clone()),
        (200, json!(100))
    );
    assert!(!page.to_string().contains("hunter2"));

    // Export masks; a failing import changes nothing; a good import replaces everything.
    let (status, exported) =
        call(&tocsin, Method::GET, &format!("{BASE}/configuration"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        exported.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["actions", "conditions", "subscriptions"]
    );
    assert!(
        !exported.to_string().contains("hunter2") && !exported.to_string().contains("SECRETPATH")
    );
    let mut broken = exported.clone();
    broken["subscriptions"][0]["actions"] = json!(["no-such-action"]);
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/configuration"),
        Some(broken),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("no-such-action"), "{body}");
    let (_, unchanged) = call(&tocsin, Method::GET, &format!("{BASE}/configuration"), None).await;
    assert_eq!(unchanged, exported, "a failed import changes nothing");
    let mut replacement = exported.clone();
    replacement["actions"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a["name"] == "slack-ops");
    let (status, imported) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/configuration"),
        Some(replacement),
    )
    .await;
    assert_eq!(status, 201, "{imported}");
    assert_eq!(imported["actions"].as_array().unwrap().len(), 1);
    assert_eq!(
        imported["actions"][0]["id"], created["id"],
        "re-imported exports keep their ids"
    );
    assert!(
        stored_document(&tocsin).contains("SECRETPATH"),
        "masked secrets in an import keep the stored values"
    );

    // Deletion in dependency order works, and the configuration survives a restart.
    let (status, _) = call(
        &tocsin,
        Method::DELETE,
        &format!("{BASE}/subscription/s"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = call(
        &tocsin,
        Method::DELETE,
        &format!("{BASE}/subscription/s"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(message(&body).contains("`s`"), "{body}");
    assert!(
        !tocsin.log().contains("hunter2") && !tocsin.log().contains("SECRETPATH"),
        "no secret in the log"
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn configuration_needs_its_scope() {
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let anonymous = tocsin
        .http
        .get(tocsin.url(&format!("{BASE}/action")))
        .send()
        .await
        .unwrap();
    let message = crate::common::error_message(anonymous, 401).await;
    assert!(message.contains("credentials are required"), "{message}");
    tocsin.shutdown().await;
}

async fn changes_apply_to_the_next_event(backend: Backend, env: &[(&str, &str)]) {
    use reqwest::Method;
    let mut tocsin = Tocsin::start(backend, &Value::Null, env).await;
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    assert_eq!(
        call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/action"),
            Some(store)
        )
        .await
        .0,
        201
    );
    let condition = |value: &str| json!({"name": "type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": value});
    assert_eq!(
        call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/condition"),
            Some(condition("First"))
        )
        .await
        .0,
        201
    );
    let subscription =
        json!({"name": "live", "state": "ENABLED", "conditions": ["type"], "actions": ["store"]});
    assert_eq!(
        call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/subscription"),
            Some(subscription)
        )
        .await
        .0,
        201
    );

    // Each round changes the condition and at once sends one event of the old type and one of
    // the new: only the new one may be stored.
    let rounds = ["Second", "Third", "Fourth", "Fifth"];
    let mut previous = "First";
    for (round, current) in rounds.iter().enumerate() {
        let (status, _) = call(
            &tocsin,
            Method::PUT,
            &format!("{BASE}/condition/type"),
            Some(condition(current)),
        )
        .await;
        assert_eq!(status, 200);
        tocsin.send(&event(previous, &format!("old-{round}"))).await;
        tocsin.send(&event(current, &format!("new-{round}"))).await;
        // Routing happens when an event is processed, so an event accepted before the *next*
        // change could be routed by it: let this round's events through first.
        tocsin
            .wait_for_count("/cf/consumer/v1/matched-events", round as u64 + 1)
            .await;
        previous = current;
    }
    let page = tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", rounds.len() as u64)
        .await;
    for result in page["results"].as_array().unwrap() {
        let source = result["tags"]["ans:sourceEventId"].as_str().unwrap();
        assert!(
            source.starts_with("new-"),
            "{backend:?}: {source} was routed by a stale configuration"
        );
    }
    // And the configuration survives a restart.
    tocsin.kill();
    tocsin.launch().await;
    let (status, condition) = call(
        &tocsin,
        Method::GET,
        &format!("{BASE}/condition/type"),
        None,
    )
    .await;
    assert_eq!(
        (status, condition["propertyValue"].clone()),
        (200, json!("Fifth"))
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn changes_apply_to_the_next_event_on_both_backends() {
    for backend in BACKENDS {
        changes_apply_to_the_next_event(backend, &[]).await;
    }
    // And on the PostgreSQL store.
    let url = crate::common::postgres_schema().await;
    changes_apply_to_the_next_event(Backend::Embedded, &crate::shared_store::shared_store(&url))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_client_manages_the_configuration() {
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sap-client");
    let output = std::process::Command::new("node")
        .args(["conformance.mjs", "config"])
        .current_dir(dir)
        .env("TOCSIN_URL", &tocsin.base)
        .env("TOCSIN_USER", &tocsin.user)
        .env("TOCSIN_PASSWORD", &tocsin.password)
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    eprintln!("{}", report.lines().last().unwrap_or_default());
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_rabbitmq_route_by_a_change_made_on_either() {
    use reqwest::Method;
    // Their snapshots on the broker are sealed with the store's key: the same on both.
    let key = crate::shared_store::SHARED_KEY;
    let first = Tocsin::start(
        Backend::Rabbitmq,
        &Value::Null,
        &[("TOCSIN_STORE_SECRET_KEY", key)],
    )
    .await;
    let second = first.sibling().await;
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    assert_eq!(
        call(&first, Method::POST, &format!("{BASE}/action"), Some(store))
            .await
            .0,
        201
    );
    assert_eq!(
        call(
            &first,
            Method::POST,
            &format!("{BASE}/condition"),
            Some(type_condition("Round0"))
        )
        .await
        .0,
        201
    );
    let subscription =
        json!({"name": "shared", "state": "ENABLED", "conditions": ["type"], "actions": ["store"]});
    assert_eq!(
        call(
            &second,
            Method::POST,
            &format!("{BASE}/subscription"),
            Some(subscription)
        )
        .await
        .0,
        201,
        "the second process knows the first one's entities"
    );

    // Records stay with the process whose worker delivered: count across both.
    let stored = |tocsin: &Tocsin| crate::common::count_records(&tocsin.records_db(), "MATCHED");
    let mut expected = 0;
    for round in 1..=6 {
        // Change on one process, send to the other: both events travel the shared queue and
        // either router may take them.
        let (changer, sender) = if round % 2 == 0 {
            (&first, &second)
        } else {
            (&second, &first)
        };
        change_then_send(changer, sender, round).await;
        expected += 1;
        let started = std::time::Instant::now();
        while stored(&first) + stored(&second) < expected {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "round {round}: the new event was not stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    first.wait_until_idle().await;
    second.wait_until_idle().await;
    assert_eq!(
        stored(&first) + stored(&second),
        expected,
        "no event was routed by a stale configuration"
    );
    let (_, on_first) = call(&first, Method::GET, &format!("{BASE}/condition/type"), None).await;
    let (_, on_second) = call(
        &second,
        Method::GET,
        &format!("{BASE}/condition/type"),
        None,
    )
    .await;
    assert_eq!(on_first["propertyValue"], "Round6");
    assert_eq!(on_second["propertyValue"], "Round6");
    // What crossed the broker: the last change, sealed, opened only with the key.
    let sealed = crate::shared_store::take_latest_config_snapshot(&first)
        .await
        .expect("a snapshot on the broker");
    assert!(sealed.starts_with(b"TOCSIN-SEALED/1"));
    assert!(!sealed.windows(6).any(|w| w == b"Round6"), "sealed");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let keys = router::sealing::Keys::new(&key.try_into().unwrap(), &[]);
    let snapshot: Value = serde_json::from_slice(&keys.open_snapshot(&sealed).unwrap()).unwrap();
    assert_eq!(
        snapshot["configuration"]["conditions"][0]["propertyValue"],
        "Round6"
    );
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test]
async fn config_export_and_import_commands_round_trip_through_a_file() {
    let source = Tocsin::start(
        Backend::Embedded,
        &crate::common::store_configuration("AsCode"),
        &[],
    )
    .await;
    let target = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routing.json");
    let tocsin = |args: &[&str], instance: &Tocsin| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
            .args(args)
            .args(["--url", &instance.base])
            .env("TOCSIN_PASSWORD", &instance.password)
            .output()
            .unwrap()
    };
    let exported = tocsin(&["config", "export"], &source);
    assert!(exported.status.success(), "{exported:?}");
    std::fs::write(&file, &exported.stdout).unwrap();
    let imported = tocsin(&["config", "import", file.to_str().unwrap()], &target);
    assert!(imported.status.success(), "{imported:?}");
    assert!(String::from_utf8_lossy(&imported.stderr)
        .contains("imported 2 actions, 2 conditions, 2 subscriptions"));
    let (_, on_target) = call(
        &target,
        reqwest::Method::GET,
        &format!("{BASE}/configuration"),
        None,
    )
    .await;
    let on_file: Value = serde_json::from_slice(&exported.stdout).unwrap();
    // An import is a change: everything but `lastModified` arrives as exported.
    let unstamped = |document: &Value| {
        let mut subscriptions = document["subscriptions"].clone();
        for s in subscriptions.as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("lastModified");
        }
        subscriptions
    };
    assert_eq!(unstamped(&on_target), unstamped(&on_file));
    // The imported routing works on the target.
    let accepted = target.send(&event("AsCode", "code-1")).await;
    let page = target
        .wait_for_count("/cf/consumer/v1/matched-events", 1)
        .await;
    assert_eq!(page["results"][0]["id"], accepted["id"]);

    let refused = tocsin(&["config", "import", "/nonexistent.json"], &target);
    assert!(!refused.status.success());
    std::fs::write(
        &file,
        r#"{"subscriptions": [{"name": "s", "state": "ENABLED", "actions": ["ghost"]}]}"#,
    )
    .unwrap();
    let refused = tocsin(&["config", "import", file.to_str().unwrap()], &target);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ghost"),
        "{refused:?}"
    );
    source.shutdown().await;
    target.shutdown().await;
}

/// Every kind of defect an action can have, for every action type: each is refused with 400
/// naming the action and the property, when it is saved and when it is imported.
#[tokio::test]
async fn every_action_type_refuses_what_cannot_work() {
    use reqwest::Method;
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    // The copy-paste action of each channel page of the book (docs/src/channels/).
    let bases = crate::docs_examples::channel_actions();
    let types: Vec<&str> = bases.iter().filter_map(|a| a["type"].as_str()).collect();
    for expected in [
        "WEB_HOOK",
        "SLACK",
        "SLACK_THREADED",
        "MICROSOFT_TEAMS",
        "EMAIL",
        "ORACLE_B2C_INCIDENT",
        "PAGERDUTY",
        "VICTOROPS",
        "SERVICE_NOW",
    ] {
        assert!(
            types.contains(&expected),
            "the channel pages show a {expected} action"
        );
    }
    // The channel pages' examples are accepted as they stand.
    for action in &bases {
        let (status, body) = call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/action"),
            Some(action.clone()),
        )
        .await;
        assert_eq!(status, 201, "{action}: {body}");
    }
    let base = |action_type: &str| -> Value {
        let mut action = bases
            .iter()
            .find(|a| a["type"] == action_type)
            .cloned()
            .unwrap_or_else(|| json!({"type": action_type, "state": "ENABLED", "properties": {}}));
        action["name"] = json!("under-test");
        // A page's action may leave out an empty `properties` (STORE's does).
        if action.get("properties").is_none() {
            action["properties"] = json!({});
        }
        action
    };
    // (type, change to the channel page's action: a property and its value, or null to remove it,
    // the property the answer must name)
    let defects: &[(&str, &str, Value, &str)] = &[
        ("STORE", "destinaton", json!("https://x"), "destinaton"),
        ("WEB_HOOK", "destination", Value::Null, "destination"),
        (
            "PAGERDUTY",
            "routingKey",
            json!("not-32-characters"),
            "routingKey",
        ),
        (
            "PAGERDUTY",
            "url",
            json!("http://169.254.169.254/v2/enqueue"),
            "url",
        ),
        ("VICTOROPS", "routingKey", json!("a/b"), "routingKey"),
        ("VICTOROPS", "messageType", json!("PAGE"), "messageType"),
        ("SERVICE_NOW", "instanceUrl", Value::Null, "instanceUrl"),
        (
            "SERVICE_NOW",
            "oauthClientId",
            json!("tocsin"),
            "oauthClientSecret",
        ),
        ("SERVICE_NOW", "urgency_FATAL", json!("0"), "urgency_FATAL"),
        ("SERVICE_NOW", "table", json!("incident?x=1"), "table"),
        ("WEB_HOOK", "destination", json!("not a url"), "destination"),
        (
            "WEB_HOOK",
            "destination",
            json!("file:///etc/passwd"),
            "destination",
        ),
        (
            "WEB_HOOK",
            "payloadTemplate",
            json!("{\"a\": {{ event.subject"),
            "payloadTemplate",
        ),
        ("WEB_HOOK", "sslTrustAll", json!("maybe"), "sslTrustAll"),
        (
            "WEB_HOOK",
            "timeoutSeconds",
            json!("soon"),
            "timeoutSeconds",
        ),
        ("WEB_HOOK", "method", json!("GET"), "method"),
        ("WEB_HOOK", "destinaton", json!("https://x"), "destinaton"),
        (
            "WEB_HOOK",
            "retryMaxAttempts",
            json!("many"),
            "retryMaxAttempts",
        ),
        ("SLACK", "webhookUrl", Value::Null, "webhookUrl"),
        (
            "SLACK",
            "webhookUrl",
            json!("ftp://hooks.slack.com/x"),
            "webhookUrl",
        ),
        ("SLACK", "bodyTemplate", json!("{% if %}"), "bodyTemplate"),
        ("SLACK", "webhookURL", json!("https://x"), "webhookURL"),
        ("SLACK_THREADED", "token", Value::Null, "token"),
        ("SLACK_THREADED", "apiUrl", json!("file:///api"), "apiUrl"),
        (
            "SLACK_THREADED",
            "payloadTemplate",
            json!("{{"),
            "payloadTemplate",
        ),
        (
            "MICROSOFT_TEAMS",
            "webhookUrl",
            json!("not a url"),
            "webhookUrl",
        ),
        (
            "MICROSOFT_TEAMS",
            "subjectTemplate",
            json!("{{ x"),
            "subjectTemplate",
        ),
        ("EMAIL", "smtpHost", Value::Null, "smtpHost"),
        ("EMAIL", "smtpPort", json!("twenty-five"), "smtpPort"),
        ("EMAIL", "smtpSecurity", json!("SSL"), "smtpSecurity"),
        (
            "EMAIL",
            "destination",
            json!("not an address"),
            "destination",
        ),
        ("EMAIL", "htmlTemplate", json!("{{"), "htmlTemplate"),
        (
            "ORACLE_B2C_INCIDENT",
            "primaryContactId",
            Value::Null,
            "primaryContactId",
        ),
        (
            "ORACLE_B2C_INCIDENT",
            "primaryContactId",
            json!("someone"),
            "primaryContactId",
        ),
        (
            "ORACLE_B2C_INCIDENT",
            "reopen",
            json!("sometimes"),
            "reopen",
        ),
        ("ORACLE_B2C_INCIDENT", "queueId", json!("first"), "queueId"),
        (
            "ORACLE_B2C_INCIDENT",
            "apiVersion",
            json!("../v1"),
            "apiVersion",
        ),
        ("ORACLE_B2C_INCIDENT", "severity", json!("1"), "severity"),
        (
            "WEB_HOOK",
            "header.X-Note",
            json!("x".repeat(16_385)),
            "header.X-Note",
        ),
    ];
    for (action_type, property, value, named) in defects {
        let mut action = base(action_type);
        let properties = action["properties"].as_object_mut().unwrap();
        if value.is_null() {
            properties.remove(*property);
        } else {
            properties.insert(property.to_string(), value.clone());
        }
        let (status, body) = call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/action"),
            Some(action.clone()),
        )
        .await;
        let case = format!("{action_type} with {property} = {value}");
        assert_eq!(status, 400, "{case}: {body}");
        let message = message(&body);
        assert!(
            message.contains("action `under-test`")
                && message.contains(&format!("`properties.{named}`")),
            "{case}: {message}"
        );
    }
    // A typo's answer lists the properties the type knows.
    let mut typo = base("WEB_HOOK");
    typo["properties"]["destinaton"] = json!("https://x");
    let (_, body) = call(&tocsin, Method::POST, &format!("{BASE}/action"), Some(typo)).await;
    assert!(message(&body).contains("known: destination,"), "{body}");

    // Sizes beyond the documented limits.
    let mut long_name = base("STORE");
    long_name["name"] = json!("n".repeat(10_000));
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(long_name),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("`name` is longer than 128 characters"),
        "{body}"
    );
    assert!(
        message(&body).len() < 300,
        "the answer does not echo the name whole"
    );
    let mut long_description = base("STORE");
    long_description["description"] = json!("d".repeat(1_025));
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(long_description),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("`description`"), "{body}");

    // An import with one bad action changes nothing, and names the action and property.
    let (_, before) = call(&tocsin, Method::GET, &format!("{BASE}/configuration"), None).await;
    let mut broken = base("WEB_HOOK");
    broken["name"] = json!("broken-hook");
    broken["properties"]["destination"] = json!("file:///etc/passwd");
    let import =
        json!({"actions": [{"name": "fine", "type": "STORE", "state": "ENABLED"}, broken]});
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/configuration"),
        Some(import),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("action `broken-hook`")
            && message(&body).contains("`properties.destination`"),
        "{body}"
    );
    let (_, after) = call(&tocsin, Method::GET, &format!("{BASE}/configuration"), None).await;
    assert_eq!(before, after, "nothing changed");
    tocsin.shutdown().await;
}

/// `serve --config-import` runs the same checks: a file with a bad action stops the start with
/// a message naming it, instead of serving a configuration that cannot deliver.
#[tokio::test]
async fn a_bad_action_in_the_start_import_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routing.json");
    std::fs::write(
        &file,
        json!({"actions": [{"name": "hook", "type": "WEB_HOOK", "state": "ENABLED",
                            "properties": {"destination": "not a url"}}]})
        .to_string(),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config-import")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("action `hook`") && stderr.contains("`properties.destination`"),
        "{stderr}"
    );
}

/// Header names that name a credential, in the spellings the masking promises to catch.
const SECRET_HEADERS: &[&str] = &[
    "header.X-Api-Key",
    "header.x_api_key",
    "header.X-Private-Key",
    "header.private_key",
    "header.X-Credential",
    "header.Client_Credential",
    "header.Authorization",
    "header.Proxy-Authorization",
];

#[tokio::test]
async fn secrets_are_masked_in_every_spelling_and_kept_when_sent_back() {
    use reqwest::Method;
    let destination = crate::common::Destination::start(|_| 200).await;
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let mut properties = json!({
        // User-info and query values are credentials in any URL.
        "destination": destination.url.replace("http://", "http://hook-user:url-pw-3@") + "?sig=url-query-4&x=1",
        "header.X-Plain": "not-a-secret",
    });
    for (i, header) in SECRET_HEADERS.iter().enumerate() {
        properties[*header] = json!(format!("secret-{i}-value"));
    }
    let hook =
        json!({"name": "hook", "type": "WEB_HOOK", "state": "ENABLED", "properties": properties});
    let teams = json!({"name": "teams", "type": "MICROSOFT_TEAMS", "state": "ENABLED",
        "properties": {"webhookUrl": "https://example.webhook.office.com/webhookb2/teams-path-5/IncomingWebhook/x"}});
    for action in [&hook, &teams] {
        let (status, body) = call(
            &tocsin,
            Method::POST,
            &format!("{BASE}/action"),
            Some(action.clone()),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let secrets: Vec<String> = (0..SECRET_HEADERS.len())
        .map(|i| format!("secret-{i}-value"))
        .chain(["url-pw-3", "url-query-4", "teams-path-5"].map(String::from))
        .collect();
    // Every answer that shows the actions: one, the list, the export.
    let (_, one) = call(&tocsin, Method::GET, &format!("{BASE}/action/hook"), None).await;
    let (_, list) = call(&tocsin, Method::GET, &format!("{BASE}/action"), None).await;
    let (_, export) = call(&tocsin, Method::GET, &format!("{BASE}/configuration"), None).await;
    for (what, shown) in [("one", &one), ("list", &list), ("export", &export)] {
        let text = shown.to_string();
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows `{secret}`: {text}"
            );
        }
    }
    for header in SECRET_HEADERS {
        assert_eq!(one["properties"][*header], "********", "{header}: {one}");
    }
    assert_eq!(one["properties"]["header.X-Plain"], "not-a-secret");
    let (_, shown_teams) = call(&tocsin, Method::GET, &format!("{BASE}/action/teams"), None).await;
    assert_eq!(
        shown_teams["properties"]["webhookUrl"],
        "https://example.webhook.office.com/********"
    );

    // The read, sent back as it was shown (a read-modify-write), keeps every stored secret:
    // the destination still gets the real header values.
    let mut update = one.clone();
    update["description"] = json!("changed");
    let (status, body) = call(
        &tocsin,
        Method::PUT,
        &format!("{BASE}/action/hook"),
        Some(update),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, outcome) = call(&tocsin, Method::POST, "/tocsin/v1/actions/hook/test", None).await;
    assert_eq!(
        (status, &outcome["delivered"]),
        (200, &json!(true)),
        "{outcome}"
    );
    let received = destination
        .wait_for("the test event", |r| !r.is_empty())
        .await;
    for (i, header) in SECRET_HEADERS.iter().enumerate() {
        let name = header.trim_start_matches("header.");
        assert_eq!(
            received[0].headers.get(name).map(|v| v.to_str().unwrap()),
            Some(format!("secret-{i}-value").as_str()),
            "{name}"
        );
    }
    let stored = stored_document(&tocsin);
    assert!(
        stored.contains("url-pw-3") && stored.contains("url-query-4"),
        "the URL's secrets are kept"
    );

    // A masked value with nothing stored to restore it from is refused, naming the property:
    // in a new action, and as a secret an existing action did not have.
    let mut fresh = hook.clone();
    fresh["name"] = json!("fresh");
    fresh["properties"]["header.X-Api-Key"] = json!("********");
    let (status, body) = call(
        &tocsin,
        Method::POST,
        &format!("{BASE}/action"),
        Some(fresh),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("`header.X-Api-Key`") && message(&body).contains("masked"),
        "{body}"
    );
    let mut added = one.clone();
    added["properties"]["header.X-Other-Token"] = json!("********");
    let (status, body) = call(
        &tocsin,
        Method::PUT,
        &format!("{BASE}/action/hook"),
        Some(added),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("`header.X-Other-Token`"), "{body}");
    assert!(
        !tocsin.log().contains("secret-0-value"),
        "no secret in the log"
    );
    tocsin.shutdown().await;
}

/// Two processes on one RabbitMQ and one database: what "several processes" means in
/// Scaling out, however they share their configuration.
async fn shared_pair_settings() -> Vec<(&'static str, String)> {
    vec![
        ("TOCSIN_STORE_BACKEND", "postgres".to_owned()),
        ("TOCSIN_STORE_URL", crate::common::postgres_schema().await),
        (
            "TOCSIN_STORE_SECRET_KEY",
            crate::shared_store::SHARED_KEY.to_owned(),
        ),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_later_routes_with_the_latest_configuration() {
    use reqwest::Method;
    let env = shared_pair_settings().await;
    let mut first = Tocsin::start(Backend::Rabbitmq, &Value::Null, &borrowed(&env)).await;
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    let condition = |value: &str| json!({"name": "type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": value});
    let subscription =
        json!({"name": "late", "state": "ENABLED", "conditions": ["type"], "actions": ["store"]});
    for (method, path, body) in [
        (Method::POST, "action", store),
        (Method::POST, "condition", condition("Early")),
        (Method::POST, "subscription", subscription),
        (Method::PUT, "condition/type", condition("Latest")),
    ] {
        let (status, answer) = call(&first, method, &format!("{BASE}/{path}"), Some(body)).await;
        assert!(status == 200 || status == 201, "{path}: {answer}");
    }
    // The process that made the changes is gone before the next one starts: the late one
    // learns them from what is shared, not from a running peer.
    first.kill();
    let late = first.sibling().await;
    // Events sent at once, before anything has been read from the late process: its router
    // takes the latest configuration before it routes them.
    late.send(&event("Early", "late-early")).await;
    let latest = late.send(&event("Latest", "late-latest")).await;
    let page = late
        .wait_for_count("/cf/consumer/v1/matched-events", 1)
        .await;
    assert_eq!(page["results"][0]["id"], latest["id"]);
    // Both were routed (by the late process, the only one running) and only one matched.
    let started = std::time::Instant::now();
    while late.routed().await < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            late.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    late.wait_until_idle().await;
    let page = late.page("/cf/consumer/v1/matched-events").await;
    assert_eq!(page["responseMetadata"]["totalResultsCount"], 1, "{page}");
    let (_, shown) = call(&late, Method::GET, &format!("{BASE}/condition/type"), None).await;
    assert_eq!(shown["propertyValue"], "Latest", "{shown}");
    late.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_changes_the_same_version_wins_on_every_process() {
    use reqwest::Method;
    let env = shared_pair_settings().await;
    let first = Tocsin::start(Backend::Rabbitmq, &Value::Null, &borrowed(&env)).await;
    let second = first.sibling().await;
    let condition = |value: &str| json!({"name": "type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": value});
    let (status, _) = call(
        &first,
        Method::POST,
        &format!("{BASE}/condition"),
        Some(condition("Start")),
    )
    .await;
    assert_eq!(status, 201);
    for round in 0..5 {
        let (on_first, on_second) = (format!("First{round}"), format!("Second{round}"));
        let path = format!("{BASE}/condition/type");
        // The same instant, on both processes: both succeed.
        let ((a, body_a), (b, body_b)) = tokio::join!(
            call(&first, Method::PUT, &path, Some(condition(&on_first))),
            call(&second, Method::PUT, &path, Some(condition(&on_second))),
        );
        assert_eq!((a, b), (200, 200), "round {round}: {body_a} {body_b}");
        // Then both processes agree on one of them, and keep agreeing.
        let started = std::time::Instant::now();
        let agreed = loop {
            let (_, seen_first) = call(&first, Method::GET, &path, None).await;
            let (_, seen_second) = call(&second, Method::GET, &path, None).await;
            let (x, y) = (&seen_first["propertyValue"], &seen_second["propertyValue"]);
            if x == y && (x == &json!(on_first) || x == &json!(on_second)) {
                break x.as_str().unwrap().to_owned();
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "round {round}: the processes disagree: {x} and {y}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        // A change made after both is built on the winner: nothing else comes back.
        for tocsin in [&first, &second] {
            let (_, exported) =
                call(tocsin, Method::GET, &format!("{BASE}/configuration"), None).await;
            assert_eq!(
                exported["conditions"][0]["propertyValue"], agreed,
                "round {round}: {exported}"
            );
        }
    }
    second.shutdown().await;
    first.shutdown().await;
}
