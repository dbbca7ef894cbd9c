//! Dedupe windows: the keys of what was already published, so that a copy sent again is not
//! published again — also after a restart. Two windows use it:
//! - the OCI source's: OCI delivers at least once — a message whose answer was lost or late
//!   comes again, for up to two hours by default, and to any process behind the URL. Its keys
//!   are the `X-OCI-NS-MessageId`, and `dedupeKey`+`timestampEpochMillis` or `eventID`.
//! - the producer APIs' (`Idempotency-Key` requests, Alertmanager re-sends): a key's commit
//!   keeps the first [`Answer`] (status, body, and a fingerprint of the request), which a
//!   repeat gets back from [`Claim::Duplicate`] to answer again.
//!
//! Flow: [`DedupeWindow::claim`] decides whether a message is new; a new one gets a
//! [`Ticket`]. The caller publishes, then [`Ticket::commit`]s (or [`Ticket::commit_answer`]s)
//! and runs the future it returns off the answer's path. A ticket dropped without commit — the
//! publish failed — gives the keys back, so the sender's retry is published normally.
//! - [`sqlite`] (one process): the claim locks the keys in this process (two copies arriving at
//!   once are decided one after the other) and looks them up in memory; the commit remembers
//!   them (and the answer) in memory at once and writes them to the `seen` table of the
//!   window's own file.
//! - [`postgres`] (every process): the claim writes a *pending* row per key in one statement,
//!   which only one copy can do; the commit marks the rows published (keeping the answer in
//!   them). Each window has its own table. A copy that meets a
//!   fresh pending row waits for it to be committed (then it is a duplicate) or given back
//!   (then it claims), at most [`PendingClaims::wait`], and else answers [`Claim::InFlight`]
//!   so that OCI sends it again. A pending row older than [`PendingClaims::stale_after`] —
//!   its process died between claim and publish — is void, so the next copy publishes.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

pub use sqlite::{SQLITE_ANSWERS, SQLITE_SCHEMA};

use crate::StoreError;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How claims that are pending (claimed, not yet published) are treated on PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct PendingClaims {
    /// Older than this, a pending claim is void: far above any publish's time.
    pub stale_after: Duration,
    /// How long a copy waits for another copy's pending claim before it answers
    /// [`Claim::InFlight`]; well inside OCI's 5 s timeout.
    pub wait: Duration,
}

impl Default for PendingClaims {
    fn default() -> Self {
        PendingClaims {
            stale_after: Duration::from_secs(30),
            wait: Duration::from_secs(2),
        }
    }
}

/// The PostgreSQL table of the OCI source's window.
pub const OCI_TABLE: &str = "oci_dedupe";
/// The PostgreSQL table of the producer APIs' window.
pub const IDEMPOTENCY_TABLE: &str = "idempotency";

/// The first answer to a message, kept with its keys by [`Ticket::commit_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What identifies the request the answer was to (a hash of it), so that a different
    /// request under the same key can be told apart.
    pub fingerprint: String,
    pub status: u16,
    pub body: Vec<u8>,
}

/// Whether a message was seen within the window.
pub enum Claim {
    /// One of its keys was published: the message is a redelivery; with the answer kept for
    /// it, if its commit kept one.
    Duplicate(Option<Answer>),
    /// None was: publish it, then commit the ticket.
    New(Ticket),
    /// Another copy is being published right now and was not done in time: ask for it again.
    InFlight,
}

/// The right to publish a message; its keys stay claimed until committed or dropped.
pub struct Ticket(Claimed);

enum Claimed {
    Sqlite(sqlite::SqliteTicket),
    Postgres(postgres::PostgresTicket),
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::SqliteWindow>),
    Postgres(postgres::PostgresWindow),
}

/// The window, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct DedupeWindow {
    backend: Backend,
}

impl DedupeWindow {
    /// The window over `db`, the OCI source's SQLite file at `path` (migrated with
    /// [`SQLITE_SCHEMA`]), with the keys it remembers.
    pub fn open(
        db: storage::Database,
        path: &Path,
        window: Duration,
    ) -> Result<DedupeWindow, StoreError> {
        Ok(DedupeWindow {
            backend: Backend::Sqlite(Arc::new(sqlite::SqliteWindow::open(db, path, window)?)),
        })
    }

    /// The window in `table` of the shared PostgreSQL database ([`OCI_TABLE`],
    /// [`IDEMPOTENCY_TABLE`]; created or migrated first).
    pub async fn on_postgres(
        database: &crate::postgres::Postgres,
        table: &'static str,
        window: Duration,
        pending: PendingClaims,
    ) -> Result<DedupeWindow, StoreError> {
        Ok(DedupeWindow {
            backend: Backend::Postgres(
                postgres::PostgresWindow::open(database, table, window, pending).await?,
            ),
        })
    }

    /// Decides whether the message with `keys` is new.
    pub async fn claim(&self, mut keys: Vec<String>) -> Result<Claim, StoreError> {
        // Sorted, so that two claims on overlapping keys take them in one order.
        keys.sort();
        keys.dedup();
        match &self.backend {
            Backend::Sqlite(window) => Ok(sqlite::SqliteWindow::claim(window, keys).await),
            Backend::Postgres(window) => window.database.noted(window.claim(keys).await),
        }
    }
}

impl Ticket {
    /// Marks the keys published (on SQLite, in memory at once) and releases them; the returned
    /// future makes that durable and, now and then, forgets the expired keys.
    pub fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.keep(None)
    }

    /// Like [`commit`](Self::commit), keeping `answer` for the repeats to get back.
    pub fn commit_answer(
        self,
        answer: Answer,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.keep(Some(answer))
    }

    fn keep(
        self,
        answer: Option<Answer>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (sqlite, postgres) = match self.0 {
            Claimed::Sqlite(ticket) => (Some(ticket.commit(answer)), None),
            Claimed::Postgres(ticket) => (None, Some(ticket.commit(answer))),
        };
        async move {
            if let Some(write) = sqlite {
                write.await?;
            }
            if let Some(write) = postgres {
                write.await?;
            }
            Ok(())
        }
    }
}

/// Whether the window should forget its expired keys now: once per `PRUNE_EVERY_MS` per
/// process, decided by whoever commits first after that.
struct Pruning {
    last_ms: std::sync::atomic::AtomicI64,
}

/// How often expired keys are forgotten.
const PRUNE_EVERY_MS: i64 = 60_000;

impl Pruning {
    fn new() -> Pruning {
        Pruning {
            last_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    fn due(&self, now_ms: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last_ms.load(Ordering::Relaxed);
        now_ms - last >= PRUNE_EVERY_MS
            && self
                .last_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
