//! The matcher against the rules: a table per predicate, the combination rule with and without
//! `mandatory`, and a property test comparing the indexed matcher with a plain reference
//! implementation of the matching rule of docs/src/routing.md on random configurations and events.

use model::config::{Predicate, PropertyKey, State};
use model::{Catalog, Configuration, ResourceEvent};
use proptest::prelude::*;
use router::matcher::Matcher;
use serde_json::json;

/// The routing side alone: any action type is accepted, none is delivered.
fn catalog(configuration: Configuration) -> Result<Catalog, model::config::ConfigurationError> {
    Catalog::new(configuration, &model::AnyActionType)
}

fn event(priority: Option<i32>, tags: serde_json::Value) -> ResourceEvent {
    let mut value = json!({
        "id": "e", "eventType": "HighCPU", "severity": "ERROR", "category": "ALERT",
        "subject": "CPU at 95% on web-1", "body": "", "eventTimestamp": 1,
        "resource": {"resourceName": "web-1", "resourceType": "vm", "tags": {"zone": "eu-1"}},
        "tags": tags
    });
    if let Some(p) = priority {
        value["priority"] = json!(p);
    }
    serde_json::from_value(value).unwrap()
}

fn one_condition(key: &str, predicate: &str, value: Option<&str>) -> Catalog {
    let mut condition = json!({"name": "c", "propertyKey": key, "predicate": predicate});
    if let Some(v) = value {
        condition["propertyValue"] = json!(v);
    }
    catalog(serde_json::from_value::<Configuration>(json!({
        "actions": [{"name": "a", "type": "STORE", "state": "ENABLED"}],
        "conditions": [condition],
        "subscriptions": [{"name": "s", "state": "ENABLED", "conditions": ["c"], "actions": ["a"]}]
    })).unwrap())
    .unwrap()
}

fn fires(catalog: &Catalog, event: &ResourceEvent) -> bool {
    !Matcher::new(catalog).select(event, 0).is_empty()
}

#[test]
fn every_predicate_on_present_absent_and_numeric_values() {
    let e = event(Some(7), json!({"ans:sourceEventId": "k-1", "team": ""}));
    // (key, predicate, value, expected)
    let table: &[(&str, &str, Option<&str>, bool)] = &[
        ("subject", "CONTAINS", Some("95%"), true),
        ("subject", "CONTAINS", Some("99%"), false),
        ("subject", "DOES_NOT_CONTAIN", Some("99%"), true),
        ("subject", "DOES_NOT_CONTAIN", Some("95%"), false),
        ("resource.resourceName", "STARTS_WITH", Some("web-"), true),
        ("resource.resourceName", "STARTS_WITH", Some("db-"), false),
        (
            "resource.resourceName",
            "DOES_NOT_START_WITH",
            Some("db-"),
            true,
        ),
        (
            "resource.resourceName",
            "DOES_NOT_START_WITH",
            Some("web"),
            false,
        ),
        ("resource.resourceName", "ENDS_WITH", Some("-1"), true),
        ("resource.resourceName", "ENDS_WITH", Some("-2"), false),
        (
            "resource.resourceName",
            "DOES_NOT_END_WITH",
            Some("-2"),
            true,
        ),
        (
            "resource.resourceName",
            "DOES_NOT_END_WITH",
            Some("-1"),
            false,
        ),
        ("eventType", "EQUALS", Some("HighCPU"), true),
        ("eventType", "EQUALS", Some("highcpu"), false),
        ("severity", "NOT_EQUALS", Some("FATAL"), true),
        ("severity", "NOT_EQUALS", Some("ERROR"), false),
        ("category", "ANY", None, true),
        ("tags.team", "ANY", None, false),
        ("tags.team", "NO_VALUE", None, true),
        ("tags.missing", "NO_VALUE", None, true),
        ("resource.resourceInstance", "NO_VALUE", None, true),
        ("tags.ans:sourceEventId", "EQUALS", Some("k-1"), true),
        ("resource.tags.zone", "EQUALS", Some("eu-1"), true),
        ("resource.tags.zone", "EQUALS", Some("eu-2"), false),
        ("priority", "LESS_THAN", Some("10"), true),
        ("priority", "LESS_THAN", Some("7"), false),
        ("priority", "GREATER_THAN", Some("6.5"), true),
        ("priority", "GREATER_THAN", Some("7"), false),
        ("priority", "NUMBER_EQUALS", Some("7.0"), true),
        ("priority", "NUMBER_EQUALS", Some("8"), false),
        // Numeric predicates on a non-number fail cleanly instead of matching.
        ("subject", "GREATER_THAN", Some("1"), false),
        ("subject", "LESS_THAN", Some("1"), false),
        // Absent values: only the negative predicates hold.
        ("tags.missing", "CONTAINS", Some("x"), false),
        ("tags.missing", "DOES_NOT_CONTAIN", Some("x"), true),
        ("tags.missing", "EQUALS", Some("x"), false),
        ("tags.missing", "NOT_EQUALS", Some("x"), true),
        ("tags.missing", "GREATER_THAN", Some("1"), false),
    ];
    for (key, predicate, value, expected) in table {
        let catalog = one_condition(key, predicate, *value);
        assert_eq!(
            fires(&catalog, &e),
            *expected,
            "{key} {predicate} {value:?}"
        );
    }
    let no_priority = event(None, json!({}));
    assert!(!fires(
        &one_condition("priority", "LESS_THAN", Some("10")),
        &no_priority
    ));
    assert!(fires(
        &one_condition("priority", "NO_VALUE", None),
        &no_priority
    ));
}

fn combination(mandatory: &[&str]) -> Catalog {
    let conditions: Vec<_> = [
        ("sev-fatal", "severity", "FATAL"),
        ("sev-error", "severity", "ERROR"),
        ("type-cpu", "eventType", "HighCPU"),
        ("type-disk", "eventType", "DiskFull"),
        ("zone-eu", "resource.tags.zone", "eu-1"),
    ]
    .iter()
    .map(|(name, key, value)| json!({"name": name, "propertyKey": key, "predicate": "EQUALS", "propertyValue": value, "mandatory": mandatory.contains(name)}))
    .collect();
    catalog(serde_json::from_value::<Configuration>(json!({
        "actions": [{"name": "a", "type": "STORE", "state": "ENABLED"}],
        "conditions": conditions,
        "subscriptions": [{"name": "s", "state": "ENABLED", "conditions": ["sev-fatal", "sev-error", "type-cpu", "type-disk", "zone-eu"], "actions": ["a"]}]
    })).unwrap()).unwrap()
}

fn with(event_type: &str, severity: &str, zone: &str) -> ResourceEvent {
    let mut e = event(None, json!({}));
    e.event_type = event_type.into();
    e.severity = severity.parse().unwrap();
    e.resource.tags = Some([("zone".to_owned(), zone.to_owned())].into());
    e
}

#[test]
fn same_key_is_or_different_keys_are_and_mandatory_must_all_hold() {
    let plain = combination(&[]);
    assert!(fires(&plain, &with("HighCPU", "FATAL", "eu-1")));
    assert!(
        fires(&plain, &with("DiskFull", "ERROR", "eu-1")),
        "OR within severity and within eventType"
    );
    assert!(
        !fires(&plain, &with("HighCPU", "WARNING", "eu-1")),
        "the severity group fails"
    );
    assert!(
        !fires(&plain, &with("HighCPU", "FATAL", "us-1")),
        "the zone group fails"
    );

    // Mandatory conditions must all hold; the others keep their grouping.
    let mandatory = combination(&["zone-eu"]);
    assert!(fires(&mandatory, &with("HighCPU", "FATAL", "eu-1")));
    assert!(fires(&mandatory, &with("DiskFull", "ERROR", "eu-1")));
    assert!(
        !fires(&mandatory, &with("HighCPU", "FATAL", "us-1")),
        "zone-eu is mandatory"
    );
    assert!(
        !fires(&mandatory, &with("HighCPU", "WARNING", "eu-1")),
        "the severity group still needs one"
    );
    assert!(
        !fires(&mandatory, &with("Other", "FATAL", "eu-1")),
        "the eventType group still needs one"
    );

    // A non-mandatory condition keeps its key's group even when a mandatory condition shares
    // the key: mandatory FATAL with optional ERROR means FATAL and ERROR at once, never true.
    let shared_key = combination(&["sev-fatal", "zone-eu"]);
    assert!(!fires(&shared_key, &with("HighCPU", "FATAL", "eu-1")));
    assert!(!fires(&shared_key, &with("HighCPU", "ERROR", "eu-1")));

    // Two mandatory conditions on the same key can never both hold for different values.
    let contradictory = combination(&["sev-fatal", "sev-error"]);
    assert!(!fires(&contradictory, &with("HighCPU", "FATAL", "eu-1")));
}

#[test]
fn states_snoozes_and_empty_condition_lists() {
    let catalog = catalog(serde_json::from_value::<Configuration>(json!({
        "actions": [
            {"name": "on", "type": "STORE", "state": "ENABLED"},
            {"name": "off", "type": "STORE", "state": "DISABLED"},
            {"name": "snoozed-target", "type": "STORE", "state": "ENABLED"},
            {"name": "disabled-target", "type": "STORE", "state": "ENABLED"}
        ],
        "subscriptions": [
            {"name": "everything", "state": "ENABLED", "conditions": [], "actions": ["on", "off"]},
            {"name": "snoozed", "state": "ENABLED", "actions": ["snoozed-target"], "snoozeTimestamp": 100},
            {"name": "disabled", "state": "DISABLED", "actions": ["disabled-target"]}
        ]
    })).unwrap()).unwrap();
    let matcher = Matcher::new(&catalog);
    let e = event(None, json!({}));
    assert_eq!(matcher.select(&e, 99), ["on"]);
    let mut later = matcher.select(&e, 100);
    later.sort();
    assert_eq!(later, ["on", "snoozed-target"]);

    // The subscriptions that fire are reported (for the per-subscription match counts); a
    // disabled one cannot fire, so it is not even numbered.
    let names = matcher.subscription_names();
    assert_eq!(names, ["everything", "snoozed"]);
    let mut fired = Vec::new();
    matcher.select_reporting(&e, 99, 99_000, |n| fired.push(names[n]), |_| {});
    assert_eq!(fired, ["everything"]);
    fired.clear();
    matcher.select_reporting(&e, 100, 100_000, |n| fired.push(names[n]), |_| {});
    assert_eq!(fired, ["everything", "snoozed"]);
}

#[test]
fn time_intervals_mute_and_activate_subscriptions() {
    let catalog = catalog(serde_json::from_value::<Configuration>(json!({
        "actions": [
            {"name": "always", "type": "STORE", "state": "ENABLED"},
            {"name": "muted-at-night", "type": "STORE", "state": "ENABLED"},
            {"name": "office-only", "type": "STORE", "state": "ENABLED"}
        ],
        "subscriptions": [
            {"name": "a", "state": "ENABLED", "actions": ["always"]},
            {"name": "m", "state": "ENABLED", "actions": ["muted-at-night"], "muteTimeIntervals": ["night"]},
            {"name": "o", "state": "ENABLED", "actions": ["office-only"], "activeTimeIntervals": ["office", "night"]}
        ],
        "timeIntervals": [
            {"name": "night", "intervals": [{"times": [{"startTime": "00:00", "endTime": "06:00"}]}]},
            {"name": "office", "intervals": [{"weekdays": ["monday:friday"], "times": [{"startTime": "09:00", "endTime": "17:00"}], "location": "Europe/Berlin"}]}
        ]
    })).unwrap()).unwrap();
    let matcher = Matcher::new(&catalog);
    let names = matcher.subscription_names();
    let e = event(None, json!({}));
    let at = |text: &str| text.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    let select = |at_ms: i64| {
        let (mut fired, mut muted) = (Vec::new(), Vec::new());
        let mut actions = matcher.select_reporting(
            &e,
            0,
            at_ms,
            |n| fired.push(names[n]),
            |n| muted.push(names[n]),
        );
        actions.sort();
        (actions, fired, muted)
    };
    // Monday 2026-06-01, 03:00 UTC: night.
    assert_eq!(
        select(at("2026-06-01T03:00:00Z")),
        (vec!["always", "office-only"], vec!["a", "o"], vec!["m"])
    );
    // 10:00 in Berlin: office hours.
    assert_eq!(
        select(at("2026-06-01T08:00:00Z")),
        (
            vec!["always", "muted-at-night", "office-only"],
            vec!["a", "m", "o"],
            vec![]
        )
    );
    // 19:00 in Berlin: neither.
    assert_eq!(
        select(at("2026-06-01T17:00:00Z")),
        (vec!["always", "muted-at-night"], vec!["a", "m"], vec!["o"])
    );
    // Saturday at 10:00 in Berlin: not office hours.
    assert_eq!(select(at("2026-06-06T08:00:00Z")).2, ["o"]);
}

// ---- property test -------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "eventType",
    "severity",
    "priority",
    "subject",
    "resource.resourceName",
    "tags.team",
    "resource.tags.zone",
];
const VALUES: &[&str] = &["A", "B", "AB", "1", "5", "10", "", "ERROR"];

/// The documented rule (docs/src/routing.md), evaluated directly: no indexes, no compilation.
fn reference(configuration: &Configuration, event: &ResourceEvent, now: i64) -> Vec<String> {
    let holds = |name: &str| {
        let c = configuration
            .conditions
            .iter()
            .find(|c| c.name == name)
            .unwrap();
        let actual = PropertyKey::parse(&c.property_key).unwrap().value(event);
        let expected = c.property_value.clone().unwrap_or_default();
        let number = |s: &str| s.trim().parse::<f64>().ok();
        match actual.as_deref() {
            None => matches!(
                c.predicate,
                Predicate::NoValue
                    | Predicate::NotEquals
                    | Predicate::DoesNotContain
                    | Predicate::DoesNotStartWith
                    | Predicate::DoesNotEndWith
            ),
            Some(a) => match c.predicate {
                Predicate::Contains => a.contains(&expected),
                Predicate::DoesNotContain => !a.contains(&expected),
                Predicate::StartsWith => a.starts_with(&expected),
                Predicate::DoesNotStartWith => !a.starts_with(&expected),
                Predicate::EndsWith => a.ends_with(&expected),
                Predicate::DoesNotEndWith => !a.ends_with(&expected),
                Predicate::Equals => a == expected,
                Predicate::NotEquals => a != expected,
                Predicate::Any => !a.is_empty(),
                Predicate::NoValue => a.is_empty(),
                Predicate::LessThan => {
                    matches!((number(a), number(&expected)), (Some(x), Some(y)) if x < y)
                }
                Predicate::GreaterThan => {
                    matches!((number(a), number(&expected)), (Some(x), Some(y)) if x > y)
                }
                Predicate::NumberEquals => {
                    matches!((number(a), number(&expected)), (Some(x), Some(y)) if x == y)
                }
            },
        }
    };
    let mut selected = Vec::new();
    for s in &configuration.subscriptions {
        if s.state != State::Enabled || s.snooze_timestamp.is_some_and(|t| t > now) {
            continue;
        }
        let conditions: Vec<_> = s
            .conditions
            .iter()
            .map(|n| {
                configuration
                    .conditions
                    .iter()
                    .find(|c| &c.name == n)
                    .unwrap()
            })
            .collect();
        let mandatory_ok = conditions
            .iter()
            .filter(|c| c.mandatory)
            .all(|c| holds(&c.name));
        let mut keys: Vec<&str> = conditions
            .iter()
            .filter(|c| !c.mandatory)
            .map(|c| c.property_key.as_str())
            .collect();
        keys.sort();
        keys.dedup();
        let groups_ok = keys.iter().all(|k| {
            conditions
                .iter()
                .filter(|c| !c.mandatory && c.property_key == *k)
                .any(|c| holds(&c.name))
        });
        if mandatory_ok && groups_ok {
            for a in &s.actions {
                let action = configuration.actions.iter().find(|x| &x.name == a).unwrap();
                if action.state == State::Enabled && !selected.contains(a) {
                    selected.push(a.clone());
                }
            }
        }
    }
    selected.sort();
    selected
}

fn arb_configuration() -> impl Strategy<Value = Configuration> {
    let predicates = prop::sample::select(Predicate::ALL.to_vec());
    let condition = (
        prop::sample::select(KEYS),
        predicates,
        prop::sample::select(VALUES),
        any::<bool>(),
    );
    let conditions = prop::collection::vec(condition, 1..12);
    let subscription = (
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        prop::collection::vec(0usize..4, 1..3),
        any::<bool>(),
        prop::option::of(0i64..20),
    );
    (conditions, prop::collection::vec(subscription, 1..8), prop::collection::vec(any::<bool>(), 4)).prop_map(|(conditions, subscriptions, action_states)| {
        let conditions: Vec<_> = conditions
            .into_iter()
            .enumerate()
            .map(|(i, (key, predicate, value, mandatory))| {
                // Numeric predicates need a number; the API refuses anything else.
                let value = if predicate.is_numeric() && value.parse::<f64>().is_err() { "5" } else { value };
                json!({"name": format!("c{i}"), "propertyKey": key, "predicate": predicate, "propertyValue": value, "mandatory": mandatory})
            })
            .collect();
        let count = conditions.len();
        let subscriptions: Vec<_> = subscriptions
            .into_iter()
            .enumerate()
            .map(|(i, (picks, actions, enabled, snooze))| {
                let mut names: Vec<String> = picks.iter().map(|p| format!("c{}", p.index(count))).collect();
                names.dedup();
                let actions: Vec<String> = actions.iter().map(|a| format!("a{a}")).collect();
                json!({"name": format!("s{i}"), "state": if enabled { "ENABLED" } else { "DISABLED" }, "conditions": names, "actions": actions, "snoozeTimestamp": snooze})
            })
            .collect();
        let actions: Vec<_> = action_states.iter().enumerate().map(|(i, on)| json!({"name": format!("a{i}"), "type": "STORE", "state": if *on { "ENABLED" } else { "DISABLED" }})).collect();
        serde_json::from_value(json!({"actions": actions, "conditions": conditions, "subscriptions": subscriptions})).unwrap()
    })
}

fn arb_event() -> impl Strategy<Value = ResourceEvent> {
    let value = prop::sample::select(VALUES);
    let optional = prop::option::of(prop::sample::select(VALUES));
    (value.clone(), prop::sample::select(vec!["INFO", "ERROR", "FATAL"]), prop::option::of(1i32..12), value.clone(), value, optional.clone(), optional)
        .prop_map(|(event_type, severity, priority, subject, name, team, zone)| {
            let mut tags = serde_json::Map::new();
            if let Some(team) = team { tags.insert("team".into(), json!(team)); }
            let mut resource = json!({"resourceName": if name.is_empty() { "r" } else { name }, "resourceType": "t"});
            if let Some(zone) = zone { resource["tags"] = json!({"zone": zone}); }
            let mut e = json!({"id": "e", "eventType": if event_type.is_empty() { "T" } else { event_type }, "severity": severity,
                "category": "ALERT", "subject": subject, "body": "b", "eventTimestamp": 0, "resource": resource, "tags": tags});
            if let Some(p) = priority { e["priority"] = json!(p); }
            serde_json::from_value(e).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_indexed_matcher_agrees_with_the_reference(configuration in arb_configuration(), events in prop::collection::vec(arb_event(), 1..6), now in 0i64..25) {
        let catalog = catalog(configuration.clone()).unwrap();
        let matcher = Matcher::new(&catalog);
        for event in &events {
            let mut got: Vec<String> = matcher.select(event, now).into_iter().map(str::to_owned).collect();
            got.sort();
            prop_assert_eq!(got, reference(&configuration, event, now));
        }
    }
}
