//! The configuration in PostgreSQL: one row that every process of the broker reads and
//! changes, and a `NOTIFY` on each change for the processes that listen.
//!
//! The row exists from the first migration on (with no document yet), so that every change,
//! the first one included, starts by locking it (`SELECT … FOR UPDATE`): a change made
//! meanwhile by another process waits for this one's commit and then reads what it wrote.

use super::{next_version, Stored};
use crate::postgres::Postgres;
use crate::StoreError;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// The schema, as migrations (append only).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE configuration (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        document BYTEA,
        -- The configuration's version: a Lamport clock on epoch milliseconds.
        version BIGINT NOT NULL
    );
    INSERT INTO configuration (id, document, version) VALUES (1, NULL, 0);
"];

/// The channel changes are announced on. Channels are per database, not per schema: a
/// listener may hear of another schema's change, which costs it one version read.
const CHANNEL: &str = "tocsin_configuration";
/// How long the listener waits before connecting again, at first and at most.
const RECONNECT: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

pub(super) struct PostgresConfig {
    database: Postgres,
}

impl PostgresConfig {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("configuration", MIGRATIONS).await?;
        Ok(PostgresConfig {
            database: database.clone(),
        })
    }

    pub(super) async fn read(&self) -> Result<Option<Stored>, StoreError> {
        let client = self.database.client().await?;
        let row = client
            .query_one(
                "SELECT document, version FROM configuration WHERE id = 1",
                &[],
            )
            .await?;
        Ok(stored(&row))
    }

    pub(super) async fn version(&self) -> Result<i64, StoreError> {
        let client = self.database.client().await?;
        let statement = client
            .prepare_cached("SELECT version FROM configuration WHERE id = 1")
            .await?;
        Ok(client.query_one(&statement, &[]).await?.get(0))
    }

    pub(super) async fn change<T, E, F, Fut>(&self, apply: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(Option<Stored>, i64) -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, T), E>>,
    {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await.map_err(StoreError::from)?;
        let row = transaction
            .query_one(
                "SELECT document, version FROM configuration WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(StoreError::from)?;
        let version = next_version(row.get(1));
        // A failure here drops the transaction, which rolls it back.
        let (document, outcome) = apply(stored(&row), version).await?;
        let commit = async {
            transaction
                .execute(
                    "UPDATE configuration SET document = $1, version = $2 WHERE id = 1",
                    &[&document, &version],
                )
                .await?;
            // Sent to the listeners when the transaction commits, and only then.
            transaction
                .execute(
                    "SELECT pg_notify($1, $2)",
                    &[&CHANNEL, &version.to_string()],
                )
                .await?;
            transaction.commit().await
        };
        commit.await.map_err(StoreError::from)?;
        Ok(outcome)
    }

    pub(super) async fn keep(&self, stored: Stored) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let written = client
            .execute(
                "UPDATE configuration SET document = $1, version = $2 \
                 WHERE id = 1 AND version <= $2",
                &[&stored.document, &stored.version],
            )
            .await?;
        Ok(written > 0)
    }

    /// Starts the listener: a task on a connection of its own that `LISTEN`s, sends a message
    /// for each announcement and each time it has (re)connected, and reconnects with backoff
    /// when the connection fails, until the receiver is dropped.
    pub(super) fn listen(&self) -> mpsc::Receiver<()> {
        // One message waiting is enough: it means "read the version", however many came.
        let (announce, announcements) = mpsc::channel(1);
        let database = self.database.clone();
        tokio::spawn(async move {
            let mut wait = RECONNECT.0;
            loop {
                tokio::select! {
                    _ = announce.closed() => return,
                    ended = listen_once(&database, &announce, &mut wait) => {
                        if let Err(e) = ended {
                            tracing::warn!(error = %e, "the configuration listener lost PostgreSQL; reconnecting");
                        }
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECONNECT.1);
            }
        });
        announcements
    }
}

/// One session of the listener, until its connection ends.
async fn listen_once(
    database: &Postgres,
    announce: &mpsc::Sender<()>,
    wait: &mut Duration,
) -> Result<(), StoreError> {
    let (client, mut connection) = database.dedicated().await?;
    let (heard, mut notifications) = mpsc::unbounded_channel();
    // The connection half yields the notifications, and must be polled for the client's own
    // statements to go through.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if heard.send(()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    *wait = RECONNECT.0;
    // Listening from here on; what changed before is found by reading the version.
    let _ = announce.try_send(());
    while notifications.recv().await.is_some() {
        let _ = announce.try_send(());
    }
    drop(client);
    match driver.await {
        Ok(ended) => Ok(ended?),
        Err(e) => Err(StoreError::Invalid(format!(
            "the listener's connection task: {e}"
        ))),
    }
}

fn stored(row: &tokio_postgres::Row) -> Option<Stored> {
    let document: Option<Vec<u8>> = row.get(0);
    document.map(|document| Stored {
        document,
        version: row.get(1),
    })
}
