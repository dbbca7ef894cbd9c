//! The outbound policy through the binary: internal destinations are refused when an action is
//! saved, a name that resolves to an internal address is refused when the request is made, and
//! nothing reaches the destination. (Every other test reaches its loopback stand-ins through
//! the allow-list, so that it opens what it lists is proven there.)

use crate::common::{
    event, route_everything_to, webhook, Backend, Destination, Tocsin, OUTBOUND_ALLOW,
};
use serde_json::{json, Value};

/// A name in `/etc/hosts`, other than `localhost`, for a loopback or private address: what a
/// public-looking name resolving inside the network looks like to Tocsin.
fn internal_name() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    hosts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('#').next()?.split_whitespace();
            let address: std::net::IpAddr = fields.next()?.parse().ok()?;
            let internal = match address {
                std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
                std::net::IpAddr::V6(v6) => v6.is_loopback(),
            };
            internal.then(|| {
                fields.find(|name| !name.contains("localhost") && !name.starts_with("ip6-"))
            })?
        })
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("/etc/hosts names no internal host besides localhost:\n{hosts}"))
}

#[tokio::test]
async fn internal_destinations_are_refused_when_saved_and_when_resolved() {
    let destination = Destination::start(|_| 200).await;
    let port = destination
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let name = internal_name();
    let sneaky = format!("http://{name}:{port}/hook");
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &route_everything_to(vec![webhook(
            "sneaky",
            &sneaky,
            json!({"retryMaxAttempts": "1"}),
        )]),
        &[(OUTBOUND_ALLOW, "")],
    )
    .await;

    for (url, why) in [
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is a link-local",
        ),
        (destination.url.clone(), "127.0.0.1 is a loopback"),
        (
            format!("http://localhost:{port}/hook"),
            "localhost is a loopback",
        ),
        ("http://[::ffff:10.0.0.1]/".to_owned(), "is a private"),
    ] {
        let response = tocsin
            .post(
                "/cf/configuration/v1/action",
                &webhook("internal", &url, json!({})),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("`properties.destination`") && message.contains(why),
            "{url}: {message}"
        );
    }

    // Saved as a name; what it resolves to when the request is made is refused.
    tocsin.send(&event("Sneaky", "sneaky-1")).await;
    let page = tocsin
        .wait_for_count(
            "/cf/consumer/v1/undelivered-events?include=FAILURE_REASON",
            1,
        )
        .await;
    let record = &page["results"][0];
    let reasons = record["metadata"]["failureReasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "a refusal is permanent: one attempt");
    let reason = &reasons[0];
    assert_eq!(reason["code"], 906, "{record:#}");
    let text = reason["reason"].as_str().unwrap();
    assert!(
        text.contains("refused by the outbound policy")
            && text.contains(&format!("`{name}` resolves to")),
        "{text}"
    );
    assert!(
        destination.received().is_empty(),
        "nothing reached the destination"
    );
    tocsin.shutdown().await;
}
