//! The JSON Schemas in `schemas/` and the Rust types agree: what the types emit validates, the
//! fixtures validate, and what the schemas reject the parser rejects too.

use jsonschema::{Resource, Validator};
use model::{
    ConsumerEvent, ConsumerEventMetadata, ConsumerPagedResponse, DeliveryJob, DeliveryStatus,
    FailureReason, IngestedEvent, ResourceEvent, ResponseMetadata,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A validator for `schemas/<name>`, with every other schema registered for `$ref`.
fn validator(name: &str) -> Validator {
    let dir = repo().join("schemas");
    let mut options = jsonschema::options();
    let mut root = None;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let schema: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if schema.get("openapi").is_some() {
                // The OpenAPI document lives here too; it is checked by its own test.
                continue;
            }
            let id = schema["$id"]
                .as_str()
                .expect("every schema has an $id")
                .to_owned();
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
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{value:#}");
}

fn sample_event() -> ResourceEvent {
    model::parse_event(
        json!({
            "eventType": "HighCPU", "severity": "FATAL", "category": "ALERT",
            "subject": "CPU", "body": "at 99%", "priority": 1000,
            "resource": {"resourceName": "web-1", "resourceType": "vm", "resourceInstance": "i-1", "tags": {"zone": "a"}},
            "tags": {"ans:sourceEventId": "k1", "ans:status": "CREATE_OR_UPDATE"}
        })
        .to_string()
        .as_bytes(),
        "0193b3c4-1f2e-7a00-8000-000000000001".into(),
        1_700_000_000,
    )
    .unwrap()
}

#[test]
fn emitted_events_and_pages_match_their_schemas() {
    let event = sample_event();
    assert_valid(
        &validator("resource-event.json"),
        &serde_json::to_value(&event).unwrap(),
        "echoed event",
    );

    let consumer = ConsumerEvent::new(
        event.clone(),
        "local".into(),
        "tocsin".into(),
        ConsumerEventMetadata {
            cache_time: 1_700_000_001,
            affected_action_id: "to-store".into(),
            delivery_status: DeliveryStatus::Undelivered,
            failure_reasons: Some(vec![FailureReason {
                code: 503,
                reason: "down".into(),
                timestamp: 1,
            }]),
        },
    );
    let page = ConsumerPagedResponse {
        response_metadata: ResponseMetadata {
            page: 0,
            page_size: 100,
            total_pages: 1,
            total_results_count: 1,
        },
        results: vec![consumer],
    };
    assert_valid(
        &validator("consumer-paged-response.json"),
        &serde_json::to_value(&page).unwrap(),
        "consumer page",
    );

    let mut ingested = IngestedEvent {
        event: event.clone(),
        accepted_at_ms: 5,
        by: None,
        released_by: None,
    };
    assert_valid(
        &validator("bus-ingested-event.json"),
        &serde_json::to_value(&ingested).unwrap(),
        "bus event",
    );
    ingested.by = Some(model::alert::HumanAct {
        action: model::alert::HumanAction::Acknowledge,
        who: "oncall".into(),
        via: "api".into(),
        comment: Some("on it".into()),
    });
    assert_valid(
        &validator("bus-ingested-event.json"),
        &serde_json::to_value(&ingested).unwrap(),
        "bus event with a person's act",
    );
    for released in [
        model::bus::Released::Silence("s-1".into()),
        model::bus::Released::MuteWindow {
            subscription: "night".into(),
        },
    ] {
        ingested.by = None;
        ingested.released_by = Some(released);
        let value = serde_json::to_value(&ingested).unwrap();
        assert_valid(
            &validator("bus-ingested-event.json"),
            &value,
            "bus event released",
        );
        let back: IngestedEvent = serde_json::from_value(value).unwrap();
        assert_eq!(
            back, ingested,
            "a released copy reads back as it was queued"
        );
    }
    let mut job = DeliveryJob::new(event, 5, "to-store");
    assert_valid(
        &validator("bus-delivery-job.json"),
        &serde_json::to_value(&job).unwrap(),
        "bus job",
    );
    let mut set = job.clone();
    set.also = vec!["to-slack".into(), "to-email".into()];
    assert_valid(
        &validator("bus-delivery-job.json"),
        &serde_json::to_value(&set).unwrap(),
        "bus job for three actions",
    );
    let split = set.split();
    assert_eq!(
        split.iter().map(|j| j.action.as_str()).collect::<Vec<_>>(),
        ["to-store", "to-slack", "to-email"]
    );
    assert!(split
        .iter()
        .all(|j| j.also.is_empty() && j.event == job.event));
    job.attempt = 2;
    job.first_attempt_at_ms = Some(1);
    job.failures = vec![FailureReason {
        code: 503,
        reason: "down".into(),
        timestamp: 1,
    }];
    job.fallback_for = Some("primary".into());
    assert_valid(
        &validator("bus-delivery-job.json"),
        &serde_json::to_value(&job).unwrap(),
        "bus job",
    );
}

#[test]
fn configurations_round_trip_through_the_schema() {
    let example = std::fs::read_to_string(repo().join("examples/routing.json"))
        .expect("the example configuration");
    let inline = json!({
        "actions": [{"name": "a", "type": "WEB_HOOK", "state": "ENABLED", "labels": ["x"],
                     "properties": {"destination": "https://x", "sslTrustAll": false, "retries": 3},
                     "fallbackAction": "b", "fallbackTime": 60, "discardAfter": 600, "enableDeliveryStatus": true},
                    {"name": "b", "type": "STORE", "state": "DISABLED"}],
        "conditions": [{"name": "c", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "X", "mandatory": true}],
        "subscriptions": [{"name": "s", "state": "ENABLED", "conditions": ["c"], "actions": ["a"], "snoozeTimestamp": 1}]
    });
    let schema = validator("configuration.json");
    for source in [example, inline.to_string()] {
        let configuration: model::Configuration = serde_json::from_str(&source).unwrap();
        configuration.check_structure().unwrap();
        let emitted = serde_json::to_value(&configuration).unwrap();
        assert_valid(&schema, &emitted, "configuration");
        assert_eq!(
            serde_json::from_value::<model::Configuration>(emitted).unwrap(),
            configuration,
            "round trip"
        );
    }
}

#[test]
fn every_oci_fixture_matches_its_schema() {
    let fixtures = repo().join("tests/fixtures/oci");
    let alarm = validator("oci-alarm-message.json");
    let confirmation = validator("oci-subscription-confirmation.json");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).expect("the OCI fixtures in tests/fixtures") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let schema = if path.to_string_lossy().contains("subscription-confirmation") {
            &confirmation
        } else {
            &alarm
        };
        assert_valid(schema, &value, &path.display().to_string());
        checked += 1;
    }
    assert!(checked >= 5, "found the fixtures");
}

#[test]
fn the_request_schema_and_the_parser_agree() {
    let request = validator("resource-event.request.json");
    let base = json!({
        "eventType": "T", "severity": "INFO", "category": "NOTIFICATION", "subject": "s", "body": "b",
        "resource": {"resourceName": "r", "resourceType": "t"}
    });
    let variants = [
        ("minimal", base.clone()),
        ("priority 0", with(&base, "priority", json!(0))),
        ("priority 1000", with(&base, "priority", json!(1000))),
        ("priority 1001", with(&base, "priority", json!(1001))),
        (
            "severity CRITICAL",
            with(&base, "severity", json!("CRITICAL")),
        ),
        (
            "category INCIDENT",
            with(&base, "category", json!("INCIDENT")),
        ),
        (
            "negative timestamp",
            with(&base, "eventTimestamp", json!(-1)),
        ),
        ("timestamp", with(&base, "eventTimestamp", json!(1))),
        ("no subject", without(&base, "subject")),
        ("no resource", without(&base, "resource")),
        ("blank type", with(&base, "eventType", json!(" "))),
        (
            "no resourceType",
            json!({"eventType": "T", "severity": "INFO", "category": "ALERT", "subject": "s", "body": "b", "resource": {"resourceName": "r"}}),
        ),
    ];
    for (what, value) in variants {
        let schema_accepts = request.is_valid(&value);
        let parser_accepts =
            model::parse_event(value.to_string().as_bytes(), "id".into(), 0).is_ok();
        assert_eq!(
            schema_accepts, parser_accepts,
            "{what}: schema and parser disagree on {value}"
        );
    }
}

fn with(base: &Value, key: &str, value: Value) -> Value {
    let mut copy = base.clone();
    copy[key] = value;
    copy
}

fn without(base: &Value, key: &str) -> Value {
    let mut copy = base.clone();
    copy.as_object_mut().unwrap().remove(key);
    copy
}
