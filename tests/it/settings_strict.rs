//! Settings are strict and checkable offline: a misspelt `TOCSIN_` variable or settings key
//! stops `serve` naming it and the one likely meant; `tocsin check` says so with exit codes for
//! CI; `_FILE` variables give secrets from files; `tocsin config` does not need the server's
//! settings at all.

use crate::common::{
    refusing_address, run_to_end, serve_to_end, store_configuration, tocsin_command, Backend,
    Tocsin,
};
use base64::Engine;
use hmac::{Hmac, Mac};
use std::process::Output;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_misspelt_variable_stops_the_start_naming_it_and_the_likely_one() {
    let data = tempfile::tempdir().unwrap();
    let output = serve_to_end(
        data.path(),
        &[("TOCSIN_BUS_URI", "amqp://guest:guest@127.0.0.1:5672/%2f")],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("TOCSIN_BUS_URI: no such setting or variable; did you mean TOCSIN_BUS_URL?"),
        "{}",
        stderr(&output)
    );
    assert!(
        !data.path().join("queue.db").exists(),
        "stopped before opening anything"
    );
}

#[test]
fn an_unknown_settings_key_stops_the_start_naming_it_and_the_likely_one() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("tocsin.toml");
    std::fs::write(&settings, "[delivery]\nprefech = 8\n").unwrap();
    let output = serve_to_end(
        &dir.path().join("data"),
        &[("TOCSIN_SETTINGS", settings.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("unknown setting `delivery.prefech`; did you mean `delivery.prefetch`?"),
        "{}",
        stderr(&output)
    );
}

fn check(settings: Option<&std::path::Path>, routing: Option<&std::path::Path>) -> Output {
    let mut command = tocsin_command();
    command.arg("check");
    if let Some(settings) = settings {
        command.arg("--settings").arg(settings);
    }
    if let Some(routing) = routing {
        command.arg("--routing").arg(routing);
    }
    run_to_end(&mut command)
}

#[test]
fn check_exits_0_on_good_files_1_naming_the_problem_2_on_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let good = check(
        Some(&example.join("tocsin.toml")),
        Some(&example.join("routing.json")),
    );
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    assert!(String::from_utf8_lossy(&good.stdout).contains("ok: routing"));

    let settings = dir.path().join("bad.toml");
    std::fs::write(
        &settings,
        "[bus]\nbackend = \"rabbitmq\"\nuri = \"amqp://h\"\n",
    )
    .unwrap();
    let bad = check(Some(&settings), None);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("did you mean `bus.url`?"),
        "{}",
        stderr(&bad)
    );

    // Parses, but serve would refuse it: half a TLS pair.
    std::fs::write(&settings, "[tls]\ncert_file = \"/etc/cert.pem\"\n").unwrap();
    let half = check(Some(&settings), None);
    assert_eq!(half.status.code(), Some(1));
    assert!(stderr(&half).contains("set together"), "{}", stderr(&half));

    let mut routing = store_configuration("HighCPU");
    routing["subscriptions"][0]["actions"] = serde_json::json!(["no-such-action"]);
    let routing_file = dir.path().join("routing.json");
    std::fs::write(&routing_file, routing.to_string()).unwrap();
    let bad = check(None, Some(&routing_file));
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("no-such-action"), "{}", stderr(&bad));

    // The channels judge the actions, as on import.
    let no_destination = serde_json::json!({"actions": [
        {"name": "hook", "type": "WEB_HOOK", "state": "ENABLED", "properties": {}}
    ]});
    std::fs::write(&routing_file, no_destination.to_string()).unwrap();
    let bad = check(None, Some(&routing_file));
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("destination"), "{}", stderr(&bad));

    std::fs::write(&routing_file, "{\"actions\": 3}").unwrap();
    let not_json = check(None, Some(&routing_file));
    assert_eq!(not_json.status.code(), Some(1));
    assert!(stderr(&not_json).contains("is not an ANS configuration"));

    let usage = run_to_end(tocsin_command().args(["check", "--routnig", "x"]));
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}

#[test]
fn config_needs_no_server_settings() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "this is not toml =").unwrap();
    // Nothing listens there: the command gets as far as trying to reach the server.
    let url = format!("http://{}", refusing_address());
    let output = run_to_end(
        tocsin_command()
            .args(["config", "export", "--url", &url, "--password", "x"])
            .env("TOCSIN_SETTINGS", &broken)
            .env("TOCSIN_BUS_URI", "not a setting either"),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("cannot reach {url}")),
        "{}",
        stderr(&output)
    );
}

/// A bearer token as Tocsin signs them (`base64url(client|scopes|expiry).base64url(HMAC)`),
/// made with `key`: the server accepts it only if it signs with the same key.
fn token_signed_with(key: &[u8], client: &str) -> String {
    let claims = format!("{client}|7|{}", clock::now_epoch_seconds() + 600);
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(claims.as_bytes());
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(&claims),
        b64.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test]
async fn file_variables_give_secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("token-secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let secret_file = secret_file.display().to_string();
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &serde_json::Value::Null,
        &[("TOCSIN_AUTH_TOKEN_SECRET_FILE", &secret_file)],
    )
    .await;
    assert!(
        !tocsin.data_dir.join("token.key").exists(),
        "a key was given: none generated"
    );
    let matched = tocsin.url("/cf/consumer/v1/matched-events");
    for (key, status) in [(&b"from-a-file"[..], 200), (b"from-a-file\n", 401)] {
        let response = tocsin
            .http
            .get(&matched)
            .bearer_auth(token_signed_with(key, "admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "key {key:?}");
    }

    let both = serve_to_end(
        &dir.path().join("data"),
        &[
            ("TOCSIN_AUTH_TOKEN_SECRET_FILE", &secret_file),
            ("TOCSIN_AUTH_TOKEN_SECRET", "inline"),
        ],
    );
    assert_eq!(both.status.code(), Some(1));
    assert!(
        stderr(&both)
            .contains("both TOCSIN_AUTH_TOKEN_SECRET and TOCSIN_AUTH_TOKEN_SECRET_FILE are set"),
        "{}",
        stderr(&both)
    );
    assert!(!stderr(&both).contains("from-a-file") && !stderr(&both).contains("inline"));
    tocsin.shutdown().await;
}
