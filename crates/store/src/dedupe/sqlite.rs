//! The window in SQLite, for one process: the keys within the window in memory, checked there
//! under this process's key locks; the `seen` table of the OCI source's file, written off the
//! answer's path and read back at start.

use super::{Claim, Claimed, Pruning, Ticket};
use crate::key_locks::{KeyGuard, KeyLocks};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{Database, StorageError};

/// The table, among the OCI source's migrations.
pub const SQLITE_SCHEMA: &str =
    "CREATE TABLE seen (key TEXT PRIMARY KEY, seen_at_ms INTEGER NOT NULL);
     CREATE INDEX seen_by_time ON seen (seen_at_ms);";

pub(super) struct SqliteWindow {
    db: Database,
    window_ms: i64,
    /// Every key seen within the window, with when (epoch ms).
    seen: Mutex<HashMap<String, i64>>,
    pub(super) locks: Arc<KeyLocks>,
    pruning: Pruning,
}

pub(super) struct SqliteTicket {
    window: Arc<SqliteWindow>,
    keys: Vec<String>,
    _locked: KeyGuard,
}

impl SqliteWindow {
    pub(super) fn open(
        db: Database,
        path: &Path,
        window: Duration,
    ) -> Result<SqliteWindow, StorageError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let since = clock::now_epoch_millis().saturating_sub(window_ms);
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let seen = conn
            .prepare("SELECT key, seen_at_ms FROM seen WHERE seen_at_ms >= ?1")?
            .query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<HashMap<String, i64>>>()?;
        Ok(SqliteWindow {
            db,
            window_ms,
            seen: Mutex::new(seen),
            locks: Arc::default(),
            pruning: Pruning::new(),
        })
    }

    /// Looks `sorted` up, waiting while another copy of the same message is being decided.
    pub(super) async fn claim(window: &Arc<SqliteWindow>, sorted: Vec<String>) -> Claim {
        let locked = window.locks.lock(&sorted).await;
        let since = clock::now_epoch_millis().saturating_sub(window.window_ms);
        let seen = {
            let seen = window.seen.lock().expect("dedupe window poisoned");
            sorted
                .iter()
                .any(|key| seen.get(key).is_some_and(|at| *at >= since))
        };
        if seen {
            Claim::Duplicate
        } else {
            Claim::New(Ticket(Claimed::Sqlite(SqliteTicket {
                window: Arc::clone(window),
                keys: sorted,
                _locked: locked,
            })))
        }
    }
}

impl SqliteTicket {
    /// Remembers the keys as seen now and releases them; the future writes them to disk.
    pub(super) fn commit(self) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let SqliteTicket {
            window,
            keys,
            _locked: locked,
        } = self;
        let now = clock::now_epoch_millis();
        let expired_before = now.saturating_sub(window.window_ms);
        let prune = window.pruning.due(now);
        {
            let mut seen = window.seen.lock().expect("dedupe window poisoned");
            if prune {
                seen.retain(|_, at| *at >= expired_before);
            }
            for key in &keys {
                seen.insert(key.clone(), now);
            }
        }
        drop(locked);
        async move {
            window
                .db
                .write(move |conn| {
                    let mut insert = conn.prepare_cached(
                        "INSERT INTO seen (key, seen_at_ms) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
                    )?;
                    for key in &keys {
                        insert.execute((key, now))?;
                    }
                    if prune {
                        conn.execute("DELETE FROM seen WHERE seen_at_ms < ?1", [expired_before])?;
                    }
                    Ok(())
                })
                .await
        }
    }
}
