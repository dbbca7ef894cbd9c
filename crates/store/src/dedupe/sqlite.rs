//! The window in SQLite, for one process: the keys within the window in memory (with the answer
//! kept for them, if any), checked there under this process's key locks; the `seen` table of
//! the window's file, written off the answer's path and read back at start.

use super::{Answer, Claim, Claimed, Pruning, Ticket};
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

/// The upgrade that lets a key keep the first answer ([`Answer`]); after [`SQLITE_SCHEMA`].
pub const SQLITE_ANSWERS: &str = "ALTER TABLE seen ADD COLUMN fingerprint TEXT;
     ALTER TABLE seen ADD COLUMN status INTEGER;
     ALTER TABLE seen ADD COLUMN answer BLOB;";

/// A key seen within the window.
struct Seen {
    at_ms: i64,
    /// Kept in memory, as the keys are: a window with answers costs their size.
    answer: Option<Arc<Answer>>,
}

pub(super) struct SqliteWindow {
    db: Database,
    window_ms: i64,
    /// Every key seen within the window, with when (epoch ms) and its answer.
    seen: Mutex<HashMap<String, Seen>>,
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
            .prepare(
                "SELECT key, seen_at_ms, fingerprint, status, answer FROM seen \
                 WHERE seen_at_ms >= ?1",
            )?
            .query_map([since], |row| {
                let answer = match (row.get(2)?, row.get(3)?, row.get(4)?) {
                    (Some(fingerprint), Some(status), Some(body)) => Some(Arc::new(Answer {
                        fingerprint,
                        status,
                        body,
                    })),
                    _ => None,
                };
                Ok((
                    row.get(0)?,
                    Seen {
                        at_ms: row.get(1)?,
                        answer,
                    },
                ))
            })?
            .collect::<rusqlite::Result<HashMap<String, Seen>>>()?;
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
            let within: Vec<&Seen> = sorted
                .iter()
                .filter_map(|key| seen.get(key).filter(|seen| seen.at_ms >= since))
                .collect();
            (!within.is_empty()).then(|| {
                within
                    .iter()
                    .find_map(|seen| seen.answer.as_deref().cloned())
            })
        };
        if let Some(answer) = seen {
            Claim::Duplicate(answer)
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
    /// Remembers the keys as seen now, with `answer`, and releases them; the future writes
    /// them to disk.
    pub(super) fn commit(
        self,
        answer: Option<Answer>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
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
                seen.retain(|_, seen| seen.at_ms >= expired_before);
            }
            let answer = answer.clone().map(Arc::new);
            for key in &keys {
                let answer = answer.clone();
                seen.insert(key.clone(), Seen { at_ms: now, answer });
            }
        }
        drop(locked);
        async move {
            window
                .db
                .write(move |conn| {
                    let mut insert = conn.prepare_cached(
                        "INSERT INTO seen (key, seen_at_ms, fingerprint, status, answer) \
                         VALUES (?1, ?2, ?3, ?4, ?5) \
                         ON CONFLICT (key) DO UPDATE SET seen_at_ms = excluded.seen_at_ms, \
                         fingerprint = excluded.fingerprint, status = excluded.status, \
                         answer = excluded.answer",
                    )?;
                    let (fingerprint, status, body) = match &answer {
                        Some(a) => (Some(&a.fingerprint), Some(a.status), Some(&a.body)),
                        None => (None, None, None),
                    };
                    for key in &keys {
                        insert.execute((key, now, fingerprint, status, body))?;
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
