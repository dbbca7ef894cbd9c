//! The configuration in SQLite: `config.db` in the data directory, with the schema every
//! earlier Tocsin wrote, so that existing data directories keep working.

use super::{next_version, Stored};
use crate::StoreError;
use rusqlite::OptionalExtension;
use std::future::Future;
use std::path::{Path, PathBuf};
use storage::{Database, Durability, StorageError};
use tokio::sync::Mutex;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE configuration (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        document TEXT NOT NULL,
        -- The configuration's version: a Lamport clock on epoch milliseconds.
        changed_at INTEGER NOT NULL
    );
"];

pub(super) struct SqliteConfig {
    db: Database,
    path: PathBuf,
    /// Held from a change's read to its write: changes through this instance never race.
    changing: Mutex<()>,
}

impl SqliteConfig {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(SqliteConfig {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
            path: path.to_owned(),
            changing: Mutex::new(()),
        })
    }

    pub(super) async fn read(&self) -> Result<Option<Stored>, StoreError> {
        Ok(self
            .db
            .read(|c| {
                c.query_row(
                    "SELECT document, changed_at FROM configuration WHERE id = 1",
                    [],
                    |r| {
                        Ok(Stored {
                            document: r.get_ref(0)?.as_bytes()?.to_vec(),
                            version: r.get(1)?,
                        })
                    },
                )
                .optional()
            })
            .await?)
    }

    pub(super) async fn version(&self) -> Result<i64, StoreError> {
        Ok(self
            .db
            .read(|c| {
                c.query_row(
                    "SELECT COALESCE(MAX(changed_at), 0) FROM configuration",
                    [],
                    |r| r.get(0),
                )
            })
            .await?)
    }

    pub(super) async fn change<T, E, F, Fut>(&self, apply: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(Option<Stored>, i64) -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, T), E>>,
    {
        let _changing = self.changing.lock().await;
        let current = self.read().await?;
        let read_version = current.as_ref().map_or(0, |c| c.version);
        let version = next_version(read_version);
        let (document, outcome) = apply(current, version).await?;
        // Only over the version read: another writer of this file (a second instance) that
        // changed it meanwhile makes this change fail instead of vanish.
        if !self.write(document, version, "=", read_version).await? {
            return Err(StoreError::Conflict(
                "the configuration was changed by someone else meanwhile; try again".into(),
            )
            .into());
        }
        Ok(outcome)
    }

    pub(super) async fn keep(&self, stored: Stored) -> Result<bool, StoreError> {
        let _changing = self.changing.lock().await;
        let kept = self
            .write(stored.document, stored.version, "<=", stored.version)
            .await?;
        // What was replaced (sealed with an old key, or in clear by an older Tocsin) must not
        // linger in the WAL either.
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || checkpoint(&path))
            .await
            .map_err(|e| StorageError::Join(e.to_string()))??;
        Ok(kept)
    }

    /// Writes `document` at `version` if there is none yet, or if the stored version compares
    /// to `than` as `comparison` says; whether it did.
    async fn write(
        &self,
        document: Vec<u8>,
        version: i64,
        comparison: &'static str,
        than: i64,
    ) -> Result<bool, StoreError> {
        let written = self
            .db
            .write(move |c| {
                // What the new document replaces is overwritten, not just freed.
                c.pragma_update(None, "secure_delete", true)?;
                c.execute(
                    &format!(
                        "INSERT INTO configuration (id, document, changed_at) VALUES (1, ?1, ?2) \
                         ON CONFLICT (id) DO UPDATE SET document = ?1, changed_at = ?2 \
                         WHERE configuration.changed_at {comparison} ?3"
                    ),
                    (document, version, than),
                )
            })
            .await?;
        Ok(written > 0)
    }
}

/// Moves the WAL into the file and empties it, so that no frame of what was overwritten is left.
fn checkpoint(path: &Path) -> Result<(), StorageError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
