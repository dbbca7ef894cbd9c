//! Groups: the delivery jobs an action holds back to send together as one digest.
//!
//! A job for an action that groups its events (or that storm control holds back) is not
//! attempted at once: the delivery worker adds it here as a *member* of its group — the action
//! and a group key made of the event's `groupBy` values — and only then acks its queue message.
//! Members are keyed by (action, group key, event id), so a redelivered job is not added twice.
//! Each group knows when it is due ([`Timing`]: the first member waits `groupWait`; a member
//! that comes after a flush waits until `groupInterval` after it) and the failures of its
//! digest so far.
//!
//! Flow: [`GroupStore::add`] (one round trip) → a flusher claims due groups for a while
//! ([`GroupStore::claim_due`]: on PostgreSQL `FOR UPDATE SKIP LOCKED`, so that one process of
//! several sends each digest; a claim that lapses — its process died — is claimed again) →
//! it sends the digest and removes the members it named ([`GroupStore::flushed`]), or puts the
//! group off until a token or a retry is due ([`GroupStore::postpone`]). SQLite keeps them in
//! `groups.db` (this process's alone), PostgreSQL in the `delivery_groups`,
//! `delivery_group_members` and `delivery_group_firing` tables every process shares.
//!
//! Repeats (an action's `repeatIntervalSeconds`): a flush may name the alerts its digest said
//! are firing ([`Repeats`]); the group keeps the latest event of each (a resolved one drops its
//! alert) and is due for a *repeat* when its repeat time comes with nothing new — claimed like
//! a digest ([`Claimed::repeat`]), so that one process sends it, and rescheduled with
//! [`GroupStore::repeated`]. A group that keeps firing alerts is not forgotten.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use crate::{Location, StoreError};

/// Which group: the action, and the key its `groupBy` values make (empty: the action's one
/// group).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupId {
    pub action: String,
    pub key: String,
}

/// A job held in a group, as the delivery worker encoded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub event_id: String,
    pub job: String,
}

/// When a group with a new member is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// A new group is due this long after its first member came.
    pub wait_ms: i64,
}

/// A group claimed by a flusher: its oldest members (at most the limit asked for) and what
/// its digest failed with so far (as the caller wrote it; empty at first).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: GroupId,
    pub members: Vec<Member>,
    pub failures: String,
    /// True when nothing new came and the group is due for a repeat: `members` are then the
    /// latest events of the alerts it keeps firing (oldest first), not new members.
    pub repeat: bool,
}

/// An alert a digest said is firing: its key and its latest event, kept for repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub alert_key: String,
    pub member: Member,
}

/// What a digest changes in the alerts its group keeps for repeats.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Repeats {
    /// Alerts that fire, each named once (an alert kept already takes this event instead of
    /// its older one).
    pub firing: Vec<Firing>,
    /// Keys of alerts that resolved: no longer repeated.
    pub resolved: Vec<String>,
    /// When the group's next repeat is due, if it still keeps a firing alert then.
    pub at_ms: i64,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteGroups),
    Postgres(postgres::PostgresGroups),
}

/// The groups, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct GroupStore {
    backend: Backend,
}

impl GroupStore {
    /// `groups.db` in the data directory, or the tables in the shared database.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let backend = match location {
            Location::Sqlite(dir) => {
                Backend::Sqlite(sqlite::SqliteGroups::open(&dir.join("groups.db"))?)
            }
            Location::Postgres(database) => {
                Backend::Postgres(postgres::PostgresGroups::open(database).await?)
            }
        };
        Ok(GroupStore { backend })
    }

    /// Adds `member` to group `id` at `now_ms`: a new group is due after `timing.wait_ms`; a
    /// group that waits already keeps its time; one flushed before is due when its interval
    /// since that flush has passed. Returns false if the member was there already (nothing
    /// changes then).
    pub async fn add(
        &self,
        id: &GroupId,
        member: &Member,
        timing: Timing,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (id, member) = (id.clone(), member.clone());
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.add(id, member, timing, now_ms).await?),
            Backend::Postgres(p) => p.database.noted(p.add(id, member, timing, now_ms).await),
        }
    }

    /// Claims up to `groups` due groups — for a digest, or for a repeat — until
    /// `now_ms + lease_ms`, each with its oldest `members` members (or firing alerts). Groups
    /// flushed long enough ago (idle past their interval) that keep no firing alert are
    /// forgotten on the way, so that a new member starts a new group.
    pub async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        groups: u32,
        members: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let limits = (i64::from(groups), i64::from(members));
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.claim_due(now_ms, lease_ms, limits).await?),
            Backend::Postgres(p) => p
                .database
                .noted(p.claim_due(now_ms, lease_ms, limits).await),
        }
    }

    /// The digest of group `id` went out (or was given up) naming `sent`: they leave the group,
    /// and its claim is released. Members left (added meanwhile, or past the digest's limit)
    /// are due at `next_ms`, and so is any member that comes before then. With `repeats`, the
    /// group keeps its firing alerts for repeats; without, it forgets any it kept.
    pub async fn flushed(
        &self,
        id: &GroupId,
        sent: &[String],
        next_ms: i64,
        repeats: Option<&Repeats>,
    ) -> Result<(), StoreError> {
        let (id, sent, repeats) = (id.clone(), sent.to_vec(), repeats.cloned());
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.flushed(id, sent, next_ms, repeats).await?),
            Backend::Postgres(p) => p
                .database
                .noted(p.flushed(id, sent, next_ms, repeats).await),
        }
    }

    /// Group `id`'s repeat went out (or failed): the next is due at `next_ms`, or, `None`, the
    /// group repeats no more and forgets its firing alerts. Its claim is released.
    pub async fn repeated(&self, id: &GroupId, next_ms: Option<i64>) -> Result<(), StoreError> {
        let id = id.clone();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.repeated(id, next_ms).await?),
            Backend::Postgres(p) => p.database.noted(p.repeated(id, next_ms).await),
        }
    }

    /// Group `id` is due again at `due_ms` (no token yet, or a retry), its digest's failures
    /// so far now `failures`; its claim is released.
    pub async fn postpone(
        &self,
        id: &GroupId,
        due_ms: i64,
        failures: &str,
    ) -> Result<(), StoreError> {
        let (id, failures) = (id.clone(), failures.to_owned());
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.postpone(id, due_ms, failures).await?),
            Backend::Postgres(p) => p.database.noted(p.postpone(id, due_ms, failures).await),
        }
    }

    /// How many jobs the groups hold (for the metrics and for idleness).
    pub async fn held(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.held().await?),
            Backend::Postgres(p) => p.database.noted(p.held().await),
        }
    }
}
