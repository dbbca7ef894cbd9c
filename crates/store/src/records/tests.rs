use super::*;

fn job(id: &str, event_type: &str, timestamp: i64, action: &str) -> DeliveryJob {
    serde_json::from_value(serde_json::json!({
        "event": {
            "id": id, "eventType": event_type, "severity": "ERROR", "category": "ALERT",
            "subject": "s", "body": "b", "eventTimestamp": timestamp,
            "resource": {"resourceName": "db-1", "resourceType": "database"},
            "tags": {"ans:correlationId": "c1", "ans:sourceEventId": format!("src-{id}")}
        },
        "acceptedAtMs": 0,
        "action": action
    }))
    .unwrap()
}

fn all() -> RecordQuery {
    RecordQuery {
        page_size: 100,
        ..Default::default()
    }
}

fn region() -> Region {
    Region {
        name: "local".into(),
        kind: "tocsin".into(),
    }
}

/// The same records on each backend: a SQLite file, and a fresh schema in the tests'
/// PostgreSQL database.
async fn stores() -> (Vec<RecordStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = RecordStore::open(&dir.path().join("records.db"), region(), None).unwrap();
    let database = crate::postgres::testing::scratch().await;
    let postgres = RecordStore::on_postgres(&database, region()).await.unwrap();
    (vec![sqlite, postgres], dir)
}

#[tokio::test]
async fn records_are_idempotent_and_filtered_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        records_are_idempotent_and_filtered(store).await;
    }
}

async fn records_are_idempotent_and_filtered(store: RecordStore) {
    let reason = FailureReason {
        code: 500,
        reason: "boom".into(),
        timestamp: 7,
    };
    let matched = (DeliveryStatus::Matched, &[][..]);
    let undelivered = (DeliveryStatus::Undelivered, std::slice::from_ref(&reason));
    // e1 on `store` twice: the repeat must change nothing.
    for (id, event_type, time, action, (status, reasons)) in [
        ("e1", "CPU", 100, "store", matched),
        ("e1", "CPU", 100, "store", matched),
        ("e1", "CPU", 100, "other", matched),
        ("e2", "Disk", 200, "store", matched),
        ("e3", "CPU", 300, "hook", undelivered),
    ] {
        let job = job(id, event_type, time, action);
        store.record(&job, status, reasons).await.unwrap();
    }

    let matched = store.query(DeliveryStatus::Matched, all()).await.unwrap();
    assert_eq!(matched.total, 3, "the repeated record was stored once");
    let by_id = store
        .query(
            DeliveryStatus::Matched,
            RecordQuery {
                event_id: Some("e1".into()),
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_id.total, 2, "one record per action");
    let by_type = store
        .query(
            DeliveryStatus::Matched,
            RecordQuery {
                event_type: Some("Disk".into()),
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_type.events[0].id, "e2");
    // Exclusive bounds: (100;200) holds neither 100 nor 200.
    let between = store
        .query(
            DeliveryStatus::Matched,
            RecordQuery {
                creation_time: Some((100, 200)),
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(between.total, 0);
    let between = store
        .query(
            DeliveryStatus::Matched,
            RecordQuery {
                creation_time: Some((99, 201)),
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(between.total, 3);
    let by_source = store
        .query(
            DeliveryStatus::Matched,
            RecordQuery {
                source_event_id: Some("src-e2".into()),
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_source.total, 1);
    let paged = store
        .query(
            DeliveryStatus::Matched,
            RecordQuery {
                page: 1,
                page_size: 2,
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!((paged.total, paged.events.len()), (3, 1));

    let undelivered = store
        .query(DeliveryStatus::Undelivered, all())
        .await
        .unwrap();
    assert_eq!(
        undelivered.events[0].metadata.failure_reasons, None,
        "only on request"
    );
    let with_reasons = store
        .query(
            DeliveryStatus::Undelivered,
            RecordQuery {
                include_failure_reasons: true,
                ..all()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        with_reasons.events[0].metadata.failure_reasons,
        Some(vec![reason])
    );
    assert_eq!(with_reasons.events[0].metadata.affected_action_id, "hook");
    assert_eq!(with_reasons.events[0].region, "local");
}

#[tokio::test]
async fn attempts_redelivery_and_purging_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let outcome = |attempt, outcome, code: Option<i32>| Attempt {
            action: "hook".into(),
            attempt,
            started_at_ms: 1_000 * i64::from(attempt),
            duration_ms: 5,
            outcome,
            code,
            reason: code.map(|c| format!("answered {c}")),
            digest: None,
        };
        store
            .record_attempt("e9", outcome(1, AttemptOutcome::Retrying, Some(503)))
            .await
            .unwrap();
        assert!(!store.delivered("e9", "hook").await.unwrap());
        store
            .record_attempt("e9", outcome(2, AttemptOutcome::Delivered, None))
            .await
            .unwrap();
        assert!(store.delivered("e9", "hook").await.unwrap());
        assert!(!store.delivered("e9", "other").await.unwrap());
        let attempts = store.attempts("e9").await.unwrap();
        assert_eq!(
            attempts,
            [
                outcome(1, AttemptOutcome::Retrying, Some(503)),
                outcome(2, AttemptOutcome::Delivered, None)
            ]
        );

        let reason = FailureReason {
            code: 400,
            reason: "no".into(),
            timestamp: 1,
        };
        for id in ["u1", "u2"] {
            store
                .record(
                    &job(id, "Disk", 10, "hook"),
                    DeliveryStatus::Undelivered,
                    std::slice::from_ref(&reason),
                )
                .await
                .unwrap();
        }
        let picked = store
            .undelivered(Selection {
                event_id: Some("u2".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(
            (picked[0].event.id.as_str(), picked[0].action.as_str()),
            ("u2", "hook")
        );
        store.forget(vec![picked[0].record_id]).await.unwrap();
        let left = store
            .undelivered(Selection {
                action: Some("hook".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "u1 is still there");
        // Everything is older than a cutoff in the future.
        let far = clock::now_epoch_seconds() + 3_600;
        let mut purged = 0;
        loop {
            let went = store.purge_before(far, 1).await.unwrap();
            if went == 0 {
                break;
            }
            purged += went;
        }
        assert_eq!(
            purged,
            1 + 2,
            "one record and two attempts, a row per batch"
        );
        assert!(store.attempts("e9").await.unwrap().is_empty());
    }
}

/// An attempt (the first) to `hook` at `at_ms`, made by `digest` if one; failed ones got a 502.
fn attempt_at(at_ms: i64, outcome: AttemptOutcome, digest: Option<Digested>) -> Attempt {
    Attempt {
        action: "hook".into(),
        attempt: 1,
        started_at_ms: at_ms,
        duration_ms: 3,
        code: (outcome != AttemptOutcome::Delivered).then_some(502),
        reason: (outcome != AttemptOutcome::Delivered).then(|| "bad gateway".into()),
        outcome,
        digest,
    }
}

fn digested(events: u32, repeat: bool) -> Option<Digested> {
    Some(Digested {
        group: r#"{"resource.resourceName":"db-1"}"#.into(),
        events,
        repeat,
    })
}

#[tokio::test]
async fn digest_attempts_name_their_digest_and_repeats_deliver_nothing_on_both_backends() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let recorded = [
            attempt_at(1_000, AttemptOutcome::Delivered, None),
            attempt_at(2_000, AttemptOutcome::Delivered, digested(12, false)),
            attempt_at(3_000, AttemptOutcome::Delivered, digested(3, true)),
            attempt_at(4_000, AttemptOutcome::Failed, digested(3, true)),
        ];
        for attempt in &recorded {
            store.record_attempt("e1", attempt.clone()).await.unwrap();
        }
        assert_eq!(store.attempts("e1").await.unwrap(), recorded);

        // As the attempts API and the timeline write them: plain attempts are unchanged.
        let written = serde_json::to_value(store.attempts("e1").await.unwrap()).unwrap();
        assert_eq!(written[0].get("digest"), None);
        assert_eq!(
            written[1]["digest"],
            serde_json::json!({"group": r#"{"resource.resourceName":"db-1"}"#, "events": 12})
        );
        assert_eq!(written[2]["digest"]["repeat"], true);
        assert_eq!(written[3]["outcome"], "failed");

        // A delivered repeat is no delivery: a redelivered copy of the event still goes.
        store
            .record_attempt(
                "e2",
                attempt_at(5_000, AttemptOutcome::Delivered, digested(1, true)),
            )
            .await
            .unwrap();
        assert!(!store.delivered("e2", "hook").await.unwrap());
        store
            .record_attempt(
                "e2",
                attempt_at(6_000, AttemptOutcome::Delivered, digested(1, false)),
            )
            .await
            .unwrap();
        assert!(
            store.delivered("e2", "hook").await.unwrap(),
            "a digest's attempt delivers"
        );
    }
}

/// A database made before attempts named their digest: its attempts read back as plain ones,
/// and digests' attempts are recorded once it is opened.
#[tokio::test]
async fn an_older_records_database_is_upgraded_to_digest_attempts_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    {
        let old = storage::Database::open(
            &path,
            &sqlite::MIGRATIONS[..2],
            storage::Durability::Normal,
            None,
        )
        .unwrap();
        old.execute(
            "INSERT INTO attempts (event_id, action, attempt, started_at_ms, duration_ms, \
             outcome) VALUES ('old', 'hook', 1, 1000, 3, 'delivered')",
            (),
        )
        .await
        .unwrap();
    }
    let sqlite = RecordStore::open(&path, region(), None).unwrap();

    let database = crate::postgres::testing::scratch().await;
    database
        .migrate("records", &postgres::MIGRATIONS[..1])
        .await
        .unwrap();
    database
        .client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO attempts (event_id, action, attempt, started_at_ms, duration_ms, \
             outcome) VALUES ('old', 'hook', 1, 1000, 3, 'delivered')",
            &[],
        )
        .await
        .unwrap();
    let postgres = RecordStore::on_postgres(&database, region()).await.unwrap();

    for store in [sqlite, postgres] {
        let plain = attempt_at(1_000, AttemptOutcome::Delivered, None);
        assert_eq!(store.attempts("old").await.unwrap(), [plain]);
        assert!(store.delivered("old", "hook").await.unwrap());
        let digest = attempt_at(2_000, AttemptOutcome::Delivered, digested(2, false));
        store.record_attempt("new", digest.clone()).await.unwrap();
        assert_eq!(store.attempts("new").await.unwrap(), [digest]);
    }
}

/// Many writers at once share batches on PostgreSQL; a row the database refuses (a NUL
/// character, which PostgreSQL text cannot hold) fails alone, and the rest of its batch is
/// written all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_kept_and_a_refused_row_fails_alone() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let writes = (0..300).map(|i| {
            let store = store.clone();
            async move {
                let action = if i == 150 { "bad\0action" } else { "store" };
                let job = job(&format!("c{i}"), "CPU", i, action);
                let attempt = Attempt {
                    action: action.into(),
                    attempt: 1,
                    started_at_ms: i,
                    duration_ms: 1,
                    outcome: AttemptOutcome::Delivered,
                    code: None,
                    reason: None,
                    digest: None,
                };
                let recorded = store.record(&job, DeliveryStatus::Matched, &[]).await;
                let attempted = store.record_attempt(&job.event.id, attempt).await;
                (i, recorded.is_ok(), attempted.is_ok())
            }
        });
        let outcomes = futures_join_all(writes).await;
        let stored = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    page_size: 1000,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let refused: Vec<_> = outcomes.iter().filter(|(_, r, a)| !r || !a).collect();
        if matches!(store.backend, Backend::Postgres(_)) {
            assert_eq!(refused, [&(150, false, false)], "only the NUL row fails");
            assert_eq!(stored.total, 299);
        } else {
            assert!(refused.is_empty(), "SQLite takes a NUL: {refused:?}");
            assert_eq!(stored.total, 300);
        }
        assert_eq!(store.attempts("c7").await.unwrap().len(), 1);
    }
}

/// Runs `futures` concurrently, answers in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
