//! What Tocsin keeps, in one place, on one of two backends chosen in `[store] backend`:
//! SQLite files in the data directory (the default: nothing to install, one process) or one
//! PostgreSQL database that every process of a broker shares.
//!
//! Each concern is a module with one narrow interface and its two implementations side by side
//! (`sqlite.rs`, `postgres.rs`); the pipeline uses the interface and never knows the backend:
//! - [`alerts`]: each alert's state and timeline, behind the alerts API;
//! - [`audit`]: who did what to which alert, through what — and which clicks and links were
//!   used, so that each acts once;
//! - [`config`]: the configuration document (sealed by its owner) and its version, changed
//!   one change at a time across every process;
//! - [`records`]: the matched and undelivered records and the delivery attempts, behind the
//!   consumer API, the attempts API and redelivery;
//! - [`links`]: what the stateful channels created for each alert (B2C incidents, ServiceNow
//!   records, Slack threads), with a per-key lock that holds across processes on PostgreSQL;
//! - [`lanes`]: the durable half of the ordering lanes — lanes whose head waits for a retry
//!   and the jobs parked behind it — so that per-key order holds across processes;
//! - [`dedupe`]: windows of what was already published — OCI messages, and the producer APIs'
//!   `Idempotency-Key` requests (with their first answer) and Alertmanager alerts;
//! - [`groups`]: the delivery jobs held back to go out together as one digest (grouping and
//!   storm control), durable until the digest is sent;
//! - [`silences`]: who silenced which events, from when until when, and which releases are done;
//! - [`subscriptions`]: the OCI subscriptions' confirmation outcomes.
//!
//! [`postgres`] holds what every PostgreSQL module shares: the connection pool and the
//! versioned migrations, applied at start under an advisory lock so that processes starting
//! together apply each once.

pub mod alerts;
pub mod audit;
mod availability;
pub mod config;
pub mod dedupe;
mod error;
pub mod groups;
mod key_locks;
pub mod lanes;
pub mod links;
pub mod postgres;
pub mod records;
pub mod silences;
pub mod subscriptions;

pub use availability::Availability;
pub use error::StoreError;

use std::path::{Path, PathBuf};

/// Where the state lives, opened once at start and handed to every module's `open`: the data
/// directory (each module its own SQLite file in it) or the shared PostgreSQL database.
#[derive(Clone)]
pub enum Location {
    /// The data directory of this process.
    Sqlite(PathBuf),
    /// The database every process of the broker shares.
    Postgres(postgres::Postgres),
}

impl Location {
    /// The data directory, or the database at `url` (connected once, so a wrong URL or
    /// password stops the start with its reason).
    pub async fn open(backend: Backend, data_dir: &Path, url: &str) -> Result<Self, StoreError> {
        Ok(match backend {
            Backend::Sqlite => Location::Sqlite(data_dir.to_owned()),
            Backend::Postgres => Location::Postgres(postgres::Postgres::connect(url).await?),
        })
    }
}

/// The SQL `LIMIT` and `OFFSET` of page `page` of `page_size` rows, saturating at `i64::MAX`.
pub(crate) fn limit_and_offset(page: u64, page_size: u64) -> (i64, i64) {
    let limit = page_size.min(i64::MAX as u64) as i64;
    let offset = page.saturating_mul(page_size).min(i64::MAX as u64) as i64;
    (limit, offset)
}

/// Which backend keeps the state (`[store] backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite files in the data directory.
    #[default]
    Sqlite,
    /// One PostgreSQL database, `[store] url`.
    Postgres,
}
