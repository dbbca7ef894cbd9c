use super::*;
use model::ResourceEvent;

fn observed(id: &str, key: &str, status: Option<&str>, at: i64) -> Observed {
    let mut tags = serde_json::json!({"ans:sourceEventId": key});
    if let Some(status) = status {
        tags["ans:status"] = status.into();
    }
    let event: ResourceEvent = serde_json::from_value(serde_json::json!({
        "id": id, "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
        "subject": format!("subject of {id}"), "body": "b", "eventTimestamp": 1,
        "resource": {"resourceName": "db-1", "resourceType": "database"},
        "tags": tags
    }))
    .unwrap();
    Observed {
        event,
        accepted_at_ms: at,
        by: None,
        silenced_by: None,
        muted_for: Vec::new(),
        heard_by: Vec::new(),
    }
}

/// The event the alerts API makes for a person's `action` on the alert `key`.
fn act(id: &str, key: &str, action: HumanAction, comment: Option<&str>, at: i64) -> Observed {
    Observed {
        by: Some(HumanAct {
            action,
            who: "oncall".into(),
            via: "api".into(),
            comment: comment.map(str::to_owned),
        }),
        ..observed(id, key, Some(action.status()), at)
    }
}

/// The same alerts on each backend: a SQLite file, and a fresh schema in the tests' database.
async fn stores() -> (Vec<AlertStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = AlertStore::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let database = crate::postgres::testing::scratch().await;
    let postgres = AlertStore::open(&Location::Postgres(database))
        .await
        .unwrap();
    (vec![sqlite, postgres], dir)
}

#[tokio::test]
async fn an_alert_fires_repeats_is_acknowledged_and_closes_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        // Open and repeat in one batch, the batch again (routed again after a crash).
        let batch = vec![
            observed("e1", "disk-db-1", None, 1_000),
            observed("e2", "disk-db-1", Some("UPDATE"), 2_000),
            observed("x1", "other", None, 1_500),
        ];
        store.observe(batch.clone()).await.unwrap();
        store.observe(batch).await.unwrap();
        let (alert, timeline) = store.get("disk-db-1").await.unwrap().unwrap();
        assert_eq!(alert.state, AlertState::Firing);
        assert_eq!(alert.events, 2, "the batch routed again changed nothing");
        assert_eq!((alert.first_seen_ms, alert.last_seen_ms), (1_000, 2_000));
        assert_eq!(alert.subject, "subject of e2");
        assert_eq!(timeline.len(), 2);

        store
            .observe(vec![
                act(
                    "a1",
                    "disk-db-1",
                    HumanAction::Acknowledge,
                    Some("on it"),
                    3_000,
                ),
                act("a2", "disk-db-1", HumanAction::Acknowledge, None, 3_500),
            ])
            .await
            .unwrap();
        let (alert, _) = store.get("disk-db-1").await.unwrap().unwrap();
        assert_eq!(alert.state, AlertState::Acknowledged);
        assert_eq!(alert.subject, "subject of e2", "an act is no new subject");
        assert!(matches!(
            alert.act(HumanAction::Acknowledge, 3_600),
            Acted::Unchanged(_)
        ));
        // A comment event keeps subject and severity.
        store
            .observe(vec![observed("e3", "disk-db-1", Some("COMMENT"), 4_000)])
            .await
            .unwrap();
        store
            .observe(vec![observed("e4", "disk-db-1", Some("CLOSE"), 5_000)])
            .await
            .unwrap();
        let (alert, timeline) = store.get("disk-db-1").await.unwrap().unwrap();
        assert_eq!(alert.state, AlertState::Resolved);
        assert_eq!(alert.resolved_at_ms, Some(5_000));
        assert_eq!(alert.acknowledged_at_ms, Some(3_000));
        assert_eq!(alert.events, 6);
        let kinds: Vec<String> = timeline
            .iter()
            .map(|e| match e {
                Entry::Event { event_id, .. } => event_id.clone(),
                Entry::Action {
                    action,
                    who,
                    comment,
                    ..
                } => {
                    format!(
                        "{}:{who}:{}",
                        action.as_str(),
                        comment.as_deref().unwrap_or("")
                    )
                }
            })
            .collect();
        // Acknowledging twice is one action: the second act's event is in the chain, the act
        // itself is not noted again.
        assert_eq!(
            kinds,
            [
                "e1",
                "e2",
                "acknowledge:oncall:on it",
                "a1",
                "a2",
                "e3",
                "e4"
            ]
        );
        assert!(matches!(
            alert.act(HumanAction::Comment, 6_000),
            Acted::Refused(ref a) if a.state == AlertState::Resolved
        ));
        // It fires again: reopened, no longer acknowledged.
        store
            .observe(vec![observed("e5", "disk-db-1", None, 7_000)])
            .await
            .unwrap();
        let (alert, _) = store.get("disk-db-1").await.unwrap().unwrap();
        assert_eq!(alert.state, AlertState::Firing);
        assert_eq!(
            (alert.firing_since_ms, alert.acknowledged_at_ms),
            (7_000, None)
        );
    }
}

#[tokio::test]
async fn alerts_are_listed_newest_first_with_filters_and_purged_once_resolved() {
    let (stores, _dir) = stores().await;
    for store in stores {
        for (i, key) in ["a-cpu", "b-disk", "c_disk%"].iter().enumerate() {
            store
                .observe(vec![observed(
                    &format!("{key}-1"),
                    key,
                    None,
                    1_000 * (i as i64 + 1),
                )])
                .await
                .unwrap();
        }
        store
            .observe(vec![act("r1", "a-cpu", HumanAction::Resolve, None, 10_000)])
            .await
            .unwrap();
        let all = AlertQuery {
            page_size: 10,
            ..Default::default()
        };
        let (total, page) = store.list(all.clone()).await.unwrap();
        assert_eq!(total, 3);
        let keys: Vec<&str> = page.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["a-cpu", "c_disk%", "b-disk"], "last seen first");
        let firing = AlertQuery {
            state: Some(AlertState::Firing),
            ..all.clone()
        };
        assert_eq!(store.list(firing).await.unwrap().0, 2);
        // Text matches key or subject, its wildcards taken literally.
        let literal = AlertQuery {
            text: Some("_DISK%".into()),
            ..all.clone()
        };
        let (_, found) = store.list(literal).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "c_disk%");
        let window = AlertQuery {
            since_ms: Some(2_000),
            until_ms: Some(3_000),
            ..all.clone()
        };
        let (_, found) = store.list(window).await.unwrap();
        assert_eq!(
            found.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(),
            ["b-disk"]
        );
        let second_page = AlertQuery {
            page: 1,
            page_size: 2,
            ..all.clone()
        };
        assert_eq!(store.list(second_page).await.unwrap().1.len(), 1);

        assert_eq!(store.purge_resolved_before(10_001, 100).await.unwrap(), 1);
        assert!(store.get("a-cpu").await.unwrap().is_none());
        assert_eq!(store.list(all).await.unwrap().0, 2);
    }
}

#[tokio::test]
async fn folds_say_once_what_they_changed_and_alerts_are_counted_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        assert_eq!(store.count_by_state_and_severity().await.unwrap(), []);
        let mut warning = observed("x1", "other", None, 1_500);
        warning.event.severity = model::Severity::Warning;
        let opened = vec![
            observed("e1", "disk-db-1", None, 1_000),
            warning,
            // Closed by its first event: it never fired here, no time to resolve.
            observed("c1", "closed-at-once", Some("CLOSE"), 1_600),
        ];
        assert_eq!(store.observe(opened).await.unwrap(), []);

        let acks = vec![
            act("a1", "disk-db-1", HumanAction::Acknowledge, None, 3_000),
            act("a2", "disk-db-1", HumanAction::Acknowledge, None, 3_500),
        ];
        let acknowledged = [
            Change::Acted {
                action: HumanAction::Acknowledge,
                via: "api".into(),
            },
            Change::Acknowledged { after_ms: 2_000 },
        ];
        assert_eq!(
            store.observe(acks.clone()).await.unwrap(),
            acknowledged,
            "the second acknowledge is no change"
        );
        assert_eq!(store.observe(acks).await.unwrap(), [], "routed again");
        let close = vec![observed("e2", "disk-db-1", Some("CLOSE"), 5_000)];
        assert_eq!(
            store.observe(close).await.unwrap(),
            [Change::Resolved { after_ms: 4_000 }],
            "time to resolve: from the first event, not from the acknowledgement"
        );
        let refused = vec![act(
            "a3",
            "disk-db-1",
            HumanAction::Comment,
            Some("?"),
            5_500,
        )];
        assert_eq!(store.observe(refused).await.unwrap(), []);
        // Reopened, then resolved by a person: timed from the reopening.
        let again = vec![
            observed("e3", "disk-db-1", None, 7_000),
            act("r1", "disk-db-1", HumanAction::Resolve, None, 9_000),
        ];
        assert_eq!(
            store.observe(again).await.unwrap(),
            [
                Change::Acted {
                    action: HumanAction::Resolve,
                    via: "api".into(),
                },
                Change::Resolved { after_ms: 2_000 },
            ]
        );

        let mut counted = store.count_by_state_and_severity().await.unwrap();
        counted.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        assert_eq!(
            counted,
            [
                (AlertState::Firing, "WARNING".to_owned(), 1),
                (AlertState::Resolved, "FATAL".to_owned(), 2),
            ]
        );
    }
}

#[tokio::test]
async fn silenced_events_are_noted_and_the_alerts_a_silence_held_back_are_found_on_both_backends() {
    let silenced = |id: &str, key: &str, status: Option<&str>, at: i64, by: &str| Observed {
        silenced_by: Some(by.to_owned()),
        ..observed(id, key, status, at)
    };
    let (stores, _dir) = stores().await;
    for store in stores {
        store
            .observe(vec![
                // Delivered, then held back: released when `s` ends.
                observed("a1", "a", None, 1_000),
                silenced("a2", "a", Some("UPDATE"), 2_000, "s"),
                // Held back from the start: released too.
                silenced("b1", "b", None, 1_000, "s"),
                // Held back, then delivered (another property changed): nothing to release.
                silenced("c1", "c", None, 1_000, "s"),
                observed("c2", "c", Some("UPDATE"), 2_000),
                // Held back, then closed quietly: nothing to release.
                silenced("d1", "d", None, 1_000, "s"),
                silenced("d2", "d", Some("CLOSE"), 2_000, "s"),
                // Held back by another silence.
                silenced("e1", "e", None, 1_000, "t"),
            ])
            .await
            .unwrap();
        let mut held: Vec<String> = store
            .held_back_by("s")
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.key)
            .collect();
        held.sort();
        assert_eq!(held, ["a", "b"]);
        assert!(store.has_unsilenced_event("a").await.unwrap());
        assert!(!store.has_unsilenced_event("b").await.unwrap());
        assert!(!store.has_unsilenced_event("nope").await.unwrap());
        assert!(store.folded("a2").await.unwrap());
        assert!(!store.folded("a3").await.unwrap());
        let (_, timeline) = store.get("a").await.unwrap().unwrap();
        let marks: Vec<Option<&str>> = timeline.iter().map(|e| e.silenced_by()).collect();
        assert_eq!(marks, [None, Some("s")]);
    }
}

#[tokio::test]
async fn alerts_remember_which_muted_subscriptions_lack_their_latest_state_on_both_backends() {
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let routed =
        |id: &str, key: &str, status: Option<&str>, muted: &[&str], heard: &[&str]| Observed {
            muted_for: names(muted),
            heard_by: names(heard),
            ..observed(id, key, status, 1_000)
        };
    let (stores, _dir) = stores().await;
    for store in stores {
        store
            .observe(vec![
                // Muted for two, then heard by one of them: the other still lacks it.
                routed("a1", "a", None, &["night", "weekend"], &[]),
                routed("a2", "a", Some("UPDATE"), &[], &["night"]),
                // Muted, then closed: a resolved alert has nothing to release.
                routed("b1", "b", None, &["night"], &[]),
                routed("b2", "b", Some("CLOSE"), &["night"], &[]),
                // Never muted.
                routed("c1", "c", None, &[], &["night"]),
            ])
            .await
            .unwrap();
        let muted: Vec<(String, Vec<String>)> = store
            .muted(10)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.key, a.muted_for))
            .collect();
        assert_eq!(muted, [("a".to_owned(), names(&["weekend"]))]);
        assert_eq!(
            store.alert("b").await.unwrap().unwrap().muted_for,
            Vec::<String>::new()
        );
        let (_, timeline) = store.get("a").await.unwrap().unwrap();
        let Entry::Event { muted_for, .. } = &timeline[0] else {
            panic!("an event first: {timeline:?}");
        };
        assert_eq!(muted_for, &names(&["night", "weekend"]));
        // One process claims the release; the claim holds until it lapses.
        assert!(store.claim_mute_release("a", 5_000, 30_000).await.unwrap());
        assert!(!store.claim_mute_release("a", 6_000, 30_000).await.unwrap());
        assert!(store.claim_mute_release("a", 35_000, 30_000).await.unwrap());
    }
}
