use super::*;
use std::time::Instant;
use storage::{Database, Durability};

const HOUR: Duration = Duration::from_secs(3600);

fn sqlite(dir: &tempfile::TempDir, window: Duration) -> DedupeWindow {
    let path = dir.path().join("oci.db");
    let db = Database::open(
        &path,
        &[SQLITE_SCHEMA, SQLITE_ANSWERS],
        Durability::Normal,
        None,
    )
    .unwrap();
    DedupeWindow::open(db, &path, window).unwrap()
}

async fn postgres(database: &crate::postgres::Postgres, window: Duration) -> DedupeWindow {
    let pending = PendingClaims {
        stale_after: Duration::from_millis(1500),
        wait: Duration::from_millis(300),
    };
    DedupeWindow::on_postgres(database, OCI_TABLE, window, pending)
        .await
        .unwrap()
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

/// Whether the message is new; if so, committed (published) or not (the publish failed).
async fn is_new(dedupe: &DedupeWindow, list: &[&str], commit: bool) -> bool {
    match dedupe.claim(keys(list)).await.unwrap() {
        Claim::Duplicate(_) => false,
        Claim::InFlight => panic!("{list:?} in flight"),
        Claim::New(ticket) => {
            if commit {
                ticket.commit().await.unwrap();
            }
            true
        }
    }
}

fn no_lock_held(dedupe: &DedupeWindow) -> bool {
    match &dedupe.backend {
        Backend::Sqlite(window) => window.locks.is_empty(),
        Backend::Postgres(_) => true,
    }
}

async fn duplicates_are_recognised(dedupe: &DedupeWindow) {
    assert!(is_new(dedupe, &["msg:1", "alarm:k:1"], true).await);
    assert!(!is_new(dedupe, &["msg:1"], true).await, "same message id");
    assert!(
        !is_new(dedupe, &["msg:2", "alarm:k:1"], true).await,
        "same occurrence, other topic"
    );
    assert!(
        is_new(dedupe, &["msg:3", "alarm:k:2"], true).await,
        "the next evaluation"
    );
    assert!(
        is_new(dedupe, &["msg:4"], false).await,
        "publish failed: not committed"
    );
    // The ticket's keys are given back (on PostgreSQL by a task the drop starts).
    let started = Instant::now();
    while !is_new(dedupe, &["msg:4"], true).await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never given back"
        );
    }
    assert!(no_lock_held(dedupe), "no lock left behind");
}

#[tokio::test]
async fn sqlite_keys_seen_within_the_window_are_duplicates_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let dedupe = sqlite(&dir, HOUR);
    duplicates_are_recognised(&dedupe).await;
    // Committed: a duplicate at once, before (even without) the write to disk.
    let Claim::New(ticket) = dedupe.claim(keys(&["msg:9"])).await.unwrap() else {
        panic!("new")
    };
    drop(ticket.commit());
    assert!(!is_new(&dedupe, &["msg:9"], true).await);
    drop(dedupe);
    let dedupe = sqlite(&dir, HOUR);
    assert!(
        !is_new(&dedupe, &["msg:1"], true).await,
        "remembered across restarts"
    );
    let dedupe = sqlite(&dir, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        is_new(&dedupe, &["msg:1"], true).await,
        "outside the window"
    );
}

#[tokio::test]
async fn postgres_keys_seen_within_the_window_are_duplicates_in_every_store() {
    let database = crate::postgres::testing::scratch().await;
    let dedupe = postgres(&database, HOUR).await;
    duplicates_are_recognised(&dedupe).await;
    let elsewhere = postgres(&database, HOUR).await;
    assert!(
        !is_new(&elsewhere, &["msg:1"], true).await,
        "another process's store knows it"
    );
    let expired = postgres(&database, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        is_new(&expired, &["msg:1"], true).await,
        "outside the window"
    );
}

/// 16 copies of one message at once, over `stores`, each publishing for 50 ms: one is new.
async fn concurrent_copies_publish_once(stores: &[DedupeWindow]) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let dedupe = stores[i % stores.len()].clone();
            tokio::spawn(async move {
                match dedupe
                    .claim(keys(&["msg:same", "alarm:same"]))
                    .await
                    .unwrap()
                {
                    Claim::New(ticket) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        ticket.commit().await.unwrap();
                        1
                    }
                    Claim::Duplicate(_) => 0,
                    Claim::InFlight => panic!("the publish took 50 ms, well inside the wait"),
                }
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += task.await.unwrap();
    }
    assert_eq!(new, 1);
    assert!(stores.iter().all(no_lock_held));
}

fn answer(fingerprint: &str, status: u16, body: &str) -> Answer {
    Answer {
        fingerprint: fingerprint.into(),
        status,
        body: body.as_bytes().to_vec(),
    }
}

/// What a claim of `key` says: new (then committed with `keep`, if any), or a duplicate with
/// the answer kept.
async fn claim_keeping(
    dedupe: &DedupeWindow,
    key: &str,
    keep: Option<Answer>,
) -> Option<Option<Answer>> {
    match dedupe.claim(keys(&[key])).await.unwrap() {
        Claim::Duplicate(kept) => Some(kept),
        Claim::InFlight => panic!("{key} in flight"),
        Claim::New(ticket) => {
            match keep {
                Some(answer) => ticket.commit_answer(answer).await.unwrap(),
                None => ticket.commit().await.unwrap(),
            }
            None
        }
    }
}

/// The first answer is kept and returned to every repeat; a commit without one keeps none.
async fn first_answers_are_kept(dedupe: &DedupeWindow) {
    let first = answer("sha:1", 202, r#"[{"id":"e1"}]"#);
    assert_eq!(
        claim_keeping(dedupe, "idempotency:a", Some(first.clone())).await,
        None,
        "new"
    );
    let second = Some(answer("sha:2", 202, "other"));
    assert_eq!(
        claim_keeping(dedupe, "idempotency:a", second.clone()).await,
        Some(Some(first.clone())),
        "a repeat gets the first answer back"
    );
    assert_eq!(
        claim_keeping(dedupe, "idempotency:a", second).await,
        Some(Some(first)),
        "and keeps it"
    );
    assert_eq!(claim_keeping(dedupe, "msg:plain", None).await, None);
    assert_eq!(
        claim_keeping(dedupe, "msg:plain", None).await,
        Some(None),
        "no answer kept"
    );
}

#[tokio::test]
async fn sqlite_the_first_answer_is_kept_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    first_answers_are_kept(&sqlite(&dir, HOUR)).await;
    let reopened = sqlite(&dir, HOUR);
    assert_eq!(
        claim_keeping(&reopened, "idempotency:a", None).await,
        Some(Some(answer("sha:1", 202, r#"[{"id":"e1"}]"#)))
    );
}

#[tokio::test]
async fn postgres_the_first_answer_is_kept_for_every_store() {
    let database = crate::postgres::testing::scratch().await;
    first_answers_are_kept(&postgres(&database, HOUR).await).await;
    let elsewhere = postgres(&database, HOUR).await;
    assert_eq!(
        claim_keeping(&elsewhere, "idempotency:a", None).await,
        Some(Some(answer("sha:1", 202, r#"[{"id":"e1"}]"#)))
    );
    // Another window's table is apart: neither its keys nor its length meet this one's.
    let other =
        DedupeWindow::on_postgres(&database, IDEMPOTENCY_TABLE, HOUR, PendingClaims::default())
            .await
            .unwrap();
    assert_eq!(claim_keeping(&other, "idempotency:a", None).await, None);
}

#[tokio::test]
async fn sqlite_concurrent_copies_are_decided_one_after_the_other() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_copies_publish_once(&[sqlite(&dir, HOUR)]).await;
}

#[tokio::test]
async fn postgres_racing_claims_from_two_stores_publish_once() {
    let database = crate::postgres::testing::scratch().await;
    let stores = [
        postgres(&database, HOUR).await,
        postgres(&database, HOUR).await,
    ];
    concurrent_copies_publish_once(&stores).await;
}

#[tokio::test]
async fn postgres_a_claim_whose_process_died_is_void_once_stale() {
    let database = crate::postgres::testing::scratch().await;
    let (died, other) = (
        postgres(&database, HOUR).await,
        postgres(&database, HOUR).await,
    );
    let Claim::New(ticket) = died.claim(keys(&["msg:lost"])).await.unwrap() else {
        panic!("new")
    };
    let claimed_at = Instant::now();
    std::mem::forget(ticket); // the process died between claim and publish
    assert!(
        matches!(
            other.claim(keys(&["msg:lost"])).await.unwrap(),
            Claim::InFlight
        ),
        "a fresh pending claim is neither new nor a duplicate"
    );
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(claimed_at.elapsed())).await;
    assert!(
        is_new(&other, &["msg:lost"], true).await,
        "stale: OCI's next retry publishes"
    );
    assert!(!is_new(&died, &["msg:lost"], true).await);
}

#[tokio::test]
async fn sqlite_a_file_from_before_answers_keeps_its_keys_when_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oci.db");
    {
        let db = Database::open(&path, &[SQLITE_SCHEMA], Durability::Normal, None).unwrap();
        db.execute(
            "INSERT INTO seen (key, seen_at_ms) VALUES ('msg:old', ?1)",
            [clock::now_epoch_millis()],
        )
        .await
        .unwrap();
    }
    let upgraded = sqlite(&dir, HOUR);
    assert_eq!(claim_keeping(&upgraded, "msg:old", None).await, Some(None));
    first_answers_are_kept(&upgraded).await;
}
