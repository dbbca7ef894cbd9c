use super::*;

/// The same lanes on each backend: a SQLite file, and a fresh schema in the tests' PostgreSQL
/// database.
async fn backends() -> (Vec<Lanes>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Lanes::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let database = crate::postgres::testing::scratch().await;
    let postgres = Lanes::open(&Location::Postgres(database)).await.unwrap();
    (vec![sqlite, postgres], dir)
}

fn job(id: &str, key: &str) -> LaneJob {
    LaneJob {
        action: "hook".into(),
        key: key.into(),
        id: id.into(),
        attempt: 0,
        payload: Bytes::from(id.to_owned()),
    }
}

/// Far in the future: every promoted head counts as stranded.
const ANY_TIME: i64 = i64::MAX;

#[tokio::test]
async fn an_older_copy_of_a_head_that_waits_for_its_retry_is_stale_on_both_backends() {
    let (backends, _dir) = backends().await;
    for lanes in backends {
        assert_eq!(
            lanes.claim(vec![job("open", "k")]).await.unwrap(),
            [Claim::Run]
        );
        // Before its retry copy is on the queue, a redelivered first copy still runs.
        assert_eq!(
            lanes.claim(vec![job("open", "k")]).await.unwrap(),
            [Claim::Run]
        );
        lanes.waiting("hook", "k", "open", 1).await.unwrap();
        let retried = LaneJob {
            attempt: 1,
            ..job("open", "k")
        };
        assert_eq!(
            lanes.claim(vec![job("open", "k"), retried]).await.unwrap(),
            [Claim::Stale, Claim::Run]
        );
        // The next head of the lane is no older copy of anything.
        assert_eq!(
            lanes.claim(vec![job("close", "k")]).await.unwrap(),
            [Claim::Parked]
        );
        let next = lanes.release("hook", "k", "open").await.unwrap().unwrap();
        assert_eq!(&next.payload[..], b"close");
        assert_eq!(
            lanes.claim(vec![job("close", "k")]).await.unwrap(),
            [Claim::Run]
        );
    }
}

#[tokio::test]
async fn one_head_per_lane_the_rest_in_order_on_both_backends() {
    let (backends, _dir) = backends().await;
    for lanes in backends {
        let claims = lanes
            .claim(vec![
                job("open", "k"),
                job("repeat", "k"),
                job("other", "j"),
                job("close", "k"),
            ])
            .await
            .unwrap();
        assert_eq!(
            claims,
            [Claim::Run, Claim::Parked, Claim::Run, Claim::Parked]
        );
        // The head comes back from a retry; a parked job is redelivered: nothing changes.
        assert_eq!(
            lanes
                .claim(vec![job("open", "k"), job("repeat", "k")])
                .await
                .unwrap(),
            [Claim::Run, Claim::Parked]
        );
        let mut durable = lanes.durable_lanes().await.unwrap();
        durable.sort();
        assert_eq!(
            durable,
            [("hook".into(), "j".into()), ("hook".into(), "k".into())]
        );

        let next = lanes.release("hook", "k", "open").await.unwrap().unwrap();
        assert_eq!(&next.payload[..], b"repeat");
        // Crash before the promoted job was published: it is found.
        assert_eq!(lanes.stranded_heads(ANY_TIME).await.unwrap().len(), 1);
        lanes.forget(next.seq).await.unwrap();
        assert!(lanes.stranded_heads(ANY_TIME).await.unwrap().is_empty());
        assert_eq!(
            lanes.claim(vec![job("repeat", "k")]).await.unwrap(),
            [Claim::Run]
        );
        let next = lanes.release("hook", "k", "repeat").await.unwrap().unwrap();
        assert_eq!(&next.payload[..], b"close");
        lanes.forget(next.seq).await.unwrap();
        assert!(lanes.release("hook", "k", "close").await.unwrap().is_none());
        assert_eq!(
            lanes
                .durable_among(vec![
                    ("hook".into(), "k".into()),
                    ("hook".into(), "j".into())
                ])
                .await
                .unwrap(),
            [("hook".into(), "j".into())],
            "k was freed, j is still held"
        );
        assert_eq!(
            lanes.claim(vec![job("new", "k")]).await.unwrap(),
            [Claim::Run],
            "the lane was freed"
        );
    }
}

#[tokio::test]
async fn a_lane_held_by_one_process_is_found_and_handed_on_by_another_on_postgres() {
    let database = crate::postgres::testing::scratch().await;
    let first = Lanes::open(&Location::Postgres(database.clone()))
        .await
        .unwrap();
    let second = Lanes::open(&Location::Postgres(database)).await.unwrap();
    assert!(first.shared() && second.shared());
    // The first holds the lane for its retrying open and parks the close behind it; then it
    // dies, and the second takes the key's deliveries over.
    first.claim(vec![job("open", "k")]).await.unwrap();
    first.waiting("hook", "k", "open", 1).await.unwrap();
    assert_eq!(
        first.claim(vec![job("close", "k")]).await.unwrap(),
        [Claim::Parked]
    );
    assert_eq!(
        second
            .durable_among(vec![("hook".into(), "k".into())])
            .await
            .unwrap(),
        [("hook".into(), "k".into())]
    );
    let later = LaneJob {
        id: "later".into(),
        ..job("later", "k")
    };
    let retried = LaneJob {
        attempt: 1,
        ..job("open", "k")
    };
    assert_eq!(
        second.claim(vec![later, retried]).await.unwrap(),
        [Claim::Parked, Claim::Run],
        "a later event waits behind the head the first process left"
    );
    let next = second.release("hook", "k", "open").await.unwrap().unwrap();
    assert_eq!(&next.payload[..], b"close", "parked by the first, in order");
    // A head promoted just now may be on its way to the queue from its process: only one
    // promoted a while ago counts as stranded.
    let promoted_at = clock::now_epoch_millis();
    assert!(first
        .stranded_heads(promoted_at - 60_000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        first
            .stranded_heads(promoted_at + 60_000)
            .await
            .unwrap()
            .len(),
        1
    );
}
