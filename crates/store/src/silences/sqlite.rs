//! The silences in SQLite: `silences.db` in the data directory, this process's alone.

use super::{matchers_json, parse_matchers, Expired, Silence, PURGE_RELEASED_BEFORE};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &["
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at_ms INTEGER NOT NULL,
        ends_at_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        comment TEXT,
        created_at_ms INTEGER NOT NULL,
        release_claimed_until_ms INTEGER,
        released_at_ms INTEGER
    );
    CREATE INDEX silences_unreleased ON silences (ends_at_ms) WHERE released_at_ms IS NULL;
    CREATE TABLE silences_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO silences_version (id, version) VALUES (1, 0);
"];

const COLUMNS: &str = "id, matchers, starts_at_ms, ends_at_ms, created_by, comment, created_at_ms";

#[derive(Clone)]
pub(super) struct SqliteSilences {
    db: Database,
}

impl SqliteSilences {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        // Full durability: a silence someone was told exists must not vanish in a power cut.
        Ok(SqliteSilences {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
        })
    }

    pub(super) async fn create(&self, s: Silence) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached(&format!(
                    "INSERT INTO silences ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ))?
                .execute(params![
                    s.id,
                    matchers_json(&s.matchers),
                    s.starts_at_ms,
                    s.ends_at_ms,
                    s.created_by,
                    s.comment,
                    s.created_at_ms
                ])?;
                bump(c)
            })
            .await
    }

    pub(super) async fn get(&self, id: String) -> Result<Option<Silence>, StorageError> {
        self.db.read(move |c| load(c, &id)).await
    }

    pub(super) async fn list(
        &self,
        filter: &'static str,
        now_ms: i64,
    ) -> Result<Vec<Silence>, StorageError> {
        self.db
            .read(move |c| {
                let filter = filter.replace("{now}", "?1");
                select(
                    c,
                    &format!(
                        "SELECT {COLUMNS} FROM silences WHERE {filter} \
                         ORDER BY created_at_ms DESC, id DESC"
                    ),
                    params![now_ms],
                )
            })
            .await
    }

    pub(super) async fn expire(
        &self,
        id: String,
        now_ms: i64,
    ) -> Result<Option<Expired>, StorageError> {
        self.db
            .write(move |c| {
                let Some(silence) = load(c, &id)? else {
                    return Ok(None);
                };
                let Some(expired) = silence.expired_at(now_ms) else {
                    return Ok(Some(Expired::Already(silence)));
                };
                c.prepare_cached(
                    "UPDATE silences SET starts_at_ms = ?2, ends_at_ms = ?3 WHERE id = ?1",
                )?
                .execute(params![id, expired.starts_at_ms, expired.ends_at_ms])?;
                bump(c)?;
                Ok(Some(Expired::Now(expired)))
            })
            .await
    }

    pub(super) async fn unreleased(&self) -> Result<Vec<Silence>, StorageError> {
        self.db
            .read(|c| {
                select(
                    c,
                    &format!("SELECT {COLUMNS} FROM silences WHERE released_at_ms IS NULL"),
                    [],
                )
            })
            .await
    }

    pub(super) async fn version(&self) -> Result<i64, StorageError> {
        self.db
            .read(|c| {
                c.prepare_cached("SELECT version FROM silences_version WHERE id = 1")?
                    .query_row([], |r| r.get(0))
            })
            .await
    }

    pub(super) async fn claim_release(
        &self,
        id: String,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StorageError> {
        self.db
            .write(move |c| {
                let claimed = c
                    .prepare_cached(
                        "UPDATE silences SET release_claimed_until_ms = ?2 + ?3 \
                         WHERE id = ?1 AND released_at_ms IS NULL AND ends_at_ms <= ?2 \
                         AND (release_claimed_until_ms IS NULL OR release_claimed_until_ms <= ?2)",
                    )?
                    .execute(params![id, now_ms, lease_ms])?;
                Ok(claimed == 1)
            })
            .await
    }

    pub(super) async fn purge_released_before(
        &self,
        cutoff_ms: i64,
        batch: u32,
    ) -> Result<usize, StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached(PURGE_RELEASED_BEFORE)?
                    .execute(params![cutoff_ms, batch])
            })
            .await
    }

    pub(super) async fn mark_released(&self, id: String, now_ms: i64) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE silences SET released_at_ms = ?2 WHERE id = ?1")?
                    .execute(params![id, now_ms])?;
                bump(c)
            })
            .await
    }
}

/// Moves the version, in the change's transaction.
fn bump(c: &Connection) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE silences_version SET version = version + 1 WHERE id = 1")?
        .execute([])?;
    Ok(())
}

fn load(c: &Connection, id: &str) -> rusqlite::Result<Option<Silence>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM silences WHERE id = ?1"))?
        .query_row([id], row_to_silence)
        .optional()
}

fn select(
    c: &Connection,
    sql: &str,
    values: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Silence>> {
    c.prepare_cached(sql)?
        .query_map(values, row_to_silence)?
        .collect()
}

fn row_to_silence(r: &rusqlite::Row<'_>) -> rusqlite::Result<Silence> {
    Ok(Silence {
        id: r.get(0)?,
        matchers: parse_matchers(&r.get::<_, String>(1)?),
        starts_at_ms: r.get(2)?,
        ends_at_ms: r.get(3)?,
        created_by: r.get(4)?,
        comment: r.get(5)?,
        created_at_ms: r.get(6)?,
    })
}
