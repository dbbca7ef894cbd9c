//! The audit log in PostgreSQL, shared by every process: the unique `dedupe_key` makes a
//! click or a link once-only across them.

use super::{AuditEntry, AuditQuery, Recorded, FILTER};
use crate::postgres::Postgres;
use crate::StoreError;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE audit (
        id TEXT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        who TEXT NOT NULL,
        via TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT,
        dedupe_key TEXT UNIQUE
    );
    CREATE INDEX audit_by_time ON audit (at_ms);
"];

const COLUMNS: &str = "id, at_ms, who, via, action, target, outcome, detail, dedupe_key";

#[derive(Clone)]
pub(super) struct PostgresAudit {
    pub(super) database: Postgres,
}

impl PostgresAudit {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("audit", MIGRATIONS).await?;
        Ok(PostgresAudit {
            database: database.clone(),
        })
    }

    pub(super) async fn record(&self, e: AuditEntry) -> Result<Recorded, StoreError> {
        let client = self.database.client().await?;
        let written = client
            .execute(
                &format!(
                    "INSERT INTO audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (dedupe_key) DO NOTHING"
                ),
                &[
                    &e.id,
                    &e.at_ms,
                    &e.who,
                    &e.via,
                    &e.action,
                    &e.target,
                    &e.outcome,
                    &e.detail,
                    &e.dedupe_key,
                ],
            )
            .await?;
        Ok(if written == 1 {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    pub(super) async fn taken(&self, dedupe_key: String) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let statement = client
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM audit WHERE dedupe_key = $1)")
            .await?;
        Ok(client.query_one(&statement, &[&dedupe_key]).await?.get(0))
    }

    pub(super) async fn forget(&self, id: String) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        client
            .execute("DELETE FROM audit WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    pub(super) async fn list(&self, q: AuditQuery) -> Result<(u64, Vec<AuditEntry>), StoreError> {
        let filter = FILTER
            .replace("{p1}", "$1::TEXT")
            .replace("{p2}", "$2::TEXT")
            .replace("{p3}", "$3::BIGINT");
        let (limit, offset) = crate::limit_and_offset(q.page, q.page_size);
        let client = self.database.client().await?;
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM audit WHERE {filter}"),
                &[&q.who, &q.target, &q.since_ms],
            )
            .await?
            .get(0);
        let entries = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM audit WHERE {filter} \
                     ORDER BY at_ms DESC, id DESC LIMIT $4 OFFSET $5"
                ),
                &[&q.who, &q.target, &q.since_ms, &limit, &offset],
            )
            .await?
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at_ms: r.get(1),
                who: r.get(2),
                via: r.get(3),
                action: r.get(4),
                target: r.get(5),
                outcome: r.get(6),
                detail: r.get(7),
                dedupe_key: r.get(8),
            })
            .collect();
        Ok((total as u64, entries))
    }
}
