//! The audit log in SQLite: `audit.db` in the data directory, this process's alone.

use super::{AuditEntry, AuditQuery, Recorded, FILTER};
use rusqlite::params;
use std::path::Path;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &["
    CREATE TABLE audit (
        id TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
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
pub(super) struct SqliteAudit {
    db: Database,
}

impl SqliteAudit {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        // Full durability: a used link or a done click must stay used after a power cut.
        Ok(SqliteAudit {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
        })
    }

    pub(super) async fn record(&self, e: AuditEntry) -> Result<Recorded, StorageError> {
        self.db
            .write(move |c| {
                let written = c
                    .prepare_cached(&format!(
                        "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                         ON CONFLICT (dedupe_key) DO NOTHING"
                    ))?
                    .execute(params![
                        e.id,
                        e.at_ms,
                        e.who,
                        e.via,
                        e.action,
                        e.target,
                        e.outcome,
                        e.detail,
                        e.dedupe_key
                    ])?;
                Ok(if written == 1 {
                    Recorded::New
                } else {
                    Recorded::Duplicate
                })
            })
            .await
    }

    pub(super) async fn taken(&self, dedupe_key: String) -> Result<bool, StorageError> {
        self.db
            .read(move |c| {
                c.prepare_cached("SELECT EXISTS (SELECT 1 FROM audit WHERE dedupe_key = ?1)")?
                    .query_row([dedupe_key], |r| r.get(0))
            })
            .await
    }

    pub(super) async fn forget(&self, id: String) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM audit WHERE id = ?1")?
                    .execute([id])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn list(&self, q: AuditQuery) -> Result<(u64, Vec<AuditEntry>), StorageError> {
        let filter = FILTER
            .replace("{p1}", "?1")
            .replace("{p2}", "?2")
            .replace("{p3}", "?3");
        let (limit, offset) = crate::limit_and_offset(q.page, q.page_size);
        self.db
            .read(move |c| {
                let values = params![q.who, q.target, q.since_ms];
                let total: i64 = c
                    .prepare_cached(&format!("SELECT count(*) FROM audit WHERE {filter}"))?
                    .query_row(values, |r| r.get(0))?;
                let entries = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM audit WHERE {filter} \
                         ORDER BY at_ms DESC, id DESC LIMIT ?4 OFFSET ?5"
                    ))?
                    .query_map(params![q.who, q.target, q.since_ms, limit, offset], |r| {
                        Ok(AuditEntry {
                            id: r.get(0)?,
                            at_ms: r.get(1)?,
                            who: r.get(2)?,
                            via: r.get(3)?,
                            action: r.get(4)?,
                            target: r.get(5)?,
                            outcome: r.get(6)?,
                            detail: r.get(7)?,
                            dedupe_key: r.get(8)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((total as u64, entries))
            })
            .await
    }
}
