//! The silences in PostgreSQL, shared by every process. Each change bumps the one-row version
//! in its own transaction, so a router that reads the version after a change returned sees it
//! moved; a release is claimed by a conditional update, which one process wins.

use super::{matchers_json, parse_matchers, Expired, Silence, PURGE_RELEASED_BEFORE};
use crate::postgres::Postgres;
use crate::StoreError;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at_ms BIGINT NOT NULL,
        ends_at_ms BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        comment TEXT,
        created_at_ms BIGINT NOT NULL,
        release_claimed_until_ms BIGINT,
        released_at_ms BIGINT
    );
    CREATE INDEX silences_unreleased ON silences (ends_at_ms) WHERE released_at_ms IS NULL;
    CREATE TABLE silences_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO silences_version (id, version) VALUES (1, 0);
"];

const COLUMNS: &str = "id, matchers, starts_at_ms, ends_at_ms, created_by, comment, created_at_ms";

#[derive(Clone)]
pub(super) struct PostgresSilences {
    pub(super) database: Postgres,
}

impl PostgresSilences {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("silences", MIGRATIONS).await?;
        Ok(PostgresSilences {
            database: database.clone(),
        })
    }

    pub(super) async fn create(&self, s: Silence) -> Result<(), StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                &format!("INSERT INTO silences ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[
                    &s.id,
                    &matchers_json(&s.matchers),
                    &s.starts_at_ms,
                    &s.ends_at_ms,
                    &s.created_by,
                    &s.comment,
                    &s.created_at_ms,
                ],
            )
            .await?;
        bump(&transaction).await?;
        Ok(transaction.commit().await?)
    }

    pub(super) async fn get(&self, id: String) -> Result<Option<Silence>, StoreError> {
        let client = self.database.client().await?;
        load(&client, &id, "").await
    }

    pub(super) async fn list(
        &self,
        filter: &'static str,
        now_ms: i64,
    ) -> Result<Vec<Silence>, StoreError> {
        let filter = filter.replace("{now}", "$1::BIGINT");
        let sql = format!(
            "SELECT {COLUMNS} FROM silences WHERE {filter} \
             ORDER BY created_at_ms DESC, id DESC"
        );
        self.select(&sql, &[&now_ms]).await
    }

    pub(super) async fn expire(
        &self,
        id: String,
        now_ms: i64,
    ) -> Result<Option<Expired>, StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        let Some(silence) = load(&transaction, &id, "FOR UPDATE").await? else {
            return Ok(None);
        };
        let Some(expired) = silence.expired_at(now_ms) else {
            return Ok(Some(Expired::Already(silence)));
        };
        transaction
            .execute(
                "UPDATE silences SET starts_at_ms = $2, ends_at_ms = $3 WHERE id = $1",
                &[&id, &expired.starts_at_ms, &expired.ends_at_ms],
            )
            .await?;
        bump(&transaction).await?;
        transaction.commit().await?;
        Ok(Some(Expired::Now(expired)))
    }

    pub(super) async fn unreleased(&self) -> Result<Vec<Silence>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM silences WHERE released_at_ms IS NULL");
        self.select(&sql, &[]).await
    }

    pub(super) async fn version(&self) -> Result<i64, StoreError> {
        let client = self.database.client().await?;
        let statement = client
            .prepare_cached("SELECT version FROM silences_version WHERE id = 1")
            .await?;
        Ok(client.query_one(&statement, &[]).await?.get(0))
    }

    pub(super) async fn claim_release(
        &self,
        id: String,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let claimed = client
            .execute(
                "UPDATE silences SET release_claimed_until_ms = $2 + $3 \
                 WHERE id = $1 AND released_at_ms IS NULL AND ends_at_ms <= $2 \
                 AND (release_claimed_until_ms IS NULL OR release_claimed_until_ms <= $2)",
                &[&id, &now_ms, &lease_ms],
            )
            .await?;
        Ok(claimed == 1)
    }

    pub(super) async fn purge_released_before(
        &self,
        cutoff_ms: i64,
        batch: u32,
    ) -> Result<usize, StoreError> {
        let client = self.database.client().await?;
        let sql = PURGE_RELEASED_BEFORE
            .replace("?1", "$1")
            .replace("?2", "$2");
        Ok(client
            .execute(&sql, &[&cutoff_ms, &i64::from(batch)])
            .await? as usize)
    }

    pub(super) async fn mark_released(&self, id: String, now_ms: i64) -> Result<(), StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "UPDATE silences SET released_at_ms = $2 WHERE id = $1",
                &[&id, &now_ms],
            )
            .await?;
        bump(&transaction).await?;
        Ok(transaction.commit().await?)
    }

    async fn select(
        &self,
        sql: &str,
        values: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Silence>, StoreError> {
        let client = self.database.client().await?;
        Ok(client
            .query(sql, values)
            .await?
            .iter()
            .map(row_to_silence)
            .collect())
    }
}

/// Moves the version, in the change's transaction.
async fn bump(client: &impl GenericClient) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE silences_version SET version = version + 1 WHERE id = 1",
            &[],
        )
        .await?;
    Ok(())
}

async fn load(
    client: &impl GenericClient,
    id: &str,
    lock: &str,
) -> Result<Option<Silence>, StoreError> {
    Ok(client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM silences WHERE id = $1 {lock}"),
            &[&id],
        )
        .await?
        .as_ref()
        .map(row_to_silence))
}

fn row_to_silence(r: &Row) -> Silence {
    Silence {
        id: r.get(0),
        matchers: parse_matchers(r.get(1)),
        starts_at_ms: r.get(2),
        ends_at_ms: r.get(3),
        created_by: r.get(4),
        comment: r.get(5),
        created_at_ms: r.get(6),
    }
}
