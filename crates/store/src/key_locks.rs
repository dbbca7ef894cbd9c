//! Async locks on individual keys within this process, created on demand and forgotten when
//! nobody holds or awaits them. The link map takes one before its cross-process lock (so a
//! process has at most one connection waiting per key), the SQLite dedupe window takes the
//! locks of a message's keys while it decides whether the message is new.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(crate) struct KeyLocks {
    held: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds keys locked until dropped.
pub(crate) struct KeyGuard {
    locks: Arc<KeyLocks>,
    held: Vec<(String, OwnedMutexGuard<()>)>,
}

impl KeyLocks {
    /// Locks every key of `sorted` (in order, so two callers cannot deadlock).
    pub(crate) async fn lock(self: &Arc<Self>, sorted: &[String]) -> KeyGuard {
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
            locks: Arc::clone(self),
            held: Vec::with_capacity(mutexes.len()),
        };
        for (key, mutex) in mutexes {
            let locked = mutex.lock_owned().await;
            guard.held.push((key, locked));
        }
        guard
    }

    /// Whether no key is held or awaited (so none is remembered).
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.held.lock().expect("key locks poisoned").is_empty()
    }
}

impl Drop for KeyGuard {
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
