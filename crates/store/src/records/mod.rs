//! The outcome records behind the consumer API — one row per (event, action, status) — and the
//! delivery attempts behind the attempts API, on SQLite ([`sqlite`], `records.db` in the data
//! directory) or PostgreSQL ([`postgres`], shared by every process).
//!
//! Writes are idempotent (a redelivered job finds its row already there), so at-least-once
//! delivery still stores each outcome exactly once. The filterable fields are columns with
//! indexes; the event itself is kept as its JSON, exactly as it was accepted. Both backends
//! answer a query with the same filter ([`Filter`]) and turn rows into answers the same way
//! ([`Row::into_consumer_event`]).
//!
//! An attempt made by a digest names it ([`Digested`]: its group, its size, whether it was a
//! repeat) in three nullable columns of the attempt's row, written with it in the same insert
//! and left NULL by an event sent on its own; the alert timeline reads them back with the
//! attempts. A repeat is recorded as an attempt of each event it named but never counts as
//! delivering it ([`RecordStore::delivered`]), and touches no record: the consumer API answers
//! as before.

mod postgres;
mod sqlite;

use crate::StoreError;
use model::{
    ConsumerEvent, ConsumerEventMetadata, DeliveryJob, DeliveryStatus, FailureReason, ResourceEvent,
};
use std::path::Path;
use std::sync::Arc;
use storage::CommitObserver;

/// How an attempt ended, as the attempts API writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed, and will be tried again.
    Retrying,
    /// Failed, and given up: the event is undelivered (or handed to the fallback).
    Failed,
}

impl AttemptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            AttemptOutcome::Delivered,
            AttemptOutcome::Retrying,
            AttemptOutcome::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub action: String,
    /// 1 for the first attempt (a repeat, sent once, is its own first and only attempt).
    pub attempt: u32,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The digest this attempt sent the event in (`None`: the event went on its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digested>,
}

/// What an attempt made by a digest says of that digest: one row per member event names the
/// same group and size, so each member's timeline shows what it went out with.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Digested {
    /// The group as the flusher knows it: the action's `groupBy` values as a JSON object
    /// (empty for an action's one group, and for a storm-control backlog).
    pub group: String,
    /// How many events the digest named.
    pub events: u32,
    /// The digest repeated firing alerts (`repeatIntervalSeconds`): it is no attempt of the
    /// event's delivery, whose records and attempts stay as they ended.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repeat: bool,
}

impl Digested {
    /// The digest of the three nullable columns an attempt keeps it in (a group is written
    /// with its size and repeat flag, or none of them is).
    fn of_columns(
        group: Option<String>,
        events: Option<i64>,
        repeat: Option<bool>,
    ) -> Option<Self> {
        Some(Digested {
            group: group?,
            events: events.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            repeat: repeat.unwrap_or(false),
        })
    }
}

/// An undelivered record picked for redelivery.
#[derive(Debug, Clone)]
pub struct Undelivered {
    pub record_id: i64,
    pub event: ResourceEvent,
    pub action: String,
}

/// Which undelivered records to redeliver.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub event_id: Option<String>,
    pub action: Option<String>,
    /// Stored at or after this time (epoch seconds).
    pub since: Option<i64>,
    pub limit: u32,
}

/// What the consumer API asks for. Intervals are exclusive on both ends, in epoch seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordQuery {
    pub event_id: Option<String>,
    pub severity: Option<String>,
    pub category: Option<String>,
    pub event_type: Option<String>,
    pub resource_name: Option<String>,
    pub correlation_id: Option<String>,
    pub source_event_id: Option<String>,
    pub cache_time: Option<(i64, i64)>,
    pub creation_time: Option<(i64, i64)>,
    pub include_failure_reasons: bool,
    pub page: u64,
    pub page_size: u64,
}

impl RecordQuery {
    fn limit_and_offset(&self) -> (i64, i64) {
        crate::limit_and_offset(self.page, self.page_size)
    }
}

/// One page of records and how many there are in all.
#[derive(Debug)]
pub struct RecordPage {
    pub total: u64,
    pub events: Vec<ConsumerEvent>,
}

/// Where this installation says events were processed (`region`, `regionType` in answers).
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub kind: String,
}

/// A value a query compares a column with.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Integer(i64),
}

/// The `WHERE` clause of a consumer query and its values, with placeholders as the backend
/// writes them (`?` or `$1`).
struct Filter {
    clause: String,
    params: Vec<Param>,
}

impl Filter {
    fn of(status: DeliveryStatus, query: &RecordQuery, placeholder: fn(usize) -> String) -> Self {
        let mut filter = Filter {
            clause: String::new(),
            params: Vec::new(),
        };
        filter.push(
            "status",
            "=",
            Param::Text(status.as_str().to_owned()),
            placeholder,
        );
        let equal = [
            ("event_id", &query.event_id),
            ("severity", &query.severity),
            ("category", &query.category),
            ("event_type", &query.event_type),
            ("resource_name", &query.resource_name),
            ("correlation_id", &query.correlation_id),
            ("source_event_id", &query.source_event_id),
        ];
        for (column, value) in equal {
            if let Some(value) = value {
                filter.push(column, "=", Param::Text(value.clone()), placeholder);
            }
        }
        for (column, interval) in [
            ("cache_time", query.cache_time),
            ("event_time", query.creation_time),
        ] {
            if let Some((after, before)) = interval {
                filter.push(column, ">", Param::Integer(after), placeholder);
                filter.push(column, "<", Param::Integer(before), placeholder);
            }
        }
        filter
    }

    fn push(
        &mut self,
        column: &str,
        operator: &str,
        value: Param,
        placeholder: fn(usize) -> String,
    ) {
        if !self.clause.is_empty() {
            self.clause.push_str(" AND ");
        }
        self.params.push(value);
        let mark = placeholder(self.params.len());
        self.clause.push_str(&format!("{column} {operator} {mark}"));
    }
}

/// A record as both backends read it for the consumer API.
struct Row {
    action: String,
    cache_time: i64,
    event: String,
    failure_reasons: Option<String>,
}

impl Row {
    fn into_consumer_event(
        self,
        status: DeliveryStatus,
        include_failure_reasons: bool,
        region: &Region,
    ) -> Option<ConsumerEvent> {
        let event: ResourceEvent = serde_json::from_str(&self.event)
            .map_err(|e| tracing::error!(error = %e, "a stored event does not parse"))
            .ok()?;
        let failure_reasons = include_failure_reasons.then(|| {
            self.failure_reasons
                .and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or_default()
        });
        let metadata = ConsumerEventMetadata {
            cache_time: self.cache_time,
            affected_action_id: self.action,
            delivery_status: status,
            failure_reasons,
        };
        Some(ConsumerEvent::new(
            event,
            region.name.clone(),
            region.kind.clone(),
            metadata,
        ))
    }
}

/// The columns of a new record, as both backends write them.
struct NewRecord {
    event_id: String,
    action: String,
    status: &'static str,
    cache_time: i64,
    event_time: i64,
    severity: &'static str,
    category: &'static str,
    event_type: String,
    resource_name: String,
    correlation_id: Option<String>,
    source_event_id: Option<String>,
    event: String,
    failure_reasons: Option<String>,
}

impl NewRecord {
    fn of(job: &DeliveryJob, status: DeliveryStatus, failure_reasons: &[FailureReason]) -> Self {
        let event = &job.event;
        NewRecord {
            event_id: event.id.clone(),
            action: job.action.clone(),
            status: status.as_str(),
            cache_time: clock::now_epoch_seconds(),
            event_time: event.event_timestamp,
            severity: event.severity.as_str(),
            category: event.category.as_str(),
            event_type: event.event_type.clone(),
            resource_name: event.resource.resource_name.clone(),
            correlation_id: event.correlation_id().map(str::to_owned),
            source_event_id: event.source_event_id().map(str::to_owned),
            event: serde_json::to_string(event).expect("events always serialize"),
            failure_reasons: (!failure_reasons.is_empty())
                .then(|| serde_json::to_string(failure_reasons).expect("reasons serialize")),
        }
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteRecords),
    Postgres(postgres::PostgresRecords),
}

/// The records, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct RecordStore {
    backend: Backend,
    region: Arc<Region>,
}

impl RecordStore {
    /// The records in the SQLite file at `path`.
    pub fn open(
        path: &Path,
        region: Region,
        observer: Option<CommitObserver>,
    ) -> Result<Self, StoreError> {
        Ok(RecordStore {
            backend: Backend::Sqlite(sqlite::SqliteRecords::open(path, observer)?),
            region: Arc::new(region),
        })
    }

    /// The records in the shared PostgreSQL database (its tables created or migrated first).
    pub async fn on_postgres(
        database: &crate::postgres::Postgres,
        region: Region,
    ) -> Result<Self, StoreError> {
        Ok(RecordStore {
            backend: Backend::Postgres(postgres::PostgresRecords::open(database).await?),
            region: Arc::new(region),
        })
    }

    /// Whether the records' store answers.
    pub fn availability(&self) -> crate::Availability {
        match &self.backend {
            Backend::Sqlite(_) => crate::Availability::always(),
            Backend::Postgres(p) => p.database.availability(),
        }
    }

    /// Records the outcome of `job`; a second call for the same outcome changes nothing.
    pub async fn record(
        &self,
        job: &DeliveryJob,
        status: DeliveryStatus,
        failure_reasons: &[FailureReason],
    ) -> Result<(), StoreError> {
        let record = NewRecord::of(job, status, failure_reasons);
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.record(record).await?),
            Backend::Postgres(p) => p.database.noted(p.record(record).await),
        }
    }

    /// Records one attempt of `event_id`.
    pub async fn record_attempt(&self, event_id: &str, attempt: Attempt) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.record_attempt(event_id, attempt).await?),
            Backend::Postgres(p) => p.database.noted(p.record_attempt(event_id, attempt).await),
        }
    }

    /// Whether an attempt delivered `event_id` to `action` (a repeat is no such attempt).
    pub async fn delivered(&self, event_id: &str, action: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.delivered(event_id, action).await?),
            Backend::Postgres(p) => p.database.noted(p.delivered(event_id, action).await),
        }
    }

    /// Every recorded attempt of `event_id`, in order, repeats included.
    pub async fn attempts(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.attempts(event_id).await?),
            Backend::Postgres(p) => p.database.noted(p.attempts(event_id).await),
        }
    }

    /// The undelivered records `selection` picks, oldest first.
    pub async fn undelivered(&self, selection: Selection) -> Result<Vec<Undelivered>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(s) => s.undelivered(selection).await?,
            Backend::Postgres(p) => p.database.noted(p.undelivered(selection).await)?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(record_id, event, action)| {
                let event = serde_json::from_str(&event).ok()?;
                Some(Undelivered {
                    record_id,
                    event,
                    action,
                })
            })
            .collect())
    }

    /// Removes records (undelivered ones that were sent again).
    pub async fn forget(&self, record_ids: Vec<i64>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.forget(record_ids).await?),
            Backend::Postgres(p) => p.database.noted(p.forget(record_ids).await),
        }
    }

    /// Deletes up to `batch` records stored before `cutoff` (epoch seconds) and up to `batch`
    /// attempts made before it; returns how many rows went. Small batches keep each write
    /// short, so the API never waits long behind retention.
    pub async fn purge_before(&self, cutoff: i64, batch: u32) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.purge_before(cutoff, batch).await?),
            Backend::Postgres(p) => p.database.noted(p.purge_before(cutoff, batch).await),
        }
    }

    /// Records of `status` matching `query`, newest first.
    pub async fn query(
        &self,
        status: DeliveryStatus,
        query: RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        let include = query.include_failure_reasons;
        let (total, rows) = match &self.backend {
            Backend::Sqlite(s) => s.query(status, query).await?,
            Backend::Postgres(p) => p.database.noted(p.query(status, query).await)?,
        };
        let events = rows
            .into_iter()
            .filter_map(|row| row.into_consumer_event(status, include, &self.region))
            .collect();
        Ok(RecordPage { total, events })
    }
}

#[cfg(test)]
mod tests;
