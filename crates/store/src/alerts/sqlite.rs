//! The alerts in SQLite: `alerts.db` in the data directory, this process's alone. Every change
//! runs on the file's one writer, so reading an alert and writing it back is never interleaved
//! with another change.

use super::{
    counts, fold_noting, muted_for_column, muted_for_from_column, sql, Alert, AlertQuery,
    AlertState, Change, Entry, Observed, COUNT_BY_STATE_AND_SEVERITY, HELD_BACK_BY, MUTED,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use storage::{Database, Durability, StorageError};

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
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        firing_since_ms INTEGER NOT NULL,
        acknowledged_at_ms INTEGER,
        resolved_at_ms INTEGER,
        events INTEGER NOT NULL,
        latest_event TEXT NOT NULL
    );
    CREATE INDEX alerts_by_time ON alerts (last_seen_ms);
    CREATE INDEX alerts_by_state ON alerts (state, last_seen_ms);
    CREATE TABLE timeline (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        event_id TEXT UNIQUE,
        entry TEXT NOT NULL
    );
    CREATE INDEX timeline_by_alert ON timeline (key, id);
",
    "
    ALTER TABLE timeline ADD COLUMN silenced_by TEXT;
    CREATE INDEX timeline_by_silence ON timeline (silenced_by) WHERE silenced_by IS NOT NULL;
",
    "
    ALTER TABLE alerts ADD COLUMN muted_for TEXT;
    ALTER TABLE alerts ADD COLUMN mute_claimed_until_ms INTEGER;
    CREATE INDEX alerts_muted ON alerts (key) WHERE muted_for IS NOT NULL;
",
];

const COLUMNS: &str = "key, state, severity, event_type, subject, resource_name, resource_type, \
    first_seen_ms, last_seen_ms, firing_since_ms, acknowledged_at_ms, resolved_at_ms, events, \
    latest_event, muted_for";

#[derive(Clone)]
pub(super) struct SqliteAlerts {
    db: Database,
}

impl SqliteAlerts {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        // Normal durability, as for the records: an alert's state is rebuilt from events
        // routed again if the machine loses the last commits.
        Ok(SqliteAlerts {
            db: Database::open(path, MIGRATIONS, Durability::Normal, None)?,
        })
    }

    pub(super) async fn observe(
        &self,
        events: std::sync::Arc<[Observed]>,
    ) -> Result<Vec<Change>, StorageError> {
        self.db
            .write(move |c| {
                let mut changes = Vec::new();
                for observed in events.iter() {
                    let seen: Option<i64> = c
                        .prepare_cached("SELECT 1 FROM timeline WHERE event_id = ?1")?
                        .query_row([&observed.event.id], |r| r.get(0))
                        .optional()?;
                    if seen.is_some() {
                        continue;
                    }
                    let before = load(c, observed.event.alert_key())?;
                    let (alert, entries) = fold_noting(before, observed, &mut changes);
                    save(c, &alert)?;
                    for entry in &entries {
                        let event_id = matches!(entry, Entry::Event { .. })
                            .then_some(observed.event.id.as_str());
                        append(c, &alert.key, entry, event_id)?;
                    }
                }
                Ok(changes)
            })
            .await
    }

    pub(super) async fn get(
        &self,
        key: String,
    ) -> Result<Option<(Alert, Vec<Entry>)>, StorageError> {
        self.db
            .read(move |c| {
                let Some(alert) = load(c, &key)? else {
                    return Ok(None);
                };
                let mut statement =
                    c.prepare_cached("SELECT entry FROM timeline WHERE key = ?1 ORDER BY id")?;
                let entries = statement
                    .query_map([&key], |r| r.get::<_, String>(0))?
                    .filter_map(|entry| entry.ok().and_then(|e| serde_json::from_str(&e).ok()))
                    .collect();
                Ok(Some((alert, entries)))
            })
            .await
    }

    pub(super) async fn list(&self, query: AlertQuery) -> Result<(u64, Vec<Alert>), StorageError> {
        self.db
            .read(move |c| {
                let (limit, offset) = query.limit_and_offset();
                let filter = "(?1 IS NULL OR state = ?1) AND (?2 IS NULL OR severity = ?2) \
                    AND (?3 IS NULL OR event_type = ?3) AND (?4 IS NULL OR resource_name = ?4) \
                    AND (?5 IS NULL OR last_seen_ms >= ?5) AND (?6 IS NULL OR last_seen_ms < ?6) \
                    AND (?7 IS NULL OR lower(key) LIKE ?7 ESCAPE '\\' \
                         OR lower(subject) LIKE ?7 ESCAPE '\\')";
                let values = params![
                    query.state.map(AlertState::as_str),
                    query.severity,
                    query.event_type,
                    query.resource_name,
                    query.since_ms,
                    query.until_ms,
                    query.text_pattern(),
                    limit,
                    offset,
                ];
                let total: i64 = c
                    .prepare_cached(&format!("SELECT COUNT(*) FROM alerts WHERE {filter}"))?
                    .query_row(&values[..7], |r| r.get(0))?;
                let mut page = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM alerts WHERE {filter} \
                     ORDER BY last_seen_ms DESC, key LIMIT ?8 OFFSET ?9"
                ))?;
                let alerts = page
                    .query_map(values, row_to_alert)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((total as u64, alerts))
            })
            .await
    }

    pub(super) async fn count_by_state_and_severity(
        &self,
    ) -> Result<Vec<(AlertState, String, u64)>, StorageError> {
        self.db
            .read(|c| {
                let mut statement = c.prepare_cached(COUNT_BY_STATE_AND_SEVERITY)?;
                let rows = statement
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(counts(rows))
            })
            .await
    }

    /// Runs `query` ([`super::HAS_UNSILENCED_EVENT`] or [`super::FOLDED`]) with `value`.
    pub(super) async fn exists(
        &self,
        query: &'static str,
        value: String,
    ) -> Result<bool, StorageError> {
        self.db
            .read(move |c| {
                c.prepare_cached(&sql(query, "timeline", "?1", COLUMNS))?
                    .query_row([&value], |r| r.get(0))
            })
            .await
    }

    pub(super) async fn held_back_by(&self, silence: String) -> Result<Vec<Alert>, StorageError> {
        self.db
            .read(move |c| {
                c.prepare_cached(&sql(HELD_BACK_BY, "timeline", "?1", COLUMNS))?
                    .query_map([&silence], row_to_alert)?
                    .collect()
            })
            .await
    }

    pub(super) async fn alert(&self, key: String) -> Result<Option<Alert>, StorageError> {
        self.db.read(move |c| load(c, &key)).await
    }

    pub(super) async fn muted(&self, limit: i64) -> Result<Vec<Alert>, StorageError> {
        self.db
            .read(move |c| {
                c.prepare_cached(&MUTED.replace("{columns}", COLUMNS))?
                    .query_map([limit], row_to_alert)?
                    .collect()
            })
            .await
    }

    pub(super) async fn claim_mute_release(
        &self,
        key: String,
        now_ms: i64,
        for_ms: i64,
    ) -> Result<bool, StorageError> {
        self.db
            .write(move |c| {
                let claimed = c
                    .prepare_cached(
                        "UPDATE alerts SET mute_claimed_until_ms = ?2 WHERE key = ?1 \
                         AND (mute_claimed_until_ms IS NULL OR mute_claimed_until_ms <= ?3)",
                    )?
                    .execute(params![key, now_ms + for_ms, now_ms])?;
                Ok(claimed == 1)
            })
            .await
    }

    pub(super) async fn purge_resolved_before(
        &self,
        cutoff_ms: i64,
        batch: u32,
    ) -> Result<usize, StorageError> {
        self.db
            .write(move |c| {
                let keys: Vec<String> = c
                    .prepare_cached(
                        "SELECT key FROM alerts WHERE state = 'resolved' AND resolved_at_ms < ?1 \
                         ORDER BY resolved_at_ms LIMIT ?2",
                    )?
                    .query_map(params![cutoff_ms, batch], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for key in &keys {
                    c.prepare_cached("DELETE FROM timeline WHERE key = ?1")?
                        .execute([key])?;
                    c.prepare_cached("DELETE FROM alerts WHERE key = ?1")?
                        .execute([key])?;
                }
                Ok(keys.len())
            })
            .await
    }
}

fn load(c: &Connection, key: &str) -> rusqlite::Result<Option<Alert>> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM alerts WHERE key = ?1"))?
        .query_row([key], row_to_alert)
        .optional()
}

fn save(c: &Connection, a: &Alert) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT OR REPLACE INTO alerts ({COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        a.key,
        a.state.as_str(),
        a.severity,
        a.event_type,
        a.subject,
        a.resource_name,
        a.resource_type,
        a.first_seen_ms,
        a.last_seen_ms,
        a.firing_since_ms,
        a.acknowledged_at_ms,
        a.resolved_at_ms,
        a.events,
        a.latest_event,
        muted_for_column(&a.muted_for),
    ])?;
    Ok(())
}

fn append(
    c: &Connection,
    key: &str,
    entry: &Entry,
    event_id: Option<&str>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO timeline (key, at_ms, event_id, entry, silenced_by) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        key,
        entry.at_ms(),
        event_id,
        serde_json::to_string(entry).expect("entries serialize"),
        entry.silenced_by(),
    ])?;
    Ok(())
}

fn row_to_alert(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let state: String = r.get(1)?;
    Ok(Alert {
        key: r.get(0)?,
        state: AlertState::parse(&state).unwrap_or(AlertState::Firing),
        severity: r.get(2)?,
        event_type: r.get(3)?,
        subject: r.get(4)?,
        resource_name: r.get(5)?,
        resource_type: r.get(6)?,
        first_seen_ms: r.get(7)?,
        last_seen_ms: r.get(8)?,
        firing_since_ms: r.get(9)?,
        acknowledged_at_ms: r.get(10)?,
        resolved_at_ms: r.get(11)?,
        events: r.get(12)?,
        latest_event: r.get(13)?,
        muted_for: muted_for_from_column(r.get(14)?),
    })
}
