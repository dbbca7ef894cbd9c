//! Matching one event against 1,000 subscriptions with a realistic mix of keys and predicates:
//! most subscriptions select an event type (EQUALS) and a severity band (shared conditions),
//! many narrow by resource name prefix, tags or priority, some are snoozed or disabled.
//! Run: `cargo bench -p router --bench matching`.

use criterion::{criterion_group, criterion_main, Criterion};
use model::{Catalog, Configuration, ResourceEvent};
use router::matcher::Matcher;
use serde_json::json;
use std::hint::black_box;

/// The routing side alone: any action type is accepted, none is delivered.
fn catalog(configuration: Configuration) -> Result<Catalog, model::config::ConfigurationError> {
    Catalog::new(configuration, &model::AnyActionType)
}

fn configuration() -> Configuration {
    let severities = ["INFO", "NOTICE", "WARNING", "ERROR", "FATAL"];
    let mut conditions = Vec::new();
    for (i, severity) in severities.iter().enumerate() {
        conditions.push(json!({"name": format!("sev-{i}"), "propertyKey": "severity", "predicate": "EQUALS", "propertyValue": severity}));
    }
    for t in 0..200 {
        conditions.push(json!({"name": format!("type-{t}"), "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": format!("EventType{t}")}));
    }
    for p in 0..100 {
        conditions.push(json!({"name": format!("prefix-{p}"), "propertyKey": "resource.resourceName", "predicate": "STARTS_WITH", "propertyValue": format!("svc{p}-")}));
    }
    for t in 0..50 {
        conditions.push(json!({"name": format!("team-{t}"), "propertyKey": "tags.team", "predicate": "EQUALS", "propertyValue": format!("team{t}")}));
        conditions.push(json!({"name": format!("subject-{t}"), "propertyKey": "subject", "predicate": "CONTAINS", "propertyValue": format!("keyword{t}")}));
    }
    for p in 0..10 {
        conditions.push(json!({"name": format!("prio-{p}"), "propertyKey": "priority", "predicate": "GREATER_THAN", "propertyValue": (p * 100).to_string()}));
    }
    conditions.push(json!({"name": "no-maintenance", "propertyKey": "tags.maintenance", "predicate": "NO_VALUE", "mandatory": true}));
    let mut subscriptions = Vec::new();
    for s in 0..1000 {
        let mut names = vec![
            format!("type-{}", s % 200),
            format!("sev-{}", s % 5),
            format!("sev-{}", (s + 1) % 5),
        ];
        if s % 2 == 0 {
            names.push(format!("prefix-{}", s % 100));
        }
        if s % 3 == 0 {
            names.push(format!("team-{}", s % 50));
        }
        if s % 5 == 0 {
            names.push(format!("subject-{}", s % 50));
        }
        if s % 7 == 0 {
            names.push(format!("prio-{}", s % 10));
        }
        if s % 4 == 0 {
            names.push("no-maintenance".into());
        }
        subscriptions.push(json!({
            "name": format!("sub-{s}"), "state": if s % 50 == 0 { "DISABLED" } else { "ENABLED" },
            "conditions": names, "actions": [format!("action-{}", s % 100)],
            "snoozeTimestamp": if s % 40 == 0 { Some(i64::MAX) } else { None }
        }));
    }
    let actions: Vec<_> = (0..100)
        .map(|a| json!({"name": format!("action-{a}"), "type": "STORE", "state": "ENABLED"}))
        .collect();
    serde_json::from_value(
        json!({"actions": actions, "conditions": conditions, "subscriptions": subscriptions}),
    )
    .unwrap()
}

fn event() -> ResourceEvent {
    serde_json::from_value(json!({
        "id": "01a1fb4c-bc8b-7357-9cef-e128eb279637", "eventType": "EventType42", "severity": "ERROR", "category": "ALERT",
        "subject": "keyword42 latency above threshold", "body": "p99 latency 2.3 s", "eventTimestamp": 1_700_000_000, "priority": 450,
        "resource": {"resourceName": "svc42-api-7", "resourceType": "service"},
        "tags": {"team": "team42", "ans:sourceEventId": "k-42"}
    })).unwrap()
}

fn matching(c: &mut Criterion) {
    let catalog = catalog(configuration()).unwrap();
    let matcher = Matcher::new(&catalog);
    let event = event();
    let selected = matcher.select(&event, 1_700_000_000);
    assert!(!selected.is_empty(), "the bench event matches something");
    c.bench_function("match one event against 1000 subscriptions", |b| {
        b.iter(|| black_box(matcher.select(black_box(&event), 1_700_000_000)))
    });
    c.bench_function("compile 1000 subscriptions", |b| {
        b.iter(|| black_box(Matcher::new(black_box(&catalog))))
    });
}

criterion_group!(benches, matching);
criterion_main!(benches);
