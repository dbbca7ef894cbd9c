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
            .flushed(&group("db-2"), &["e3".into()], 100_000)
            .await
            .unwrap();

        // A member that comes while the digest is out stays for the next one, due when the
        // group's interval has passed.
        assert!(store.add(&db1, &member("e4"), WAIT, 11_100).await.unwrap());
        store
            .flushed(&db1, &["e1".into(), "e2".into()], 13_000)
            .await
            .unwrap();
        assert!(store
            .claim_due(12_999, LEASE, 10, 100)
            .await
            .unwrap()
            .is_empty());
        let next = store.claim_due(13_000, LEASE, 10, 100).await.unwrap();
        assert_eq!(event_ids(&next[0]), ["e4"]);
        store.flushed(&db1, &["e4".into()], 15_000).await.unwrap();
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
        store.flushed(&db1, &["e5".into()], 16_000).await.unwrap();
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
            .flushed(&id, &["e0".into(), "e1".into(), "e2".into()], 4_000)
            .await
            .unwrap();
        let rest = store.claim_due(4_000, LEASE, 10, 3).await.unwrap();
        assert_eq!(event_ids(&rest[0]), ["e3", "e4"]);
        assert_eq!(rest[0].failures, "", "a flush clears the failures");
        store
            .flushed(&id, &["e3".into(), "e4".into()], 4_000)
            .await
            .unwrap();
        assert_eq!(store.held().await.unwrap(), 0);
    }
}
