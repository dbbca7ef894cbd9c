use super::*;

/// The same groups on each backend: a SQLite file, and a fresh schema in the tests' database.
async fn stores() -> (Vec<GroupStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = GroupStore::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let database = crate::postgres::testing::scratch().await;
    let postgres = GroupStore::open(&Location::Postgres(database))
        .await
        .unwrap();
    (vec![sqlite, postgres], dir)
}

fn group(key: &str) -> GroupId {
    GroupId {
        action: "slack".into(),
        key: key.into(),
    }
}

fn member(event_id: &str) -> Member {
    Member {
        event_id: event_id.into(),
        job: format!("{{\"event\":\"{event_id}\"}}"),
    }
}

const WAIT: Timing = Timing { wait_ms: 1_000 };
const LEASE: i64 = 1_000;

fn event_ids(claimed: &Claimed) -> Vec<&str> {
    claimed
        .members
        .iter()
        .map(|m| m.event_id.as_str())
        .collect()
}

#[tokio::test]
async fn a_group_waits_then_is_claimed_once_and_flushed_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let db1 = group("db-1");
        assert!(store.add(&db1, &member("e1"), WAIT, 10_000).await.unwrap());
        assert!(store.add(&db1, &member("e2"), WAIT, 10_500).await.unwrap());
        assert!(
            !store.add(&db1, &member("e1"), WAIT, 10_600).await.unwrap(),
            "a redelivered job is not added twice"
        );
        assert!(store
            .add(&group("db-2"), &member("e3"), WAIT, 10_700)
            .await
            .unwrap());
        assert_eq!(store.held().await.unwrap(), 3);
        assert!(
            store
                .claim_due(10_999, LEASE, 10, 100)
                .await
                .unwrap()
                .is_empty(),
            "the group waits from its first member"
        );
        let claimed = store.claim_due(11_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, db1);
        assert_eq!(event_ids(&claimed[0]), ["e1", "e2"], "oldest first");
        assert_eq!(claimed[0].failures, "");
        let db2 = store.claim_due(11_700, LEASE, 10, 100).await.unwrap();
        assert_eq!(db2.len(), 1, "db-1 is claimed by then: only db-2");
        assert_eq!(db2[0].id, group("db-2"));
        store
            .flushed(&group("db-2"), &["e3".into()], 100_000, None)
            .await
            .unwrap();

        // A member that comes while the digest is out stays for the next one, due when the
        // group's interval has passed.
        assert!(store.add(&db1, &member("e4"), WAIT, 11_100).await.unwrap());
        store
            .flushed(&db1, &["e1".into(), "e2".into()], 13_000, None)
            .await
            .unwrap();
        assert!(store
            .claim_due(12_999, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        let next = store.claim_due(13_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(event_ids(&next[0]), ["e4"]);
        store
            .flushed(&db1, &["e4".into()], 15_000, None)
            .await
            .unwrap();
        assert_eq!(store.held().await.unwrap(), 0);

        // After a flush, a new member waits for the interval, not for the group wait...
        assert!(store.add(&db1, &member("e5"), WAIT, 14_000).await.unwrap());
        assert!(store
            .claim_due(14_999, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        let after_interval = store.claim_due(15_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(event_ids(&after_interval[0]), ["e5"]);
        store
            .flushed(&db1, &["e5".into()], 16_000, None)
            .await
            .unwrap();
        // ...and once the interval has passed with nothing new, the group is forgotten: the
        // next member starts a new one, which waits again.
        assert!(store
            .claim_due(16_000, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        assert!(store.add(&db1, &member("e6"), WAIT, 20_000).await.unwrap());
        assert!(store
            .claim_due(20_999, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        let fresh = store.claim_due(21_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(fresh.len(), 1);
        assert_eq!((&fresh[0].id, event_ids(&fresh[0])), (&db1, vec!["e6"]));
    }
}

#[tokio::test]
async fn a_claim_lapses_a_postponed_group_keeps_its_failures_and_digests_have_a_limit_on_both_backends(
) {
    let (stores, _dir) = stores().await;
    for store in stores {
        let id = group("");
        let none = Timing { wait_ms: 0 };
        for n in 0..5 {
            store
                .add(&id, &member(&format!("e{n}")), none, 1_000 + n)
                .await
                .unwrap();
        }
        let claimed = store.claim_due(2_000, LEASE, 10, 3).await.unwrap();
        assert_eq!(event_ids(&claimed[0]), ["e0", "e1", "e2"], "at most 3");
        // Its claimant died: the claim lapses, and the group is claimed again, once.
        assert!(store
            .claim_due(2_999, LEASE, 10, 3)
            .await
            .unwrap()
            .is_empty());
        let again = store.claim_due(3_000, LEASE, 10, 3).await.unwrap();
        assert_eq!(again.len(), 1);
        // No token, or a failed digest: put off, with its failures kept.
        store.postpone(&id, 4_000, "[1]").await.unwrap();
        assert!(store
            .claim_due(3_999, LEASE, 10, 3)
            .await
            .unwrap()
            .is_empty());
        let retried = store.claim_due(4_000, LEASE, 10, 3).await.unwrap();
        assert_eq!(retried[0].failures, "[1]");
        // The three went out: the two left are due at once (past the digest's limit).
        store
            .flushed(&id, &["e0".into(), "e1".into(), "e2".into()], 4_000, None)
            .await
            .unwrap();
        let rest = store.claim_due(4_000, LEASE, 10, 3).await.unwrap();
        assert_eq!(event_ids(&rest[0]), ["e3", "e4"]);
        assert_eq!(rest[0].failures, "", "a flush clears the failures");
        store
            .flushed(&id, &["e3".into(), "e4".into()], 4_000, None)
            .await
            .unwrap();
        assert_eq!(store.held().await.unwrap(), 0);
    }
}

fn firing(alert_key: &str, event_id: &str) -> Firing {
    Firing {
        alert_key: alert_key.into(),
        member: member(event_id),
    }
}

#[tokio::test]
async fn a_repeating_group_repeats_its_firing_alerts_until_they_resolve_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let id = group("db-1");
        store.add(&id, &member("e1"), WAIT, 1_000).await.unwrap();
        let first = store.claim_due(2_000, LEASE, 10, 100).await.unwrap();
        assert!(!first[0].repeat);
        let repeats = Repeats {
            firing: vec![firing("a", "e1")],
            resolved: vec![],
            at_ms: 10_000,
        };
        store
            .flushed(&id, &["e1".into()], 5_000, Some(&repeats))
            .await
            .unwrap();
        // Idle past its interval, the group is kept for its repeat...
        assert!(store
            .claim_due(9_999, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        // ...claimed once when it is due, naming the alert's event.
        let repeat = store.claim_due(10_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(repeat.len(), 1);
        assert!(repeat[0].repeat);
        assert_eq!(event_ids(&repeat[0]), ["e1"]);
        assert!(store
            .claim_due(10_001, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        store.repeated(&id, Some(20_000)).await.unwrap();
        assert_eq!(store.held().await.unwrap(), 0, "repeats are not held jobs");

        // News of alert a and a new alert b: a digest, then both are repeated, a by its latest.
        store.add(&id, &member("e2"), WAIT, 15_000).await.unwrap();
        store.add(&id, &member("e3"), WAIT, 15_000).await.unwrap();
        let digest = store.claim_due(15_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(
            (digest[0].repeat, event_ids(&digest[0])),
            (false, vec!["e2", "e3"])
        );
        let repeats = Repeats {
            firing: vec![firing("a", "e2"), firing("b", "e3")],
            resolved: vec![],
            at_ms: 30_000,
        };
        store
            .flushed(&id, &["e2".into(), "e3".into()], 18_000, Some(&repeats))
            .await
            .unwrap();
        assert!(
            store
                .claim_due(20_000, LEASE, 10, 100)
                .await
                .unwrap()
                .is_empty(),
            "a digest puts the repeat off"
        );
        let repeat = store.claim_due(30_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(event_ids(&repeat[0]), ["e2", "e3"]);
        store.repeated(&id, Some(40_000)).await.unwrap();

        // b resolves: only a is repeated; then a resolves: nothing is, and the group is
        // forgotten.
        store.add(&id, &member("e4"), WAIT, 35_000).await.unwrap();
        store.claim_due(35_000, LEASE, 10, 100).await.unwrap();
        let resolved = |key: &str, at_ms| Repeats {
            firing: vec![],
            resolved: vec![key.into()],
            at_ms,
        };
        store
            .flushed(&id, &["e4".into()], 38_000, Some(&resolved("b", 50_000)))
            .await
            .unwrap();
        let repeat = store.claim_due(50_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(event_ids(&repeat[0]), ["e2"]);
        store.repeated(&id, Some(60_000)).await.unwrap();
        store.add(&id, &member("e5"), WAIT, 55_000).await.unwrap();
        store.claim_due(55_000, LEASE, 10, 100).await.unwrap();
        store
            .flushed(&id, &["e5".into()], 58_000, Some(&resolved("a", 70_000)))
            .await
            .unwrap();
        assert!(store
            .claim_due(100_000, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        store.add(&id, &member("e6"), WAIT, 100_000).await.unwrap();
        assert!(
            store
                .claim_due(100_999, LEASE, 10, 100)
                .await
                .unwrap()
                .is_empty(),
            "forgotten: a new member starts a new group, which waits"
        );

        // An action that stops repeating: the group forgets its alerts.
        let fresh = store.claim_due(101_000, LEASE, 10, 100).await.unwrap();
        assert!(!fresh[0].repeat);
        let repeats = Repeats {
            firing: vec![firing("c", "e6")],
            resolved: vec![],
            at_ms: 110_000,
        };
        store
            .flushed(&id, &["e6".into()], 102_000, Some(&repeats))
            .await
            .unwrap();
        store.claim_due(110_000, LEASE, 10, 100).await.unwrap();
        store.repeated(&id, None).await.unwrap();
        assert!(store
            .claim_due(1_000_000, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
    }
}
