//! The configuration document's persistence: one document and its version, on SQLite
//! ([`sqlite`], `config.db` in the data directory, this process's alone) or PostgreSQL
//! ([`postgres`], the one document every process of the broker reads).
//!
//! The document is opaque here: its owner (the router's `ConfigStore`) seals it before it
//! comes in, so it is never in clear at rest on either backend. A change reads the current
//! document, lets its owner build the next one, and writes it with a new version, as one unit:
//! on PostgreSQL the row stays locked from the read to the commit, so changes from every
//! process serialize and each builds on the last (none is lost); on SQLite the write goes
//! through only if the version is still the one read, so a change that lost a race is refused
//! ([`StoreError::Conflict`]), never silently undone.
//!
//! A version is a Lamport clock on epoch milliseconds ([`next_version`]): later than the one it
//! replaces, and comparable between processes that each keep their own file and share changes
//! over the bus. On PostgreSQL every committed change is announced (`NOTIFY`), and each
//! process listens ([`ConfigDocument::announcements`]) to adopt it without waiting.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use crate::{Location, StoreError};
use std::future::Future;
use tokio::sync::mpsc;

/// The document as stored (sealed, as its owner sealed it) and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub document: Vec<u8>,
    pub version: i64,
}

/// The version a change to a document at `current` gets: now in epoch milliseconds, or just
/// after `current` if a clock behind the writer's made that later.
pub fn next_version(current: i64) -> i64 {
    clock::now_epoch_millis().max(current + 1)
}

enum Backend {
    Sqlite(sqlite::SqliteConfig),
    Postgres(postgres::PostgresConfig),
}

/// The configuration document, on whichever backend `Location` names.
pub struct ConfigDocument {
    backend: Backend,
}

impl ConfigDocument {
    /// `config.db` in the data directory, or the table in the shared database (created or
    /// migrated first).
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let backend = match location {
            Location::Sqlite(dir) => {
                Backend::Sqlite(sqlite::SqliteConfig::open(&dir.join("config.db"))?)
            }
            Location::Postgres(database) => {
                Backend::Postgres(postgres::PostgresConfig::open(database).await?)
            }
        };
        Ok(ConfigDocument { backend })
    }

    /// Whether every process reads this one document (PostgreSQL), so that nothing about the
    /// configuration needs to travel between processes.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The current document, if one was ever written.
    pub async fn read(&self) -> Result<Option<Stored>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.read().await,
            Backend::Postgres(p) => p.read().await,
        }
    }

    /// The current version (0 before the first change): one small read, cheap enough to make
    /// before every routing batch.
    pub async fn version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.version().await,
            Backend::Postgres(p) => p.version().await,
        }
    }

    /// Changes the document: `apply` gets the current one and the version the change will
    /// have, and returns the next document; it is written with that version unless `apply`
    /// fails. Returns what `apply` returned beside the document.
    pub async fn change<T, E, F, Fut>(&self, apply: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(Option<Stored>, i64) -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, T), E>>,
    {
        match &self.backend {
            Backend::Sqlite(s) => s.change(apply).await,
            Backend::Postgres(p) => p.change(apply).await,
        }
    }

    /// Writes `stored` as it is (a document sealed again, or a change another process
    /// shared), unless a later version is stored already; `false` then.
    pub async fn keep(&self, stored: Stored) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.keep(stored).await,
            Backend::Postgres(p) => p.keep(stored).await,
        }
    }

    /// A message each time another process may have changed the shared document: after each
    /// announced change, and after each (re)connection of the listener, since announcements
    /// made while it was away are lost. `None` for a document no other process writes.
    pub fn announcements(&self) -> Option<mpsc::Receiver<()>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p.listen()),
        }
    }
}
