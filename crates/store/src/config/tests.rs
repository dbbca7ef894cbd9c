use super::*;
use std::time::Duration;

/// The same document on each backend: a SQLite file, and a fresh schema in the tests'
/// PostgreSQL database; each opened twice, as two processes (or two stores) would.
async fn documents() -> (Vec<(ConfigDocument, ConfigDocument)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Location::Sqlite(dir.path().to_owned());
    let postgres = Location::Postgres(crate::postgres::testing::scratch().await);
    let mut pairs = Vec::new();
    for location in [sqlite, postgres] {
        let first = ConfigDocument::open(&location).await.unwrap();
        let second = ConfigDocument::open(&location).await.unwrap();
        pairs.push((first, second));
    }
    (pairs, dir)
}

/// Appends `text` to the document (or starts one), as a change would.
async fn append(documents: &ConfigDocument, text: &str) -> Result<i64, StoreError> {
    documents
        .change(|current, version| async move {
            let mut document = current.map(|c| c.document).unwrap_or_default();
            document.extend_from_slice(text.as_bytes());
            Ok::<_, StoreError>((document, version))
        })
        .await
}

fn text(stored: &Option<Stored>) -> String {
    String::from_utf8(stored.as_ref().unwrap().document.clone()).unwrap()
}

#[tokio::test]
async fn changes_versions_and_kept_documents_on_both_backends() {
    let (pairs, _dir) = documents().await;
    for (documents, _) in pairs {
        let shared = documents.is_shared();
        assert_eq!(documents.read().await.unwrap(), None, "shared: {shared}");
        assert_eq!(documents.version().await.unwrap(), 0);

        let first = append(&documents, "a").await.unwrap();
        assert!(first > 0);
        let stored = documents.read().await.unwrap();
        assert_eq!(
            (text(&stored), stored.unwrap().version),
            ("a".into(), first)
        );
        assert_eq!(documents.version().await.unwrap(), first);
        let second = append(&documents, "b").await.unwrap();
        assert!(second > first, "a later version");
        assert_eq!(text(&documents.read().await.unwrap()), "ab");

        // A change that fails writes nothing.
        let refused: Result<(), _> = documents
            .change(|_, _| async { Err(StoreError::Invalid("refused".into())) })
            .await;
        assert!(refused.is_err());
        assert_eq!(documents.version().await.unwrap(), second);
        assert_eq!(text(&documents.read().await.unwrap()), "ab");

        // Kept as it is at its own version (sealed again), never over a later one.
        let resealed = Stored {
            document: b"AB".to_vec(),
            version: second,
        };
        assert!(documents.keep(resealed).await.unwrap());
        let older = Stored {
            document: b"old".to_vec(),
            version: first,
        };
        assert!(!documents.keep(older).await.unwrap());
        let stored = documents.read().await.unwrap();
        assert_eq!(
            (text(&stored), stored.unwrap().version),
            ("AB".into(), second)
        );
    }
}

#[tokio::test]
async fn a_change_through_a_second_instance_is_seen_by_the_first_on_both_backends() {
    let (pairs, _dir) = documents().await;
    for (first, second) in pairs {
        append(&first, "a").await.unwrap();
        let version = append(&second, "b").await.unwrap();
        assert_eq!(first.version().await.unwrap(), version);
        assert_eq!(text(&first.read().await.unwrap()), "ab");
        // And the first builds on it.
        append(&first, "c").await.unwrap();
        assert_eq!(text(&second.read().await.unwrap()), "abc");
    }
}

/// `first` starts a change and holds it open, between its read and its write, while `second`
/// makes one (given `window` to finish while the first is open); then the first goes on.
/// Returns whether the second finished while the first was open, and both outcomes.
async fn racing(
    first: &ConfigDocument,
    second: &ConfigDocument,
    window: Duration,
) -> (bool, Result<i64, StoreError>, Result<i64, StoreError>) {
    let (read, has_read) = tokio::sync::oneshot::channel();
    let (go, may_go) = tokio::sync::oneshot::channel::<()>();
    let slow = first.change(|current, version| async move {
        read.send(()).unwrap();
        let _ = may_go.await;
        let mut document = current.map(|c| c.document).unwrap_or_default();
        document.extend_from_slice(b"1");
        Ok::<_, StoreError>((document, version))
    });
    let fast = async {
        has_read.await.unwrap();
        let mut change = std::pin::pin!(append(second, "2"));
        let meanwhile = tokio::time::timeout(window, &mut change).await.ok();
        go.send(()).unwrap();
        match meanwhile {
            Some(outcome) => (true, outcome),
            None => (false, change.await),
        }
    };
    let (slow, (meanwhile, fast)) = tokio::join!(slow, fast);
    (meanwhile, slow, fast)
}

#[tokio::test]
async fn concurrent_changes_serialize_on_postgres_and_the_later_wins_everywhere() {
    let (mut pairs, _dir) = documents().await;
    let (first, second) = pairs.pop().unwrap();
    assert!(first.is_shared());
    append(&first, "0").await.unwrap();
    let (meanwhile, slow, fast) = racing(&first, &second, Duration::from_millis(300)).await;
    assert!(
        !meanwhile,
        "the second change waits for the first one's commit"
    );
    let (slow, fast) = (slow.unwrap(), fast.unwrap());
    assert!(fast > slow, "the waiting change came after, and is later");
    for documents in [&first, &second] {
        let stored = documents.read().await.unwrap();
        assert_eq!(text(&stored), "012", "both applied, none lost");
        assert_eq!(stored.unwrap().version, fast, "the later one is current");
    }
}

#[tokio::test]
async fn a_change_over_a_stale_read_is_refused_on_sqlite() {
    let (mut pairs, _dir) = documents().await;
    pairs.pop();
    let (first, second) = pairs.pop().unwrap();
    assert!(!first.is_shared());
    append(&first, "0").await.unwrap();
    let (meanwhile, slow, fast) = racing(&first, &second, Duration::from_secs(10)).await;
    assert!(
        meanwhile,
        "instances of one file do not wait for each other"
    );
    let fast = fast.unwrap();
    assert!(
        matches!(slow, Err(StoreError::Conflict(_))),
        "the change built on what was replaced is refused: {slow:?}"
    );
    for documents in [&first, &second] {
        let stored = documents.read().await.unwrap();
        assert_eq!(text(&stored), "02", "the other one stands");
        assert_eq!(stored.unwrap().version, fast);
    }
}

async fn heard(announcements: &mut mpsc::Receiver<()>) -> bool {
    let heard = tokio::time::timeout(Duration::from_secs(10), announcements.recv()).await;
    matches!(heard, Ok(Some(())))
}

#[tokio::test]
async fn a_listener_hears_of_a_change_made_through_another_instance() {
    let (mut pairs, _dir) = documents().await;
    let (first, second) = pairs.pop().unwrap();
    let mut announcements = first.announcements().expect("PostgreSQL announces");
    assert!(heard(&mut announcements).await, "once listening");
    append(&second, "a").await.unwrap();
    assert!(heard(&mut announcements).await, "after the change");
    let (sqlite, _) = pairs.pop().unwrap();
    assert!(
        sqlite.announcements().is_none(),
        "no one else writes a file"
    );
}
