//! The confirmation records in SQLite: the `subscriptions` table of the OCI source's file.

use super::{State, SubscriptionRecord};
use storage::{Database, StorageError};

/// The table, among the OCI source's migrations.
pub const SQLITE_SCHEMA: &str = "CREATE TABLE subscriptions (
       subscription_id TEXT PRIMARY KEY,
       topic_id TEXT,
       topic_name TEXT,
       host TEXT NOT NULL,
       state TEXT NOT NULL,
       detail TEXT NOT NULL,
       confirmation_url TEXT,
       attempts INTEGER NOT NULL,
       updated_at INTEGER NOT NULL
     );";

#[derive(Clone)]
pub(super) struct SqliteSubscriptions {
    db: Database,
}

impl SqliteSubscriptions {
    pub(super) fn new(db: Database) -> SqliteSubscriptions {
        SqliteSubscriptions { db }
    }

    pub(super) async fn record(
        &self,
        record: SubscriptionRecord,
    ) -> Result<SubscriptionRecord, StorageError> {
        self.db
            .write(move |conn| {
                let attempts = conn.query_row(
                    "INSERT INTO subscriptions (subscription_id, topic_id, topic_name, host, \
                       state, detail, confirmation_url, attempts, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8) \
                     ON CONFLICT (subscription_id) DO UPDATE SET \
                       topic_id = coalesce(excluded.topic_id, topic_id), \
                       topic_name = coalesce(excluded.topic_name, topic_name), \
                       host = excluded.host, state = excluded.state, detail = excluded.detail, \
                       confirmation_url = excluded.confirmation_url, attempts = attempts + 1, \
                       updated_at = excluded.updated_at \
                     RETURNING attempts",
                    (
                        &record.subscription_id,
                        &record.topic_id,
                        &record.topic_name,
                        &record.host,
                        record.state.as_str(),
                        &record.detail,
                        &record.confirmation_url,
                        record.updated_at,
                    ),
                    |row| row.get(0),
                )?;
                Ok(SubscriptionRecord { attempts, ..record })
            })
            .await
    }

    pub(super) async fn list(&self) -> Result<Vec<SubscriptionRecord>, StorageError> {
        self.db
            .read(|conn| {
                let mut statement = conn.prepare(
                    "SELECT subscription_id, topic_id, topic_name, host, state, detail, \
                       confirmation_url, attempts, updated_at \
                     FROM subscriptions ORDER BY updated_at DESC, subscription_id",
                )?;
                let rows = statement.query_map([], |row| {
                    Ok(SubscriptionRecord {
                        subscription_id: row.get(0)?,
                        topic_id: row.get(1)?,
                        topic_name: row.get(2)?,
                        host: row.get(3)?,
                        state: State::parse(&row.get::<_, String>(4)?),
                        detail: row.get(5)?,
                        confirmation_url: row.get(6)?,
                        attempts: row.get(7)?,
                        updated_at: row.get(8)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
