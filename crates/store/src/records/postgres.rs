//! The records in PostgreSQL: one set of tables that every process of the broker writes and
//! reads, so that any process's consumer API answers for all of them.

use super::{
    Attempt, AttemptOutcome, Digested, Filter, NewRecord, Param, RecordQuery, Row, Selection,
};
use crate::postgres::Postgres;
use crate::StoreError;
use model::DeliveryStatus;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::types::ToSql;

/// The schema, as migrations (append only).
pub(super) const MIGRATIONS: &[&str] = &[
    "
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
",
    "
    ALTER TABLE attempts ADD COLUMN digest_group TEXT, ADD COLUMN digest_events INTEGER,
        ADD COLUMN digest_repeat BOOLEAN;
",
];

#[derive(Clone)]
pub(super) struct PostgresRecords {
    pub(super) database: Postgres,
    writes: mpsc::Sender<Write>,
}

/// Rows written together at most, records and attempts counted alike.
const MAX_BATCH: usize = 512;
/// Batches written at once, each on its own connection: while some commit, the next one grows.
const IN_FLIGHT: usize = 4;
/// How long a batch waits for company while writes come in groups (never for a lone writer).
const LINGER: Duration = Duration::from_millis(1);

/// A batch's error as each of its writers gets it.
#[derive(Clone)]
struct Shared {
    message: String,
    unavailable: bool,
}

impl Shared {
    fn of(error: &StoreError) -> Self {
        Shared {
            message: error.to_string(),
            unavailable: error.is_unavailable(),
        }
    }

    fn into_error(self) -> StoreError {
        if self.unavailable {
            StoreError::Unavailable(self.message)
        } else {
            StoreError::Invalid(self.message)
        }
    }
}

/// One row to write and who waits for it.
struct Write {
    row: NewRow,
    done: oneshot::Sender<Result<(), Shared>>,
}

enum NewRow {
    Record(NewRecord),
    Attempt { event_id: String, attempt: Attempt },
}

impl PostgresRecords {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("records", MIGRATIONS).await?;
        let (writes, pending) = mpsc::channel(MAX_BATCH * IN_FLIGHT);
        tokio::spawn(write_batches(database.clone(), pending));
        Ok(PostgresRecords {
            database: database.clone(),
            writes,
        })
    }

    pub(super) async fn record(&self, r: NewRecord) -> Result<(), StoreError> {
        self.write(NewRow::Record(r)).await
    }

    pub(super) async fn record_attempt(
        &self,
        event_id: &str,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        self.write(NewRow::Attempt {
            event_id: event_id.to_owned(),
            attempt,
        })
        .await
    }

    /// Hands `row` to the batch writer and waits until it is committed.
    async fn write(&self, row: NewRow) -> Result<(), StoreError> {
        let (done, written) = oneshot::channel();
        let gone = || StoreError::Invalid("the records writer has stopped".into());
        self.writes
            .send(Write { row, done })
            .await
            .map_err(|_| gone())?;
        written
            .await
            .map_err(|_| gone())?
            .map_err(Shared::into_error)
    }

    pub(super) async fn delivered(&self, event_id: &str, action: &str) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let found = client
            .query_opt(
                "SELECT 1 FROM attempts WHERE event_id = $1 AND action = $2 \
                 AND outcome = 'delivered' AND digest_repeat IS NOT TRUE LIMIT 1",
                &[&event_id, &action],
            )
            .await?;
        Ok(found.is_some())
    }

    pub(super) async fn attempts(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let client = self.database.client().await?;
        let rows = client
            .query(
                "SELECT action, attempt, started_at_ms, duration_ms, outcome, code, reason, \
                 digest_group, digest_events, digest_repeat \
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
                    digest: Digested::of_columns(
                        r.get(7),
                        r.get::<_, Option<i32>>(8).map(i64::from),
                        r.get(9),
                    ),
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

/// Writes rows in batches: each round takes what has arrived (lingering a moment while writes
/// come in groups) and writes it in one statement — one round trip and one commit for up to
/// [`MAX_BATCH`] rows, where one row each made the commit the bound on throughput. A batch that
/// fails is written again row by row, so that one row the database refuses fails alone.
async fn write_batches(database: Postgres, mut pending: mpsc::Receiver<Write>) {
    let in_flight = std::sync::Arc::new(Semaphore::new(IN_FLIGHT));
    let mut linger = storage::Linger::new(LINGER);
    let mut gathered = Vec::with_capacity(MAX_BATCH);
    loop {
        let Ok(room) = std::sync::Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        if pending.recv_many(&mut gathered, MAX_BATCH).await == 0 {
            return;
        }
        if let Some(wait) = linger.wait_for_company(gathered.len(), MAX_BATCH) {
            tokio::time::sleep(wait).await;
            while gathered.len() < MAX_BATCH {
                match pending.try_recv() {
                    Ok(write) => gathered.push(write),
                    Err(_) => break,
                }
            }
        }
        let batch = std::mem::replace(&mut gathered, Vec::with_capacity(MAX_BATCH));
        let database = database.clone();
        tokio::spawn(async move {
            write_batch(&database, batch).await;
            drop(room);
        });
    }
}

async fn write_batch(database: &Postgres, batch: Vec<Write>) {
    let (rows, waiting): (Vec<NewRow>, Vec<_>) = batch.into_iter().map(|w| (w.row, w.done)).unzip();
    match database.noted(insert(database, &rows).await) {
        // A database that cannot be reached fails every row alike; anything else may be one
        // row's fault.
        Err(e) if rows.len() > 1 && !e.is_unavailable() => {
            for (row, done) in rows.into_iter().zip(waiting) {
                let outcome = insert(database, std::slice::from_ref(&row)).await;
                let _ = done.send(outcome.map_err(|e| Shared::of(&e)));
            }
        }
        outcome => {
            let outcome = outcome.map_err(|e| Shared::of(&e));
            for done in waiting {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

/// Inserts `rows` in one statement: the records (a duplicate outcome changes nothing) and the
/// attempts, each column passed as an array and unnested, in one transaction.
async fn insert(database: &Postgres, rows: &[NewRow]) -> Result<(), StoreError> {
    let mut records = RecordColumns::default();
    let mut attempts = AttemptColumns::default();
    for row in rows {
        match row {
            NewRow::Record(r) => records.push(r),
            NewRow::Attempt { event_id, attempt } => attempts.push(event_id, attempt),
        }
    }
    let client = database.client().await?;
    let statement = client
        .prepare_cached(
            "WITH new_records AS ( \
                 INSERT INTO records (event_id, action, status, cache_time, event_time, severity, \
                 category, event_type, resource_name, correlation_id, source_event_id, event, \
                 failure_reasons) \
                 SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], \
                 $5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], \
                 $11::TEXT[], $12::TEXT[], $13::TEXT[]) \
                 ON CONFLICT (event_id, action, status) DO NOTHING) \
             INSERT INTO attempts (event_id, action, attempt, started_at_ms, duration_ms, \
             outcome, code, reason, digest_group, digest_events, digest_repeat) \
             SELECT * FROM unnest($14::TEXT[], $15::TEXT[], $16::INTEGER[], $17::BIGINT[], \
             $18::BIGINT[], $19::TEXT[], $20::INTEGER[], $21::TEXT[], $22::TEXT[], \
             $23::INTEGER[], $24::BOOLEAN[])",
        )
        .await?;
    let r = &records;
    let a = &attempts;
    client
        .execute(
            &statement,
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
                &a.event_id,
                &a.action,
                &a.attempt,
                &a.started_at_ms,
                &a.duration_ms,
                &a.outcome,
                &a.code,
                &a.reason,
                &a.digest_group,
                &a.digest_events,
                &a.digest_repeat,
            ],
        )
        .await?;
    Ok(())
}

/// The records of a batch, column by column.
#[derive(Default)]
struct RecordColumns<'a> {
    event_id: Vec<&'a str>,
    action: Vec<&'a str>,
    status: Vec<&'a str>,
    cache_time: Vec<i64>,
    event_time: Vec<i64>,
    severity: Vec<&'a str>,
    category: Vec<&'a str>,
    event_type: Vec<&'a str>,
    resource_name: Vec<&'a str>,
    correlation_id: Vec<Option<&'a str>>,
    source_event_id: Vec<Option<&'a str>>,
    event: Vec<&'a str>,
    failure_reasons: Vec<Option<&'a str>>,
}

impl<'a> RecordColumns<'a> {
    fn push(&mut self, r: &'a NewRecord) {
        self.event_id.push(&r.event_id);
        self.action.push(&r.action);
        self.status.push(r.status);
        self.cache_time.push(r.cache_time);
        self.event_time.push(r.event_time);
        self.severity.push(r.severity);
        self.category.push(r.category);
        self.event_type.push(&r.event_type);
        self.resource_name.push(&r.resource_name);
        self.correlation_id.push(r.correlation_id.as_deref());
        self.source_event_id.push(r.source_event_id.as_deref());
        self.event.push(&r.event);
        self.failure_reasons.push(r.failure_reasons.as_deref());
    }
}

/// The attempts of a batch, column by column.
#[derive(Default)]
struct AttemptColumns<'a> {
    event_id: Vec<&'a str>,
    action: Vec<&'a str>,
    attempt: Vec<i32>,
    started_at_ms: Vec<i64>,
    duration_ms: Vec<i64>,
    outcome: Vec<&'static str>,
    code: Vec<Option<i32>>,
    reason: Vec<Option<&'a str>>,
    digest_group: Vec<Option<&'a str>>,
    digest_events: Vec<Option<i32>>,
    digest_repeat: Vec<Option<bool>>,
}

impl<'a> AttemptColumns<'a> {
    fn push(&mut self, event_id: &'a str, a: &'a Attempt) {
        self.event_id.push(event_id);
        self.action.push(&a.action);
        self.attempt.push(a.attempt as i32);
        self.started_at_ms.push(a.started_at_ms);
        self.duration_ms.push(a.duration_ms);
        self.outcome.push(a.outcome.as_str());
        self.code.push(a.code);
        self.reason.push(a.reason.as_deref());
        let digest = a.digest.as_ref();
        self.digest_group.push(digest.map(|d| d.group.as_str()));
        self.digest_events
            .push(digest.map(|d| i32::try_from(d.events).unwrap_or(i32::MAX)));
        self.digest_repeat.push(digest.map(|d| d.repeat));
    }
}
