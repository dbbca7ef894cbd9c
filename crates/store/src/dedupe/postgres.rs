//! The window in PostgreSQL, shared by every process: one row per key in the window's own
//! table, *pending* (`claim` holds the claiming copy's token) from claim to commit, then
//! published (`claim` is NULL, with the answer kept if the commit gave one). Each window has
//! its own table, so that each prunes by its own length. Times are the database's clock, so
//! that processes on hosts whose clocks differ agree.
//!
//! Cost: a new message's claim is one statement (one round trip and one WAL flush) on the
//! answer's path; its commit is another, off it. A redelivery's claim is two statements.

use super::{Answer, Claim, Claimed, PendingClaims, Pruning, Ticket};
use crate::postgres::Postgres;
use crate::StoreError;
use std::time::{Duration, Instant};

/// The schema of the window's table `{t}`, as migrations (append only); the table's name is
/// the migrations' component.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE {t} (
        key TEXT PRIMARY KEY,
        claim TEXT,
        at_ms BIGINT NOT NULL
    );
    CREATE INDEX {t}_by_time ON {t} (at_ms);
",
    // The first answer, kept by a commit that gives one.
    "ALTER TABLE {t} ADD COLUMN fingerprint TEXT, ADD COLUMN status INTEGER, \
     ADD COLUMN answer BYTEA;",
];

/// The database's clock in epoch milliseconds, as SQL.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// How often a copy that waits for another's pending claim looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub(super) struct PostgresWindow {
    pub(super) database: Postgres,
    table: &'static str,
    window_ms: i64,
    stale_ms: i64,
    wait: Duration,
    pruning: std::sync::Arc<Pruning>,
}

/// A claim on the keys, pending until committed; given back if dropped.
pub(super) struct PostgresTicket {
    window: PostgresWindow,
    token: Option<String>,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl PostgresWindow {
    pub(super) async fn open(
        database: &Postgres,
        table: &'static str,
        window: Duration,
        pending: PendingClaims,
    ) -> Result<PostgresWindow, StoreError> {
        let migrations: Vec<String> = MIGRATIONS.iter().map(|m| m.replace("{t}", table)).collect();
        let migrations: Vec<&str> = migrations.iter().map(String::as_str).collect();
        database.migrate(table, &migrations).await?;
        Ok(PostgresWindow {
            database: database.clone(),
            table,
            window_ms: millis(window),
            stale_ms: millis(pending.stale_after),
            wait: pending.wait,
            pruning: std::sync::Arc::new(Pruning::new()),
        })
    }

    pub(super) async fn claim(&self, sorted: Vec<String>) -> Result<Claim, StoreError> {
        let deadline = Instant::now() + self.wait;
        loop {
            if let Some(token) = self.try_claim(&sorted).await? {
                return Ok(Claim::New(Ticket(Claimed::Postgres(PostgresTicket {
                    window: self.clone(),
                    token: Some(token),
                }))));
            }
            if let Some(answer) = self.published(&sorted).await? {
                return Ok(Claim::Duplicate(answer));
            }
            // Another copy holds a fresh pending claim: wait for its commit or its release.
            if Instant::now() + LOOK_AGAIN > deadline {
                return Ok(Claim::InFlight);
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }

    /// Claims every key of `sorted` (new, expired, or pending beyond the bound) in one
    /// statement; the claim's token if all were claimed, else `None` with nothing claimed.
    async fn try_claim(&self, sorted: &[String]) -> Result<Option<String>, StoreError> {
        let client = self.database.client().await?;
        let t = self.table;
        let claim = client
            .prepare_cached(&format!(
                "WITH this AS (SELECT {NOW_MS} AS ms, gen_random_uuid()::text AS token) \
                 INSERT INTO {t} (key, claim, at_ms) \
                 SELECT key, this.token, this.ms FROM unnest($1::text[]) AS key, this \
                 ON CONFLICT (key) DO UPDATE SET claim = excluded.claim, at_ms = excluded.at_ms \
                 WHERE ({t}.claim IS NULL AND {t}.at_ms < excluded.at_ms - $2::bigint) \
                    OR ({t}.claim IS NOT NULL AND {t}.at_ms < excluded.at_ms - $3::bigint) \
                 RETURNING claim"
            ))
            .await?;
        let rows = client
            .query(&claim, &[&sorted, &self.window_ms, &self.stale_ms])
            .await?;
        let token: Option<String> = rows.first().map(|row| row.get(0));
        if rows.len() == sorted.len() {
            return Ok(token);
        }
        if let Some(token) = token {
            // Some keys only: give them back, the message is not this copy's to publish.
            let release = client
                .prepare_cached(&format!("DELETE FROM {t} WHERE claim = $1"))
                .await?;
            client.execute(&release, &[&token]).await?;
        }
        Ok(None)
    }

    /// Whether one of `sorted` was published within the window: `Some`, with the answer kept
    /// for it if any.
    async fn published(&self, sorted: &[String]) -> Result<Option<Option<Answer>>, StoreError> {
        let client = self.database.client().await?;
        let select = client
            .prepare_cached(&format!(
                "SELECT fingerprint, status, answer FROM {} WHERE key = ANY($1) \
                 AND claim IS NULL AND at_ms >= {NOW_MS} - $2::bigint \
                 ORDER BY answer IS NULL LIMIT 1",
                self.table
            ))
            .await?;
        let row = client
            .query_opt(&select, &[&sorted, &self.window_ms])
            .await?;
        Ok(row.map(
            |row| match (row.get(0), row.get::<_, Option<i32>>(1), row.get(2)) {
                (Some(fingerprint), Some(status), Some(body)) => Some(Answer {
                    fingerprint,
                    status: u16::try_from(status).unwrap_or_default(),
                    body,
                }),
                _ => None,
            },
        ))
    }
}

impl PostgresTicket {
    /// Marks the claim's keys published with `answer`, and now and then deletes expired rows.
    pub(super) fn commit(
        mut self,
        answer: Option<Answer>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let token = self.token.take();
        let window = self.window.clone();
        let publish = async move {
            let client = window.database.client().await?;
            let t = window.table;
            let publish = client
                .prepare_cached(&format!(
                    "UPDATE {t} SET claim = NULL, at_ms = {NOW_MS}, fingerprint = $2, \
                     status = $3, answer = $4 WHERE claim = $1"
                ))
                .await?;
            let (fingerprint, status, body) = match &answer {
                Some(a) => (
                    Some(&a.fingerprint),
                    Some(i32::from(a.status)),
                    Some(&a.body),
                ),
                None => (None, None, None),
            };
            client
                .execute(&publish, &[&token, &fingerprint, &status, &body])
                .await?;
            if window.pruning.due(clock::now_epoch_millis()) {
                let prune = client
                    .prepare_cached(&format!(
                        "DELETE FROM {t} WHERE at_ms < {NOW_MS} - \
                         CASE WHEN claim IS NULL THEN $1::bigint ELSE $2::bigint END"
                    ))
                    .await?;
                client
                    .execute(&prune, &[&window.window_ms, &window.stale_ms])
                    .await?;
            }
            Ok::<_, StoreError>(())
        };
        // Noted, so that a database gone away pauses the pipeline like any other write.
        let database = self.window.database.clone();
        async move { database.noted(publish.await) }
    }
}

impl Drop for PostgresTicket {
    fn drop(&mut self) {
        // Not committed: the publish failed; give the keys back so that OCI's retry publishes.
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the claim goes stale and is void after `stale_after`
        };
        let database = self.window.database.clone();
        let table = self.window.table;
        runtime.spawn(async move {
            let released = async {
                let client = database.client().await?;
                client
                    .execute(&format!("DELETE FROM {table} WHERE claim = $1"), &[&token])
                    .await?;
                Ok::<_, StoreError>(())
            };
            if let Err(e) = released.await {
                tracing::warn!(error = %e, table, "cannot give back a claim; it is void once stale");
            }
        });
    }
}
