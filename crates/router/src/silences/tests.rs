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

/// Creating and expiring are audited, naming who and through what; a once-only act repeated
/// is stopped by its entry before it acts; expiring twice is `unchanged`, an unknown id is
/// not audited.
#[tokio::test]
async fn acts_on_silences_are_audited_first_and_once_only() {
    use store::audit::AuditQuery;
    let dir = tempfile::tempdir().unwrap();
    let location = store::Location::Sqlite(dir.path().to_owned());
    let silences = Silences::open(SilenceStore::open(&location).await.unwrap())
        .await
        .unwrap();
    let audit = AuditLog::open(&location).await.unwrap();
    let matcher =
        json!([{"propertyKey": "severity", "predicate": "EQUALS", "propertyValue": "FATAL"}]);
    let now = clock::now_epoch_millis();
    let new = || {
        let new: NewSilence =
            serde_json::from_value(json!({"matchers": matcher, "endsAtMs": now + 60_000})).unwrap();
        check(new, "alice".into(), now).unwrap()
    };
    let click = By {
        via: "slack",
        once: Some("slack:T/U/click-1".into()),
    };
    let first = new();
    silences.create(&first, &audit, &click).await.unwrap();
    let repeated = silences.create(&new(), &audit, &click).await;
    assert!(
        matches!(repeated, Err(SilenceActError::Repeated)),
        "{repeated:?}"
    );
    let kept = silences.store().list(None, now).await.unwrap();
    assert_eq!(kept.len(), 1, "the repeat made no silence: {kept:?}");
    assert!(silences
        .current()
        .silencing(&event("FATAL", "db-1"), now)
        .is_some());

    let api = By {
        via: "api",
        once: None,
    };
    for _ in 0..2 {
        let expired = silences
            .expire(&first.id, now + 1, &audit, "bob", &api)
            .await
            .unwrap();
        assert!(expired.is_some());
    }
    let unknown = silences.expire("nope", now, &audit, "bob", &api).await;
    assert!(matches!(unknown, Ok(None)), "{unknown:?}");
    assert!(silences
        .current()
        .silencing(&event("FATAL", "db-1"), now + 1)
        .is_none());

    let (total, mut entries) = audit
        .list(AuditQuery {
            page_size: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 3, "{entries:#?}");
    entries.reverse();
    let lines: Vec<(&str, &str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            let (who, via, action) = (e.who.as_str(), e.via.as_str(), e.action.as_str());
            (who, via, action, e.target.as_str(), e.outcome.as_str())
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("alice", "slack", "silence", first.id.as_str(), "done"),
            ("bob", "api", "expire-silence", first.id.as_str(), "done"),
            (
                "bob",
                "api",
                "expire-silence",
                first.id.as_str(),
                "unchanged"
            ),
        ]
    );
    let detail: serde_json::Value =
        serde_json::from_str(entries[1].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail, matcher, "the matchers");
}
