//! The JSON Schemas of the sources' formats (`schemas/`) and the sources agree: the sample
//! payloads (`tests/data/`) and the OCI fixtures validate, what a source answers validates, and
//! a payload the schema rejects the source rejects too.

use ingest::sources::oci::alarm::Alarm;
use ingest::sources::oci::event::OciEvent;
use ingest::sources::oci::Delivery;
use ingest::sources::{alertmanager, cloudevents};
use jsonschema::{Resource, Validator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use store::subscriptions::{State, SubscriptionRecord};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn sample(name: &str) -> Value {
    read(&crate_dir().join("tests/data").join(name))
}

fn fixture(name: &str) -> Value {
    read(&crate_dir().join("../../tests/fixtures/oci").join(name))
}

/// A validator for `schemas/<name>`, every schema registered for `$ref` (documents without an
/// `$id`, like the OpenAPI description, are no JSON Schemas).
fn validator(name: &str) -> Validator {
    let mut options = jsonschema::options();
    let mut root = None;
    for entry in std::fs::read_dir(crate_dir().join("../../schemas")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let schema = read(&path);
            let Some(id) = schema["$id"].as_str().map(str::to_owned) else {
                continue;
            };
            if path.file_name().unwrap() == name {
                root = Some(schema.clone());
            }
            options = options.with_resource(id, Resource::from_contents(schema));
        }
    }
    options
        .build(&root.expect("schema exists"))
        .expect("schema compiles")
}

fn assert_valid(validator: &Validator, value: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{value:#}");
}

fn without(mut value: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    value
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key)
        .unwrap();
    value
}

#[test]
fn alertmanager_webhooks_and_their_answer() {
    let request = validator("alertmanager-webhook.json");
    let answer = validator("source-published.json");
    let body = sample("alertmanager-webhook.json");
    assert_valid(&request, &body, "sample");
    let mut n = 0;
    let events = alertmanager::normalize(&body, 0, || {
        n += 1;
        format!("0193b3c4-1f2e-7a00-8000-00000000000{n}")
    })
    .unwrap();
    assert_valid(&answer, &json!({ "published": events }), "answer");

    let unlabelled = without(body, "/alerts/0/labels");
    assert!(!request.is_valid(&unlabelled));
    assert!(alertmanager::normalize(&unlabelled, 0, String::new).is_err());
}

#[test]
fn cloud_events_on_the_producer_path() {
    let request = validator("cloudevent.request.json");
    let echo = validator("resource-event.json");
    let body = sample("cloudevent.json");
    assert_valid(&request, &body, "sample");
    let event =
        cloudevents::to_resource_event(&body, "0193b3c4-1f2e-7a00-8000-000000000001".into(), 0)
            .unwrap();
    assert_valid(&echo, &serde_json::to_value(&event).unwrap(), "echo");

    for pointer in ["/type", "/id", "/source", "/specversion"] {
        let broken = without(body.clone(), pointer);
        assert!(!request.is_valid(&broken), "{pointer}");
        assert!(
            cloudevents::to_resource_event(&broken, "i".into(), 0).is_err(),
            "{pointer}"
        );
    }
}

#[test]
fn oci_alarms_events_and_their_answers() {
    let answer = validator("source-published.json");
    let delivery = Delivery {
        message_id: Some("m".into()),
        ..Delivery::default()
    };
    let mut published = Vec::new();
    for name in [
        "ok-to-firing.seed.json",
        "firing-to-ok.seed.json",
        "split-v1.5.json",
        "repeat-grouped-v1.3.json",
    ] {
        let alarm = Alarm::parse(&fixture(name)).unwrap();
        published.push(alarm.normalize(
            &delivery,
            "0193b3c4-1f2e-7a00-8000-000000000001".into(),
            0,
        ));
    }
    let event = sample("oci-event.json");
    assert_valid(&validator("oci-event.json"), &event, "OCI event sample");
    published.push(OciEvent::parse(&event).unwrap().normalize(
        &delivery,
        "0193b3c4-1f2e-7a00-8000-000000000002".into(),
        0,
    ));
    assert_valid(&answer, &json!({ "published": published }), "answer");
    assert_valid(
        &answer,
        &json!({"published": [], "duplicate": true}),
        "redelivery",
    );

    let no_id = without(event, "/eventID");
    assert!(!validator("oci-event.json").is_valid(&no_id));
    assert!(OciEvent::parse(&no_id).is_err());
}

#[test]
fn the_subscriptions_listing() {
    let record = SubscriptionRecord {
        subscription_id: "ocid1.onssubscription.oc1.phx.x".into(),
        topic_id: None,
        topic_name: Some("alarms".into()),
        host: "cell1.notification.us-phoenix-1.oci.oraclecloud.com".into(),
        state: State::Pending,
        detail: "auto-confirmation is off".into(),
        confirmation_url: Some(
            "https://cell1.notification.us-phoenix-1.oci.oraclecloud.com/c".into(),
        ),
        attempts: 1,
        updated_at: 1_700_000_000,
    };
    assert_valid(
        &validator("oci-subscriptions.json"),
        &json!({ "subscriptions": [record] }),
        "listing",
    );
}
