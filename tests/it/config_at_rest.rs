//! The configuration at rest: `config.db` never holds an action secret in clear, and a rotated
//! key still opens what the old one sealed.

use crate::common::{Backend, Tocsin};
use serde_json::{json, Value};
use std::path::Path;

const CANARY: &str = "canary-s3cret-7f3a9";

fn file_contains(path: &Path, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}

/// `config.db` and its WAL: where the configuration could be found on disk.
fn config_files(tocsin: &Tocsin) -> [std::path::PathBuf; 2] {
    [
        tocsin.data_dir.join("config.db"),
        tocsin.data_dir.join("config.db-wal"),
    ]
}

async fn create_secret_action(tocsin: &Tocsin) {
    let action = json!({
        "name": "sealed-hook", "type": "WEB_HOOK", "state": "ENABLED",
        "properties": {"destination": "https://example.com/hook", "password": CANARY, "username": "ops"}
    });
    let created = tocsin
        .post("/cf/configuration/v1/action", &action)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
}

async fn action_exists(tocsin: &Tocsin) -> bool {
    let response = tocsin
        .get("/cf/configuration/v1/action/sealed-hook")
        .send()
        .await
        .unwrap();
    response.status() == 200
}

#[tokio::test]
async fn action_secrets_are_not_in_config_db_in_clear() {
    let mut tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    create_secret_action(&tocsin).await;
    for file in config_files(&tocsin) {
        assert!(
            !file_contains(&file, CANARY.as_bytes()),
            "{}",
            file.display()
        );
        assert!(!file_contains(&file, b"sealed-hook"), "{}", file.display());
    }
    assert!(
        config_files(&tocsin)
            .iter()
            .any(|file| file_contains(file, b"TOCSIN-SEALED/1")),
        "the sealed document is there"
    );
    let key = tocsin.data_dir.join("secret.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A restart opens it with the generated key.
    tocsin.terminate();
    tocsin.launch().await;
    assert!(action_exists(&tocsin).await);
    tocsin.shutdown().await;
}

/// `tocsin serve` on `tocsin`'s data directory, expected to refuse to start; its log.
fn refused_start(tocsin: &Tocsin, key: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&tocsin.data_dir)
        .env("TOCSIN_STORE_SECRET_KEY", key)
        .output()
        .unwrap();
    assert!(!output.status.success(), "it started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_rotated_key_still_opens_the_old_file_and_then_the_new_key_alone_does() {
    let (old, new) = (
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "H+7dzLuqmYh3ZlVEMyIRAP/u3cy7qpmId2ZVRDMiEQA=",
    );
    let mut tocsin = Tocsin::start(
        Backend::Embedded,
        &Value::Null,
        &[("TOCSIN_STORE_SECRET_KEY", old)],
    )
    .await;
    create_secret_action(&tocsin).await;
    tocsin.terminate();
    assert!(
        !tocsin.data_dir.join("secret.key").exists(),
        "a configured key"
    );

    // Rotation: the new key, with the old one among the previous keys (settings file only).
    let settings = tocsin.data_dir.parent().unwrap().join("rotate.toml");
    std::fs::write(
        &settings,
        format!("[store]\nprevious_secret_keys = [\"{old}\"]\n"),
    )
    .unwrap();
    tocsin.set_env("TOCSIN_SETTINGS", settings.to_str().unwrap());
    tocsin.set_env("TOCSIN_STORE_SECRET_KEY", new);
    tocsin.launch().await;
    assert!(action_exists(&tocsin).await, "the old key still opens it");
    tocsin.terminate();
    for file in config_files(&tocsin) {
        assert!(
            !file_contains(&file, CANARY.as_bytes()),
            "{}",
            file.display()
        );
    }

    // It was sealed again at that start: the new key alone opens it now, the old one does not.
    let log = refused_start(&tocsin, old);
    assert!(log.contains("store.secret_key"), "{log}");
    assert!(
        !log.contains(old) && !log.contains(new),
        "no key in the log: {log}"
    );
    std::fs::write(&settings, "").unwrap();
    tocsin.launch().await;
    assert!(action_exists(&tocsin).await, "the new key alone opens it");
    tocsin.shutdown().await;
}
