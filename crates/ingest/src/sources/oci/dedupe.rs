//! OCI delivers at least once: a message whose answer was lost or late comes again, for up to
//! two hours by default. This remembers the keys of the messages already published (the
//! `X-OCI-NS-MessageId`, and `dedupeKey`+`timestampEpochMillis` or `eventID`) for a window, so
//! that a redelivery is acknowledged without being published again — also after a restart.
//!
//! Flow: [`Dedupe::claim`] locks the message's keys (so that two copies arriving at once are
//! decided one after the other) and looks them up in memory; a new message gets a [`Ticket`].
//! The caller publishes, then [`Ticket::commit`]s: the keys are remembered in memory at once
//! and written to the `seen` table of the OCI source's SQLite file by the future it returns,
//! off the answer's path. The table is read back at start. A ticket dropped without commit —
//! the publish failed — leaves nothing behind, so OCI's retry is published normally.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::{Database, StorageError};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The table, created by the OCI source's migrations.
pub const SCHEMA: &str = "CREATE TABLE seen (key TEXT PRIMARY KEY, seen_at_ms INTEGER NOT NULL);
     CREATE INDEX seen_by_time ON seen (seen_at_ms);";

/// How often expired keys are forgotten.
const PRUNE_EVERY_MS: i64 = 60_000;

pub struct Dedupe {
    db: Database,
    window_ms: i64,
    /// Every key seen within the window, with when (epoch ms).
    seen: Mutex<HashMap<String, i64>>,
    locks: KeyLocks,
    last_prune_ms: AtomicI64,
}

/// Whether a message was seen within the window.
pub enum Claim<'a> {
    /// One of its keys was: the message is a redelivery.
    Duplicate,
    /// None was: publish it, then commit the ticket.
    New(Ticket<'a>),
}

/// The right to publish a message, holding its keys locked until committed or dropped.
pub struct Ticket<'a> {
    dedupe: &'a Dedupe,
    keys: Vec<String>,
    _locked: KeyGuard<'a>,
}

impl Dedupe {
    /// The window over `db`, the database at `path`, with the keys it remembers.
    pub fn open(db: Database, path: &Path, window: Duration) -> Result<Dedupe, StorageError> {
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
        Ok(Dedupe {
            db,
            window_ms,
            seen: Mutex::new(seen),
            locks: KeyLocks::default(),
            last_prune_ms: AtomicI64::new(0),
        })
    }

    /// Looks `keys` up, waiting while another copy of the same message is being decided.
    pub async fn claim(&self, keys: Vec<String>) -> Claim<'_> {
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        let locked = self.locks.lock(&keys).await;
        let since = clock::now_epoch_millis().saturating_sub(self.window_ms);
        let seen = {
            let seen = self.seen.lock().expect("dedupe window poisoned");
            keys.iter()
                .any(|key| seen.get(key).is_some_and(|at| *at >= since))
        };
        if seen {
            Claim::Duplicate
        } else {
            Claim::New(Ticket {
                dedupe: self,
                keys,
                _locked: locked,
            })
        }
    }
}

impl Ticket<'_> {
    /// Remembers the keys as seen now (the message is published) and releases them; the
    /// returned future writes them to disk and, now and then, forgets the expired ones there.
    pub fn commit(self) -> impl Future<Output = Result<(), StorageError>> + Send + 'static {
        let dedupe = self.dedupe;
        let now = clock::now_epoch_millis();
        let expired_before = now.saturating_sub(dedupe.window_ms);
        let last = dedupe.last_prune_ms.load(Ordering::Relaxed);
        let prune = now - last >= PRUNE_EVERY_MS
            && dedupe
                .last_prune_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        {
            let mut seen = dedupe.seen.lock().expect("dedupe window poisoned");
            if prune {
                seen.retain(|_, at| *at >= expired_before);
            }
            for key in &self.keys {
                seen.insert(key.clone(), now);
            }
        }
        let keys = self.keys.clone();
        let db = dedupe.db.clone();
        async move {
            db.write(move |conn| {
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

/// Async locks on individual keys, created on demand and removed when nobody holds or awaits
/// them.
#[derive(Default)]
struct KeyLocks {
    held: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    held: Vec<(String, OwnedMutexGuard<()>)>,
}

impl KeyLocks {
    /// Locks every key of `sorted` (in order, so two callers cannot deadlock).
    async fn lock(&self, sorted: &[String]) -> KeyGuard<'_> {
        let mutexes: Vec<(String, Arc<AsyncMutex<()>>)> = {
            let mut held = self.held.lock().expect("key locks poisoned");
            sorted
                .iter()
                .map(|key| {
                    (
                        key.clone(),
                        Arc::clone(held.entry(key.clone()).or_default()),
                    )
                })
                .collect()
        };
        let mut guard = KeyGuard {
            locks: self,
            held: Vec::with_capacity(mutexes.len()),
        };
        for (key, mutex) in mutexes {
            let locked = mutex.lock_owned().await;
            guard.held.push((key, locked));
        }
        guard
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().expect("key locks poisoned");
        for (key, locked) in self.held.drain(..) {
            drop(locked);
            // Only the map's own reference left: nobody holds or waits for this key.
            if held.get(&key).is_some_and(|m| Arc::strong_count(m) == 1) {
                held.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::Durability;

    fn open(dir: &tempfile::TempDir, window: Duration) -> Dedupe {
        let path = dir.path().join("oci.db");
        let db = Database::open(&path, &[SCHEMA], Durability::Normal, None).unwrap();
        Dedupe::open(db, &path, window).unwrap()
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    async fn is_new(dedupe: &Dedupe, list: &[&str], commit: bool) -> bool {
        match dedupe.claim(keys(list)).await {
            Claim::Duplicate => false,
            Claim::New(ticket) => {
                if commit {
                    ticket.commit().await.unwrap();
                }
                true
            }
        }
    }

    #[tokio::test]
    async fn a_key_seen_within_the_window_is_a_duplicate_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let dedupe = open(&dir, Duration::from_secs(3600));
        assert!(is_new(&dedupe, &["msg:1", "alarm:k:1"], true).await);
        assert!(!is_new(&dedupe, &["msg:1"], true).await, "same message id");
        assert!(
            !is_new(&dedupe, &["msg:2", "alarm:k:1"], true).await,
            "same occurrence, other topic"
        );
        assert!(
            is_new(&dedupe, &["msg:3", "alarm:k:2"], true).await,
            "the next evaluation"
        );
        drop(dedupe);
        let dedupe = open(&dir, Duration::from_secs(3600));
        assert!(
            !is_new(&dedupe, &["msg:1"], true).await,
            "remembered across restarts"
        );
        assert!(
            dedupe.locks.held.lock().unwrap().is_empty(),
            "no lock left behind"
        );
    }

    #[tokio::test]
    async fn an_uncommitted_claim_leaves_nothing_and_old_keys_expire() {
        let dir = tempfile::tempdir().unwrap();
        let dedupe = open(&dir, Duration::from_secs(3600));
        assert!(
            is_new(&dedupe, &["msg:1"], false).await,
            "publish failed: not committed"
        );
        assert!(
            is_new(&dedupe, &["msg:1"], true).await,
            "so the retry is new"
        );
        // Committed: a duplicate at once, before (even without) the write to disk.
        let Claim::New(ticket) = dedupe.claim(keys(&["msg:9"])).await else {
            panic!("new")
        };
        drop(ticket.commit());
        assert!(!is_new(&dedupe, &["msg:9"], true).await);
        let dedupe = open(&dir, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            is_new(&dedupe, &["msg:1"], true).await,
            "outside the window"
        );
    }

    #[tokio::test]
    async fn concurrent_copies_are_decided_one_after_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let dedupe = Arc::new(open(&dir, Duration::from_secs(3600)));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let dedupe = Arc::clone(&dedupe);
                tokio::spawn(async move { is_new(&dedupe, &["msg:same"], true).await })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            new += usize::from(task.await.unwrap());
        }
        assert_eq!(new, 1);
        assert!(dedupe.locks.held.lock().unwrap().is_empty());
    }
}
