//! The link map: for stateful destinations, what Tocsin created there for each alert — the B2C
//! incident id for an `ans:sourceEventId`, the ServiceNow record, the Slack thread for an
//! `ans:correlationId` — so that updates and closes find it after a restart, and, on
//! PostgreSQL, whichever process delivers them.
//!
//! A link is keyed by a *scope* (the action and the destination it points at, so repointing
//! an action starts afresh) and the alert key. Its state says what is known: `Pending` (a
//! create was sent but its answer never came: the destination may hold it, look before
//! creating again), `Open` or `Closed`. `last_event` is the last event applied, so a redelivered
//! job does not act twice.
//!
//! Flow: a channel takes [`LinkStore::lock`] on the key, then reads and writes the link only
//! through the [`KeyGuard`] it got, and drops it when done — so two events of one alert never
//! both create, in one process or (on PostgreSQL) in several. Every write is durable before it
//! returns: a `Pending` is on disk before the create it announces is sent.
//! - [`sqlite`]: `links.db` in the data directory, through the storage writer thread with full
//!   durability; reads off the runtime; the lock is this process's own.
//! - [`postgres`]: the `links` table every process shares; the lock is a session advisory lock
//!   on a hash of (scope, key), held on one pooled connection for the guard's life, and the
//!   guard reads and writes on that connection. A process that dies releases it with its
//!   connection.
//!
//! The alerts API reads what was created for an alert with [`LinkStore::of_keys`]: every scope's
//! link for the alert's keys, without a lock (a link being written shows as it was, or as it
//! becomes).

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use crate::key_locks::{self, KeyLocks};
use crate::{Location, StoreError};
use std::path::Path;
use std::sync::Arc;

/// The link map's file in the data directory (SQLite).
pub const SQLITE_FILE: &str = "links.db";

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
    /// The destination's name for it as people use it — a B2C incident's lookup name, a
    /// ServiceNow number — or empty when not known. Writing a link with the same target and
    /// no name keeps the name on record: only the create that made the target hears it.
    pub name: String,
}

impl Link {
    /// What a destination holds for an alert: `target`, in `state`, as of `event`.
    pub fn new(state: LinkState, target: impl ToString, event: &model::ResourceEvent) -> Link {
        Link {
            state,
            target: target.to_string(),
            last_event: event.id.clone(),
            name: String::new(),
        }
    }

    /// The link, with `name` as the destination's name for its target.
    pub fn named(self, name: impl Into<String>) -> Link {
        Link {
            name: name.into(),
            ..self
        }
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteLinks),
    Postgres(postgres::PostgresLinks),
}

/// The scope of the links `action` keeps for `destination`: `{action}|{destination}`. Every
/// stateful channel files its links so, and the alerts API reads the action's name back from
/// it (the longest action name the scope starts with, since names may hold `|`).
pub fn scope(action: &str, destination: impl std::fmt::Display) -> String {
    format!("{action}|{destination}")
}

/// A link and where it belongs, as [`LinkStore::of_keys`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoped {
    /// The action's name and its destination, as the channel wrote it (`name|…`).
    pub scope: String,
    pub key: String,
    pub link: Link,
}

/// The link map, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct LinkStore {
    backend: Backend,
    /// This process's locks, taken before the backend's: one waiter per key per process.
    local: Arc<KeyLocks>,
}

/// Held while one alert key is being worked on; the only way to read or write its link.
pub struct KeyGuard {
    scope: String,
    key: String,
    // Declared before the local lock, so dropped first: the cross-process lock goes first.
    held: Held,
    _local: key_locks::KeyGuard,
}

enum Held {
    Sqlite(sqlite::SqliteLinks),
    // Boxed: a pooled connection is large, and the SQLite guard should not pay for it.
    Postgres(Box<postgres::Locked>),
}

impl LinkStore {
    /// The link map in the SQLite file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::with(Backend::Sqlite(sqlite::SqliteLinks::open(
            path,
        )?)))
    }

    /// The link map in the shared PostgreSQL database (its table created or migrated first).
    pub async fn on_postgres(database: &crate::postgres::Postgres) -> Result<Self, StoreError> {
        Ok(Self::with(Backend::Postgres(
            postgres::PostgresLinks::open(database).await?,
        )))
    }

    /// The link map where `location` says the state lives.
    pub async fn at(location: &Location) -> Result<Self, StoreError> {
        match location {
            Location::Sqlite(dir) => Self::open(&dir.join(SQLITE_FILE)),
            Location::Postgres(database) => Self::on_postgres(database).await,
        }
    }

    fn with(backend: Backend) -> Self {
        LinkStore {
            backend,
            local: Arc::default(),
        }
    }

    /// Every link of the alert keys `keys`, in any scope, ordered by scope then key; read
    /// without a lock, for showing.
    pub async fn of_keys(&self, keys: &[&str]) -> Result<Vec<Scoped>, StoreError> {
        let mut keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        keys.sort();
        keys.dedup();
        let mut found = match &self.backend {
            Backend::Sqlite(links) => links.of_keys(keys).await?,
            Backend::Postgres(links) => links.database.noted(links.of_keys(&keys).await)?,
        };
        // Here, not in SQL: one order on both backends, whatever the database's collation.
        found.sort_by(|a, b| (&a.scope, &a.key).cmp(&(&b.scope, &b.key)));
        Ok(found)
    }

    /// Waits until no one else works on (`scope`, `key`) — on PostgreSQL, in any process — and
    /// holds it until the guard drops.
    pub async fn lock(&self, scope: &str, key: &str) -> Result<KeyGuard, StoreError> {
        let local = self.local.lock(&[format!("{scope}\n{key}")]).await;
        let held = match &self.backend {
            Backend::Sqlite(links) => Held::Sqlite(links.clone()),
            Backend::Postgres(links) => {
                let locked = links.database.noted(links.lock(scope, key).await)?;
                Held::Postgres(Box::new(locked))
            }
        };
        Ok(KeyGuard {
            scope: scope.to_owned(),
            key: key.to_owned(),
            held,
            _local: local,
        })
    }
}

impl KeyGuard {
    /// The key's link, if there is one.
    pub async fn get(&self) -> Result<Option<Link>, StoreError> {
        let (scope, key) = (&self.scope, &self.key);
        match &self.held {
            Held::Sqlite(links) => Ok(links.get(scope, key).await?),
            Held::Postgres(locked) => locked.database.noted(locked.get(scope, key).await),
        }
    }

    /// Writes the key's link; durable when this returns.
    pub async fn put(&self, link: &Link) -> Result<(), StoreError> {
        let (scope, key) = (&self.scope, &self.key);
        match &self.held {
            Held::Sqlite(links) => Ok(links.put(scope, key, link).await?),
            Held::Postgres(locked) => locked.database.noted(locked.put(scope, key, link).await),
        }
    }
}
