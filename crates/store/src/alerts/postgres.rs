//! The alerts in PostgreSQL, shared by every process. A change locks the keys it touches
//! (transaction-scoped advisory locks, taken in key order so that two changes never wait on
//! each other in a circle), reads their alerts, folds in Rust, and writes back — a routing
//! batch in six round trips, whatever its size.

use super::{
    counts, fold_noting, muted_for_column, muted_for_from_column, sql, Alert, AlertQuery,
    AlertState, Change, Entry, Observed, COUNT_BY_STATE_AND_SEVERITY, HELD_BACK_BY, MUTED,
};
use crate::postgres::Postgres;
use crate::StoreError;
use deadpool_postgres::GenericClient;
use std::collections::{BTreeSet, HashMap, HashSet};
use tokio_postgres::Row;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE alerts (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        severity TEXT NOT NULL,
        event_type TEXT NOT NULL,
        subject TEXT NOT NULL,
        resource_name TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        first_seen_ms BIGINT NOT NULL,
        last_seen_ms BIGINT NOT NULL,
        firing_since_ms BIGINT NOT NULL,
        acknowledged_at_ms BIGINT,
        resolved_at_ms BIGINT,
        events BIGINT NOT NULL,
        latest_event TEXT NOT NULL
    );
    CREATE INDEX alerts_by_time ON alerts (last_seen_ms);
    CREATE INDEX alerts_by_state ON alerts (state, last_seen_ms);
    CREATE TABLE alert_timeline (
        id BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        event_id TEXT UNIQUE,
        entry TEXT NOT NULL
    );
    CREATE INDEX alert_timeline_by_alert ON alert_timeline (key, id);
",
    "
    ALTER TABLE alert_timeline ADD COLUMN silenced_by TEXT;
    CREATE INDEX alert_timeline_by_silence ON alert_timeline (silenced_by)
        WHERE silenced_by IS NOT NULL;
",
    "
    ALTER TABLE alerts ADD COLUMN muted_for TEXT;
    ALTER TABLE alerts ADD COLUMN mute_claimed_until_ms BIGINT;
    CREATE INDEX alerts_muted ON alerts (key) WHERE muted_for IS NOT NULL;
",
];

/// The advisory lock class of alert keys (`alrt`), apart from other modules' locks.
const LOCK_CLASS: i32 = 0x616c_7274;

const COLUMNS: &str = "key, state, severity, event_type, subject, resource_name, resource_type, \
    first_seen_ms, last_seen_ms, firing_since_ms, acknowledged_at_ms, resolved_at_ms, events, \
    latest_event, muted_for";

#[derive(Clone)]
pub(super) struct PostgresAlerts {
    pub(super) database: Postgres,
}

impl PostgresAlerts {
    pub(super) async fn open(database: &Postgres) -> Result<Self, StoreError> {
        database.migrate("alerts", MIGRATIONS).await?;
        Ok(PostgresAlerts {
            database: database.clone(),
        })
    }

    pub(super) async fn observe(
        &self,
        events: std::sync::Arc<[Observed]>,
    ) -> Result<Vec<Change>, StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        let keys: BTreeSet<&str> = events.iter().map(|o| o.event.alert_key()).collect();
        let keys: Vec<&str> = keys.into_iter().collect();
        lock(&transaction, &keys).await?;
        let ids: Vec<&str> = events.iter().map(|o| o.event.id.as_str()).collect();
        let mut seen: HashSet<String> = transaction
            .query(
                "SELECT event_id FROM alert_timeline WHERE event_id = ANY($1)",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut alerts = load(&transaction, &keys).await?;
        let mut changed = BTreeSet::new();
        let mut entries = Vec::new();
        let mut changes = Vec::new();
        for observed in events.iter() {
            if !seen.insert(observed.event.id.clone()) {
                continue;
            }
            let key = observed.event.alert_key();
            let (alert, added) = fold_noting(alerts.remove(key), observed, &mut changes);
            for entry in added {
                let event_id =
                    matches!(entry, Entry::Event { .. }).then_some(observed.event.id.as_str());
                entries.push((key, entry, event_id));
            }
            changed.insert(key);
            alerts.insert(key.to_owned(), alert);
        }
        let changed: Vec<&Alert> = changed.iter().map(|key| &alerts[*key]).collect();
        save(&transaction, &changed).await?;
        append(&transaction, &entries).await?;
        transaction.commit().await?;
        Ok(changes)
    }

    pub(super) async fn get(&self, key: String) -> Result<Option<(Alert, Vec<Entry>)>, StoreError> {
        let client = self.database.client().await?;
        let Some(alert) = load(&client, &[key.as_str()]).await?.remove(&key) else {
            return Ok(None);
        };
        let entries = client
            .query(
                "SELECT entry FROM alert_timeline WHERE key = $1 ORDER BY id",
                &[&key],
            )
            .await?
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect();
        Ok(Some((alert, entries)))
    }

    pub(super) async fn list(&self, query: AlertQuery) -> Result<(u64, Vec<Alert>), StoreError> {
        let client = self.database.client().await?;
        let (limit, offset) = query.limit_and_offset();
        let filter = "($1::TEXT IS NULL OR state = $1) AND ($2::TEXT IS NULL OR severity = $2) \
            AND ($3::TEXT IS NULL OR event_type = $3) AND ($4::TEXT IS NULL OR resource_name = $4) \
            AND ($5::BIGINT IS NULL OR last_seen_ms >= $5) \
            AND ($6::BIGINT IS NULL OR last_seen_ms < $6) \
            AND ($7::TEXT IS NULL OR lower(key) LIKE $7 OR lower(subject) LIKE $7)";
        let state = query.state.map(AlertState::as_str);
        let text = query.text_pattern();
        let values: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &state,
            &query.severity,
            &query.event_type,
            &query.resource_name,
            &query.since_ms,
            &query.until_ms,
            &text,
            &limit,
            &offset,
        ];
        let total: i64 = client
            .query_one(
                &format!("SELECT COUNT(*) FROM alerts WHERE {filter}"),
                &values[..7],
            )
            .await?
            .get(0);
        let alerts = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM alerts WHERE {filter} \
                     ORDER BY last_seen_ms DESC, key LIMIT $8 OFFSET $9"
                ),
                &values,
            )
            .await?
            .iter()
            .map(row_to_alert)
            .collect();
        Ok((total as u64, alerts))
    }

    pub(super) async fn count_by_state_and_severity(
        &self,
    ) -> Result<Vec<(AlertState, String, u64)>, StoreError> {
        let rows = self
            .database
            .client()
            .await?
            .query(COUNT_BY_STATE_AND_SEVERITY, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        Ok(counts(rows))
    }

    /// Runs `query` ([`super::HAS_UNSILENCED_EVENT`] or [`super::FOLDED`]) with `value`.
    pub(super) async fn exists(
        &self,
        query: &'static str,
        value: String,
    ) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let statement = client
            .prepare_cached(&sql(query, "alert_timeline", "$1", COLUMNS))
            .await?;
        Ok(client.query_one(&statement, &[&value]).await?.get(0))
    }

    pub(super) async fn held_back_by(&self, silence: String) -> Result<Vec<Alert>, StoreError> {
        let client = self.database.client().await?;
        Ok(client
            .query(
                &sql(HELD_BACK_BY, "alert_timeline", "$1", COLUMNS),
                &[&silence],
            )
            .await?
            .iter()
            .map(row_to_alert)
            .collect())
    }

    pub(super) async fn alert(&self, key: String) -> Result<Option<Alert>, StoreError> {
        let client = self.database.client().await?;
        Ok(load(&client, &[key.as_str()]).await?.remove(&key))
    }

    pub(super) async fn muted(&self, limit: i64) -> Result<Vec<Alert>, StoreError> {
        let client = self.database.client().await?;
        Ok(client
            .query(
                &MUTED.replace("{columns}", COLUMNS).replace("?1", "$1"),
                &[&limit],
            )
            .await?
            .iter()
            .map(row_to_alert)
            .collect())
    }

    pub(super) async fn claim_mute_release(
        &self,
        key: String,
        now_ms: i64,
        for_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.database.client().await?;
        let claimed = client
            .execute(
                "UPDATE alerts SET mute_claimed_until_ms = $2 WHERE key = $1 \
                 AND (mute_claimed_until_ms IS NULL OR mute_claimed_until_ms <= $3)",
                &[&key, &(now_ms + for_ms), &now_ms],
            )
            .await?;
        Ok(claimed == 1)
    }

    pub(super) async fn purge_resolved_before(
        &self,
        cutoff_ms: i64,
        batch: u32,
    ) -> Result<usize, StoreError> {
        let mut client = self.database.client().await?;
        let transaction = client.transaction().await?;
        let keys: Vec<String> = transaction
            .query(
                "DELETE FROM alerts WHERE key IN (SELECT key FROM alerts \
                 WHERE state = 'resolved' AND resolved_at_ms < $1 \
                 ORDER BY resolved_at_ms LIMIT $2) RETURNING key",
                &[&cutoff_ms, &i64::from(batch)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        transaction
            .execute("DELETE FROM alert_timeline WHERE key = ANY($1)", &[&keys])
            .await?;
        transaction.commit().await?;
        Ok(keys.len())
    }
}

/// Locks `keys` (sorted) until the transaction ends.
async fn lock(client: &impl GenericClient, keys: &[&str]) -> Result<(), StoreError> {
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(k)) FROM unnest($2::TEXT[]) AS k ORDER BY k",
            &[&LOCK_CLASS, &keys],
        )
        .await?;
    Ok(())
}

async fn load(
    client: &impl GenericClient,
    keys: &[&str],
) -> Result<HashMap<String, Alert>, StoreError> {
    Ok(client
        .query(
            &format!("SELECT {COLUMNS} FROM alerts WHERE key = ANY($1)"),
            &[&keys],
        )
        .await?
        .iter()
        .map(|r| {
            let alert = row_to_alert(r);
            (alert.key.clone(), alert)
        })
        .collect())
}

async fn save(client: &impl GenericClient, alerts: &[&Alert]) -> Result<(), StoreError> {
    if alerts.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Alert) -> &str| alerts.iter().map(|a| f(a)).collect::<Vec<&str>>();
    let number = |f: fn(&Alert) -> i64| alerts.iter().map(|a| f(a)).collect::<Vec<i64>>();
    let maybe = |f: fn(&Alert) -> Option<i64>| alerts.iter().map(|a| f(a)).collect::<Vec<_>>();
    client
        .execute(
            &format!(
                "INSERT INTO alerts ({COLUMNS}) SELECT * FROM unnest($1::TEXT[], $2::TEXT[], \
                 $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::BIGINT[], \
                 $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], \
                 $14::TEXT[], $15::TEXT[]) \
                 ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, \
                 severity = EXCLUDED.severity, event_type = EXCLUDED.event_type, \
                 subject = EXCLUDED.subject, resource_name = EXCLUDED.resource_name, \
                 resource_type = EXCLUDED.resource_type, first_seen_ms = EXCLUDED.first_seen_ms, \
                 last_seen_ms = EXCLUDED.last_seen_ms, firing_since_ms = EXCLUDED.firing_since_ms, \
                 acknowledged_at_ms = EXCLUDED.acknowledged_at_ms, \
                 resolved_at_ms = EXCLUDED.resolved_at_ms, events = EXCLUDED.events, \
                 latest_event = EXCLUDED.latest_event, muted_for = EXCLUDED.muted_for"
            ),
            &[
                &column(|a| &a.key),
                &column(|a| a.state.as_str()),
                &column(|a| &a.severity),
                &column(|a| &a.event_type),
                &column(|a| &a.subject),
                &column(|a| &a.resource_name),
                &column(|a| &a.resource_type),
                &number(|a| a.first_seen_ms),
                &number(|a| a.last_seen_ms),
                &number(|a| a.firing_since_ms),
                &maybe(|a| a.acknowledged_at_ms),
                &maybe(|a| a.resolved_at_ms),
                &number(|a| a.events),
                &column(|a| &a.latest_event),
                &alerts
                    .iter()
                    .map(|a| muted_for_column(&a.muted_for))
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    Ok(())
}

async fn append(
    client: &impl GenericClient,
    entries: &[(&str, Entry, Option<&str>)],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = entries.iter().map(|(key, _, _)| *key).collect();
    let at: Vec<i64> = entries.iter().map(|(_, e, _)| e.at_ms()).collect();
    let ids: Vec<Option<&str>> = entries.iter().map(|(_, _, id)| *id).collect();
    let json: Vec<String> = entries
        .iter()
        .map(|(_, e, _)| serde_json::to_string(e).expect("entries serialize"))
        .collect();
    let silenced: Vec<Option<&str>> = entries.iter().map(|(_, e, _)| e.silenced_by()).collect();
    client
        .execute(
            "INSERT INTO alert_timeline (key, at_ms, event_id, entry, silenced_by) \
             SELECT key, at_ms, event_id, entry, silenced_by \
             FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) \
             WITH ORDINALITY AS t(key, at_ms, event_id, entry, silenced_by, n) ORDER BY n",
            &[&keys, &at, &ids, &json, &silenced],
        )
        .await?;
    Ok(())
}

fn row_to_alert(r: &Row) -> Alert {
    Alert {
        key: r.get(0),
        state: AlertState::parse(r.get(1)).unwrap_or(AlertState::Firing),
        severity: r.get(2),
        event_type: r.get(3),
        subject: r.get(4),
        resource_name: r.get(5),
        resource_type: r.get(6),
        first_seen_ms: r.get(7),
        last_seen_ms: r.get(8),
        firing_since_ms: r.get(9),
        acknowledged_at_ms: r.get(10),
        resolved_at_ms: r.get(11),
        events: r.get(12),
        latest_event: r.get(13),
        muted_for: muted_for_from_column(r.get(14)),
    }
}
