//! The official SAP Node client (`@sap_oss/alert-notification-client`), unchanged, against a
//! running Tocsin on both platforms' paths (`/cf/` and `/neo/`), with Basic and OAuth:
//! `tests/sap-client/conformance.mjs` drives it and prints `N passed, M failed`. The
//! configuration stores `ConformanceStore` events and cannot deliver `Unsupported` ones, so the
//! client reads both matched and undelivered events. Needs `npm ci --prefix tests/sap-client`
//! first (the README's test command does it).

use crate::common::{store_configuration, Backend, Tocsin};
use std::process::Command;

fn conformance(tocsin: &Tocsin, mode: &str, auth: &str, platform: &str) -> (bool, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sap-client");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/@sap_oss/alert-notification-client")
            .exists(),
        "the SAP client is not installed: run `npm ci --prefix tests/sap-client`"
    );
    let output = Command::new("node")
        .arg("conformance.mjs")
        .arg(mode)
        .current_dir(dir)
        .env("TOCSIN_URL", &tocsin.base)
        .env("TOCSIN_USER", &tocsin.user)
        .env("TOCSIN_PASSWORD", &tocsin.password)
        .env("TOCSIN_AUTH", auth)
        .env("TOCSIN_PLATFORM", platform)
        .env("TOCSIN_EVENT_TYPE", "ConformanceStore")
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_client_sends_and_reads_events() {
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &store_configuration("ConformanceStore"),
        &[],
    )
    .await;
    for (platform, auth) in [("cf", "basic"), ("cf", "oauth"), ("neo", "basic")] {
        let (passed, report) = conformance(&tocsin, "events", auth, platform);
        assert!(
            passed,
            "SAP client on /{platform}/ with {auth} auth:\n{report}\n{}",
            tocsin.log()
        );
        assert!(report.contains(" 0 failed"), "{report}");
        // The undelivered checks ran: they are not skipped when there is nothing to read.
        assert!(
            report.contains("ok - getUndeliveredEvents() returns the undeliverable event"),
            "{report}"
        );
        eprintln!(
            "/{platform}/ {auth}: {}",
            report.lines().last().unwrap_or_default()
        );
    }
    tocsin.shutdown().await;
}
