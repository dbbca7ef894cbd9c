//! The window in PostgreSQL, shared by every process: one row per key, *pending* (`claim`
//! holds the claiming copy's token) from claim to commit, then published (`claim` is NULL).
//! Times are the database's clock, so that processes on hosts whose clocks differ agree.
//!
//! Cost: a new message's claim is one statement (one round trip and one WAL flush) on the
//! answer's path; its commit is another, off it. A redelivery's claim is two statements.

use super::{Claim, Claimed, PendingClaims, Pruning, Ticket};
use crate::postgres::Postgres;
use crate::StoreError;
use std::time::{Duration, Instant};

/// The schema, as migrations (append only).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE oci_dedupe (
        key TEXT PRIMARY KEY,
        claim TEXT,
        at_ms BIGINT NOT NULL
    );
    CREATE INDEX oci_dedupe_by_time ON oci_dedupe (at_ms);
"];

/// The database's clock in epoch milliseconds, as SQL.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// How often a copy that waits for another's pending claim looks again.
const LOOK_AGAIN: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub(super) struct PostgresWindow {
    pub(super) database: Postgres,
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
        window: Duration,
        pending: PendingClaims,
    ) -> Result<PostgresWindow, StoreError> {
        database.migrate("oci_dedupe", MIGRATIONS).await?;
        Ok(PostgresWindow {
            database: database.clone(),
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
            if self.published(&sorted).await? {
                return Ok(Claim::Duplicate);
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
        let claim = client
            .prepare_cached(&format!(
                "WITH this AS (SELECT {NOW_MS} AS ms, gen_random_uuid()::text AS token) \
                 INSERT INTO oci_dedupe (key, claim, at_ms) \
                 SELECT key, this.token, this.ms FROM unnest($1::text[]) AS key, this \
                 ON CONFLICT (key) DO UPDATE SET claim = excluded.claim, at_ms = excluded.at_ms \
                 WHERE (oci_dedupe.claim IS NULL AND oci_dedupe.at_ms < excluded.at_ms - $2::bigint) \
                    OR (oci_dedupe.claim IS NOT NULL AND oci_dedupe.at_ms < excluded.at_ms - $3::bigint) \
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
                .prepare_cached("DELETE FROM oci_dedupe WHERE claim = $1")
                .await?;
            client.execute(&release, &[&token]).await?;
        }
        Ok(None)
    }

    /// Whether one of `sorted` was published within the window.
    async fn published(&self, sorted: &[String]) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let select = client
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM oci_dedupe WHERE key = ANY($1) \
                 AND claim IS NULL AND at_ms >= {NOW_MS} - $2::bigint)"
            ))
            .await?;
        Ok(client
            .query_one(&select, &[&sorted, &self.window_ms])
            .await?
            .get(0))
    }
}

impl PostgresTicket {
    /// Marks the claim's keys published, and now and then deletes expired rows.
    pub(super) fn commit(
        mut self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let token = self.token.take();
        let window = self.window.clone();
        let publish = async move {
            let client = window.database.client().await?;
            let publish = client
                .prepare_cached(&format!(
                    "UPDATE oci_dedupe SET claim = NULL, at_ms = {NOW_MS} WHERE claim = $1"
                ))
                .await?;
            client.execute(&publish, &[&token]).await?;
            if window.pruning.due(clock::now_epoch_millis()) {
                let prune = client
                    .prepare_cached(&format!(
                        "DELETE FROM oci_dedupe WHERE at_ms < {NOW_MS} - \
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
        runtime.spawn(async move {
            let released = async {
                let client = database.client().await?;
                client
                    .execute("DELETE FROM oci_dedupe WHERE claim = $1", &[&token])
                    .await?;
                Ok::<_, StoreError>(())
            };
            if let Err(e) = released.await {
                tracing::warn!(error = %e, "cannot give back an OCI message's claim; it is void once stale");
            }
        });
    }
}
