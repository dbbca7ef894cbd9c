use super::*;
use std::time::Instant;
use storage::{Database, Durability};

const HOUR: Duration = Duration::from_secs(3600);

fn sqlite(dir: &tempfile::TempDir, window: Duration) -> DedupeWindow {
    let path = dir.path().join("oci.db");
    let db = Database::open(&path, &[SQLITE_SCHEMA], Durability::Normal, None).unwrap();
    DedupeWindow::open(db, &path, window).unwrap()
}

async fn postgres(database: &crate::postgres::Postgres, window: Duration) -> DedupeWindow {
    let pending = PendingClaims {
        stale_after: Duration::from_millis(1500),
        wait: Duration::from_millis(300),
    };
    DedupeWindow::on_postgres(database, window, pending)
        .await
        .unwrap()
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

/// Whether the message is new; if so, committed (published) or not (the publish failed).
async fn is_new(dedupe: &DedupeWindow, list: &[&str], commit: bool) -> bool {
    match dedupe.claim(keys(list)).await.unwrap() {
        Claim::Duplicate => false,
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
                    Claim::Duplicate => 0,
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
