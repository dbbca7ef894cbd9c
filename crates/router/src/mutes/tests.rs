use super::*;
use model::{Catalog, Configuration, ResourceEvent};
use serde_json::json;
use store::alerts::Observed;
use store::Location;

/// Subscription `night` (action `pager`) muted by an interval that always holds, or by one
/// that never does; `day` (action `chat`) without intervals.
fn matcher(night_muted: bool) -> Matcher {
    let mute = if night_muted { "always" } else { "never" };
    let configuration: Configuration = serde_json::from_value(json!({
        "actions": [
            {"name": "pager", "type": "STORE", "state": "ENABLED"},
            {"name": "chat", "type": "STORE", "state": "ENABLED"}
        ],
        "subscriptions": [
            {"name": "night", "state": "ENABLED", "actions": ["pager"], "muteTimeIntervals": [mute]},
            {"name": "day", "state": "ENABLED", "actions": ["chat"]}
        ],
        "timeIntervals": [
            {"name": "always", "intervals": [{}]},
            {"name": "never", "intervals": [{"years": ["2000"]}]}
        ]
    }))
    .unwrap();
    Matcher::new(&Catalog::new(configuration, &model::AnyActionType).unwrap())
}

fn event(id: &str, status: &str) -> ResourceEvent {
    serde_json::from_value(json!({
        "id": id, "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
        "subject": "s", "body": "b", "eventTimestamp": 1,
        "resource": {"resourceName": "db-1", "resourceType": "database"},
        "tags": {"ans:sourceEventId": "k", "ans:status": status}
    }))
    .unwrap()
}

/// What the router makes of `event` before the mutes' rules: the matcher's report.
fn route<'m>(matcher: &'m Matcher, event: &ResourceEvent) -> (Vec<&'m str>, Muting) {
    let (mut fired, mut muted) = (Vec::new(), Vec::new());
    let actions = matcher.select_reporting(
        event,
        0,
        0,
        |n| {
            if matcher.timed(n) {
                fired.push(n)
            }
        },
        |n| muted.push(n),
    );
    (actions, Muting::of(matcher, &fired, &muted))
}

fn observed(event: ResourceEvent, muting: Muting) -> Observed {
    Observed {
        event,
        accepted_at_ms: 1,
        by: None,
        silenced_by: None,
        muted_for: muting.muted_for,
        heard_by: muting.heard_by,
    }
}

#[tokio::test]
async fn a_close_reaches_a_muted_subscription_only_if_it_heard_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let alerts = AlertStore::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let (muted, open) = (matcher(true), matcher(false));

    // Opened while `night` was muted: its CLOSE, muted too, tells `night` nothing.
    let (actions, opening) = route(&muted, &event("e1", "CREATE"));
    assert_eq!(
        (actions, &opening.muted_for[..]),
        (vec!["chat"], &["night".to_owned()][..])
    );
    let batch = [observed(event("e1", "CREATE"), opening)];
    let (_, mut close) = route(&muted, &event("e2", "CLOSE"));
    assert!(close
        .pass_close(&muted, &alerts, "k", &batch)
        .await
        .is_empty());
    assert_eq!(close.muted_for, ["night"]);

    // Opened while `night` heard it (stored this time): its muted CLOSE still reaches `pager`.
    let (_, heard) = route(&open, &event("e1", "CREATE"));
    assert_eq!(heard.heard_by, ["night"]);
    alerts
        .observe(vec![observed(event("e1", "CREATE"), heard)])
        .await
        .unwrap();
    let (_, mut close) = route(&muted, &event("e2", "CLOSE"));
    assert_eq!(close.pass_close(&muted, &alerts, "k", &[]).await, ["pager"]);
    assert!(close.muted_for.is_empty());
    assert_eq!(close.heard_by, ["night"]);

    // An alert nobody heard of: nothing passes.
    let (_, mut close) = route(&muted, &event("x", "CLOSE"));
    assert!(close
        .pass_close(&muted, &alerts, "other", &[])
        .await
        .is_empty());
}

#[test]
fn a_released_copy_goes_to_its_subscription_alone_and_settles_it() {
    let open = matcher(false);
    let (actions, mut copy) = route(&open, &event("e1~night", "CREATE"));
    assert_eq!(actions, ["pager", "chat"]);
    assert_eq!(copy.released_to(&open, "night"), ["pager"]);
    assert_eq!(copy.heard_by, ["night"]);

    // Still muted (the window came back): nothing, and it stays to be released.
    let muted = matcher(true);
    let (_, mut copy) = route(&muted, &event("e1~night", "CREATE"));
    assert!(copy.released_to(&muted, "night").is_empty());
    assert_eq!(copy.muted_for, ["night"]);

    // The subscription is gone: nothing to deliver, but its release is settled.
    let (_, mut copy) = route(&open, &event("e1~gone", "CREATE"));
    assert!(copy.released_to(&open, "gone").is_empty());
    assert_eq!(copy.heard_by, ["gone"]);
}
