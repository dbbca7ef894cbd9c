//! The groups in PostgreSQL, shared by every process. Adding a member and making its group
//! due is one statement; a flusher claims due groups with `FOR UPDATE SKIP LOCKED` and a lease,
//! so that of several processes one sends each digest, and a claim whose process died lapses.

use super::{Claimed, GroupId, Member, Repeats, Timing};
use crate::postgres::Postgres;
use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE delivery_groups (
        action TEXT NOT NULL,
        group_key TEXT NOT NULL,
        due_at_ms BIGINT,
        next_allowed_ms BIGINT NOT NULL,
        claimed_until_ms BIGINT,
        failures TEXT NOT NULL,
        PRIMARY KEY (action, group_key)
    );
    CREATE INDEX delivery_groups_due ON delivery_groups (due_at_ms) WHERE due_at_ms IS NOT NULL;
    CREATE TABLE delivery_group_members (
        action TEXT NOT NULL,
        group_key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        job TEXT NOT NULL,
        added_at_ms BIGINT NOT NULL,
        PRIMARY KEY (action, group_key, event_id)
    );
",
    "
    ALTER TABLE delivery_groups ADD COLUMN repeat_at_ms BIGINT;
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
pub(super) struct PostgresGroups {
    pub(super) database: Postgres,
}

impl PostgresGroups {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("groups", MIGRATIONS).await?;
        Ok(PostgresGroups {
            database: database.clone(),
        })
    }

    pub(super) async fn add(
        &self,
        id: GroupId,
        member: Member,
        timing: Timing,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let statement = client
            .prepare_cached(
                "WITH member AS ( \
                     INSERT INTO delivery_group_members \
                     (action, group_key, event_id, job, added_at_ms) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT DO NOTHING RETURNING 1) \
                 INSERT INTO delivery_groups \
                 (action, group_key, due_at_ms, next_allowed_ms, failures) \
                 SELECT $1, $2, $5 + $6, 0, '' FROM member \
                 ON CONFLICT (action, group_key) DO UPDATE SET due_at_ms = \
                     COALESCE(delivery_groups.due_at_ms, GREATEST($5, delivery_groups.next_allowed_ms))",
            )
            .await?;
        let added = client
            .execute(
                &statement,
                &[
                    &id.action,
                    &id.key,
                    &member.event_id,
                    &member.job,
                    &now_ms,
                    &timing.wait_ms,
                ],
            )
            .await?;
        Ok(added == 1)
    }

    pub(super) async fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        (groups, members): (i64, i64),
    ) -> Result<Vec<Claimed>, StoreError> {
        let client = self.database.client().await?;
        client
            .execute(
                "DELETE FROM delivery_groups WHERE due_at_ms IS NULL AND next_allowed_ms <= $1 \
                 AND repeat_at_ms IS NULL",
                &[&now_ms],
            )
            .await?;
        let due = client
            .query(
                "WITH due AS ( \
                     SELECT action, group_key FROM delivery_groups \
                     WHERE (due_at_ms <= $1 OR (due_at_ms IS NULL AND repeat_at_ms <= $1)) \
                     AND (claimed_until_ms IS NULL OR claimed_until_ms <= $1) \
                     ORDER BY COALESCE(due_at_ms, repeat_at_ms) LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE delivery_groups g SET claimed_until_ms = $1 + $2 FROM due \
                 WHERE g.action = due.action AND g.group_key = due.group_key \
                 RETURNING g.action, g.group_key, g.failures, g.due_at_ms IS NULL",
                &[&now_ms, &lease_ms, &groups],
            )
            .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for row in due {
            let id = GroupId {
                action: row.get(0),
                key: row.get(1),
            };
            let repeat: bool = row.get(3);
            // A repeat names the latest event of each alert kept firing, oldest first (event
            // ids are time ordered).
            let query = if repeat {
                "SELECT event_id, job FROM delivery_group_firing \
                 WHERE action = $1 AND group_key = $2 ORDER BY event_id LIMIT $3"
            } else {
                "SELECT event_id, job FROM delivery_group_members \
                 WHERE action = $1 AND group_key = $2 \
                 ORDER BY added_at_ms, event_id LIMIT $3"
            };
            let members = client
                .query(query, &[&id.action, &id.key, &members])
                .await?
                .iter()
                .map(|r| Member {
                    event_id: r.get(0),
                    job: r.get(1),
                })
                .collect();
            claimed.push(Claimed {
                id,
                members,
                failures: row.get(2),
                repeat,
            });
        }
        Ok(claimed)
    }

    pub(super) async fn flushed(
        &self,
        id: GroupId,
        sent: Vec<String>,
        next_ms: i64,
        repeats: Option<Repeats>,
    ) -> Result<(), StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "DELETE FROM delivery_group_members \
                 WHERE action = $1 AND group_key = $2 AND event_id = ANY($3)",
                &[&id.action, &id.key, &sent],
            )
            .await?;
        transaction
            .execute(
                "UPDATE delivery_groups SET claimed_until_ms = NULL, failures = '', \
                 next_allowed_ms = $3, \
                 due_at_ms = CASE WHEN EXISTS (SELECT 1 FROM delivery_group_members m \
                     WHERE m.action = $1 AND m.group_key = $2) THEN $3::BIGINT END \
                 WHERE action = $1 AND group_key = $2",
                &[&id.action, &id.key, &next_ms],
            )
            .await?;
        let Some(repeats) = repeats else {
            forget_firing(&transaction, &id).await?;
            return Ok(transaction.commit().await?);
        };
        let (keys, (event_ids, jobs)): (Vec<&str>, (Vec<&str>, Vec<&str>)) = repeats
            .firing
            .iter()
            .map(|f| {
                (
                    f.alert_key.as_str(),
                    (f.member.event_id.as_str(), f.member.job.as_str()),
                )
            })
            .unzip();
        // The caller names each alert once: an upsert cannot touch a row twice.
        if !keys.is_empty() {
            transaction
                .execute(
                    "INSERT INTO delivery_group_firing (action, group_key, alert_key, event_id, job) \
                     SELECT $1::TEXT, $2::TEXT, * FROM UNNEST($3::TEXT[], $4::TEXT[], $5::TEXT[]) \
                     ON CONFLICT (action, group_key, alert_key) \
                     DO UPDATE SET event_id = excluded.event_id, job = excluded.job",
                    &[&id.action, &id.key, &keys, &event_ids, &jobs],
                )
                .await?;
        }
        if !repeats.resolved.is_empty() {
            transaction
                .execute(
                    "DELETE FROM delivery_group_firing \
                     WHERE action = $1 AND group_key = $2 AND alert_key = ANY($3)",
                    &[&id.action, &id.key, &repeats.resolved],
                )
                .await?;
        }
        transaction
            .execute(
                "UPDATE delivery_groups SET repeat_at_ms = CASE WHEN EXISTS \
                     (SELECT 1 FROM delivery_group_firing f \
                     WHERE f.action = $1 AND f.group_key = $2) THEN $3::BIGINT END \
                 WHERE action = $1 AND group_key = $2",
                &[&id.action, &id.key, &repeats.at_ms],
            )
            .await?;
        Ok(transaction.commit().await?)
    }

    pub(super) async fn repeated(
        &self,
        id: GroupId,
        next_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "UPDATE delivery_groups SET claimed_until_ms = NULL, repeat_at_ms = $3 \
                 WHERE action = $1 AND group_key = $2",
                &[&id.action, &id.key, &next_ms],
            )
            .await?;
        if next_ms.is_none() {
            forget_firing(&transaction, &id).await?;
        }
        Ok(transaction.commit().await?)
    }

    pub(super) async fn postpone(
        &self,
        id: GroupId,
        due_ms: i64,
        failures: String,
    ) -> Result<(), StoreError> {
        let client = self.database.client().await?;
        client
            .execute(
                "UPDATE delivery_groups SET claimed_until_ms = NULL, due_at_ms = $3, \
                 failures = $4 WHERE action = $1 AND group_key = $2",
                &[&id.action, &id.key, &due_ms, &failures],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn held(&self) -> Result<i64, StoreError> {
        let client = self.database.client().await?;
        Ok(client
            .query_one("SELECT COUNT(*) FROM delivery_group_members", &[])
            .await?
            .get(0))
    }
}

/// The group keeps no firing alert: it repeats nothing.
async fn forget_firing(
    transaction: &tokio_postgres::Transaction<'_>,
    id: &GroupId,
) -> Result<(), StoreError> {
    // One round trip: a digest of a group that never repeats pays little for repeats.
    transaction
        .execute(
            "WITH gone AS (DELETE FROM delivery_group_firing \
                 WHERE action = $1 AND group_key = $2) \
             UPDATE delivery_groups SET repeat_at_ms = NULL WHERE action = $1 AND group_key = $2",
            &[&id.action, &id.key],
        )
        .await?;
    Ok(())
}
