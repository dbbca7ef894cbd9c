//! The confirmation records in PostgreSQL: one `oci_subscriptions` table every process writes.

use super::{State, SubscriptionRecord};
use crate::postgres::Postgres;
use crate::StoreError;

/// The schema, as migrations (append only).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE oci_subscriptions (
        subscription_id TEXT PRIMARY KEY,
        topic_id TEXT,
        topic_name TEXT,
        host TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL,
        confirmation_url TEXT,
        attempts BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
"];

#[derive(Clone)]
pub(super) struct PostgresSubscriptions {
    pub(super) database: Postgres,
}

impl PostgresSubscriptions {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("oci_subscriptions", MIGRATIONS).await?;
        Ok(PostgresSubscriptions {
            database: database.clone(),
        })
    }

    pub(super) async fn record(
        &self,
        record: SubscriptionRecord,
    ) -> Result<SubscriptionRecord, StoreError> {
        let client = self.database.client().await?;
        let upsert = client
            .prepare_cached(
                "INSERT INTO oci_subscriptions AS s (subscription_id, topic_id, topic_name, \
                   host, state, detail, confirmation_url, attempts, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8) \
                 ON CONFLICT (subscription_id) DO UPDATE SET \
                   topic_id = coalesce(excluded.topic_id, s.topic_id), \
                   topic_name = coalesce(excluded.topic_name, s.topic_name), \
                   host = excluded.host, state = excluded.state, detail = excluded.detail, \
                   confirmation_url = excluded.confirmation_url, attempts = s.attempts + 1, \
                   updated_at = excluded.updated_at \
                 RETURNING attempts",
            )
            .await?;
        let attempts: i64 = client
            .query_one(
                &upsert,
                &[
                    &record.subscription_id,
                    &record.topic_id,
                    &record.topic_name,
                    &record.host,
                    &record.state.as_str(),
                    &record.detail,
                    &record.confirmation_url,
                    &record.updated_at,
                ],
            )
            .await?
            .get(0);
        Ok(SubscriptionRecord {
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            ..record
        })
    }

    pub(super) async fn list(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let client = self.database.client().await?;
        let rows = client
            .query(
                "SELECT subscription_id, topic_id, topic_name, host, state, detail, \
                   confirmation_url, attempts, updated_at \
                 FROM oci_subscriptions ORDER BY updated_at DESC, subscription_id",
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| SubscriptionRecord {
                subscription_id: row.get(0),
                topic_id: row.get(1),
                topic_name: row.get(2),
                host: row.get(3),
                state: State::parse(row.get(4)),
                detail: row.get(5),
                confirmation_url: row.get(6),
                attempts: u32::try_from(row.get::<_, i64>(7)).unwrap_or(u32::MAX),
                updated_at: row.get(8),
            })
            .collect())
    }
}
