//! The HTTPS listener (`[tls]`): Tocsin serves with the configured certificate and picks up a
//! replaced one without a restart; and `tocsin healthcheck`, the container's probe, over
//! HTTPS and plain HTTP.

use crate::common::{run_to_end, tocsin_command, Backend, Tocsin};
use std::path::Path;
use std::time::{Duration, Instant};

/// A self-signed certificate for `127.0.0.1` and `localhost`, written as PEM to `dir`; returns
/// it in DER, for a client to trust.
fn write_certificate(dir: &Path) -> Vec<u8> {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    // Replace the pair the way a renewal would: new files renamed over the old ones.
    for (name, pem) in [
        ("cert.pem", cert.pem()),
        ("key.pem", signing_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(format!("{name}.new")), pem).unwrap();
        std::fs::rename(dir.join(format!("{name}.new")), dir.join(name)).unwrap();
    }
    cert.der().to_vec()
}

fn client_trusting(der: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(der).unwrap())
        .build()
        .unwrap()
}

fn healthcheck(tocsin_listen: &str, env: &[(&str, &str)]) -> std::process::Output {
    run_to_end(
        tocsin_command()
            .arg("healthcheck")
            .env("TOCSIN_LISTEN", tocsin_listen)
            .envs(env.iter().copied()),
    )
}

#[tokio::test]
async fn https_serves_the_certificate_and_picks_up_a_replaced_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_certificate(dir.path());
    let (cert_file, key_file) = (
        dir.path().join("cert.pem").display().to_string(),
        dir.path().join("key.pem").display().to_string(),
    );
    let tls = [
        ("TOCSIN_TLS_CERT_FILE", cert_file.as_str()),
        ("TOCSIN_TLS_KEY_FILE", key_file.as_str()),
    ];
    let tocsin = Tocsin::start_with_client(
        Backend::Embedded,
        &serde_json::Value::Null,
        &tls,
        "https",
        client_trusting(&first),
    )
    .await;
    assert!(tocsin.base.starts_with("https://"));
    let page = tocsin
        .get("/cf/consumer/v1/matched-events")
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "API over HTTPS with the test certificate"
    );
    let plain = reqwest::get(tocsin.base.replacen("https", "http", 1) + "/healthz").await;
    assert!(plain.is_err(), "no plain HTTP on the HTTPS port");

    let ready = healthcheck(tocsin.listen_address(), &tls);
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");

    let second = write_certificate(dir.path());
    let trusts_only_the_second = client_trusting(&second);
    let started = Instant::now();
    loop {
        // A new client each time: a fresh connection and handshake.
        match trusts_only_the_second
            .get(tocsin.url("/healthz"))
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => break,
            outcome => assert!(
                started.elapsed() < Duration::from_secs(15),
                "the replaced certificate is not served: {outcome:?}\n{}",
                tocsin.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tocsin.log().contains("TLS certificate reloaded"));
    let old = client_trusting(&first)
        .get(tocsin.url("/healthz"))
        .send()
        .await;
    assert!(old.is_err(), "the first certificate is no longer served");
    tocsin.shutdown().await;
}

#[tokio::test]
async fn healthcheck_exits_0_against_a_ready_server_and_1_against_nothing() {
    let tocsin = Tocsin::start(Backend::Embedded, &serde_json::Value::Null, &[]).await;
    let ready = healthcheck(tocsin.listen_address(), &[]);
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("ready: http://127.0.0.1:"));
    let port = tocsin
        .listen_address()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    tocsin.shutdown().await;

    // Nothing listens there now; and the wildcard address is probed on loopback.
    let down = healthcheck(&format!("0.0.0.0:{port}"), &[]);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.contains(&format!(
            "not ready: cannot reach http://127.0.0.1:{port}/readyz"
        )),
        "{stderr}"
    );
}
