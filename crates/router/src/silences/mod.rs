//! Silences in routing: which matched events a silence holds back, and when the alerts it held
//! back are released.
//!
//! Flow: the silences API ([`api`]), the console, Slack and the action links check a new
//! silence ([`check`]) and write it — or expire one — through [`Silences`], which records the
//! act in the audit log first, whoever made it and through what ([`By`]), and keeps what still
//! matters — pending, active, and ended but not yet released silences — compiled in memory
//! ([`SilenceSet`]). A matcher compares an event property with a condition's predicate (the
//! router's own [`Comparison`], so a silence matches exactly as a condition would) or with an
//! anchored regex.
//!
//! Across processes: every change moves one version in the store. Before each batch the
//! router reads it ([`Silences::refresh`], one single-row read; none with SQLite, where every
//! change goes through this process, which reloads as it makes it) and reloads the silences
//! when it moved — the configuration's way, without the `LISTEN` (a silence only matters to the
//! router, and the router reads the version anyway). A change that returned was committed
//! before the events accepted after it, and those are routed in a batch read after them, so it
//! is in force for them whichever process routes. (With SQLite each process has its own
//! silences, as its own alerts: a broker of several processes needs the PostgreSQL store.)
//!
//! The router checks each matched event against the silences active at its acceptance time
//! ([`SilenceSet::silencing`]; with no silence, one length check per batch). When a silence
//! ends, [`release`] delivers what it held back.

pub mod api;
pub mod release;

use crate::matcher::Comparison;
use arc_swap::ArcSwap;
use model::config::{limits, PropertyKey};
use model::ResourceEvent;
use regex::Regex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use store::audit::{AuditEntry, AuditLog, Recorded};
use store::silences::{
    Expired, MatchPredicate, Silence, SilenceMatcher, SilenceState, SilenceStore,
};
use store::StoreError;
use tokio::sync::{Mutex, Notify};

/// Matchers in one silence at most.
pub const MAX_MATCHERS: usize = 32;
/// Characters in a silence's comment at most.
pub const MAX_COMMENT: usize = 1024;
/// The compiled size of one matcher's regex at most, in bytes: a regex is the user's, and
/// it runs on every matched event while the silence is active.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// One matcher, compiled: the property it reads and how it compares it.
#[derive(Debug)]
struct CompiledMatcher {
    key: PropertyKey,
    test: Test,
}

#[derive(Debug)]
enum Test {
    Compare(Comparison),
    /// Anchored; an absent property is the empty value.
    Regex {
        regex: Regex,
        negated: bool,
    },
}

impl CompiledMatcher {
    /// The matcher compiled, or what is wrong with it (naming the field, for the API).
    fn new(matcher: &SilenceMatcher) -> Result<Self, String> {
        let key = PropertyKey::parse(&matcher.property_key).ok_or_else(|| {
            format!(
                "`propertyKey` `{}` is no event property (eventType, severity, category, \
                 subject, body, priority, resource.resourceName, resource.resourceType, \
                 resource.resourceInstance, resource.tags.<key>, tags.<key>)",
                matcher.property_key
            )
        })?;
        let value = matcher.property_value.clone().unwrap_or_default();
        if matcher.predicate.needs_value() && matcher.property_value.is_none() {
            return Err(format!(
                "`propertyValue` is required with `{}`",
                matcher.predicate
            ));
        }
        if value.chars().count() > limits::CONDITION_VALUE {
            return Err(format!(
                "`propertyValue` must be at most {} characters",
                limits::CONDITION_VALUE
            ));
        }
        let test = match matcher.predicate {
            MatchPredicate::Condition(predicate) => {
                if predicate.is_numeric() && value.trim().parse::<f64>().is_err() {
                    return Err(format!(
                        "`propertyValue` must be a number with `{predicate}`, got `{value}`"
                    ));
                }
                Test::Compare(Comparison::new(predicate, value))
            }
            MatchPredicate::MatchesRegex | MatchPredicate::DoesNotMatchRegex => {
                let regex = regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("`propertyValue` is not a valid regex: {e}"))?;
                Test::Regex {
                    regex,
                    negated: matcher.predicate == MatchPredicate::DoesNotMatchRegex,
                }
            }
        };
        Ok(CompiledMatcher { key, test })
    }

    fn holds(&self, event: &ResourceEvent) -> bool {
        let value = self.key.value(event);
        self.holds_for(value.as_deref())
    }

    fn holds_for(&self, value: Option<&str>) -> bool {
        match &self.test {
            Test::Compare(comparison) => comparison.holds(value),
            Test::Regex { regex, negated } => regex.is_match(value.unwrap_or("")) != *negated,
        }
    }
}

/// One silence, compiled.
#[derive(Debug)]
struct CompiledSilence {
    silence: Silence,
    matchers: Vec<CompiledMatcher>,
}

/// The silences a process keeps in memory: pending, active, and ended but not yet released.
#[derive(Debug, Default)]
pub struct SilenceSet {
    silences: Vec<CompiledSilence>,
}

impl SilenceSet {
    fn new(silences: Vec<Silence>) -> Self {
        let silences = silences
            .into_iter()
            .filter_map(|silence| {
                let matchers = silence
                    .matchers
                    .iter()
                    .map(CompiledMatcher::new)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tracing::error!(silence = %silence.id, error = %e, "a stored silence does not compile; it silences nothing"))
                    .ok()?;
                Some(CompiledSilence { silence, matchers })
            })
            .collect();
        SilenceSet { silences }
    }

    /// Whether there is no silence at all: then no event needs checking.
    pub fn is_empty(&self) -> bool {
        self.silences.is_empty()
    }

    /// The id of a silence active at `at_ms` whose matchers all hold for `event`, if any.
    pub fn silencing(&self, event: &ResourceEvent, at_ms: i64) -> Option<&str> {
        self.silences
            .iter()
            .find(|s| s.silence.is_active_at(at_ms) && s.matchers.iter().all(|m| m.holds(event)))
            .map(|s| s.silence.id.as_str())
    }

    /// The silences whose alerts are still to be released, ended or not.
    fn unreleased(&self) -> impl Iterator<Item = &Silence> {
        self.silences.iter().map(|s| &s.silence)
    }
}

/// A silence as the API asks for it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSilence {
    pub matchers: Vec<SilenceMatcher>,
    /// Now if absent, and never before now.
    #[serde(default)]
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: i64,
    #[serde(default)]
    pub comment: Option<String>,
}

/// The matcher of one alert's events: its key, `tags.ans:sourceEventId` (what Slack's and the
/// links' Silence 1 h, and `/tocsin silence <alert>`, silence).
pub fn alert_matcher(alert_key: &str) -> SilenceMatcher {
    SilenceMatcher {
        property_key: format!("tags.{}", model::event::TAG_SOURCE_EVENT_ID),
        predicate: MatchPredicate::Condition(model::config::Predicate::Equals),
        property_value: Some(alert_key.to_owned()),
    }
}

/// `new`, created by `created_by` at `now_ms`, as a silence — or what is wrong with it,
/// naming the field. A start in the past is now (a silence does not reach back to events
/// routed already).
pub fn check(new: NewSilence, created_by: String, now_ms: i64) -> Result<Silence, String> {
    if new.matchers.is_empty() {
        return Err("`matchers` must hold at least one matcher".into());
    }
    if new.matchers.len() > MAX_MATCHERS {
        return Err(format!(
            "`matchers` must hold at most {MAX_MATCHERS} matchers"
        ));
    }
    let mut compiled = Vec::with_capacity(new.matchers.len());
    for (n, matcher) in new.matchers.iter().enumerate() {
        compiled.push(CompiledMatcher::new(matcher).map_err(|e| format!("`matchers[{n}]`: {e}"))?);
    }
    if compiled
        .iter()
        .all(|m| m.holds_for(None) || m.holds_for(Some("")))
    {
        return Err(
            "`matchers`: at least one matcher must need a value (these also match \
                    events that lack the property, which could silence everything)"
                .into(),
        );
    }
    let starts_at_ms = new.starts_at_ms.unwrap_or(now_ms).max(now_ms);
    if new.ends_at_ms <= starts_at_ms {
        return Err(format!(
            "`endsAtMs` ({}) must be after `startsAtMs` ({starts_at_ms}) and after now",
            new.ends_at_ms
        ));
    }
    let comment = new
        .comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_COMMENT)
    {
        return Err(format!(
            "`comment` must be at most {MAX_COMMENT} characters"
        ));
    }
    Ok(Silence {
        id: uuid::Uuid::now_v7().to_string(),
        matchers: new.matchers,
        starts_at_ms,
        ends_at_ms: new.ends_at_ms,
        created_by,
        comment,
        created_at_ms: now_ms,
    })
}

/// The silences of this process: the store, and what of it routing needs, in memory.
pub struct Silences {
    store: SilenceStore,
    set: ArcSwap<SilenceSet>,
    /// The store's version the set was loaded at.
    version: AtomicI64,
    /// One reload at a time: a slow reload must not overwrite a newer one.
    reloading: Mutex<()>,
    /// Wakes the releaser when the set changed.
    changed: Notify,
    /// Whether the set may lag the store without anyone reading the version: always on
    /// PostgreSQL (other processes change it); on SQLite, where every change goes through this
    /// process and reloads at once, only after such a reload failed.
    stale: AtomicBool,
}

impl Silences {
    /// The silences in `store`, loaded.
    pub async fn open(store: SilenceStore) -> Result<Self, StoreError> {
        let silences = Silences {
            store,
            set: ArcSwap::default(),
            version: AtomicI64::new(-1),
            reloading: Mutex::new(()),
            changed: Notify::new(),
            stale: AtomicBool::new(false),
        };
        silences.reload().await?;
        Ok(silences)
    }

    pub fn store(&self) -> &SilenceStore {
        &self.store
    }

    /// The silences in force now.
    pub fn current(&self) -> Arc<SilenceSet> {
        self.set.load_full()
    }

    /// Reloads the silences if the store's version moved: one single-row read, none on SQLite
    /// unless a reload after a change failed. Failures are logged: the silences in memory stay
    /// in force.
    pub async fn refresh(&self) {
        if self.store.is_shared() || self.stale.load(Ordering::SeqCst) {
            self.reload_now().await;
        }
    }

    /// Reloads the silences if the store's version moved, whatever the backend.
    async fn reload_now(&self) {
        match self.reload().await {
            Ok(()) => self.stale.store(false, Ordering::SeqCst),
            Err(e) => {
                self.stale.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot read the silences; those in memory stay in force");
            }
        }
    }

    async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        let version = self.store.version().await?;
        if version == self.version.load(Ordering::SeqCst) {
            return Ok(());
        }
        let silences = self.store.unreleased().await?;
        self.set.store(Arc::new(SilenceSet::new(silences)));
        self.version.store(version, Ordering::SeqCst);
        self.changed.notify_one();
        Ok(())
    }

    /// Keeps `silence`, made by its `created_by` through `by`, and puts it in force here before
    /// returning (and everywhere before the next batch is routed) — audited first (see the
    /// module above).
    pub async fn create(
        &self,
        silence: &Silence,
        audit: &AuditLog,
        by: &By,
    ) -> Result<(), SilenceActError> {
        let entry = by.entry(&silence.created_by, "silence", silence, "done");
        claim(audit, &entry).await?;
        if let Err(e) = self.store.create(silence).await {
            give_back(audit, &entry).await;
            return Err(SilenceActError::Unavailable(e));
        }
        self.reload_now().await;
        tracing::info!(silence = %silence.id, by = %silence.created_by, via = by.via, "silence created");
        Ok(())
    }

    /// Ends the silence `id` now as `who` through `by` (see [`SilenceStore::expire`]); its
    /// release follows. Audited first, as `unchanged` if it had ended already; an unknown id
    /// (`None`) is not.
    pub async fn expire(
        &self,
        id: &str,
        now_ms: i64,
        audit: &AuditLog,
        who: &str,
        by: &By,
    ) -> Result<Option<Expired>, SilenceActError> {
        let Some(silence) = self.store.get(id).await? else {
            return Ok(None);
        };
        if silence.state(now_ms) == SilenceState::Expired {
            let entry = by.entry(who, "expire-silence", &silence, "unchanged");
            claim(audit, &entry).await?;
            return Ok(Some(Expired::Already(silence)));
        }
        let entry = by.entry(who, "expire-silence", &silence, "done");
        claim(audit, &entry).await?;
        let expired = match self.store.expire(id, now_ms).await {
            Ok(expired) => expired,
            Err(e) => {
                give_back(audit, &entry).await;
                return Err(SilenceActError::Unavailable(e));
            }
        };
        self.reload_now().await;
        match &expired {
            Some(Expired::Now(_)) => {
                tracing::info!(silence = %id, by = %who, via = by.via, "silence expired");
            }
            // Another process ended it in between: that act is the one on record.
            Some(Expired::Already(_)) | None => give_back(audit, &entry).await,
        }
        Ok(expired)
    }
}

/// Through what a person acts on silences (`api`, `console`, `slack`), and what makes the act
/// once-only (a Slack click's or command's key), if anything.
///
/// Every act is written to the audit log *before* it is done, and its entry given back if the
/// act then fails: an act must never be done without its entry (the log is what says who
/// silenced what), and an entry whose act failed is removed, so the log names no act that was
/// not done — only a failure to give it back (logged) can leave one. Auditing first also lets
/// a once-only key stop a repeated act before it acts, as the alerts' act path does.
#[derive(Debug, Clone)]
pub struct By {
    pub via: &'static str,
    pub once: Option<String>,
}

/// Why an act on a silence was not done.
#[derive(Debug, thiserror::Error)]
pub enum SilenceActError {
    /// The once-only act was done before.
    #[error("this was done already")]
    Repeated,
    #[error("the silences or the audit log cannot be reached: {0}")]
    Unavailable(#[from] StoreError),
}

impl By {
    /// The audit entry of `who`'s `action` on `silence`: its target the silence's id, its
    /// detail the matchers.
    fn entry(&self, who: &str, action: &str, silence: &Silence, outcome: &str) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: clock::now_epoch_millis(),
            who: who.to_owned(),
            via: self.via.to_owned(),
            action: action.to_owned(),
            target: silence.id.clone(),
            outcome: outcome.to_owned(),
            detail: Some(serde_json::to_string(&silence.matchers).expect("matchers serialize")),
            dedupe_key: self.once.clone(),
        }
    }
}

/// Records `entry`, claiming its once-only key.
async fn claim(audit: &AuditLog, entry: &AuditEntry) -> Result<(), SilenceActError> {
    match audit.record(entry).await? {
        Recorded::New => Ok(()),
        Recorded::Duplicate => Err(SilenceActError::Repeated),
    }
}

/// Gives back the entry of an act that was not done, so that its retry can act.
async fn give_back(audit: &AuditLog, entry: &AuditEntry) {
    if let Err(e) = audit.forget(&entry.id).await {
        tracing::warn!(error = %e, "cannot give back an act's audit entry");
    }
}

#[cfg(test)]
mod tests;
