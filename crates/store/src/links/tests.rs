use super::*;
use std::time::Duration;

/// The key's lock, granted within 5 s.
async fn lock(links: &LinkStore, scope: &str, key: &str) -> KeyGuard {
    tokio::time::timeout(Duration::from_secs(5), links.lock(scope, key))
        .await
        .unwrap_or_else(|_| panic!("({scope}, {key}) not granted within 5 s"))
        .unwrap()
}

fn pending(event: &str) -> Link {
    Link {
        state: LinkState::Pending,
        target: String::new(),
        last_event: event.into(),
        name: String::new(),
    }
}

fn open(target: &str, event: &str) -> Link {
    Link {
        state: LinkState::Open,
        target: target.into(),
        last_event: event.into(),
        name: String::new(),
    }
}

#[tokio::test]
async fn sqlite_links_survive_reopening_and_keys_are_serialized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SQLITE_FILE);
    let links = LinkStore::open(&path).unwrap();
    links_are_kept_per_scope_and_key(&links).await;
    drop(links);
    let links = LinkStore::open(&path).unwrap();
    let held = lock(&links, "a", "k").await;
    assert_eq!(held.get().await.unwrap(), Some(open("42", "e1")));
    drop(held);
    keys_are_serialized(&links, &links).await;
    assert!(links.local.is_empty(), "unused locks are forgotten");
}

#[tokio::test]
async fn postgres_links_are_shared_and_locked_across_stores() {
    let database = crate::postgres::testing::scratch().await;
    let links = LinkStore::on_postgres(&database).await.unwrap();
    links_are_kept_per_scope_and_key(&links).await;
    // As another process's store: local locks of its own, and each lock on a session of its
    // own (the pool's connections are as apart as two processes' are).
    let other = LinkStore::on_postgres(&database).await.unwrap();
    let held = lock(&other, "a", "k").await;
    assert_eq!(held.get().await.unwrap(), Some(open("42", "e1")));
    drop(held);
    keys_are_serialized(&links, &other).await;
    racing_stores_create_once(&links, &other).await;
    a_cancelled_wait_leaves_no_lock_behind(&links, &other).await;
    lock_holders_leave_the_pool_half_free(&links).await;
}

async fn links_are_kept_per_scope_and_key(links: &LinkStore) {
    let held = lock(links, "a", "k").await;
    assert_eq!(held.get().await.unwrap(), None);
    held.put(&pending("e1")).await.unwrap();
    assert_eq!(held.get().await.unwrap(), Some(pending("e1")));
    held.put(&open("42", "e1")).await.unwrap();
    drop(held);
    let other_scope = lock(links, "b", "k").await;
    assert_eq!(other_scope.get().await.unwrap(), None, "scopes are apart");
    other_scope.put(&open("C1 1.2", "e2")).await.unwrap();
    drop(other_scope);
    lock(links, "b", "j")
        .await
        .put(&open("7", "e3"))
        .await
        .unwrap();
    let scoped = |scope: &str, key: &str, link: Link| Scoped {
        scope: scope.into(),
        key: key.into(),
        link,
    };
    assert_eq!(
        links.of_keys(&["k", "none", "k"]).await.unwrap(),
        [
            scoped("a", "k", open("42", "e1")),
            scoped("b", "k", open("C1 1.2", "e2"))
        ],
        "every scope's link of the keys asked, once each"
    );
    assert_eq!(links.of_keys(&["j"]).await.unwrap().len(), 1);
    assert!(links.of_keys(&[]).await.unwrap().is_empty());

    // The name the create heard stays with its target.
    let held = lock(links, "b", "j").await;
    held.put(&open("7", "e3").named("240101-000007"))
        .await
        .unwrap();
    held.put(&open("7", "e4")).await.unwrap();
    let named = open("7", "e4").named("240101-000007");
    assert_eq!(held.get().await.unwrap(), Some(named.clone()), "kept");
    assert_eq!(links.of_keys(&["j"]).await.unwrap()[0].link, named);
    held.put(&open("8", "e5")).await.unwrap();
    assert_eq!(
        held.get().await.unwrap(),
        Some(open("8", "e5")),
        "another target has a name of its own"
    );
}

/// `first` holds a key: `second` waits for it, and not for other keys.
async fn keys_are_serialized(first: &LinkStore, second: &LinkStore) {
    let short = Duration::from_millis(300);
    let held = lock(first, "a", "k").await;
    let other_key = tokio::time::timeout(short, second.lock("a", "j")).await;
    assert!(other_key.is_ok(), "other keys are not held up");
    drop(other_key);
    let same_key = tokio::time::timeout(short, second.lock("a", "k")).await;
    assert!(same_key.is_err(), "the same key waits");
    drop(held);
    drop(lock(second, "a", "k").await); // released on drop
}

/// Two stores get the first event of one alert at once: one creates (pending first), the
/// other waits, then finds the link and creates nothing.
async fn racing_stores_create_once(first: &LinkStore, second: &LinkStore) {
    async fn deliver(links: LinkStore, event: &'static str) -> (bool, Option<Link>) {
        let held = lock(&links, "b2c", "alert").await;
        let found = held.get().await.unwrap();
        if found.is_some() {
            return (false, found);
        }
        held.put(&pending(event)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await; // the create in flight
        held.put(&open("7", event)).await.unwrap();
        (true, None)
    }
    let (a, b) = tokio::join!(
        tokio::spawn(deliver(first.clone(), "open")),
        tokio::spawn(deliver(second.clone(), "repeat"))
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let created: Vec<_> = outcomes.iter().filter(|(created, _)| *created).collect();
    assert_eq!(created.len(), 1, "one create: {outcomes:?}");
    let seen = outcomes.iter().find_map(|(_, seen)| seen.clone());
    assert_eq!(
        seen.map(|l| (l.state, l.target)),
        Some((LinkState::Open, "7".to_owned())),
        "the other waited for the create and saw its outcome"
    );
}

async fn a_cancelled_wait_leaves_no_lock_behind(first: &LinkStore, second: &LinkStore) {
    let held = lock(first, "c", "k").await;
    let cancelled = tokio::time::timeout(Duration::from_millis(200), second.lock("c", "k")).await;
    assert!(cancelled.is_err());
    drop(held);
    // The cancelled wait is granted the lock once `held` goes, and must give it back.
    drop(lock(first, "c", "k").await);
}

/// Held locks keep a connection each: past half the pool, another key waits for one to go.
async fn lock_holders_leave_the_pool_half_free(links: &LinkStore) {
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(lock(links, "d", &format!("k{i}")).await);
    }
    let ninth = tokio::time::timeout(Duration::from_millis(300), links.lock("d", "k8")).await;
    assert!(ninth.is_err(), "a ninth key took a ninth connection");
    held.pop();
    drop(lock(links, "d", "k8").await);
}
