//! The outcome records behind the consumer API: one row per (event, action, status), in its
//! own SQLite file.
//!
//! Writes are idempotent (a redelivered job finds its row already there), so at-least-once
//! delivery still stores each outcome exactly once. The filterable fields are columns with
//! indexes; the event itself is kept as its JSON, exactly as it was accepted.

use model::{
    ConsumerEvent, ConsumerEventMetadata, DeliveryJob, DeliveryStatus, FailureReason, ResourceEvent,
};
use rusqlite::types::Value;
use std::path::Path;
use storage::{CommitObserver, Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        cache_time INTEGER NOT NULL,
        event_time INTEGER NOT NULL,
        severity TEXT NOT NULL,
        category TEXT NOT NULL,
        event_type TEXT NOT NULL,
        resource_name TEXT NOT NULL,
        correlation_id TEXT,
        source_event_id TEXT,
        event TEXT NOT NULL,
        failure_reasons TEXT,
        UNIQUE (event_id, action, status)
    );
    CREATE INDEX records_by_time ON records (status, cache_time);
    CREATE INDEX records_by_type ON records (status, event_type, cache_time);
    CREATE INDEX records_by_resource ON records (status, resource_name, cache_time);
    CREATE INDEX records_by_severity ON records (status, severity, cache_time);
    CREATE INDEX records_by_correlation ON records (status, correlation_id)
        WHERE correlation_id IS NOT NULL;
    CREATE INDEX records_by_source_event ON records (status, source_event_id)
        WHERE source_event_id IS NOT NULL;
",
    "
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        action TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        code INTEGER,
        reason TEXT
    );
    CREATE INDEX attempts_by_event ON attempts (event_id, id);
    CREATE INDEX attempts_by_time ON attempts (started_at_ms);
    CREATE INDEX records_by_action ON records (status, action, cache_time);
",
];

/// How long the records writer waits for company before a commit; see [`RecordStore::open`].
const RECORDS_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

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
}

impl rusqlite::ToSql for AttemptOutcome {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for AttemptOutcome {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match value.as_str()? {
            "delivered" => Ok(AttemptOutcome::Delivered),
            "retrying" => Ok(AttemptOutcome::Retrying),
            "failed" => Ok(AttemptOutcome::Failed),
            other => Err(rusqlite::types::FromSqlError::Other(
                format!("`{other}` is not an attempt outcome").into(),
            )),
        }
    }
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub action: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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

#[derive(Clone)]
pub struct RecordStore {
    db: Database,
    region: std::sync::Arc<Region>,
}

impl RecordStore {
    pub fn open(
        path: &Path,
        region: Region,
        observer: Option<CommitObserver>,
    ) -> Result<Self, StorageError> {
        // Records can be re-derived by redelivery until their job is acked, and the ack comes
        // after the commit; losing the OS buffer in a power cut is the only window.
        // Every job writes here, and a record touches eight indexes: lingering a moment per
        // commit cut the WAL bytes per record several times over under load (README,
        // Performance). Nothing on the delivery path waits for it.
        let db = Database::open_lingering(
            path,
            MIGRATIONS,
            Durability::Normal,
            observer,
            RECORDS_LINGER,
        )?;
        Ok(RecordStore {
            db,
            region: std::sync::Arc::new(region),
        })
    }

    /// Records the outcome of `job`; a second call for the same outcome changes nothing.
    pub async fn record(
        &self,
        job: &DeliveryJob,
        status: DeliveryStatus,
        failure_reasons: &[FailureReason],
    ) -> Result<(), StorageError> {
        let event = &job.event;
        let row = (
            event.id.clone(),
            job.action.clone(),
            status.as_str(),
            clock::now_epoch_seconds(),
            event.event_timestamp,
            event.severity.as_str(),
            event.category.as_str(),
            event.event_type.clone(),
            event.resource.resource_name.clone(),
            event.correlation_id().map(str::to_owned),
            event.source_event_id().map(str::to_owned),
            serde_json::to_string(event).expect("events always serialize"),
            (!failure_reasons.is_empty())
                .then(|| serde_json::to_string(failure_reasons).expect("reasons serialize")),
        );
        self.db
            .execute(
                "INSERT OR IGNORE INTO records (event_id, action, status, cache_time, \
                 event_time, severity, category, event_type, resource_name, correlation_id, \
                 source_event_id, event, failure_reasons) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                row,
            )
            .await
            .map(drop)
    }

    /// Records one attempt of `event_id`.
    pub async fn record_attempt(
        &self,
        event_id: &str,
        attempt: Attempt,
    ) -> Result<(), StorageError> {
        self.db
            .execute(
                "INSERT INTO attempts (event_id, action, attempt, started_at_ms, duration_ms, \
                 outcome, code, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                (
                    event_id.to_owned(),
                    attempt.action,
                    attempt.attempt,
                    attempt.started_at_ms,
                    attempt.duration_ms,
                    attempt.outcome,
                    attempt.code,
                    attempt.reason,
                ),
            )
            .await
            .map(drop)
    }

    /// Whether an attempt delivered `event_id` to `action`.
    pub async fn delivered(&self, event_id: &str, action: &str) -> Result<bool, StorageError> {
        let (event_id, action) = (event_id.to_owned(), action.to_owned());
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT 1 FROM attempts WHERE event_id = ?1 AND action = ?2 \
                     AND outcome = 'delivered'",
                )?
                .exists((&event_id, &action))
            })
            .await
    }

    /// Every recorded attempt of `event_id`, in order.
    pub async fn attempts(&self, event_id: &str) -> Result<Vec<Attempt>, StorageError> {
        let event_id = event_id.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT action, attempt, started_at_ms, duration_ms, outcome, code, reason \
                     FROM attempts WHERE event_id = ?1 ORDER BY id",
                )?
                .query_map([event_id], |r| {
                    Ok(Attempt {
                        action: r.get(0)?,
                        attempt: r.get(1)?,
                        started_at_ms: r.get(2)?,
                        duration_ms: r.get(3)?,
                        outcome: r.get(4)?,
                        code: r.get(5)?,
                        reason: r.get(6)?,
                    })
                })?
                .collect()
            })
            .await
    }

    /// Undelivered records matching `selection`, oldest first.
    pub async fn undelivered(
        &self,
        selection: Selection,
    ) -> Result<Vec<Undelivered>, StorageError> {
        let rows: Vec<(i64, String, String)> = self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, event, action FROM records WHERE status = 'UNDELIVERED' \
                     AND (?1 IS NULL OR event_id = ?1) AND (?2 IS NULL OR action = ?2) \
                     AND (?3 IS NULL OR cache_time >= ?3) ORDER BY id LIMIT ?4",
                )?
                .query_map(
                    (
                        selection.event_id,
                        selection.action,
                        selection.since,
                        selection.limit,
                    ),
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect()
            })
            .await?;
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
    pub async fn forget(&self, record_ids: Vec<i64>) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                let mut delete = c.prepare_cached("DELETE FROM records WHERE id = ?1")?;
                for id in &record_ids {
                    delete.execute([id])?;
                }
                Ok(())
            })
            .await
    }

    /// Deletes up to `batch` records stored before `cutoff` (epoch seconds) and up to `batch`
    /// attempts made before it; returns how many rows went. Small batches keep each write
    /// short, so the API never waits long behind retention.
    pub async fn purge_before(&self, cutoff: i64, batch: u32) -> Result<usize, StorageError> {
        self.db
            .write(move |c| {
                let records = c.execute(
                    "DELETE FROM records WHERE id IN \
                     (SELECT id FROM records WHERE cache_time < ?1 ORDER BY cache_time LIMIT ?2)",
                    (cutoff, batch),
                )?;
                let attempts = c.execute(
                    "DELETE FROM attempts WHERE id IN \
                     (SELECT id FROM attempts WHERE started_at_ms < ?1 ORDER BY started_at_ms LIMIT ?2)",
                    (cutoff * 1000, batch),
                )?;
                Ok(records + attempts)
            })
            .await
    }

    /// Records of `status` matching `query`, newest first.
    pub async fn query(
        &self,
        status: DeliveryStatus,
        query: RecordQuery,
    ) -> Result<RecordPage, StorageError> {
        let mut filter = String::from("status = ?");
        let mut params = vec![Value::from(status.as_str().to_owned())];
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
                filter.push_str(&format!(" AND {column} = ?"));
                params.push(Value::from(value.clone()));
            }
        }
        for (column, interval) in [
            ("cache_time", query.cache_time),
            ("event_time", query.creation_time),
        ] {
            if let Some((after, before)) = interval {
                filter.push_str(&format!(" AND {column} > ? AND {column} < ?"));
                params.push(Value::from(after));
                params.push(Value::from(before));
            }
        }
        let count_sql = format!("SELECT COUNT(*) FROM records WHERE {filter}");
        let page_sql = format!(
            "SELECT action, cache_time, event, failure_reasons FROM records WHERE {filter} \
             ORDER BY cache_time DESC, id DESC LIMIT ? OFFSET ?"
        );
        let limit = query.page_size.min(i64::MAX as u64) as i64;
        let offset = query
            .page
            .saturating_mul(query.page_size)
            .min(i64::MAX as u64) as i64;
        let rows = self
            .db
            .read(move |c| {
                let total: u64 =
                    c.query_row(&count_sql, rusqlite::params_from_iter(&params), |r| {
                        r.get(0)
                    })?;
                params.push(Value::from(limit));
                params.push(Value::from(offset));
                let mut select = c.prepare_cached(&page_sql)?;
                let rows = select
                    .query_map(rusqlite::params_from_iter(&params), |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((total, rows))
            })
            .await?;
        let (total, rows) = rows;
        let events = rows
            .into_iter()
            .filter_map(|(action, cache_time, event, reasons)| {
                let event: ResourceEvent = serde_json::from_str(&event)
                    .map_err(|e| tracing::error!(error = %e, "a stored event does not parse"))
                    .ok()?;
                let failure_reasons = query.include_failure_reasons.then(|| {
                    reasons
                        .and_then(|r| serde_json::from_str(&r).ok())
                        .unwrap_or_default()
                });
                let metadata = ConsumerEventMetadata {
                    cache_time,
                    affected_action_id: action,
                    delivery_status: status,
                    failure_reasons,
                };
                Some(ConsumerEvent::new(
                    event,
                    self.region.name.clone(),
                    self.region.kind.clone(),
                    metadata,
                ))
            })
            .collect();
        Ok(RecordPage { total, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, event_type: &str, timestamp: i64, action: &str) -> DeliveryJob {
        serde_json::from_value(serde_json::json!({
            "event": {
                "id": id, "eventType": event_type, "severity": "ERROR", "category": "ALERT",
                "subject": "s", "body": "b", "eventTimestamp": timestamp,
                "resource": {"resourceName": "db-1", "resourceType": "database"},
                "tags": {"ans:correlationId": "c1", "ans:sourceEventId": format!("src-{id}")}
            },
            "acceptedAtMs": 0,
            "action": action
        }))
        .unwrap()
    }

    fn all() -> RecordQuery {
        RecordQuery {
            page_size: 100,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn records_are_idempotent_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let region = Region {
            name: "local".into(),
            kind: "tocsin".into(),
        };
        let store = RecordStore::open(&dir.path().join("records.db"), region, None).unwrap();
        let reason = FailureReason {
            code: 500,
            reason: "boom".into(),
            timestamp: 7,
        };
        let matched = (DeliveryStatus::Matched, &[][..]);
        let undelivered = (DeliveryStatus::Undelivered, std::slice::from_ref(&reason));
        // e1 on `store` twice: the repeat must change nothing.
        for (id, event_type, time, action, (status, reasons)) in [
            ("e1", "CPU", 100, "store", matched),
            ("e1", "CPU", 100, "store", matched),
            ("e1", "CPU", 100, "other", matched),
            ("e2", "Disk", 200, "store", matched),
            ("e3", "CPU", 300, "hook", undelivered),
        ] {
            let job = job(id, event_type, time, action);
            store.record(&job, status, reasons).await.unwrap();
        }

        let matched = store.query(DeliveryStatus::Matched, all()).await.unwrap();
        assert_eq!(matched.total, 3, "the repeated record was stored once");
        let by_id = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    event_id: Some("e1".into()),
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!(by_id.total, 2, "one record per action");
        let by_type = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    event_type: Some("Disk".into()),
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!(by_type.events[0].id, "e2");
        // Exclusive bounds: (100;200) holds neither 100 nor 200.
        let between = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    creation_time: Some((100, 200)),
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!(between.total, 0);
        let between = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    creation_time: Some((99, 201)),
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!(between.total, 3);
        let by_source = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    source_event_id: Some("src-e2".into()),
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!(by_source.total, 1);
        let paged = store
            .query(
                DeliveryStatus::Matched,
                RecordQuery {
                    page: 1,
                    page_size: 2,
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!((paged.total, paged.events.len()), (3, 1));

        let undelivered = store
            .query(DeliveryStatus::Undelivered, all())
            .await
            .unwrap();
        assert_eq!(
            undelivered.events[0].metadata.failure_reasons, None,
            "only on request"
        );
        let with_reasons = store
            .query(
                DeliveryStatus::Undelivered,
                RecordQuery {
                    include_failure_reasons: true,
                    ..all()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            with_reasons.events[0].metadata.failure_reasons,
            Some(vec![reason])
        );
        assert_eq!(with_reasons.events[0].metadata.affected_action_id, "hook");
        assert_eq!(with_reasons.events[0].region, "local");
    }
}
