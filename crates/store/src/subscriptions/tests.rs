use super::*;

fn record(state: State, updated_at: i64) -> SubscriptionRecord {
    SubscriptionRecord {
        subscription_id: "ocid1.onssubscription.x".into(),
        topic_id: None,
        topic_name: Some("alarms".into()),
        host: "h".into(),
        state,
        detail: format!("{state:?}"),
        confirmation_url: None,
        attempts: 0,
        updated_at,
    }
}

async fn records_count_attempts_and_keep_the_latest_outcome(
    first: &SubscriptionStore,
    second: &SubscriptionStore,
) {
    assert_eq!(
        first
            .record(record(State::Failed, 1))
            .await
            .unwrap()
            .attempts,
        1
    );
    let latest = SubscriptionRecord {
        topic_name: None,
        ..record(State::Confirmed, 2)
    };
    let latest = second.record(latest).await.unwrap();
    assert_eq!(latest.attempts, 2);
    for store in [first, second] {
        let list = store.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, State::Confirmed);
        assert_eq!(list[0].attempts, 2);
        assert_eq!(
            list[0].topic_name.as_deref(),
            Some("alarms"),
            "a confirmation without a topic name keeps the known one"
        );
    }
}

#[tokio::test]
async fn sqlite_records_count_attempts_and_keep_the_latest_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let db = storage::Database::open(
        &dir.path().join("oci.db"),
        &[SQLITE_SCHEMA],
        storage::Durability::Normal,
        None,
    )
    .unwrap();
    let store = SubscriptionStore::open(db);
    records_count_attempts_and_keep_the_latest_outcome(&store, &store).await;
}

#[tokio::test]
async fn postgres_records_are_listed_by_every_store() {
    let database = crate::postgres::testing::scratch().await;
    let first = SubscriptionStore::on_postgres(&database).await.unwrap();
    let second = SubscriptionStore::on_postgres(&database).await.unwrap();
    records_count_attempts_and_keep_the_latest_outcome(&first, &second).await;
}
