//! The edges of API authentication through the real binary: a bearer token dies with its
//! client and at its expiry, and every documented API answers 403 with a message naming the
//! missing scope to a client that lacks it (redelivery and dead-letter replays need the
//! configuration scope, reading needs consumer) — the table of scopes below must name every
//! operation of `schemas/openapi.json`, so a new API cannot be left out.

use crate::common::{store_configuration, Backend, Tocsin};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Settings naming `clients` (name, scopes), each with the password `<name>-pw`.
fn clients_settings(clients: &[(&str, &[&str])]) -> String {
    clients
        .iter()
        .map(|(name, scopes)| {
            let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
            format!(
                "[[auth.clients]]\nname = \"{name}\"\npassword = \"{name}-pw\"\nscopes = [{}]\n",
                scopes.join(", ")
            )
        })
        .collect()
}

async fn token(tocsin: &Tocsin, client: &str) -> Value {
    let response = tocsin
        .http
        .post(tocsin.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", &format!("{client}-pw")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The status and JSON body of a consumer API read with `bearer`.
async fn read_with(tocsin: &Tocsin, bearer: &str) -> (u16, Value) {
    let response = tocsin
        .http
        .get(tocsin.url("/cf/consumer/v1/matched-events"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_token_stops_working_when_its_client_is_removed_and_when_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("tocsin.toml");
    let reader: &[&str] = &["consumer"];
    std::fs::write(
        &settings,
        clients_settings(&[("keeper", reader), ("leaver", reader)]),
    )
    .unwrap();
    let settings_path = settings.display().to_string();
    let mut tocsin = Tocsin::start(
        Backend::Embedded,
        &Value::Null,
        &[("TOCSIN_SETTINGS", &settings_path)],
    )
    .await;
    let keeper = token(&tocsin, "keeper").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let leaver = token(&tocsin, "leaver").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(read_with(&tocsin, &leaver).await.0, 200);

    // The client `leaver` is removed from the settings; its token, still unexpired, is not.
    std::fs::write(&settings, clients_settings(&[("keeper", reader)])).unwrap();
    tocsin.kill();
    tocsin.launch().await;
    let (status, body) = read_with(&tocsin, &leaver).await;
    assert_eq!(status, 401, "a removed client's token: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("token"),
        "{body}"
    );
    assert_eq!(
        read_with(&tocsin, &keeper).await.0,
        200,
        "the remaining client's token still works"
    );

    // Tokens that live two seconds: good when issued, refused once their time is up.
    tocsin.set_env("TOCSIN_AUTH_TOKEN_LIFETIME_SECONDS", "2");
    tocsin.kill();
    tocsin.launch().await;
    let issued_at = Instant::now();
    let short = token(&tocsin, "keeper").await;
    assert_eq!(short["expires_in"], 2);
    let short = short["access_token"].as_str().unwrap();
    assert_eq!(read_with(&tocsin, short).await.0, 200);
    loop {
        let (status, body) = read_with(&tocsin, short).await;
        if status == 401 {
            assert!(
                body["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("expired"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            issued_at.elapsed() < Duration::from_secs(10),
            "a two-second token still works after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        issued_at.elapsed() >= Duration::from_secs(1),
        "the token expired before its time: {:?}",
        issued_at.elapsed()
    );
    tocsin.shutdown().await;
}

/// Every authenticated operation of the OpenAPI document and the scope it needs; `{platform}`
/// is `cf` and `neo`.
const SCOPES: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/{platform}/producer/v1/resource-events",
        "producer",
    ),
    (
        "POST",
        "/{platform}/producer/v1/resource-events-batch",
        "producer",
    ),
    ("POST", "/oci/v1/notifications", "producer"),
    ("GET", "/oci/v1/subscriptions", "configuration"),
    ("POST", "/alertmanager/v1/webhook", "producer"),
    ("GET", "/{platform}/consumer/v1/matched-events", "consumer"),
    (
        "GET",
        "/{platform}/consumer/v1/matched-events/{eventId}",
        "consumer",
    ),
    (
        "GET",
        "/{platform}/consumer/v1/undelivered-events",
        "consumer",
    ),
    (
        "GET",
        "/{platform}/consumer/v1/undelivered-events/{eventId}",
        "consumer",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/action",
        "configuration",
    ),
    (
        "POST",
        "/{platform}/configuration/v1/action",
        "configuration",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/action/{name}",
        "configuration",
    ),
    (
        "PUT",
        "/{platform}/configuration/v1/action/{name}",
        "configuration",
    ),
    (
        "DELETE",
        "/{platform}/configuration/v1/action/{name}",
        "configuration",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/condition",
        "configuration",
    ),
    (
        "POST",
        "/{platform}/configuration/v1/condition",
        "configuration",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/condition/{name}",
        "configuration",
    ),
    (
        "PUT",
        "/{platform}/configuration/v1/condition/{name}",
        "configuration",
    ),
    (
        "DELETE",
        "/{platform}/configuration/v1/condition/{name}",
        "configuration",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/subscription",
        "configuration",
    ),
    (
        "POST",
        "/{platform}/configuration/v1/subscription",
        "configuration",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/subscription/{name}",
        "configuration",
    ),
    (
        "PUT",
        "/{platform}/configuration/v1/subscription/{name}",
        "configuration",
    ),
    (
        "DELETE",
        "/{platform}/configuration/v1/subscription/{name}",
        "configuration",
    ),
    (
        "GET",
        "/{platform}/configuration/v1/configuration",
        "configuration",
    ),
    (
        "POST",
        "/{platform}/configuration/v1/configuration",
        "configuration",
    ),
    ("GET", "/tocsin/v1/events/{eventId}/attempts", "consumer"),
    (
        "POST",
        "/tocsin/v1/undelivered-events/{eventId}/redeliver",
        "configuration",
    ),
    (
        "POST",
        "/tocsin/v1/undelivered-events/redeliver",
        "configuration",
    ),
    ("POST", "/tocsin/v1/actions/{name}/test", "configuration"),
    ("GET", "/tocsin/v1/dead-letters", "consumer"),
    (
        "POST",
        "/tocsin/v1/dead-letters/{id}/replay",
        "configuration",
    ),
    ("POST", "/tocsin/v1/dead-letters/replay", "configuration"),
    ("GET", "/metrics", "consumer"),
    ("GET", "/tocsin/v1/alerts", "responder"),
    ("GET", "/tocsin/v1/alerts/{key}", "responder"),
    ("POST", "/tocsin/v1/alerts/{key}/{act}", "responder"),
    ("GET", "/tocsin/v1/silences", "responder"),
    ("POST", "/tocsin/v1/silences", "responder"),
    ("GET", "/tocsin/v1/silences/{id}", "responder"),
    ("DELETE", "/tocsin/v1/silences/{id}", "responder"),
    ("GET", "/tocsin/v1/audit", "configuration"),
];

/// Operations anyone may call (health, the document itself) or that take a client's own
/// password (the token endpoint).
const OPEN: &[(&str, &str)] = &[
    ("GET", "/oauth/token"),
    ("POST", "/oauth/token"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
];

#[test]
fn the_scope_table_names_every_documented_operation() {
    let document: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut listed: Vec<(String, String)> = SCOPES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .chain(OPEN.iter().map(|(m, p)| (m.to_string(), p.to_string())))
        .collect();
    documented.sort();
    listed.sort();
    assert_eq!(listed, documented, "the table and the OpenAPI document");
}

#[tokio::test]
async fn every_api_answers_403_naming_the_scope_to_a_client_without_it() {
    let scopes = ["producer", "consumer", "configuration", "responder"];
    let clients: Vec<(String, Vec<&str>)> = scopes
        .iter()
        .map(|scope| (format!("only-{scope}"), vec![*scope]))
        .collect();
    let listed: Vec<(&str, &[&str])> = clients
        .iter()
        .map(|(name, scopes)| (name.as_str(), scopes.as_slice()))
        .collect();
    let tocsin = Tocsin::start_with_settings(
        Backend::Embedded,
        &store_configuration("Scoped"),
        &clients_settings(&listed),
        &[],
    )
    .await;
    let mut checked = 0;
    for (method, template, needed) in SCOPES {
        for platform in ["cf", "neo"] {
            if platform == "neo" && !template.contains("{platform}") {
                continue;
            }
            let path = template
                .replace("{platform}", platform)
                .replace("{eventId}", "no-such-event")
                .replace("{name}", "no-such-name")
                .replace("{id}", "no-such-id")
                .replace("{key}", "no-such-alert")
                .replace("{act}", "acknowledge");
            for scope in scopes {
                let client = format!("only-{scope}");
                let response = tocsin
                    .http
                    .request(method.parse().unwrap(), tocsin.url(&path))
                    .basic_auth(&client, Some(format!("{client}-pw")))
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                if scope == *needed {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path} with the `{scope}` scope: {status} {text}"
                    );
                    continue;
                }
                assert_eq!(
                    status, 403,
                    "{method} {path} needs `{needed}`, `{client}` got: {text}"
                );
                let body: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
                assert_eq!(
                    body["message"],
                    format!("client `{client}` lacks the `{needed}` scope"),
                    "{method} {path}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} refusals checked");
    tocsin.shutdown().await;
}
