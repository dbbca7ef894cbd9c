use super::*;

/// The same log on each backend: a SQLite file, and a fresh schema in the tests' database.
async fn logs() -> (Vec<AuditLog>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = AuditLog::open(&Location::Sqlite(dir.path().to_owned()))
        .await
        .unwrap();
    let database = crate::postgres::testing::scratch().await;
    let postgres = AuditLog::open(&Location::Postgres(database)).await.unwrap();
    (vec![sqlite, postgres], dir)
}

fn entry(id: &str, at_ms: i64, who: &str, target: &str, dedupe_key: Option<&str>) -> AuditEntry {
    AuditEntry {
        id: id.into(),
        at_ms,
        who: who.into(),
        via: "slack".into(),
        action: "acknowledge".into(),
        target: target.into(),
        outcome: "done".into(),
        detail: Some("T1/U1".into()),
        dedupe_key: dedupe_key.map(str::to_owned),
    }
}

#[tokio::test]
async fn a_dedupe_key_is_taken_once_and_given_back_by_forget_on_both_backends() {
    let (logs, _dir) = logs().await;
    for log in logs {
        let first = entry("a", 1, "alice", "disk-db-1", Some("click-1"));
        assert_eq!(log.record(&first).await.unwrap(), Recorded::New);
        let again = entry("b", 2, "alice", "disk-db-1", Some("click-1"));
        assert_eq!(log.record(&again).await.unwrap(), Recorded::Duplicate);
        assert!(log.taken("click-1").await.unwrap());
        assert!(!log.taken("click-2").await.unwrap());
        // Entries without a key never collide.
        for id in ["c", "d"] {
            let plain = entry(id, 3, "bob", "cpu-web-1", None);
            assert_eq!(log.record(&plain).await.unwrap(), Recorded::New);
        }
        log.forget("a").await.unwrap();
        assert_eq!(
            log.record(&again).await.unwrap(),
            Recorded::New,
            "given back"
        );
        let (total, all) = log
            .list(AuditQuery {
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(total, 3);
        let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["d", "c", "b"], "newest first");
        assert_eq!(all[2], again);
        let (total, bobs) = log
            .list(AuditQuery {
                who: Some("bob".into()),
                since_ms: Some(3),
                page: 1,
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((total, bobs.len()), (2, 1));
        assert_eq!(bobs[0].id, "c", "the second page of one");
        let (total, _) = log
            .list(AuditQuery {
                target: Some("disk-db-1".into()),
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(total, 1);
    }
}
