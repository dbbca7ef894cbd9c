//! The audit log: who did what to which alert or silence, through what (`api`, `slack`,
//! `link`, `console`, …), and how it ended — for `GET /tocsin/v1/audit`.
//!
//! Flow: the common act path writes an [`AuditEntry`] *before* it acts
//! ([`AuditLog::record`]); an entry may carry a `dedupe_key` (a Slack click's action ts, a
//! signed link's nonce) that is unique in the log, so the second delivery of one click, or the
//! second use of one link, finds it taken ([`Recorded::Duplicate`]) and does nothing — across
//! processes on PostgreSQL, and after a restart on both backends. An act that then fails gives
//! its entry back ([`AuditLog::forget`]), so that the retry can act.
//! SQLite keeps the log in `audit.db` (full durability), PostgreSQL in the `audit` table.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use crate::{Location, StoreError};

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// A UUID v7: ordered by time.
    pub id: String,
    pub at_ms: i64,
    /// The identity that acted: an API client, a mapped chat user, an email address.
    pub who: String,
    /// Through what: `api`, `slack`, `link`, …
    pub via: String,
    /// What: `acknowledge`, `resolve`, `silence`, `redeliver`, …
    pub action: String,
    /// On what: an alert key, a silence id, an action name.
    pub target: String,
    /// How it ended: `done`, `unchanged`, `refused`, …
    pub outcome: String,
    /// Anything else worth keeping (a comment, the chat user's own id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What makes the act once-only (a click's id, a link's nonce); unique in the log.
    #[serde(skip)]
    pub dedupe_key: Option<String>,
}

/// What recording an entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written.
    New,
    /// An entry with the same `dedupe_key` is on record: this act was done already.
    Duplicate,
}

/// Which entries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub who: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub page: u64,
    pub page_size: u64,
}

/// The same filter on both backends, with `{p}` numbered placeholders: who, target, since.
const FILTER: &str = "({p1} IS NULL OR who = {p1}) AND ({p2} IS NULL OR target = {p2}) \
                      AND ({p3} IS NULL OR at_ms >= {p3})";

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteAudit),
    Postgres(postgres::PostgresAudit),
}

/// The audit log, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    backend: Backend,
}

impl AuditLog {
    /// `audit.db` in the data directory, or the table in the shared database.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let backend = match location {
            Location::Sqlite(dir) => {
                Backend::Sqlite(sqlite::SqliteAudit::open(&dir.join("audit.db"))?)
            }
            Location::Postgres(database) => {
                Backend::Postgres(postgres::PostgresAudit::open(database).await?)
            }
        };
        Ok(AuditLog { backend })
    }

    /// Writes `entry`, unless its `dedupe_key` is on record already.
    pub async fn record(&self, entry: &AuditEntry) -> Result<Recorded, StoreError> {
        let entry = entry.clone();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.record(entry).await?),
            Backend::Postgres(p) => p.database.noted(p.record(entry).await),
        }
    }

    /// Whether an entry holds the once-only key `dedupe_key`: the act it names was done.
    pub async fn taken(&self, dedupe_key: &str) -> Result<bool, StoreError> {
        let key = dedupe_key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.taken(key).await?),
            Backend::Postgres(p) => p.database.noted(p.taken(key).await),
        }
    }

    /// Removes the entry `id`: its act could not be done, so its retry may act.
    pub async fn forget(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.forget(id).await?),
            Backend::Postgres(p) => p.database.noted(p.forget(id).await),
        }
    }

    /// The entries `query` selects, newest first, and how many there are in all.
    pub async fn list(&self, query: AuditQuery) -> Result<(u64, Vec<AuditEntry>), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.list(query).await?),
            Backend::Postgres(p) => p.database.noted(p.list(query).await),
        }
    }
}
