//! The OCI subscriptions' confirmation outcomes behind `GET /oci/v1/subscriptions`: one record
//! per subscription, its latest outcome and how many confirmation messages came for it. On
//! SQLite ([`sqlite`]) the `subscriptions` table of the OCI source's file; on PostgreSQL
//! ([`postgres`]) one table every process writes, so that any process lists every
//! confirmation, whichever received it.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

pub use sqlite::SQLITE_SCHEMA;

use crate::StoreError;

/// What became of a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// The URL was fetched and answered 2xx: the subscription is active.
    Confirmed,
    /// Auto-confirmation is off: a human must open the URL.
    Pending,
    /// The URL was not fetched: its host is not allowed.
    Refused,
    /// The fetch failed (network, timeout, non-2xx): OCI may send the confirmation again.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Confirmed => "CONFIRMED",
            State::Pending => "PENDING",
            State::Refused => "REFUSED",
            State::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> State {
        match text {
            "CONFIRMED" => State::Confirmed,
            "PENDING" => State::Pending,
            "REFUSED" => State::Refused,
            _ => State::Failed,
        }
    }
}

/// One subscription's latest confirmation, as `GET /oci/v1/subscriptions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRecord {
    pub subscription_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// The confirmation URL's host.
    pub host: String,
    pub state: State,
    pub detail: String,
    /// Kept only while a human may still need it (PENDING, FAILED).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation_url: Option<String>,
    /// Confirmation messages received for this subscription.
    pub attempts: u32,
    /// Epoch seconds of the latest one.
    pub updated_at: i64,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteSubscriptions),
    Postgres(postgres::PostgresSubscriptions),
}

/// The confirmation records, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct SubscriptionStore {
    backend: Backend,
}

impl SubscriptionStore {
    /// The records in `db`, the OCI source's SQLite file (migrated with [`SQLITE_SCHEMA`]).
    pub fn open(db: storage::Database) -> SubscriptionStore {
        SubscriptionStore {
            backend: Backend::Sqlite(sqlite::SqliteSubscriptions::new(db)),
        }
    }

    /// The records in the shared PostgreSQL database (its table created or migrated first).
    pub async fn on_postgres(
        database: &crate::postgres::Postgres,
    ) -> Result<SubscriptionStore, StoreError> {
        Ok(SubscriptionStore {
            backend: Backend::Postgres(postgres::PostgresSubscriptions::open(database).await?),
        })
    }

    /// Records the latest outcome for `record.subscription_id`, counting the attempt; returns
    /// the record as stored.
    pub async fn record(
        &self,
        record: SubscriptionRecord,
    ) -> Result<SubscriptionRecord, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.record(record).await?),
            Backend::Postgres(p) => p.database.noted(p.record(record).await),
        }
    }

    /// Every subscription, most recently updated first.
    pub async fn list(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.list().await?),
            Backend::Postgres(p) => p.database.noted(p.list().await),
        }
    }
}
