//! The durable half of the ordering lanes (`delivery::lanes` is the whole of them): the lanes
//! whose head waits for a retry, and the jobs *parked* behind each, on SQLite ([`sqlite`],
//! `lanes.db` in the data directory, this process's alone) or PostgreSQL ([`postgres`], shared
//! by every process of the broker, so that a lane a process held is found by whichever process
//! takes its deliveries over).
//!
//! A lane is (action, alert key); its *head* is the one job allowed to run. Data flows through
//! four calls: [`Lanes::claim`] sorts jobs into their lanes in arrival order (run, parked, or a
//! stale older copy of the head); [`Lanes::waiting`] notes which copy of the head waits on the
//! queue; [`Lanes::release`] ends the head and promotes the next parked job, which the caller
//! puts back on the queue and then [`Lanes::forget`]s. A crash between those two leaves a
//! *stranded* head, found by [`Lanes::stranded_heads`]. Nothing here is written while every
//! delivery succeeds: only a lane whose head has to wait becomes durable.

mod postgres;
mod sqlite;

#[cfg(test)]
mod tests;

use crate::{Location, StoreError};
use bytes::Bytes;

/// Where a job stands in its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It is the head: run it.
    Run,
    /// It waits behind the head.
    Parked,
    /// An older copy of the head, whose newer copy waits on the queue for its retry (this one
    /// came back after a crash): drop it, the newer one carries on.
    Stale,
}

/// A job that is in a lane, as the lanes know it.
#[derive(Debug, Clone)]
pub struct LaneJob {
    pub action: String,
    pub key: String,
    /// Identifies the job across redeliveries: event id and action.
    pub id: String,
    /// Attempts the job had made when this copy of it was queued.
    pub attempt: u32,
    pub payload: Bytes,
}

/// The job that became its lane's head, to be put back on the queue; then [`Lanes::forget`].
#[derive(Debug, Clone)]
pub struct Promoted {
    pub seq: i64,
    pub payload: Bytes,
}

/// A lane: (action, alert key).
pub type Lane = (String, String);

/// Where `job` stands in a lane whose head is `head`, the head's copy that waits for its retry
/// having made `waiting` attempts.
fn claim_behind(head: &str, waiting: Option<u32>, job: &LaneJob) -> Claim {
    if head != job.id {
        return Claim::Parked;
    }
    match waiting {
        Some(waiting) if job.attempt < waiting => Claim::Stale,
        // The head itself, back from a retry delay or redelivered.
        _ => Claim::Run,
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteLanes),
    Postgres(postgres::PostgresLanes),
}

/// The durable lanes, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct Lanes {
    backend: Backend,
}

impl Lanes {
    /// The lanes where the state lives: `lanes.db` in the data directory, or the shared
    /// database.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let backend = match location {
            Location::Sqlite(dir) => {
                Backend::Sqlite(sqlite::SqliteLanes::open(&dir.join("lanes.db"))?)
            }
            Location::Postgres(database) => {
                Backend::Postgres(postgres::PostgresLanes::open(database).await?)
            }
        };
        Ok(Lanes { backend })
    }

    /// Whether other processes change these lanes too (PostgreSQL): then what this process
    /// remembers of them may be out of date, and a lane must be looked up before a job of
    /// its key runs ([`Lanes::durable_among`]).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Claims lanes for `jobs` in their arrival order, in one transaction.
    pub async fn claim(&self, jobs: Vec<LaneJob>) -> Result<Vec<Claim>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.claim(jobs).await?),
            Backend::Postgres(p) => p.claim(jobs).await,
        }
    }

    /// The head `job_id` of (`action`, `key`) waits on the queue for its retry, as a copy that
    /// had made `attempt` attempts: older copies of it are stale from now on.
    pub async fn waiting(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.waiting(action, key, job_id, attempt).await?),
            Backend::Postgres(p) => p.waiting(action, key, job_id, attempt).await,
        }
    }

    /// The head `job_id` of (`action`, `key`) is done. Returns the job that takes its place,
    /// if one was waiting.
    pub async fn release(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
    ) -> Result<Option<Promoted>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.release(action, key, job_id).await?),
            Backend::Postgres(p) => p.release(action, key, job_id).await,
        }
    }

    /// The promoted job is back on the queue: its parked copy can go.
    pub async fn forget(&self, seq: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.forget(seq).await?),
            Backend::Postgres(p) => p.forget(seq).await,
        }
    }

    /// Heads that were promoted but maybe never put back on the queue (a crash in between),
    /// to be published again. On PostgreSQL only those promoted before `promoted_before_ms`
    /// (epoch ms): a later one may be on its way to the queue from another process right now.
    /// SQLite's file is this process's alone and is asked only at start, so it has them all.
    pub async fn stranded_heads(
        &self,
        promoted_before_ms: i64,
    ) -> Result<Vec<Promoted>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.stranded_heads().await?),
            Backend::Postgres(p) => p.stranded_heads(promoted_before_ms).await,
        }
    }

    /// Every lane that is durable now (its head waits for a retry, or was promoted).
    pub async fn durable_lanes(&self) -> Result<Vec<Lane>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.durable_lanes().await?),
            Backend::Postgres(p) => p.durable_lanes().await,
        }
    }

    /// Which of `lanes` are durable now, in one read.
    pub async fn durable_among(&self, lanes: Vec<Lane>) -> Result<Vec<Lane>, StoreError> {
        if lanes.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.durable_among(lanes).await?),
            Backend::Postgres(p) => p.durable_among(lanes).await,
        }
    }
}
