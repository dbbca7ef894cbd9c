//! The records in PostgreSQL: one set of tables that every process of the broker writes and
//! reads, so that any process's consumer API answers for all of them.

use super::{Attempt, AttemptOutcome, Filter, NewRecord, Param, RecordQuery, Row, Selection};
use crate::postgres::Postgres;
use crate::StoreError;
use model::DeliveryStatus;
use tokio_postgres::types::ToSql;

/// The schema, as migrations (append only).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE records (
        id BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        cache_time BIGINT NOT NULL,
        event_time BIGINT NOT NULL,
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
    CREATE INDEX records_by_action ON records (status, action, cache_time);
    CREATE INDEX records_by_correlation ON records (status, correlation_id)
        WHERE correlation_id IS NOT NULL;
    CREATE INDEX records_by_source_event ON records (status, source_event_id)
        WHERE source_event_id IS NOT NULL;
    CREATE TABLE attempts (
        id BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL,
        action TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        started_at_ms BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        code INTEGER,
        reason TEXT
    );
    CREATE INDEX attempts_by_event ON attempts (event_id, id);
    CREATE INDEX attempts_by_time ON attempts (started_at_ms);
"];

#[derive(Clone)]
pub(super) struct PostgresRecords {
    database: Postgres,
}

impl PostgresRecords {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("records", MIGRATIONS).await?;
        Ok(PostgresRecords {
            database: database.clone(),
        })
    }

    pub(super) async fn record(&self, r: NewRecord) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        let insert = client
            .prepare_cached(
                "INSERT INTO records (event_id, action, status, cache_time, event_time, \
                 severity, category, event_type, resource_name, correlation_id, \
                 source_event_id, event, failure_reasons) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (event_id, action, status) DO NOTHING",
            )
            .await?;
        client
            .execute(
                &insert,
                &[
                    &r.event_id,
                    &r.action,
                    &r.status,
                    &r.cache_time,
                    &r.event_time,
                    &r.severity,
                    &r.category,
                    &r.event_type,
                    &r.resource_name,
                    &r.correlation_id,
                    &r.source_event_id,
                    &r.event,
                    &r.failure_reasons,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn record_attempt(
        &self,
        event_id: &str,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        let insert = client
            .prepare_cached(
                "INSERT INTO attempts (event_id, action, attempt, started_at_ms, duration_ms, \
                 outcome, code, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        let number = attempt.attempt as i32;
        client
            .execute(
                &insert,
                &[
                    &event_id,
                    &attempt.action,
                    &number,
                    &attempt.started_at_ms,
                    &attempt.duration_ms,
                    &attempt.outcome.as_str(),
                    &attempt.code,
                    &attempt.reason,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn delivered(&self, event_id: &str, action: &str) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let found = client
            .query_opt(
                "SELECT 1 FROM attempts WHERE event_id = $1 AND action = $2 \
                 AND outcome = 'delivered' LIMIT 1",
                &[&event_id, &action],
            )
            .await?;
        Ok(found.is_some())
    }

    pub(super) async fn attempts(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let client = self.database.client().await?;
        let rows = client
            .query(
                "SELECT action, attempt, started_at_ms, duration_ms, outcome, code, reason \
                 FROM attempts WHERE event_id = $1 ORDER BY id",
                &[&event_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.get(4);
                Ok(Attempt {
                    action: r.get(0),
                    attempt: r.get::<_, i32>(1) as u32,
                    started_at_ms: r.get(2),
                    duration_ms: r.get(3),
                    outcome: AttemptOutcome::parse(&outcome).ok_or_else(|| {
                        StoreError::Invalid(format!("`{outcome}` is not an attempt outcome"))
                    })?,
                    code: r.get(5),
                    reason: r.get(6),
                })
            })
            .collect()
    }

    /// (record id, event JSON, action) of the undelivered records `selection` picks.
    pub(super) async fn undelivered(
        &self,
        selection: Selection,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let client = self.database.client().await?;
        let limit = i64::from(selection.limit);
        let rows = client
            .query(
                "SELECT id, event, action FROM records WHERE status = 'UNDELIVERED' \
                 AND ($1::TEXT IS NULL OR event_id = $1) AND ($2::TEXT IS NULL OR action = $2) \
                 AND ($3::BIGINT IS NULL OR cache_time >= $3) ORDER BY id LIMIT $4",
                &[
                    &selection.event_id,
                    &selection.action,
                    &selection.since,
                    &limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    pub(super) async fn forget(&self, record_ids: Vec<i64>) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        client
            .execute("DELETE FROM records WHERE id = ANY($1)", &[&record_ids])
            .await?;
        Ok(())
    }

    pub(super) async fn purge_before(&self, cutoff: i64, batch: u32) -> Result<usize, StoreError> {
        let client = self.database.client().await?;
        let batch = i64::from(batch);
        let records = client
            .execute(
                "DELETE FROM records WHERE id IN \
                 (SELECT id FROM records WHERE cache_time < $1 ORDER BY cache_time LIMIT $2)",
                &[&cutoff, &batch],
            )
            .await?;
        let attempts = client
            .execute(
                "DELETE FROM attempts WHERE id IN \
                 (SELECT id FROM attempts WHERE started_at_ms < $1 ORDER BY started_at_ms LIMIT $2)",
                &[&(cutoff * 1000), &batch],
            )
            .await?;
        Ok((records + attempts) as usize)
    }

    /// The total and the page of records of `status` that `query` selects, newest first.
    pub(super) async fn query(
        &self,
        status: DeliveryStatus,
        query: RecordQuery,
    ) -> Result<(u64, Vec<Row>), StoreError> {
        let filter = Filter::of(status, &query, |n| format!("${n}"));
        let (limit, offset) = query.limit_and_offset();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = filter
            .params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Text(text) => Box::new(text),
                    Param::Integer(n) => Box::new(n),
                }
            })
            .collect();
        let count_sql = format!("SELECT COUNT(*) FROM records WHERE {}", filter.clause);
        let page_sql = format!(
            "SELECT action, cache_time, event, failure_reasons FROM records WHERE {} \
             ORDER BY cache_time DESC, id DESC LIMIT ${} OFFSET ${}",
            filter.clause,
            params.len() + 1,
            params.len() + 2
        );
        let client = self.database.client().await?;
        let borrowed: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let total: i64 = client.query_one(&count_sql, &borrowed).await?.get(0);
        params.push(Box::new(limit));
        params.push(Box::new(offset));
        let borrowed: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client
            .query(&page_sql, &borrowed)
            .await?
            .iter()
            .map(|r| Row {
                action: r.get(0),
                cache_time: r.get(1),
                event: r.get(2),
                failure_reasons: r.get(3),
            })
            .collect();
        Ok((total as u64, rows))
    }
}
