//! Silences: who asked that which events not be delivered, from when until when, and why.
//!
//! A silence is a set of matchers (ANDed, each on one event property, with a condition's
//! predicate or a regex), a start and an end (epoch ms), who created it and a comment. It is
//! *pending* before its start, *active* from its start until its end, *expired* after; expiring
//! it early sets its end to now (and its start too, if it was pending), so the three states
//! need no other field. The router keeps the silences that still matter in memory and checks
//! each matched event against them; this module only keeps them.
//!
//! Flow: the silences API creates and expires them ([`SilenceStore::create`],
//! [`SilenceStore::expire`]); each change bumps one version ([`SilenceStore::version`]), which
//! a router reads before each batch (one single-row read) and reloads the silences
//! ([`SilenceStore::unreleased`]) when it moved. When a silence has ended, the alerts it
//! silenced that still fire are released — delivered once in their latest state — by one
//! process: it claims the release for a while ([`SilenceStore::claim_release`]; another
//! process, or this one after a crash, claims it again once the claim lapses) and marks it
//! done ([`SilenceStore::mark_released`]). SQLite keeps them in `silences.db` (this process's
//! alone), PostgreSQL in the `silences` table every process shares.

mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use crate::{Location, StoreError};
use model::config::Predicate;
use std::fmt;

/// How a matcher compares an event property: a condition's predicate, or a regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchPredicate {
    /// As a condition with this predicate compares.
    Condition(Predicate),
    /// The whole value matches the regex (anchored; an absent property is the empty value).
    MatchesRegex,
    /// The whole value does not match the regex.
    DoesNotMatchRegex,
}

impl MatchPredicate {
    pub const MATCHES_REGEX: &'static str = "MATCHES_REGEX";
    pub const DOES_NOT_MATCH_REGEX: &'static str = "DOES_NOT_MATCH_REGEX";

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchPredicate::Condition(p) => p.as_str(),
            MatchPredicate::MatchesRegex => Self::MATCHES_REGEX,
            MatchPredicate::DoesNotMatchRegex => Self::DOES_NOT_MATCH_REGEX,
        }
    }

    /// Every wire spelling, in the order the API documents them.
    pub fn all() -> impl Iterator<Item = &'static str> {
        Predicate::ALL
            .iter()
            .map(|p| p.as_str())
            .chain([Self::MATCHES_REGEX, Self::DOES_NOT_MATCH_REGEX])
    }

    /// Whether the predicate needs a `propertyValue`.
    pub fn needs_value(self) -> bool {
        match self {
            MatchPredicate::Condition(p) => p.needs_value(),
            _ => true,
        }
    }
}

impl fmt::Display for MatchPredicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MatchPredicate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            Self::MATCHES_REGEX => Ok(MatchPredicate::MatchesRegex),
            Self::DOES_NOT_MATCH_REGEX => Ok(MatchPredicate::DoesNotMatchRegex),
            _ => s.parse().map(MatchPredicate::Condition).map_err(|()| {
                let all: Vec<&str> = Self::all().collect();
                format!(
                    "unknown predicate `{s}`, expected one of {}",
                    all.join(", ")
                )
            }),
        }
    }
}

impl serde::Serialize for MatchPredicate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for MatchPredicate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One matcher: what an event's `propertyKey` must be, in a condition's terms.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SilenceMatcher {
    pub property_key: String,
    pub predicate: MatchPredicate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property_value: Option<String>,
}

/// Where a silence stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

impl SilenceState {
    pub const ALL: [SilenceState; 3] = [
        SilenceState::Pending,
        SilenceState::Active,
        SilenceState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A silence, as kept and as the API shows it (with its state at the time of asking).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Silence {
    /// A UUID v7: ordered by creation.
    pub id: String,
    pub matchers: Vec<SilenceMatcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// The API client that created it.
    pub created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub created_at_ms: i64,
}

impl Silence {
    /// Pending before its start, active from its start until its end, expired from its end.
    pub fn state(&self, now_ms: i64) -> SilenceState {
        if now_ms < self.starts_at_ms {
            SilenceState::Pending
        } else if now_ms < self.ends_at_ms {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }

    /// Whether it silences what was accepted at `at_ms`.
    pub fn is_active_at(&self, at_ms: i64) -> bool {
        self.state(at_ms) == SilenceState::Active
    }

    /// The silence expired at `now_ms`: ended now, and started now if it had not yet; `None`
    /// if it had ended already.
    fn expired_at(&self, now_ms: i64) -> Option<Silence> {
        (self.ends_at_ms > now_ms).then(|| Silence {
            starts_at_ms: self.starts_at_ms.min(now_ms),
            ends_at_ms: now_ms,
            ..self.clone()
        })
    }
}

/// What expiring a silence did.
#[derive(Debug, Clone, PartialEq)]
pub enum Expired {
    /// It ended now.
    Now(Silence),
    /// It had ended already; unchanged.
    Already(Silence),
}

/// The same condition on both backends: the silences in `state` at `?now`.
fn state_filter(state: Option<SilenceState>) -> &'static str {
    match state {
        // Uses `{now}` too, so that every filter takes the same one parameter.
        None => "{now} IS NOT NULL",
        Some(SilenceState::Pending) => "starts_at_ms > {now}",
        Some(SilenceState::Active) => "starts_at_ms <= {now} AND ends_at_ms > {now}",
        Some(SilenceState::Expired) => "ends_at_ms <= {now}",
    }
}

fn matchers_json(matchers: &[SilenceMatcher]) -> String {
    serde_json::to_string(matchers).expect("matchers serialize")
}

/// The matchers kept as JSON; ones that no longer parse (never written so) match nothing.
fn parse_matchers(json: &str) -> Vec<SilenceMatcher> {
    serde_json::from_str(json).unwrap_or_default()
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteSilences),
    Postgres(postgres::PostgresSilences),
}

/// The silences, on whichever backend; cheap to clone.
/// The same on both backends (`?1` the cutoff, `?2` the batch).
const PURGE_RELEASED_BEFORE: &str = "DELETE FROM silences WHERE id IN (SELECT id FROM silences \
    WHERE released_at_ms IS NOT NULL AND ends_at_ms < ?1 ORDER BY ends_at_ms LIMIT ?2)";

#[derive(Clone)]
pub struct SilenceStore {
    backend: Backend,
}

impl SilenceStore {
    /// `silences.db` in the data directory, or the table in the shared database.
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let backend = match location {
            Location::Sqlite(dir) => {
                Backend::Sqlite(sqlite::SqliteSilences::open(&dir.join("silences.db"))?)
            }
            Location::Postgres(database) => {
                Backend::Postgres(postgres::PostgresSilences::open(database).await?)
            }
        };
        Ok(SilenceStore { backend })
    }

    /// Whether other processes change these silences too (PostgreSQL): then a router must read
    /// the version before each batch; on SQLite every change goes through this process.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Keeps a new silence.
    pub async fn create(&self, silence: &Silence) -> Result<(), StoreError> {
        let silence = silence.clone();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.create(silence).await?),
            Backend::Postgres(p) => p.database.noted(p.create(silence).await),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Silence>, StoreError> {
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.get(id).await?),
            Backend::Postgres(p) => p.database.noted(p.get(id).await),
        }
    }

    /// The silences in `state` (all if `None`) at `now_ms`, newest first.
    pub async fn list(
        &self,
        state: Option<SilenceState>,
        now_ms: i64,
    ) -> Result<Vec<Silence>, StoreError> {
        let filter = state_filter(state);
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.list(filter, now_ms).await?),
            Backend::Postgres(p) => p.database.noted(p.list(filter, now_ms).await),
        }
    }

    /// Ends the silence `id` at `now_ms`; `None` if there is no such silence.
    pub async fn expire(&self, id: &str, now_ms: i64) -> Result<Option<Expired>, StoreError> {
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.expire(id, now_ms).await?),
            Backend::Postgres(p) => p.database.noted(p.expire(id, now_ms).await),
        }
    }

    /// The silences whose release is not done: pending, active, and ended but not yet
    /// released — all a router needs in memory.
    pub async fn unreleased(&self) -> Result<Vec<Silence>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.unreleased().await?),
            Backend::Postgres(p) => p.database.noted(p.unreleased().await),
        }
    }

    /// The version of the silences: it moves with every change (created, expired, released).
    pub async fn version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.version().await?),
            Backend::Postgres(p) => p.database.noted(p.version().await),
        }
    }

    /// Claims the release of the ended silence `id` until `now_ms + lease_ms`: true if this
    /// caller got it (not released, ended, and no live claim of another).
    pub async fn claim_release(
        &self,
        id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.claim_release(id, now_ms, lease_ms).await?),
            Backend::Postgres(p) => p
                .database
                .noted(p.claim_release(id, now_ms, lease_ms).await),
        }
    }

    /// Deletes up to `batch` silences that ended before `cutoff_ms` and whose release is done;
    /// returns how many went. (None is in a router's memory: nothing else changes.)
    pub async fn purge_released_before(
        &self,
        cutoff_ms: i64,
        batch: u32,
    ) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.purge_released_before(cutoff_ms, batch).await?),
            Backend::Postgres(p) => p
                .database
                .noted(p.purge_released_before(cutoff_ms, batch).await),
        }
    }

    /// Notes that the alerts silence `id` held back were released.
    pub async fn mark_released(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        let id = id.to_owned();
        match &self.backend {
            Backend::Sqlite(s) => Ok(s.mark_released(id, now_ms).await?),
            Backend::Postgres(p) => p.database.noted(p.mark_released(id, now_ms).await),
        }
    }
}
