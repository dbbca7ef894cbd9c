use super::*;

/// The same silences on each backend: a SQLite file, and a fresh schema in the tests' database.
async fn stores() -> (Vec<SilenceStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SilenceStore::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let database = crate::postgres::testing::scratch().await;
    let postgres = SilenceStore::open(&Location::Postgres(database))
        .await
        .unwrap();
    (vec![sqlite, postgres], dir)
}

fn silence(id: &str, starts_at_ms: i64, ends_at_ms: i64, created_at_ms: i64) -> Silence {
    Silence {
        id: id.to_owned(),
        matchers: vec![
            SilenceMatcher {
                property_key: "resource.resourceName".into(),
                predicate: MatchPredicate::Condition(Predicate::Equals),
                property_value: Some("db-1".into()),
            },
            SilenceMatcher {
                property_key: "severity".into(),
                predicate: MatchPredicate::MatchesRegex,
                property_value: Some("FATAL|ERROR".into()),
            },
        ],
        starts_at_ms,
        ends_at_ms,
        created_by: "oncall".into(),
        comment: Some("disk swap".into()),
        created_at_ms,
    }
}

fn ids(silences: &[Silence]) -> Vec<&str> {
    silences.iter().map(|s| s.id.as_str()).collect()
}

#[tokio::test]
async fn silences_are_created_listed_by_state_and_expired_on_both_backends() {
    let (stores, _dir) = stores().await;
    let now = 10_000;
    for store in stores {
        let shared = store.is_shared();
        assert_eq!(store.version().await.unwrap(), 0, "shared: {shared}");
        let active = silence("a", 5_000, 20_000, 1);
        let pending = silence("p", 15_000, 30_000, 2);
        let expired = silence("e", 1_000, 9_000, 3);
        for s in [&active, &pending, &expired] {
            store.create(s).await.unwrap();
        }
        assert_eq!(store.version().await.unwrap(), 3, "each change moves it");
        assert_eq!(store.get("a").await.unwrap().as_ref(), Some(&active));
        assert_eq!(store.get("nope").await.unwrap(), None);
        let all = store.list(None, now).await.unwrap();
        assert_eq!(ids(&all), ["e", "p", "a"], "newest first");
        for (state, expected) in [
            (SilenceState::Active, "a"),
            (SilenceState::Pending, "p"),
            (SilenceState::Expired, "e"),
        ] {
            let listed = store.list(Some(state), now).await.unwrap();
            assert_eq!(ids(&listed), [expected], "{state:?}");
            assert_eq!(listed[0].state(now), state);
        }

        // Expiring: an active one ends now, a pending one starts and ends now, an expired one
        // stays as it was.
        let Some(Expired::Now(ended)) = store.expire("a", now).await.unwrap() else {
            panic!("active expires");
        };
        assert_eq!((ended.starts_at_ms, ended.ends_at_ms), (5_000, now));
        let Some(Expired::Now(ended)) = store.expire("p", now).await.unwrap() else {
            panic!("pending expires");
        };
        assert_eq!((ended.starts_at_ms, ended.ends_at_ms), (now, now));
        assert_eq!(
            store.expire("e", now).await.unwrap(),
            Some(Expired::Already(expired.clone()))
        );
        assert_eq!(store.expire("nope", now).await.unwrap(), None);
        let version = store.version().await.unwrap();
        assert_eq!(version, 5, "only the two that changed moved it");
        let expired_now = store.list(Some(SilenceState::Expired), now).await.unwrap();
        assert_eq!(ids(&expired_now), ["e", "p", "a"]);
        assert_eq!(store.get("a").await.unwrap().unwrap().ends_at_ms, now);
    }
}

#[tokio::test]
async fn a_release_is_claimed_once_and_again_after_its_claim_lapses_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        store.create(&silence("s", 1_000, 5_000, 1)).await.unwrap();
        store.create(&silence("t", 1_000, 9_000, 2)).await.unwrap();
        assert_eq!(ids(&store.unreleased().await.unwrap()).len(), 2);
        assert!(
            !store.claim_release("s", 4_000, 100).await.unwrap(),
            "not ended yet"
        );
        assert!(store.claim_release("s", 5_000, 100).await.unwrap());
        assert!(
            !store.claim_release("s", 5_050, 100).await.unwrap(),
            "claimed by another"
        );
        // The claimant died: the claim lapses, and another takes it over.
        assert!(store.claim_release("s", 5_100, 100).await.unwrap());
        let version = store.version().await.unwrap();
        store.mark_released("s", 5_150).await.unwrap();
        assert!(store.version().await.unwrap() > version);
        assert!(
            !store.claim_release("s", 9_000, 100).await.unwrap(),
            "released: nothing to claim"
        );
        assert_eq!(ids(&store.unreleased().await.unwrap()), ["t"]);
        assert!(store.get("s").await.unwrap().is_some(), "kept for the list");
        // Retention takes the released silences that ended before its cutoff, and no other.
        assert_eq!(store.purge_released_before(5_000, 10).await.unwrap(), 0);
        assert_eq!(store.purge_released_before(10_000, 10).await.unwrap(), 1);
        assert!(store.get("s").await.unwrap().is_none());
        assert!(store.get("t").await.unwrap().is_some(), "not released yet");
    }
}

#[test]
fn predicates_read_and_write_their_wire_names() {
    for wire in MatchPredicate::all() {
        let parsed: MatchPredicate = wire.parse().unwrap();
        assert_eq!(parsed.as_str(), wire);
    }
    let refused = "LIKE".parse::<MatchPredicate>().unwrap_err();
    assert!(refused.contains("MATCHES_REGEX"), "{refused}");
    assert!(!MatchPredicate::Condition(Predicate::Any).needs_value());
}
