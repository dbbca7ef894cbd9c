//! The link map in PostgreSQL: one `links` table every process of the broker shares, and a
//! per-key lock that holds across processes.
//!
//! The lock is a session advisory lock on (`LOCK_SPACE`, `hashtext(scope, key)`), taken on a
//! connection from the shared pool that the guard keeps until it drops, and that the guard's
//! reads and writes use — so a holder never waits for a second connection while others hold
//! the pool. A hash collision only makes two keys wait for each other. On drop the connection
//! releases every advisory lock of its session before it goes back to the pool; that also
//! covers a lock whose wait was cancelled, since the release queues behind it on the same
//! connection. A process that dies loses its connections, and PostgreSQL frees their locks.
//! At most [`MAX_HELD`] keys per process hold (or wait for) a lock at once, so that the lock
//! holders, who wait on destinations, never take the pool's connections that the records and
//! the dedupe window need.

use super::{Link, LinkState, Scoped};
use crate::postgres::Postgres;
use crate::StoreError;
use deadpool_postgres::Object;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The schema, as migrations (append only).
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE links (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,
        target TEXT NOT NULL,
        last_event TEXT NOT NULL,
        updated BIGINT NOT NULL,
        PRIMARY KEY (scope, key)
    );
",
    "
    CREATE INDEX links_by_key ON links (key);
",
    "
    ALTER TABLE links ADD COLUMN name TEXT NOT NULL DEFAULT '';
",
];

/// Keys locked (or waiting) at once per process: half the shared pool (16 connections).
const MAX_HELD: usize = 8;

/// The first half of the link locks' advisory key (`lnks` in ASCII), so that they never meet
/// another module's advisory locks.
const LOCK_SPACE: i32 = 0x6c6e_6b73;

#[derive(Clone)]
pub(super) struct PostgresLinks {
    pub(super) database: Postgres,
    /// One permit per connection the link locks may hold.
    connections: Arc<Semaphore>,
}

/// One key locked, on the connection that holds the lock.
pub(super) struct Locked {
    pub(super) database: Postgres,
    client: Option<Object>,
    // Dropped after `client` is handed to its release.
    _permit: OwnedSemaphorePermit,
}

impl PostgresLinks {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("links", MIGRATIONS).await?;
        Ok(PostgresLinks {
            database: database.clone(),
            connections: Arc::new(Semaphore::new(MAX_HELD)),
        })
    }

    /// Every link of `keys`, on a pooled connection of its own (no lock taken).
    pub(super) async fn of_keys(&self, keys: &[String]) -> Result<Vec<Scoped>, StoreError> {
        let client = self.database.client().await?;
        let select = client
            .prepare_cached(
                "SELECT scope, key, state, target, last_event, name FROM links WHERE key = ANY($1)",
            )
            .await?;
        let rows = client.query(&select, &[&keys]).await?;
        Ok(rows
            .iter()
            .map(|row| Scoped {
                scope: row.get(0),
                key: row.get(1),
                link: link_at(row, 2),
            })
            .collect())
    }

    /// Waits for (`scope`, `key`)'s advisory lock.
    pub(super) async fn lock(&self, scope: &str, key: &str) -> Result<Locked, StoreError> {
        // Made before the wait, so that a cancelled or failed wait still releases the session.
        let permit = Arc::clone(&self.connections)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let locked = Locked {
            database: self.database.clone(),
            client: Some(self.database.client().await?),
            _permit: permit,
        };
        let client = locked.client();
        let lock = client
            .prepare_cached("SELECT pg_advisory_lock($1, hashtext($2 || E'\\n' || $3))")
            .await?;
        client.execute(&lock, &[&LOCK_SPACE, &scope, &key]).await?;
        Ok(locked)
    }
}

impl Locked {
    fn client(&self) -> &Object {
        self.client.as_ref().expect("held until dropped")
    }

    pub(super) async fn get(&self, scope: &str, key: &str) -> Result<Option<Link>, StoreError> {
        let client = self.client();
        let select = client
            .prepare_cached(
                "SELECT state, target, last_event, name FROM links WHERE scope = $1 AND key = $2",
            )
            .await?;
        let row = client.query_opt(&select, &[&scope, &key]).await?;
        Ok(row.map(|row| link_at(&row, 0)))
    }

    pub(super) async fn put(&self, scope: &str, key: &str, link: &Link) -> Result<(), StoreError> {
        let client = self.client();
        let upsert = client
            .prepare_cached(
                "INSERT INTO links (scope, key, state, target, last_event, updated, name) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope, key) DO UPDATE SET \
                 state = excluded.state, target = excluded.target, \
                 last_event = excluded.last_event, updated = excluded.updated, \
                 name = CASE WHEN excluded.name = '' AND excluded.target = links.target \
                 THEN links.name ELSE excluded.name END",
            )
            .await?;
        client
            .execute(
                &upsert,
                &[
                    &scope,
                    &key,
                    &link.state.as_str(),
                    &link.target,
                    &link.last_event,
                    &clock::now_epoch_seconds(),
                    &link.name,
                ],
            )
            .await?;
        Ok(())
    }
}

/// The link in `row`'s columns `at..at + 4` (state, target, last event, name).
fn link_at(row: &tokio_postgres::Row, at: usize) -> Link {
    Link {
        state: LinkState::parse(row.get(at)),
        target: row.get(at + 1),
        last_event: row.get(at + 2),
        name: row.get(at + 3),
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to release it on: close the session, which frees its locks.
            drop(Object::take(client));
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = client
                .batch_execute("SELECT pg_advisory_unlock_all()")
                .await
            {
                tracing::warn!(error = %e, "cannot release a link lock; closing its connection");
                drop(Object::take(client));
            }
        });
    }
}
