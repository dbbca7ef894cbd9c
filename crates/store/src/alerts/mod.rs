//! Alerts: the chain of events that share an alert key (`ans:sourceEventId`, or an event alone),
//! with its state — firing, acknowledged, resolved — and its timeline: every event accepted and
//! every human action, in order. (Delivery outcomes join the timeline when it is read, from the
//! attempts in [`crate::records`].)
//!
//! Flow: the router folds each batch of events it routes into their alerts
//! ([`AlertStore::observe`], one transaction per batch; an event already folded — routed again
//! after a crash — changes nothing). A person's act arrives the same way, as an event of the
//! chain carrying a [`HumanAct`] (see [`model::alert`]), so every change of an alert has one
//! writer and one order. The rules are pure functions here ([`Alert::fold`], [`Alert::act`]);
//! the two backends (`sqlite.rs`, `alerts.db`; `postgres.rs`, shared) only load and save rows,
//! each change of one alert under a lock (SQLite's one writer, PostgreSQL's advisory locks).
//! A batch's fold answers what it changed ([`Change`]: acts that took effect, alerts that
//! became acknowledged or resolved), once committed, for the router to count; how many alerts
//! are in each state is read from the store ([`AlertStore::count_by_state_and_severity`]), so
//! that processes sharing it agree.

mod postgres;
mod sqlite;

use crate::{Location, StoreError};
pub use model::alert::{HumanAct, HumanAction};
use model::event::Transition;
use model::ResourceEvent;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub const ALL: [AlertState; 3] = [
        AlertState::Firing,
        AlertState::Acknowledged,
        AlertState::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One alert, as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub key: String,
    pub state: AlertState,
    /// Of the latest event that opened or closed it (a comment changes none of these).
    pub severity: String,
    pub event_type: String,
    pub subject: String,
    pub resource_name: String,
    pub resource_type: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// When it last started firing (its first event, or the one that reopened it).
    pub firing_since_ms: i64,
    pub acknowledged_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// Events in its chain, comments and people's actions included.
    pub events: i64,
    /// The latest event that opened or closed it, as accepted: what a person's action is built
    /// from.
    #[serde(skip)]
    pub latest_event: String,
    /// The subscriptions a time interval kept from hearing its latest state, while it is not
    /// resolved: the end of their mute windows delivers it to them (`mutes` in the router).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub muted_for: Vec<String>,
}

/// One line of an alert's timeline (kept as its JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    rename_all = "camelCase",
    tag = "kind",
    rename_all_fields = "camelCase"
)]
pub enum Entry {
    /// An event of the chain was accepted.
    Event {
        at_ms: i64,
        event_id: String,
        /// Its `ans:status`, if it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        subject: String,
        /// The silence that held it back from its destinations, if one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        silenced_by: Option<String>,
        /// The subscriptions a time interval muted for it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        muted_for: Vec<String>,
    },
    /// A person acted.
    Action {
        at_ms: i64,
        action: HumanAction,
        who: String,
        via: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
}

impl Entry {
    pub fn at_ms(&self) -> i64 {
        match self {
            Entry::Event { at_ms, .. } | Entry::Action { at_ms, .. } => *at_ms,
        }
    }

    /// The silence that held this event back, if one did.
    fn silenced_by(&self) -> Option<&str> {
        match self {
            Entry::Event { silenced_by, .. } => silenced_by.as_deref(),
            Entry::Action { .. } => None,
        }
    }
}

/// An accepted event, as the router hands it over.
#[derive(Debug, Clone)]
pub struct Observed {
    pub event: ResourceEvent,
    pub accepted_at_ms: i64,
    /// The person's act the event carries, if the alerts API made it.
    pub by: Option<HumanAct>,
    /// The silence that held the event back from its destinations, if one did.
    pub silenced_by: Option<String>,
    /// The subscriptions with time intervals whose conditions held for the event but that a
    /// time interval muted (none without time intervals: nothing allocated).
    pub muted_for: Vec<String>,
    /// The subscriptions with time intervals that the event went to: they heard the alert's
    /// latest state.
    pub heard_by: Vec<String>,
}

impl Alert {
    /// The alert after `observed`, given what it was (`None`: the event starts it), and the
    /// lines it adds to the timeline: the person's act, if it changed anything, then the event.
    pub fn fold(before: Option<Alert>, observed: &Observed) -> (Alert, Vec<Entry>) {
        let (mut alert, entries) = Alert::fold_state(before, observed);
        alert.note_mutes(observed);
        (alert, entries)
    }

    /// Which subscriptions still lack the alert's latest state after `observed`: those a time
    /// interval muted for it or before, less those it went to — none once it is resolved
    /// (a muted `CLOSE` of an alert they never heard of tells them nothing).
    fn note_mutes(&mut self, observed: &Observed) {
        if self.state == AlertState::Resolved {
            self.muted_for.clear();
            return;
        }
        for subscription in &observed.muted_for {
            if !self.muted_for.contains(subscription) {
                self.muted_for.push(subscription.clone());
            }
        }
        self.muted_for.retain(|s| !observed.heard_by.contains(s));
    }

    /// [`Alert::fold`] but for the mutes.
    fn fold_state(before: Option<Alert>, observed: &Observed) -> (Alert, Vec<Entry>) {
        let event = event_entry(observed);
        let (Some(by), Some(alert)) = (&observed.by, &before) else {
            return (Alert::observe(before, observed), vec![event]);
        };
        // An act only adds to its alert: the event it came in counts, the rest is the act's.
        let mut after = match alert.act(by.action, observed.accepted_at_ms) {
            Acted::Done(after) => after,
            Acted::Unchanged(alert) | Acted::Refused(alert) => {
                let mut alert = alert;
                alert.events += 1;
                alert.last_seen_ms = alert.last_seen_ms.max(observed.accepted_at_ms);
                return (alert, vec![event]);
            }
        };
        after.events += 1;
        after.last_seen_ms = after.last_seen_ms.max(observed.accepted_at_ms);
        let action = action_entry(by, observed.accepted_at_ms);
        (after, vec![action, event])
    }

    /// The alert after `observed`, an event of its chain, given what it was.
    fn observe(before: Option<Alert>, observed: &Observed) -> Alert {
        let event = &observed.event;
        let at = observed.accepted_at_ms;
        let transition = Transition::of(event);
        let mut alert = before.unwrap_or_else(|| Alert {
            key: event.alert_key().to_owned(),
            state: AlertState::Firing,
            severity: String::new(),
            event_type: String::new(),
            subject: String::new(),
            resource_name: String::new(),
            resource_type: String::new(),
            first_seen_ms: at,
            last_seen_ms: at,
            firing_since_ms: at,
            acknowledged_at_ms: None,
            resolved_at_ms: None,
            events: 0,
            latest_event: String::new(),
            muted_for: Vec::new(),
        });
        alert.events += 1;
        alert.last_seen_ms = alert.last_seen_ms.max(at);
        if transition == Transition::Comment && !alert.latest_event.is_empty() {
            return alert;
        }
        alert.severity = event.severity.as_str().to_owned();
        alert.event_type = event.event_type.clone();
        alert.subject = event.subject.clone();
        alert.resource_name = event.resource.resource_name.clone();
        alert.resource_type = event.resource.resource_type.clone();
        alert.latest_event = serde_json::to_string(event).expect("events serialize");
        match (transition, alert.state) {
            (Transition::Close, AlertState::Firing | AlertState::Acknowledged) => {
                alert.state = AlertState::Resolved;
                alert.resolved_at_ms = Some(at);
            }
            (Transition::Open, AlertState::Resolved) => {
                alert.state = AlertState::Firing;
                alert.firing_since_ms = at;
                alert.acknowledged_at_ms = None;
                alert.resolved_at_ms = None;
            }
            _ => {}
        }
        alert
    }

    /// What `action` makes of this alert at `at_ms`: the alert as it becomes, or why not.
    /// Acting twice is acting once: acknowledging an acknowledged alert changes nothing.
    pub fn act(&self, action: HumanAction, at_ms: i64) -> Acted {
        let mut after = self.clone();
        match (action, self.state) {
            (_, AlertState::Resolved) => return Acted::Refused(self.clone()),
            (HumanAction::Acknowledge, AlertState::Acknowledged)
            | (HumanAction::Unacknowledge, AlertState::Firing) => {
                return Acted::Unchanged(self.clone())
            }
            (HumanAction::Acknowledge, _) => {
                after.state = AlertState::Acknowledged;
                after.acknowledged_at_ms = Some(at_ms);
            }
            (HumanAction::Unacknowledge, _) => {
                after.state = AlertState::Firing;
                after.acknowledged_at_ms = None;
            }
            (HumanAction::Resolve, _) => {
                after.state = AlertState::Resolved;
                after.resolved_at_ms = Some(at_ms);
            }
            (HumanAction::Comment, _) => {}
        }
        Acted::Done(after)
    }
}

/// What a fold changed that the metrics count — once, by the process whose fold it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A person's act took effect (not one already so, nor one on a resolved alert).
    Acted { action: HumanAction, via: String },
    /// The alert became acknowledged, `after_ms` after it started firing.
    Acknowledged { after_ms: i64 },
    /// The alert became resolved, `after_ms` after it started firing.
    Resolved { after_ms: i64 },
}

/// [`Alert::fold`], noting in `changes` what the fold changed. An alert that starts resolved
/// (its first event closes it) never fired here: no time to resolve.
fn fold_noting(
    before: Option<Alert>,
    observed: &Observed,
    changes: &mut Vec<Change>,
) -> (Alert, Vec<Entry>) {
    let was = before.as_ref().map(|a| (a.state, a.firing_since_ms));
    let (after, entries) = Alert::fold(before, observed);
    changes.extend(entries.iter().filter_map(|entry| match entry {
        Entry::Action { action, via, .. } => Some(Change::Acted {
            action: *action,
            via: via.clone(),
        }),
        Entry::Event { .. } => None,
    }));
    if let Some((_, firing_since_ms)) = was.filter(|(state, _)| *state != after.state) {
        // Clocks of different processes may disagree a little: never below zero.
        let after_ms = observed
            .accepted_at_ms
            .saturating_sub(firing_since_ms)
            .max(0);
        match after.state {
            AlertState::Acknowledged => changes.push(Change::Acknowledged { after_ms }),
            AlertState::Resolved => changes.push(Change::Resolved { after_ms }),
            AlertState::Firing => {}
        }
    }
    (after, entries)
}

/// What became of a person's action.
#[derive(Debug, Clone, PartialEq)]
pub enum Acted {
    /// Done: the alert as the act leaves it (in the same state, for a comment).
    Done(Alert),
    /// Already so: nothing changed, nothing was noted.
    Unchanged(Alert),
    /// The alert is resolved: nothing can be done to it.
    Refused(Alert),
}

/// What the alerts API asks for; newest (last seen) first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertQuery {
    pub state: Option<AlertState>,
    pub severity: Option<String>,
    pub event_type: Option<String>,
    pub resource_name: Option<String>,
    /// Last seen at or after / before this time (epoch ms).
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// In the key or the subject, case-insensitively.
    pub text: Option<String>,
    pub page: u64,
    pub page_size: u64,
}

impl AlertQuery {
    fn limit_and_offset(&self) -> (i64, i64) {
        crate::limit_and_offset(self.page, self.page_size)
    }

    /// `text` as a LIKE pattern, its own wildcards escaped with `\`.
    fn text_pattern(&self) -> Option<String> {
        self.text.as_ref().map(|text| {
            let escaped = text
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteAlerts),
    Postgres(postgres::PostgresAlerts),
}

/// The alerts, on whichever backend; cheap to clone.
#[derive(Clone)]
pub struct AlertStore {
    backend: Backend,
}

impl AlertStore {
    /// The alerts where `location` says: `alerts.db` in the data directory, or the shared
    /// database (tables created or migrated first).
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let backend = match location {
            Location::Sqlite(dir) => {
                Backend::Sqlite(sqlite::SqliteAlerts::open(&dir.join("alerts.db"))?)
            }
            Location::Postgres(database) => {
                Backend::Postgres(postgres::PostgresAlerts::open(database).await?)
            }
        };
        Ok(AlertStore { backend })
    }

    /// Folds `events`, in order, into their alerts, in one transaction, and says what that
    /// changed once it is committed. An event already folded in changes nothing.
    pub async fn observe(
        &self,
        events: impl Into<std::sync::Arc<[Observed]>>,
    ) -> Result<Vec<Change>, StoreError> {
        let events = events.into();
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.observe(events).await?),
            Backend::Postgres(p) => p.database.noted(p.observe(events).await),
        }
    }

    /// The alert `key` and its timeline (events and actions, in order).
    pub async fn get(&self, key: &str) -> Result<Option<(Alert, Vec<Entry>)>, StoreError> {
        let key = key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.get(key).await?),
            Backend::Postgres(p) => p.database.noted(p.get(key).await),
        }
    }

    /// How many alerts `query` selects, and its page of them, newest first.
    pub async fn list(&self, query: AlertQuery) -> Result<(u64, Vec<Alert>), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.list(query).await?),
            Backend::Postgres(p) => p.database.noted(p.list(query).await),
        }
    }

    /// How many alerts there are by state and severity (as stored): one row per pair that has
    /// any. Read from the store, so that every process sharing it says the same.
    pub async fn count_by_state_and_severity(
        &self,
    ) -> Result<Vec<(AlertState, String, u64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.count_by_state_and_severity().await?),
            Backend::Postgres(p) => p.database.noted(p.count_by_state_and_severity().await),
        }
    }

    /// Whether the alert `key` has an event that no silence held back: one that went to its
    /// destinations, whose `CLOSE` must go there too.
    pub async fn has_unsilenced_event(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.exists(HAS_UNSILENCED_EVENT, key).await?),
            Backend::Postgres(p) => p.database.noted(p.exists(HAS_UNSILENCED_EVENT, key).await),
        }
    }

    /// Whether the event `event_id` was folded into its alert already.
    pub async fn folded(&self, event_id: &str) -> Result<bool, StoreError> {
        let id = event_id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.exists(FOLDED, id).await?),
            Backend::Postgres(p) => p.database.noted(p.exists(FOLDED, id).await),
        }
    }

    /// The alerts not resolved whose latest event the silence `silence_id` held back: what
    /// its end releases.
    pub async fn held_back_by(&self, silence_id: &str) -> Result<Vec<Alert>, StoreError> {
        let silence_id = silence_id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.held_back_by(silence_id).await?),
            Backend::Postgres(p) => p.database.noted(p.held_back_by(silence_id).await),
        }
    }

    /// The alert `key` without its timeline.
    pub async fn alert(&self, key: &str) -> Result<Option<Alert>, StoreError> {
        let key = key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.alert(key).await?),
            Backend::Postgres(p) => p.database.noted(p.alert(key).await),
        }
    }

    /// Up to `limit` alerts not resolved that some subscription a time interval muted has not
    /// heard in their latest state ([`Alert::muted_for`]).
    pub async fn muted(&self, limit: u32) -> Result<Vec<Alert>, StoreError> {
        let limit = i64::from(limit);
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.muted(limit).await?),
            Backend::Postgres(p) => p.database.noted(p.muted(limit).await),
        }
    }

    /// Claims the release of what mute windows held back of alert `key` for `for_ms`: true
    /// if this caller has it (no one else claimed it, or their claim lapsed) — so that of
    /// the processes sharing the store one releases it.
    pub async fn claim_mute_release(
        &self,
        key: &str,
        now_ms: i64,
        for_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.claim_mute_release(key, now_ms, for_ms).await?),
            Backend::Postgres(p) => p
                .database
                .noted(p.claim_mute_release(key, now_ms, for_ms).await),
        }
    }

    /// Deletes up to `batch` alerts resolved before `cutoff_ms`, with their timelines;
    /// returns how many alerts went.
    pub async fn purge_resolved_before(
        &self,
        cutoff_ms: i64,
        batch: u32,
    ) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.purge_resolved_before(cutoff_ms, batch).await?),
            Backend::Postgres(p) => p
                .database
                .noted(p.purge_resolved_before(cutoff_ms, batch).await),
        }
    }
}

/// The same on both backends: a count per state and severity present.
const COUNT_BY_STATE_AND_SEVERITY: &str =
    "SELECT state, severity, COUNT(*) FROM alerts GROUP BY state, severity";

/// The rows of [`COUNT_BY_STATE_AND_SEVERITY`], states parsed (each backend only writes
/// known ones).
fn counts(rows: Vec<(String, String, i64)>) -> Vec<(AlertState, String, u64)> {
    rows.into_iter()
        .filter_map(|(state, severity, count)| {
            Some((AlertState::parse(&state)?, severity, count.max(0) as u64))
        })
        .collect()
}

/// The timeline line of `observed`.
fn event_entry(observed: &Observed) -> Entry {
    Entry::Event {
        at_ms: observed.accepted_at_ms,
        event_id: observed.event.id.clone(),
        status: observed
            .event
            .tag(model::event::TAG_STATUS)
            .map(str::to_owned),
        subject: observed.event.subject.clone(),
        silenced_by: observed.silenced_by.clone(),
        muted_for: observed.muted_for.clone(),
    }
}

/// The same on both backends (`{timeline}` names the table, `{key}` the one parameter):
/// whether the alert has an event that no silence held back.
const HAS_UNSILENCED_EVENT: &str = "SELECT EXISTS (SELECT 1 FROM {timeline} \
    WHERE key = {key} AND event_id IS NOT NULL AND silenced_by IS NULL)";

/// The same on both backends (`{timeline}` names the table, `{silence}` the one parameter):
/// the alerts not resolved whose latest event the silence held back.
const HELD_BACK_BY: &str = "SELECT {columns} FROM alerts WHERE state <> 'resolved' AND key IN ( \
    SELECT t.key FROM {timeline} t WHERE t.silenced_by = {silence} AND t.id = ( \
        SELECT MAX(l.id) FROM {timeline} l WHERE l.key = t.key AND l.event_id IS NOT NULL))";

/// The same on both backends (`?1` the limit): alerts not resolved with mutes to release,
/// oldest first.
const MUTED: &str = "SELECT {columns} FROM alerts \
    WHERE muted_for IS NOT NULL AND state <> 'resolved' ORDER BY last_seen_ms LIMIT ?1";

/// [`Alert::muted_for`] as its column: a JSON array, NULL when empty (so that the partial
/// index holds only the alerts with something to release).
fn muted_for_column(muted_for: &[String]) -> Option<String> {
    (!muted_for.is_empty()).then(|| serde_json::to_string(muted_for).expect("strings serialize"))
}

/// [`Alert::muted_for`] from its column.
fn muted_for_from_column(column: Option<String>) -> Vec<String> {
    column
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default()
}

/// The same on both backends (`{timeline}` names the table, `{key}` the one parameter, an
/// event's id): whether the event was folded in.
const FOLDED: &str = "SELECT EXISTS (SELECT 1 FROM {timeline} WHERE event_id = {key})";

/// [`HAS_UNSILENCED_EVENT`], [`HELD_BACK_BY`] or [`FOLDED`] for one backend.
fn sql(template: &str, timeline: &str, parameter: &str, columns: &str) -> String {
    template
        .replace("{timeline}", timeline)
        .replace("{key}", parameter)
        .replace("{silence}", parameter)
        .replace("{columns}", columns)
}

/// The timeline line of a person's act.
fn action_entry(by: &HumanAct, at_ms: i64) -> Entry {
    Entry::Action {
        at_ms,
        action: by.action,
        who: by.who.clone(),
        via: by.via.clone(),
        comment: by.comment.clone(),
    }
}

#[cfg(test)]
mod tests;
