//! The durable lanes in PostgreSQL: one set of tables for every process of the broker, so that
//! the jobs parked behind a head are found by whichever process delivers the head's key next.
//!
//! Each call is one transaction; a lane's row is locked (`FOR UPDATE`) while it changes, so
//! two processes that meet in one lane — one taking over from the other, which had not yet
//! noticed — see each other's claims in order.

use super::{Claim, Lane, LaneJob, Promoted};
use crate::postgres::Postgres;
use crate::StoreError;
use bytes::Bytes;

/// The schema, as migrations (append only).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE lanes (
        action TEXT NOT NULL,
        key TEXT NOT NULL,
        head TEXT NOT NULL,
        -- Attempts of the head's copy that waits on the queue for its retry, once it is there.
        waiting_attempt INTEGER,
        -- When the head was promoted from the parked jobs (epoch ms), until it is forgotten.
        promoted_at_ms BIGINT,
        PRIMARY KEY (action, key)
    );
    CREATE TABLE parked (
        seq BIGSERIAL PRIMARY KEY,
        action TEXT NOT NULL,
        key TEXT NOT NULL,
        job_id TEXT NOT NULL,
        job BYTEA NOT NULL,
        UNIQUE (action, key, job_id)
    );
    CREATE INDEX parked_by_lane ON parked (action, key, seq);
"];

#[derive(Clone)]
pub(super) struct PostgresLanes {
    database: Postgres,
}

impl PostgresLanes {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("lanes", MIGRATIONS).await?;
        Ok(PostgresLanes {
            database: database.clone(),
        })
    }

    pub(super) async fn claim(&self, jobs: Vec<LaneJob>) -> Result<Vec<Claim>, StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        let open = transaction
            .prepare_cached(
                "INSERT INTO lanes (action, key, head) VALUES ($1, $2, $3) \
                 ON CONFLICT (action, key) DO NOTHING",
            )
            .await?;
        let head_of = transaction
            .prepare_cached(
                "SELECT head, waiting_attempt FROM lanes WHERE action = $1 AND key = $2 \
                 FOR UPDATE",
            )
            .await?;
        let park = transaction
            .prepare_cached(
                "INSERT INTO parked (action, key, job_id, job) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (action, key, job_id) DO NOTHING",
            )
            .await?;
        let mut claims = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let opened = transaction
                .execute(&open, &[&job.action, &job.key, &job.id])
                .await?;
            if opened == 1 {
                claims.push(Claim::Run);
                continue;
            }
            let row = transaction
                .query_one(&head_of, &[&job.action, &job.key])
                .await?;
            let head: String = row.get(0);
            let waiting = row.get::<_, Option<i32>>(1).map(|n| n as u32);
            let claim = super::claim_behind(&head, waiting, job);
            if claim == Claim::Parked {
                // A redelivered parked job is parked once.
                transaction
                    .execute(
                        &park,
                        &[&job.action, &job.key, &job.id, &job.payload.as_ref()],
                    )
                    .await?;
            }
            claims.push(claim);
        }
        transaction.commit().await?;
        Ok(claims)
    }

    pub(super) async fn waiting(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        let attempt = attempt as i32;
        client
            .execute(
                "UPDATE lanes SET waiting_attempt = $4 \
                 WHERE action = $1 AND key = $2 AND head = $3",
                &[&action, &key, &job_id, &attempt],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn release(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
    ) -> Result<Option<Promoted>, StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        let lane = transaction
            .query_opt(
                "SELECT 1 FROM lanes WHERE action = $1 AND key = $2 FOR UPDATE",
                &[&action, &key],
            )
            .await?;
        if lane.is_none() {
            return Ok(None);
        }
        // A promoted job that was put back on the queue twice (a crash in between) is parked
        // no more once it is done.
        transaction
            .execute(
                "DELETE FROM parked WHERE action = $1 AND key = $2 AND job_id = $3",
                &[&action, &key, &job_id],
            )
            .await?;
        let next = transaction
            .query_opt(
                "SELECT seq, job_id, job FROM parked WHERE action = $1 AND key = $2 \
                 ORDER BY seq LIMIT 1",
                &[&action, &key],
            )
            .await?;
        let promoted = match next {
            Some(row) => {
                let next_id: String = row.get(1);
                transaction
                    .execute(
                        "UPDATE lanes SET head = $3, waiting_attempt = NULL, promoted_at_ms = $4 \
                         WHERE action = $1 AND key = $2",
                        &[&action, &key, &next_id, &clock::now_epoch_millis()],
                    )
                    .await?;
                Some(Promoted {
                    seq: row.get(0),
                    payload: Bytes::from(row.get::<_, Vec<u8>>(2)),
                })
            }
            None => {
                transaction
                    .execute(
                        "DELETE FROM lanes WHERE action = $1 AND key = $2",
                        &[&action, &key],
                    )
                    .await?;
                None
            }
        };
        transaction.commit().await?;
        Ok(promoted)
    }

    pub(super) async fn forget(&self, seq: i64) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        client
            .execute("DELETE FROM parked WHERE seq = $1", &[&seq])
            .await?;
        Ok(())
    }

    pub(super) async fn stranded_heads(
        &self,
        promoted_before_ms: i64,
    ) -> Result<Vec<Promoted>, StoreError> {
        let client = self.database.client().await?;
        let rows = client
            .query(
                "SELECT p.seq, p.job FROM parked p JOIN lanes l \
                 ON l.action = p.action AND l.key = p.key AND l.head = p.job_id \
                 WHERE l.promoted_at_ms < $1 ORDER BY p.seq",
                &[&promoted_before_ms],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| Promoted {
                seq: row.get(0),
                payload: Bytes::from(row.get::<_, Vec<u8>>(1)),
            })
            .collect())
    }

    pub(super) async fn durable_lanes(&self) -> Result<Vec<Lane>, StoreError> {
        let client = self.database.client().await?;
        let rows = client.query("SELECT action, key FROM lanes", &[]).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    pub(super) async fn durable_among(&self, lanes: Vec<Lane>) -> Result<Vec<Lane>, StoreError> {
        let (actions, keys): (Vec<String>, Vec<String>) = lanes.into_iter().unzip();
        let client = self.database.client().await?;
        let among = client
            .prepare_cached(
                "SELECT l.action, l.key FROM lanes l \
                 JOIN unnest($1::text[], $2::text[]) AS wanted (action, key) \
                 ON l.action = wanted.action AND l.key = wanted.key",
            )
            .await?;
        let rows = client.query(&among, &[&actions, &keys]).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }
}
