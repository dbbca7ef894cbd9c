use super::*;
use serde_json::json;

fn new_silence(matchers: serde_json::Value) -> NewSilence {
    serde_json::from_value(json!({"matchers": matchers, "endsAtMs": 20_000})).unwrap()
}

fn event(severity: &str, resource: &str) -> ResourceEvent {
    serde_json::from_value(json!({
        "id": "e", "eventType": "DiskFull", "severity": severity, "category": "ALERT",
        "subject": "s", "body": "b", "eventTimestamp": 1,
        "resource": {"resourceName": resource, "resourceType": "database"},
        "tags": {"ans:sourceEventId": "k"}
    }))
    .unwrap()
}

#[test]
fn matchers_compare_as_conditions_do_and_with_anchored_regexes() {
    // The last one holds: the event has no `team` tag, which does not match `db.*`.
    let silence = check(
        new_silence(json!([
            {"propertyKey": "eventType", "predicate": "STARTS_WITH", "propertyValue": "Disk"},
            {"propertyKey": "resource.resourceName", "predicate": "MATCHES_REGEX", "propertyValue": "db-[0-9]"},
            {"propertyKey": "severity", "predicate": "MATCHES_REGEX", "propertyValue": "FATAL|ERROR"},
            {"propertyKey": "tags.team", "predicate": "DOES_NOT_MATCH_REGEX", "propertyValue": "db.*"}
        ])),
        "oncall".into(),
        10_000,
    )
    .unwrap();
    assert_eq!((silence.starts_at_ms, silence.ends_at_ms), (10_000, 20_000));
    let set = SilenceSet::new(vec![silence.clone()]);
    let id = Some(silence.id.as_str());
    assert_eq!(set.silencing(&event("FATAL", "db-1"), 10_000), id);
    assert_eq!(set.silencing(&event("ERROR", "db-1"), 19_999), id);
    assert_eq!(
        set.silencing(&event("FATAL", "db-1"), 20_000),
        None,
        "ended"
    );
    assert_eq!(
        set.silencing(&event("FATAL", "db-1"), 9_999),
        None,
        "pending"
    );
    assert_eq!(set.silencing(&event("WARNING", "db-1"), 15_000), None);
    assert_eq!(
        set.silencing(&event("FATAL", "db-10"), 15_000),
        None,
        "anchored"
    );
    assert!(SilenceSet::default().is_empty());
}

#[test]
fn a_bad_silence_is_refused_naming_the_field() {
    let refused = |matchers: serde_json::Value| {
        check(new_silence(matchers), "oncall".into(), 10_000).unwrap_err()
    };
    assert!(refused(json!([])).contains("`matchers`"));
    let bad_regex = refused(
        json!([{"propertyKey": "severity", "predicate": "MATCHES_REGEX", "propertyValue": "("}]),
    );
    assert!(
        bad_regex.contains("`matchers[0]`: `propertyValue` is not a valid regex"),
        "{bad_regex}"
    );
    let bad_key =
        refused(json!([{"propertyKey": "colour", "predicate": "EQUALS", "propertyValue": "red"}]));
    assert!(bad_key.contains("`propertyKey` `colour`"), "{bad_key}");
    let everything = refused(
        json!([{"propertyKey": "severity", "predicate": "NOT_EQUALS", "propertyValue": "INFO"}, {"propertyKey": "subject", "predicate": "MATCHES_REGEX", "propertyValue": ".*"}]),
    );
    assert!(everything.contains("need a value"), "{everything}");
    let matcher =
        json!([{"propertyKey": "severity", "predicate": "EQUALS", "propertyValue": "FATAL"}]);
    let backwards: NewSilence = serde_json::from_value(
        json!({"matchers": matcher, "startsAtMs": 30_000, "endsAtMs": 20_000}),
    )
    .unwrap();
    let e = check(backwards, "oncall".into(), 10_000).unwrap_err();
    assert!(e.contains("`endsAtMs`"), "{e}");
    let long: NewSilence = serde_json::from_value(
        json!({"matchers": matcher, "endsAtMs": 20_000, "comment": "x".repeat(MAX_COMMENT + 1)}),
    )
    .unwrap();
    assert!(check(long, "oncall".into(), 10_000)
        .unwrap_err()
        .contains("`comment`"));
    // A start in the past is now.
    let past: NewSilence =
        serde_json::from_value(json!({"matchers": matcher, "startsAtMs": 1, "endsAtMs": 20_000}))
            .unwrap();
    assert_eq!(
        check(past, "oncall".into(), 10_000).unwrap().starts_at_ms,
        10_000
    );
}
