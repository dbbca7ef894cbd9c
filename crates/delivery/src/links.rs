//! The link map: for stateful destinations, what Tocsin created there for each alert — the B2C
//! incident id for an `ans:sourceEventId`, the Slack thread for an `ans:correlationId` — in its
//! own SQLite file (`links.db`), so that updates and closes find it after a restart.
//!
//! A link is keyed by a *scope* (the action and the destination it points at, so repointing
//! an action starts afresh) and the alert key. Its state says what is known: `Pending` (a
//! create was sent but its answer never came: the destination may hold it, look before
//! creating again), `Open` or `Closed`. `last_event` is the last event applied, so a redelivered
//! job does not act twice. Writes go through the storage writer thread with full durability (a
//! `Pending` must be on disk before the create it announces is sent); reads run off the
//! runtime. [`Links::lock`] serializes the work on one key, so that two events of one alert
//! never both create.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use storage::{Database, Durability, StorageError};
use tokio::sync::OwnedMutexGuard;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE links (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        target TEXT NOT NULL,
        last_event TEXT NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID;
"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Pending,
    Open,
    Closed,
}

impl LinkState {
    fn as_str(self) -> &'static str {
        match self {
            LinkState::Pending => "PENDING",
            LinkState::Open => "OPEN",
            LinkState::Closed => "CLOSED",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "OPEN" => LinkState::Open,
            "CLOSED" => LinkState::Closed,
            _ => LinkState::Pending,
        }
    }
}

/// What the destination holds for one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub state: LinkState,
    /// The destination's id for it (empty while pending).
    pub target: String,
    /// The id of the last event applied.
    pub last_event: String,
}

impl Link {
    /// What a destination holds for an alert: `target`, in `state`, as of `event`.
    pub fn new(state: LinkState, target: impl ToString, event: &model::ResourceEvent) -> Link {
        Link {
            state,
            target: target.to_string(),
            last_event: event.id.clone(),
        }
    }
}

/// A failure of the link map (`what` names it in the reason): Tocsin's own storage, worth
/// retrying.
pub fn unavailable(what: &str, error: impl std::fmt::Display) -> crate::failure::Failure {
    crate::failure::Failure::transient(
        crate::failure::Code::LocalStorage,
        format!("{what}: {error}"),
    )
}

/// A (scope, key) pair.
type LinkId = (String, String);

#[derive(Clone)]
pub struct Links {
    db: Database,
    /// One mutex per key being worked on.
    locks: Arc<Mutex<HashMap<LinkId, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Held while one alert key is being worked on.
pub struct KeyGuard {
    links: Links,
    id: LinkId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Links {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Ok(Links {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
            locks: Arc::default(),
        })
    }

    /// Waits until no one else works on (`scope`, `key`), and holds it until the guard drops.
    pub async fn lock(&self, scope: &str, key: &str) -> KeyGuard {
        let id = (scope.to_owned(), key.to_owned());
        let mutex = Arc::clone(
            self.locks
                .lock()
                .expect("not poisoned")
                .entry(id.clone())
                .or_default(),
        );
        KeyGuard {
            links: self.clone(),
            id,
            guard: Some(mutex.lock_owned().await),
        }
    }

    pub async fn get(&self, scope: &str, key: &str) -> Result<Option<Link>, StorageError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.db
            .read(move |c| {
                let mut select = c.prepare_cached(
                    "SELECT state, target, last_event FROM links WHERE scope = ?1 AND key = ?2",
                )?;
                let mut rows = select.query((scope, key))?;
                rows.next()?
                    .map(|row| {
                        Ok(Link {
                            state: LinkState::parse(&row.get::<_, String>(0)?),
                            target: row.get(1)?,
                            last_event: row.get(2)?,
                        })
                    })
                    .transpose()
            })
            .await
    }

    pub async fn put(&self, scope: &str, key: &str, link: &Link) -> Result<(), StorageError> {
        let row = (
            scope.to_owned(),
            key.to_owned(),
            link.state.as_str(),
            link.target.clone(),
            link.last_event.clone(),
            clock::now_epoch_seconds(),
        );
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO links (scope, key, state, target, last_event, updated) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (scope, key) DO UPDATE SET \
                     state = excluded.state, target = excluded.target, \
                     last_event = excluded.last_event, updated = excluded.updated",
                )?
                .execute(row)
            })
            .await
            .map(drop)
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut locks = self.links.locks.lock().expect("not poisoned");
        drop(self.guard.take());
        // Nobody else holds or waits for it: forget it, so the map does not grow forever.
        if locks
            .get(&self.id)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn links_survive_reopening_and_keys_are_serialized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("links.db");
        let links = Links::open(&path).unwrap();
        assert_eq!(links.get("a", "k").await.unwrap(), None);
        let pending = Link {
            state: LinkState::Pending,
            target: String::new(),
            last_event: "e1".into(),
        };
        links.put("a", "k", &pending).await.unwrap();
        let open = Link {
            state: LinkState::Open,
            target: "42".into(),
            ..pending
        };
        links.put("a", "k", &open).await.unwrap();
        assert_eq!(links.get("b", "k").await.unwrap(), None, "scopes are apart");
        drop(links);
        let links = Links::open(&path).unwrap();
        assert_eq!(links.get("a", "k").await.unwrap(), Some(open));

        let first = links.lock("a", "k").await;
        let other_key =
            tokio::time::timeout(Duration::from_millis(100), links.lock("a", "j")).await;
        assert!(other_key.is_ok(), "other keys are not held up");
        let same_key = tokio::time::timeout(Duration::from_millis(100), links.lock("a", "k")).await;
        assert!(same_key.is_err(), "the same key waits");
        drop(first);
        drop(other_key);
        let again = links.lock("a", "k").await;
        drop(again);
        assert!(
            links.locks.lock().unwrap().is_empty(),
            "unused locks are forgotten"
        );
    }
}
