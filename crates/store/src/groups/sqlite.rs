//! The groups in SQLite: `groups.db` in the data directory, this process's alone.

use super::{Claimed, GroupId, Member, Repeats, Timing};
use rusqlite::{params, Connection};
use std::path::Path;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE delivery_groups (
        action TEXT NOT NULL,
        group_key TEXT NOT NULL,
        due_at_ms INTEGER,
        next_allowed_ms INTEGER NOT NULL,
        claimed_until_ms INTEGER,
        failures TEXT NOT NULL,
        PRIMARY KEY (action, group_key)
    );
    CREATE INDEX delivery_groups_due ON delivery_groups (due_at_ms) WHERE due_at_ms IS NOT NULL;
    CREATE TABLE delivery_group_members (
        action TEXT NOT NULL,
        group_key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        job TEXT NOT NULL,
        added_at_ms INTEGER NOT NULL,
        PRIMARY KEY (action, group_key, event_id)
    );
",
    "
    ALTER TABLE delivery_groups ADD COLUMN repeat_at_ms INTEGER;
    CREATE INDEX delivery_groups_repeat ON delivery_groups (repeat_at_ms)
        WHERE repeat_at_ms IS NOT NULL;
    CREATE TABLE delivery_group_firing (
        action TEXT NOT NULL,
        group_key TEXT NOT NULL,
        alert_key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        job TEXT NOT NULL,
        PRIMARY KEY (action, group_key, alert_key)
    );
",
];

#[derive(Clone)]
pub(super) struct SqliteGroups {
    db: Database,
}

impl SqliteGroups {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        // Full durability: a member's queue message is acked once it is here.
        Ok(SqliteGroups {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
        })
    }

    pub(super) async fn add(
        &self,
        id: GroupId,
        member: Member,
        timing: Timing,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        self.db
            .write(move |c| {
                let added = c
                    .prepare_cached(
                        "INSERT OR IGNORE INTO delivery_group_members \
                         (action, group_key, event_id, job, added_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![id.action, id.key, member.event_id, member.job, now_ms])?;
                if added == 0 {
                    return Ok(false);
                }
                c.prepare_cached(
                    "INSERT INTO delivery_groups \
                     (action, group_key, due_at_ms, next_allowed_ms, failures) \
                     VALUES (?1, ?2, ?3 + ?4, 0, '') \
                     ON CONFLICT (action, group_key) DO UPDATE SET \
                     due_at_ms = COALESCE(due_at_ms, MAX(?3, next_allowed_ms))",
                )?
                .execute(params![id.action, id.key, now_ms, timing.wait_ms])?;
                Ok(true)
            })
            .await
    }

    pub(super) async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        (groups, members): (i64, i64),
    ) -> Result<Vec<Claimed>, StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "DELETE FROM delivery_groups WHERE due_at_ms IS NULL AND next_allowed_ms <= ?1 \
                     AND repeat_at_ms IS NULL",
                )?
                .execute([now_ms])?;
                let due: Vec<(GroupId, String, bool)> = c
                    .prepare_cached(
                        "SELECT action, group_key, failures, due_at_ms IS NULL FROM delivery_groups \
                         WHERE (due_at_ms <= ?1 OR (due_at_ms IS NULL AND repeat_at_ms <= ?1)) \
                         AND (claimed_until_ms IS NULL OR claimed_until_ms <= ?1) \
                         ORDER BY COALESCE(due_at_ms, repeat_at_ms) LIMIT ?2",
                    )?
                    .query_map(params![now_ms, groups], |r| {
                        Ok((
                            GroupId {
                                action: r.get(0)?,
                                key: r.get(1)?,
                            },
                            r.get(2)?,
                            r.get(3)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut claimed = Vec::with_capacity(due.len());
                for (id, failures, repeat) in due {
                    c.prepare_cached(
                        "UPDATE delivery_groups SET claimed_until_ms = ?3 \
                         WHERE action = ?1 AND group_key = ?2",
                    )?
                    .execute(params![id.action, id.key, now_ms + lease_ms])?;
                    // A repeat names the latest event of each alert kept firing, oldest
                    // first (event ids are time ordered); a digest, the members as held.
                    let query = if repeat {
                        "SELECT event_id, job FROM delivery_group_firing \
                         WHERE action = ?1 AND group_key = ?2 ORDER BY event_id LIMIT ?3"
                    } else {
                        "SELECT event_id, job FROM delivery_group_members \
                         WHERE action = ?1 AND group_key = ?2 \
                         ORDER BY added_at_ms, event_id LIMIT ?3"
                    };
                    let members = members_of(c, query, &id, members)?;
                    claimed.push(Claimed {
                        id,
                        members,
                        failures,
                        repeat,
                    });
                }
                Ok(claimed)
            })
            .await
    }

    pub(super) async fn flushed(
        &self,
        id: GroupId,
        sent: Vec<String>,
        next_ms: i64,
        repeats: Option<Repeats>,
    ) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                let mut remove = c.prepare_cached(
                    "DELETE FROM delivery_group_members \
                     WHERE action = ?1 AND group_key = ?2 AND event_id = ?3",
                )?;
                for event_id in &sent {
                    remove.execute(params![id.action, id.key, event_id])?;
                }
                c.prepare_cached(
                    "UPDATE delivery_groups SET claimed_until_ms = NULL, failures = '', \
                     next_allowed_ms = ?3, \
                     due_at_ms = CASE WHEN EXISTS (SELECT 1 FROM delivery_group_members m \
                         WHERE m.action = ?1 AND m.group_key = ?2) THEN ?3 END \
                     WHERE action = ?1 AND group_key = ?2",
                )?
                .execute(params![id.action, id.key, next_ms])?;
                let Some(repeats) = repeats else {
                    return forget_firing(c, &id);
                };
                let mut keep = c.prepare_cached(
                    "INSERT INTO delivery_group_firing (action, group_key, alert_key, event_id, job) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (action, group_key, alert_key) \
                     DO UPDATE SET event_id = excluded.event_id, job = excluded.job",
                )?;
                for f in &repeats.firing {
                    keep.execute(params![id.action, id.key, f.alert_key, f.member.event_id, f.member.job])?;
                }
                let mut resolve = c.prepare_cached(
                    "DELETE FROM delivery_group_firing \
                     WHERE action = ?1 AND group_key = ?2 AND alert_key = ?3",
                )?;
                for alert_key in &repeats.resolved {
                    resolve.execute(params![id.action, id.key, alert_key])?;
                }
                c.prepare_cached(
                    "UPDATE delivery_groups SET repeat_at_ms = CASE WHEN EXISTS \
                         (SELECT 1 FROM delivery_group_firing f \
                         WHERE f.action = ?1 AND f.group_key = ?2) THEN ?3 END \
                     WHERE action = ?1 AND group_key = ?2",
                )?
                .execute(params![id.action, id.key, repeats.at_ms])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn repeated(
        &self,
        id: GroupId,
        next_ms: Option<i64>,
    ) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE delivery_groups SET claimed_until_ms = NULL, repeat_at_ms = ?3 \
                     WHERE action = ?1 AND group_key = ?2",
                )?
                .execute(params![id.action, id.key, next_ms])?;
                if next_ms.is_none() {
                    forget_firing(c, &id)?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn postpone(
        &self,
        id: GroupId,
        due_ms: i64,
        failures: String,
    ) -> Result<(), StorageError> {
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE delivery_groups SET claimed_until_ms = NULL, due_at_ms = ?3, \
                     failures = ?4 WHERE action = ?1 AND group_key = ?2",
                )?
                .execute(params![id.action, id.key, due_ms, failures])?;
                Ok(())
            })
            .await
    }

    pub(super) async fn held(&self) -> Result<i64, StorageError> {
        self.db
            .read(|c| {
                c.prepare_cached("SELECT COUNT(*) FROM delivery_group_members")?
                    .query_row([], |r| r.get(0))
            })
            .await
    }
}

/// The group keeps no firing alert: it repeats nothing.
fn forget_firing(c: &Connection, id: &GroupId) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM delivery_group_firing WHERE action = ?1 AND group_key = ?2")?
        .execute(params![id.action, id.key])?;
    c.prepare_cached(
        "UPDATE delivery_groups SET repeat_at_ms = NULL WHERE action = ?1 AND group_key = ?2",
    )?
    .execute(params![id.action, id.key])?;
    Ok(())
}

/// The members `query` selects of group `id`, `limit` at most.
fn members_of(
    c: &Connection,
    query: &str,
    id: &GroupId,
    limit: i64,
) -> rusqlite::Result<Vec<Member>> {
    c.prepare_cached(query)?
        .query_map(params![id.action, id.key, limit], |r| {
            Ok(Member {
                event_id: r.get(0)?,
                job: r.get(1)?,
            })
        })?
        .collect()
}
