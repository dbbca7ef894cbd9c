//! The spine, end to end on both backends: post → 202 → route → STORE → matched-events with
//! exactly the ANS fields; unsupported actions end as undelivered records with reasons; bad
//! input and missing credentials get clear JSON errors and store nothing; one process per data
//! directory.

use crate::common::{event, serve_to_end, store_configuration, Backend, Tocsin, BACKENDS};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

fn set(names: &[&'static str]) -> BTreeSet<&'static str> {
    names.iter().copied().collect()
}

async fn post_store_query(backend: Backend) {
    let tocsin = Tocsin::start(backend, &store_configuration("HighCPU"), &[]).await;

    // Single event: the echo is the event with an id, and nothing else.
    let sent = event("HighCPU", "src-1");
    let accepted = tocsin.send(&sent).await;
    let id = accepted["id"].as_str().unwrap().to_owned();
    let mut expected = sent.clone();
    expected["id"] = json!(id);
    assert_eq!(accepted, expected, "echo is exactly the event plus its id");

    // Batch (also under /neo), and an event without eventTimestamp gets the ingestion time.
    let mut undated = event("HighCPU", "src-3");
    undated.as_object_mut().unwrap().remove("eventTimestamp");
    let response = tocsin
        .post(
            "/neo/producer/v1/resource-events-batch",
            &json!([event("HighCPU", "src-2"), undated]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    let stamped = batch[1]["eventTimestamp"].as_i64().unwrap();
    assert!(
        (stamped - clock::now_epoch_seconds()).abs() < 60,
        "defaulted to now: {stamped}"
    );

    let page = tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 3)
        .await;
    assert_eq!(
        page["responseMetadata"],
        json!({"page": 0, "pageSize": 100, "totalPages": 1, "totalResultsCount": 3})
    );
    assert_eq!(keys(&page), set(&["responseMetadata", "results"]));

    // The stored event: exactly the ANS ConsumerEvent fields.
    let by_id = tocsin
        .page(&format!("/cf/consumer/v1/matched-events/{id}"))
        .await;
    assert_eq!(by_id["responseMetadata"]["totalResultsCount"], 1);
    let stored = &by_id["results"][0];
    assert_eq!(
        keys(stored),
        set(&[
            "id",
            "eventType",
            "severity",
            "category",
            "subject",
            "body",
            "resource",
            "eventTimestamp",
            "priority",
            "tags",
            "region",
            "regionType",
            "metadata"
        ])
    );
    assert_eq!(
        keys(&stored["metadata"]),
        set(&["cacheTime", "affectedActionId", "deliveryStatus"])
    );
    assert_eq!(stored["metadata"]["deliveryStatus"], "MATCHED");
    assert_eq!(stored["metadata"]["affectedActionId"], "to-store");
    for field in [
        "eventType",
        "severity",
        "category",
        "subject",
        "body",
        "resource",
        "eventTimestamp",
        "priority",
        "tags",
    ] {
        assert_eq!(stored[field], sent[field], "{field} stored as sent");
    }
    let cache_time = stored["metadata"]["cacheTime"].as_i64().unwrap();
    assert!((cache_time - clock::now_epoch_seconds()).abs() < 60);

    // Filters.
    let count = |page: Value| {
        page["responseMetadata"]["totalResultsCount"]
            .as_u64()
            .unwrap()
    };
    let q = |query: &str| format!("/cf/consumer/v1/matched-events?{query}");
    assert_eq!(count(tocsin.page(&q("sourceEventId=src-2")).await), 1);
    assert_eq!(count(tocsin.page(&q("correlationId=corr-src-1")).await), 1);
    assert_eq!(
        count(
            tocsin
                .page(&q(
                    "eventType=HighCPU&severity=WARNING&category=ALERT&resourceName=web-1"
                ))
                .await
        ),
        3
    );
    assert_eq!(count(tocsin.page(&q("severity=FATAL")).await), 0);
    assert_eq!(
        count(
            tocsin
                .page(&q("creationTimeInterval=(1699999999%3B1700000001)"))
                .await
        ),
        2
    );
    assert_eq!(
        count(
            tocsin
                .page(&q("creationTimeInterval=(1700000000;1700000001)"))
                .await
        ),
        0,
        "exclusive bounds"
    );
    let window = format!(
        "cacheTimeInterval=({};{})",
        cache_time - 100,
        cache_time + 100
    );
    assert_eq!(count(tocsin.page(&q(&window)).await), 3);
    let paged = tocsin.page(&q("page=1&pageSize=2")).await;
    assert_eq!(
        paged["responseMetadata"],
        json!({"page": 1, "pageSize": 2, "totalPages": 2, "totalResultsCount": 3})
    );
    assert_eq!(paged["results"].as_array().unwrap().len(), 1);
    let bad = tocsin
        .get(&q("cacheTimeInterval=1;2"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("cacheTimeInterval"));

    // A destination that refuses connections: an undelivered record with its reason.
    let failed = tocsin.send(&event("Unsupported", "src-4")).await;
    let page = tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;
    assert_eq!(page["results"][0]["id"], failed["id"]);
    assert!(page["results"][0]["metadata"]
        .get("failureReasons")
        .is_none());
    let page = tocsin
        .page("/cf/consumer/v1/undelivered-events?include=FAILURE_REASON")
        .await;
    let metadata = &page["results"][0]["metadata"];
    assert_eq!(metadata["deliveryStatus"], "UNDELIVERED");
    assert_eq!(metadata["affectedActionId"], "to-nowhere");
    let reason = &metadata["failureReasons"][0];
    assert_eq!(keys(reason), set(&["code", "reason", "timestamp"]));
    assert_eq!(reason["code"], 904, "a refused connection: {reason}");
    assert_eq!(
        count(
            tocsin
                .page(&format!("/cf/consumer/v1/undelivered-events/{id}"))
                .await
        ),
        0
    );

    tocsin.shutdown().await;
}

#[tokio::test]
async fn post_store_and_query_on_the_embedded_backend() {
    post_store_query(Backend::Embedded).await;
}

#[tokio::test]
async fn post_store_and_query_on_rabbitmq() {
    post_store_query(Backend::Rabbitmq).await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_stores_nothing() {
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &store_configuration("HighCPU"),
        &[("TOCSIN_BODY_LIMIT_BYTES", "2048")],
    )
    .await;
    let path = "/cf/producer/v1/resource-events";
    let message = |body: Value| body["message"].as_str().unwrap().to_owned();

    let mut missing = event("HighCPU", "bad-1");
    missing["resource"]
        .as_object_mut()
        .unwrap()
        .remove("resourceType");
    let cases = [
        (missing, "resource.resourceType"),
        (json!({"severity": "LOUD"}), "severity"),
        (
            {
                let mut e = event("HighCPU", "bad-2");
                e["priority"] = json!(1001);
                e
            },
            "priority",
        ),
        (
            {
                let mut e = event("HighCPU", "bad-3");
                e["eventTimestamp"] = json!(-5);
                e
            },
            "eventTimestamp",
        ),
    ];
    for (body, field) in cases {
        let response = tocsin.post(path, &body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{field}");
        let text = message(response.json().await.unwrap());
        assert!(text.contains(&format!("`{field}`")), "{field}: {text}");
    }

    let response = tocsin
        .http
        .post(tocsin.url(path))
        .basic_auth(&tocsin.user, Some(&tocsin.password))
        .header("content-type", "application/json")
        .body("{\"eventType\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(message(response.json().await.unwrap()).starts_with("malformed JSON"));

    let response = tocsin
        .http
        .post(tocsin.url(path))
        .basic_auth(&tocsin.user, Some(&tocsin.password))
        .header("content-type", "text/plain")
        .body(event("HighCPU", "x").to_string())
        .send()
        .await
        .unwrap();
    let text = crate::common::error_message(response, 415).await;
    assert!(text.contains("text/plain"), "{text}");

    let mut large = event("HighCPU", "big");
    large["body"] = json!("x".repeat(4096));
    let response = tocsin.post(path, &large).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert!(message(response.json().await.unwrap()).contains("2048"));

    // A batch is accepted up to its first bad event.
    let batch = json!([event("HighCPU", "b-0"), {"eventType": "HighCPU"}, event("HighCPU", "b-2")]);
    let response = tocsin
        .post("/cf/producer/v1/resource-events-batch", &batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(keys(&body), set(&["message", "accepted", "rejected"]));
    assert!(
        body["message"].as_str().unwrap().contains("`[1].severity`"),
        "{body}"
    );
    assert_eq!(body["accepted"].as_array().unwrap().len(), 1);
    assert_eq!(body["rejected"].as_array().unwrap().len(), 2);
    let page = tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 1)
        .await;
    assert_eq!(page["results"][0]["id"], body["accepted"][0]["id"]);

    // Unknown paths and wrong methods are JSON errors too.
    let response = tocsin.get("/nope").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.json::<Value>().await.unwrap()["message"].is_string());
    let response = tocsin.get(path).send().await.unwrap();
    assert_eq!(response.status(), 405);
    tocsin.shutdown().await;
}

#[tokio::test]
async fn every_api_needs_credentials_with_the_right_scope() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("tocsin.toml");
    std::fs::write(
        &settings,
        r#"
        [[auth.clients]]
        name = "producer-only"
        password = "p-secret"
        scopes = ["producer"]
        [[auth.clients]]
        name = "reader"
        password = "r-secret"
        scopes = ["consumer"]
    "#,
    )
    .unwrap();
    let settings = settings.display().to_string();
    let mut tocsin = Tocsin::start(
        Backend::Embedded,
        &store_configuration("HighCPU"),
        &[("TOCSIN_SETTINGS", &settings)],
    )
    .await;
    assert!(
        !tocsin.data_dir.join("initial-credentials.toml").exists(),
        "configured clients: nothing generated"
    );
    let matched = tocsin.url("/cf/consumer/v1/matched-events");

    let anonymous = tocsin.http.get(&matched).send().await.unwrap();
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let message = crate::common::error_message(anonymous, 401).await;
    assert!(message.contains("credentials are required"), "{message}");
    let wrong = tocsin
        .http
        .get(&matched)
        .basic_auth("reader", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let forbidden = tocsin
        .http
        .get(&matched)
        .basic_auth("producer-only", Some("p-secret"))
        .send()
        .await
        .unwrap();
    let message = crate::common::error_message(forbidden, 403).await;
    assert!(message.contains("`consumer` scope"), "{message}");
    let allowed = tocsin
        .http
        .get(&matched)
        .basic_auth("reader", Some("r-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);

    // OAuth client credentials: GET (the SAP Node client) and POST with a form.
    let token: Value = tocsin
        .http
        .get(tocsin.url("/oauth/token?grant_type=client_credentials"))
        .basic_auth("reader", Some("r-secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["token_type"], "bearer");
    assert!(token["expires_in"].as_u64().unwrap() > 0);
    let bearer = token["access_token"].as_str().unwrap();
    let with_token = tocsin
        .http
        .get(&matched)
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let posted = tocsin
        .http
        .post(tocsin.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "producer-only"),
            ("client_secret", "p-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let producer_token = posted.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = tocsin
        .http
        .post(tocsin.url("/cf/producer/v1/resource-events"))
        .bearer_auth(&producer_token)
        .json(&event("HighCPU", "tok"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let refused = tocsin
        .http
        .get(tocsin.url("/oauth/token?grant_type=client_credentials"))
        .basic_auth("reader", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let tampered = tocsin
        .http
        .get(&matched)
        .bearer_auth(format!("{bearer}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), 401);

    // Tokens are signed with a key kept in the data directory: they survive a restart.
    tocsin.kill();
    tocsin.launch().await;
    let after_restart = tocsin
        .http
        .get(tocsin.url("/cf/consumer/v1/matched-events"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(after_restart.status(), 200);
    assert!(
        !tocsin.log().contains("r-secret") && !tocsin.log().contains("p-secret"),
        "no secret in the log"
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn a_fresh_install_generates_a_private_credential_and_never_logs_it() {
    let tocsin = Tocsin::start(Backend::Embedded, &json!({}), &[]).await;
    let file = tocsin.data_dir.join("initial-credentials.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "only the owner can read it");
    assert!(
        tocsin.log().contains("initial-credentials.toml"),
        "the log says where"
    );
    assert!(
        !tocsin.log().contains(&tocsin.password),
        "the log never says what"
    );
    assert_eq!(
        tocsin
            .get("/cf/consumer/v1/matched-events")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tocsin.shutdown().await;
}

#[tokio::test]
async fn sigterm_stops_cleanly_on_both_backends() {
    for backend in BACKENDS {
        let mut tocsin = Tocsin::start(backend, &store_configuration("HighCPU"), &[]).await;
        tocsin.send(&event("HighCPU", "bye")).await;
        tocsin
            .wait_for_count("/cf/consumer/v1/matched-events", 1)
            .await;
        let status = tocsin.terminate();
        assert!(status.success(), "{backend:?}: {status}\n{}", tocsin.log());
        assert!(tocsin.log().contains("stopped cleanly"));
        tocsin.launch().await;
        tocsin.shutdown().await;
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_data_directory_refuses_to_start() {
    const MATCHED: &str = "/cf/consumer/v1/matched-events";
    let mut tocsin = Tocsin::start(Backend::Embedded, &store_configuration("Locked"), &[]).await;
    tocsin.send(&event("Locked", "before")).await;
    tocsin.wait_for_count(MATCHED, 1).await;
    assert!(tocsin.data_dir.join("tocsin.lock").exists());

    let second = serve_to_end(&tocsin.data_dir, &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another Tocsin process is using {}; give each process its own data_dir",
            tocsin.data_dir.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("Tocsin is listening"), "{stderr}");

    // The first one goes on undisturbed.
    tocsin.send(&event("Locked", "after")).await;
    tocsin.wait_for_count(MATCHED, 2).await;
    // The lock is the process's, not the file's: after a crash that leaves the file behind,
    // the directory is free again.
    tocsin.kill();
    tocsin.launch().await;
    tocsin.wait_for_count(MATCHED, 2).await;
    tocsin.shutdown().await;
}

/// The consumer API lists newest first, page after page, on both stores.
async fn newest_first(store: &[(&str, &str)]) {
    let tocsin = Tocsin::start(Backend::Embedded, &store_configuration("Ordered"), store).await;
    let mut accepted = Vec::new();
    // One at a time, each stored before the next is sent: the order they were stored in.
    for i in 0..5 {
        let sent = tocsin
            .send(&event("Ordered", &format!("ordered-{i}")))
            .await;
        tocsin
            .wait_for_count("/cf/consumer/v1/matched-events", i + 1)
            .await;
        accepted.push(sent["id"].as_str().unwrap().to_owned());
    }
    let ids = |page: &Value| -> Vec<String> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest_first: Vec<String> = accepted.iter().rev().cloned().collect();
    let all = tocsin.page("/cf/consumer/v1/matched-events").await;
    assert_eq!(ids(&all), newest_first, "{store:?}");
    let mut paged = Vec::new();
    for page in 0..3 {
        let path = format!("/cf/consumer/v1/matched-events?page={page}&pageSize=2");
        paged.extend(ids(&tocsin.page(&path).await));
    }
    assert_eq!(paged, newest_first, "{store:?}: page after page");
    tocsin.shutdown().await;
}

#[tokio::test]
async fn the_consumer_api_lists_newest_first_on_both_stores() {
    newest_first(&[]).await;
    let url = crate::common::postgres_schema().await;
    newest_first(&crate::shared_store::shared_store(&url)).await;
}
