//! The records in SQLite: `records.db` in the data directory, this process's alone.

use super::{
    Attempt, AttemptOutcome, Digested, Filter, NewRecord, Param, RecordQuery, Row, Selection,
};
use model::DeliveryStatus;
use rusqlite::types::Value;
use std::path::Path;
use storage::{CommitObserver, Database, Durability, StorageError};

pub(super) const MIGRATIONS: &[&str] = &[
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
    "
    ALTER TABLE attempts ADD COLUMN digest_group TEXT;
    ALTER TABLE attempts ADD COLUMN digest_events INTEGER;
    ALTER TABLE attempts ADD COLUMN digest_repeat INTEGER;
",
];

/// How long the records writer waits for company before a commit; see [`SqliteRecords::open`].
const RECORDS_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

impl rusqlite::ToSql for AttemptOutcome {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for AttemptOutcome {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        AttemptOutcome::parse(text).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(
                format!("`{text}` is not an attempt outcome").into(),
            )
        })
    }
}

impl From<Param> for Value {
    fn from(param: Param) -> Value {
        match param {
            Param::Text(text) => Value::Text(text),
            Param::Integer(n) => Value::Integer(n),
        }
    }
}

#[derive(Clone)]
pub(super) struct SqliteRecords {
    db: Database,
}

impl SqliteRecords {
    pub(super) fn open(
        path: &Path,
        observer: Option<CommitObserver>,
    ) -> Result<Self, StorageError> {
        // Records can be re-derived by redelivery until their job is acked, and the ack comes
        // after the commit; losing the OS buffer in a power cut is the only window.
        // Every job writes here, and a record touches eight indexes: lingering a moment per
        // commit cut the WAL bytes per record several times over under load
        // (docs/src/performance.md). Nothing on the delivery path waits for it.
        let db = Database::open_lingering(
            path,
            MIGRATIONS,
            Durability::Normal,
            observer,
            RECORDS_LINGER,
        )?;
        Ok(SqliteRecords { db })
    }

    pub(super) async fn record(&self, r: NewRecord) -> Result<(), StorageError> {
        self.db
            .execute(
                "INSERT OR IGNORE INTO records (event_id, action, status, cache_time, \
                 event_time, severity, category, event_type, resource_name, correlation_id, \
                 source_event_id, event, failure_reasons) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                (
                    r.event_id,
                    r.action,
                    r.status,
                    r.cache_time,
                    r.event_time,
                    r.severity,
                    r.category,
                    r.event_type,
                    r.resource_name,
                    r.correlation_id,
                    r.source_event_id,
                    r.event,
                    r.failure_reasons,
                ),
            )
            .await
            .map(drop)
    }

    pub(super) async fn record_attempt(
        &self,
        event_id: &str,
        attempt: Attempt,
    ) -> Result<(), StorageError> {
        let (group, events, repeat) = attempt.digest.map_or((None, None, None), |d| {
            (Some(d.group), Some(d.events), Some(d.repeat))
        });
        self.db
            .execute(
                "INSERT INTO attempts (event_id, action, attempt, started_at_ms, duration_ms, \
                 outcome, code, reason, digest_group, digest_events, digest_repeat) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                (
                    event_id.to_owned(),
                    attempt.action,
                    attempt.attempt,
                    attempt.started_at_ms,
                    attempt.duration_ms,
                    attempt.outcome,
                    attempt.code,
                    attempt.reason,
                    group,
                    events,
                    repeat,
                ),
            )
            .await
            .map(drop)
    }

    pub(super) async fn delivered(
        &self,
        event_id: &str,
        action: &str,
    ) -> Result<bool, StorageError> {
        let (event_id, action) = (event_id.to_owned(), action.to_owned());
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT 1 FROM attempts WHERE event_id = ?1 AND action = ?2 \
                     AND outcome = 'delivered' AND digest_repeat IS NOT 1",
                )?
                .exists((&event_id, &action))
            })
            .await
    }

    pub(super) async fn attempts(&self, event_id: &str) -> Result<Vec<Attempt>, StorageError> {
        let event_id = event_id.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT action, attempt, started_at_ms, duration_ms, outcome, code, reason, \
                     digest_group, digest_events, digest_repeat \
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
                        digest: Digested::of_columns(r.get(7)?, r.get(8)?, r.get(9)?),
                    })
                })?
                .collect()
            })
            .await
    }

    /// (record id, event JSON, action) of the undelivered records `selection` picks.
    pub(super) async fn undelivered(
        &self,
        selection: Selection,
    ) -> Result<Vec<(i64, String, String)>, StorageError> {
        self.db
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
            .await
    }

    pub(super) async fn forget(&self, record_ids: Vec<i64>) -> Result<(), StorageError> {
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

    pub(super) async fn purge_before(
        &self,
        cutoff: i64,
        batch: u32,
    ) -> Result<usize, StorageError> {
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

    /// The total and the page of records of `status` that `query` selects, newest first.
    pub(super) async fn query(
        &self,
        status: DeliveryStatus,
        query: RecordQuery,
    ) -> Result<(u64, Vec<Row>), StorageError> {
        let filter = Filter::of(status, &query, |_| "?".to_owned());
        let count_sql = format!("SELECT COUNT(*) FROM records WHERE {}", filter.clause);
        let page_sql = format!(
            "SELECT action, cache_time, event, failure_reasons FROM records WHERE {} \
             ORDER BY cache_time DESC, id DESC LIMIT ? OFFSET ?",
            filter.clause
        );
        let (limit, offset) = query.limit_and_offset();
        let mut params: Vec<Value> = filter.params.into_iter().map(Value::from).collect();
        self.db
            .read(move |c| {
                let total: u64 =
                    c.query_row(&count_sql, rusqlite::params_from_iter(&params), |r| {
                        r.get(0)
                    })?;
                params.push(Value::from(limit));
                params.push(Value::from(offset));
                let rows = c
                    .prepare_cached(&page_sql)?
                    .query_map(rusqlite::params_from_iter(&params), |r| {
                        Ok(Row {
                            action: r.get(0)?,
                            cache_time: r.get(1)?,
                            event: r.get(2)?,
                            failure_reasons: r.get(3)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((total, rows))
            })
            .await
    }
}
