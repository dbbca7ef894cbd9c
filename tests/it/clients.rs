//! API clients in the settings: Argon2id password hashes (`tocsin hash-password`), plaintext
//! passwords warned about without being shown, and per-client rate limits on the producer
//! APIs that keep one runaway producer from starving the others.

use crate::common::{event, serve_to_end, store_configuration, tocsin_command, Backend, Tocsin};
use std::io::Write;
use std::process::Stdio;

fn hash_password(password: &str) -> String {
    let mut child = tocsin_command()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Tocsin with `clients` (TOML `[[auth.clients]]` blocks) and extra settings.
async fn with_clients(clients: &str, env: &[(&str, &str)]) -> Tocsin {
    Tocsin::start_with_settings(
        Backend::Embedded,
        &store_configuration("Flood"),
        clients,
        env,
    )
    .await
}

#[tokio::test]
async fn a_hashed_password_authenticates_and_a_wrong_one_does_not() {
    let hash = hash_password("correct horse");
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains("correct horse"));
    let clients = format!(
        "[[auth.clients]]\nname = \"ops\"\npassword = \"{hash}\"\nscopes = [\"consumer\"]\n"
    );
    let tocsin = with_clients(&clients, &[]).await;
    let matched = tocsin.url("/cf/consumer/v1/matched-events");
    for (password, status) in [
        ("wrong", 401),
        ("correct horse", 200),
        ("correct horse", 200),
        ("wrong", 401),
        ("correct horse ", 401),
    ] {
        let response = tocsin
            .http
            .get(&matched)
            .basic_auth("ops", Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "password `{password}`");
    }
    let token = tocsin
        .http
        .post(tocsin.url("/oauth/token"))
        .basic_auth("ops", Some("correct horse"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    assert!(!tocsin
        .log()
        .contains("the client's password is in plaintext"));
    tocsin.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_password_is_warned_about_without_showing_it() {
    let clients = "[[auth.clients]]\nname = \"legacy\"\npassword = \"pl41n-s3cret\"\nscopes = [\"producer\"]\n";
    let mut tocsin = with_clients(clients, &[("TOCSIN_LOG_FORMAT", "json")]).await;
    tocsin.user = "legacy".into();
    tocsin.password = "pl41n-s3cret".into();
    tocsin.send(&event("Flood", "plain-1")).await;
    let log = tocsin.log();
    let warning = log
        .lines()
        .find(|line| line.contains("password is in plaintext"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(warning.contains("\"client\":\"legacy\""), "{warning}");
    assert!(!log.contains("pl41n-s3cret"), "{log}");
    tocsin.shutdown().await;
}

#[test]
fn a_malformed_hash_stops_the_start_naming_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("tocsin.toml");
    std::fs::write(
        &settings,
        "[[auth.clients]]\nname = \"ops\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$hunter2\"\nscopes = []\n",
    )
    .unwrap();
    let output = serve_to_end(
        &dir.path().join("data"),
        &[("TOCSIN_SETTINGS", settings.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("client `ops`"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn a_flooding_producer_gets_429_while_another_still_gets_202() {
    let clients = "[[auth.clients]]\nname = \"runaway\"\npassword = \"r\"\nscopes = [\"producer\"]\n\
                   [[auth.clients]]\nname = \"steady\"\npassword = \"s\"\nscopes = [\"producer\"]\n\
                   [[auth.clients]]\nname = \"reader\"\npassword = \"c\"\nscopes = [\"consumer\"]\n";
    let tocsin = with_clients(
        clients,
        &[
            ("TOCSIN_RATE_LIMIT_PER_SECOND", "2"),
            ("TOCSIN_RATE_LIMIT_BURST", "5"),
        ],
    )
    .await;
    let post = |client: &'static str, password: &'static str, n: usize| {
        tocsin
            .http
            .post(tocsin.url("/cf/producer/v1/resource-events"))
            .basic_auth(client, Some(password))
            .json(&event("Flood", &format!("{client}-{n}")))
            .send()
    };
    // 30 requests at once: the burst of 5 (and perhaps a refill) pass, the rest are refused.
    let flood = futures::future::join_all((0..30).map(|n| post("runaway", "r", n))).await;
    let statuses: Vec<u16> = flood
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    let accepted = statuses.iter().filter(|&&s| s == 202).count();
    assert!((5..=7).contains(&accepted), "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 202 || s == 429),
        "{statuses:?}"
    );

    let refused = post("runaway", "r", 100).await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "at 2/s a token is due within a second");
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("`runaway`") && message.contains("2 requests per second"),
        "{message}"
    );

    for n in 0..5 {
        let steady = post("steady", "s", n).await.unwrap();
        assert_eq!(steady.status(), 202, "the other client has its own bucket");
    }
    // The runaway one gets through again once a token is due.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    assert_eq!(post("runaway", "r", 101).await.unwrap().status(), 202);

    let metrics = tocsin
        .http
        .get(tocsin.url("/metrics"))
        .basic_auth("reader", Some("c"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals = format!(
        "tocsin_events_rejected_total{{reason=\"rate_limited\",source=\"ans\"}} {}",
        30 - accepted + 1
    );
    assert!(metrics.contains(&refusals), "{refusals} in\n{metrics}");
    tocsin.shutdown().await;
}
