//! Grouping and storm control: the jobs of an action that groups its events, and those storm
//! control holds back, go out together as digests instead of one message each.
//!
//! How a job flows:
//! - when an action is saved, its channel reads its [`Plan`] (`groupBy`, `groupWaitSeconds`,
//!   `groupIntervalSeconds`, `repeatIntervalSeconds`, `messagesPerMinute`); channels that
//!   keep one incident per alert refuse grouping;
//! - the worker asks [`Grouping::holds`] before an attempt: an action that groups holds every
//!   job; one with a rate ([`bucket`]) holds a job only when its destination has no token (an
//!   action with neither — and one with a token — reads nothing more: the hot path is
//!   unchanged). A held job is written to its group ([`store::groups`]) and only then acked;
//! - the [`flusher`] claims due groups, takes a token, has the channel render one [`Digest`]
//!   and send it, retries it on the action's schedule, and records the outcome of every member
//!   — delivered, or undelivered with every reason.
//!
//! Timing follows Alertmanager: a new group waits `groupWaitSeconds` for company; what comes
//! after a digest waits until `groupIntervalSeconds` after it; with `repeatIntervalSeconds`,
//! the alerts a digest said are firing go out again each time that long passes with nothing
//! new in the group, until they resolve.

pub mod bucket;
pub mod flusher;

use crate::properties::{Properties, PropertyError};
use bucket::{Rate, StormControl};
use metrics::Metrics;
use model::config::PropertyKey;
use model::event::Transition;
use model::{Action, DeliveryJob};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use store::groups::{GroupId, GroupStore, Member, Timing};
use store::StoreError;

/// The properties of grouping and storm control, which channels that take digests accept.
pub const PROPERTIES: &[&str] = &[
    "groupBy",
    "groupWaitSeconds",
    "groupIntervalSeconds",
    "repeatIntervalSeconds",
    "messagesPerMinute",
];

/// Alertmanager's defaults: wait half a minute for company, then five minutes between digests.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// How an action groups its events and how fast its destination takes messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `None`: the action does not group (storm control may still hold a job back).
    pub groups: Option<Groups>,
    /// `None`: no storm control.
    pub rate: Option<Rate>,
}

/// An action's grouping.
#[derive(Debug, Clone, PartialEq)]
pub struct Groups {
    /// The event properties whose values make a group (none: one group for the action).
    by: Vec<(String, PropertyKey)>,
    pub wait: Duration,
    pub interval: Duration,
    /// How long an unchanged group's firing alerts wait to be sent again (`None`: never).
    pub repeat: Option<Duration>,
}

impl Plan {
    /// Neither grouping nor storm control: what channels that never group have.
    pub const NONE: Plan = Plan {
        groups: None,
        rate: None,
    };

    /// The plan of an action of a channel that takes digests, whose destinations take
    /// `default_per_minute` messages a minute unless the action says otherwise (0: no limit).
    pub fn read(p: &Properties, default_per_minute: u32) -> Result<Plan, PropertyError> {
        let seconds = |name: &str, default: Duration| -> Result<Duration, PropertyError> {
            Ok(p.parsed::<u64>(name)?.map_or(default, Duration::from_secs))
        };
        let grouped = [
            "groupBy",
            "groupWaitSeconds",
            "groupIntervalSeconds",
            "repeatIntervalSeconds",
        ]
        .iter()
        .any(|name| p.text(name).is_some());
        let groups = if grouped {
            let by = p
                .text("groupBy")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(|key| {
                    PropertyKey::parse(key)
                        .map(|parsed| (key.to_owned(), parsed))
                        .ok_or_else(|| {
                            PropertyError::property(
                                "groupBy",
                                format!("names `{key}`, which is not an event property"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
            let interval = seconds("groupIntervalSeconds", DEFAULT_INTERVAL)?;
            Some(Groups {
                by,
                wait: seconds("groupWaitSeconds", DEFAULT_WAIT)?,
                interval,
                repeat: repeat_of(p, interval)?,
            })
        } else {
            None
        };
        let per_minute = p
            .parsed::<u32>("messagesPerMinute")?
            .unwrap_or(default_per_minute);
        Ok(Plan {
            groups,
            rate: (per_minute > 0).then_some(Rate { per_minute }),
        })
    }

    /// Refuses grouping on a channel that opens one incident per alert.
    pub fn refuse(p: &Properties, action_type: &str) -> Result<(), PropertyError> {
        match PROPERTIES.iter().find(|name| p.text(name).is_some()) {
            None => Ok(()),
            Some(name) => Err(PropertyError::property(
                *name,
                format!(
                    "is not supported by {action_type} actions: they send each event on its \
                     own (an incident channel keeps one incident per alert, never a group)"
                ),
            )),
        }
    }

    /// The group `job` belongs to: the action, and its `groupBy` values as a JSON object.
    pub fn group_of(&self, job: &DeliveryJob) -> GroupId {
        let key = match &self.groups {
            Some(groups) if !groups.by.is_empty() => {
                let labels: BTreeMap<&str, String> = groups
                    .by
                    .iter()
                    .map(|(name, key)| {
                        let value = key.value(&job.event).map(|v| v.into_owned());
                        (name.as_str(), value.unwrap_or_default())
                    })
                    .collect();
                serde_json::to_string(&labels).expect("labels serialize")
            }
            _ => String::new(),
        };
        GroupId {
            action: job.action.clone(),
            key,
        }
    }

    /// How long a new group waits for company (none for a storm's backlog).
    fn timing(&self) -> Timing {
        let wait = self.groups.as_ref().map_or(Duration::ZERO, |g| g.wait);
        Timing {
            wait_ms: wait.as_millis() as i64,
        }
    }

    /// How long after a digest the next one may go (none for a storm's backlog: the bucket
    /// paces it).
    pub fn interval(&self) -> Duration {
        self.groups.as_ref().map_or(Duration::ZERO, |g| g.interval)
    }

    /// How long an unchanged group's firing alerts wait to go out again (`None`: never).
    pub fn repeat(&self) -> Option<Duration> {
        self.groups.as_ref().and_then(|g| g.repeat)
    }
}

/// `repeatIntervalSeconds`: positive, and no shorter than the group's `interval` — as
/// Alertmanager expects: a repeat more often than new events may go would flood the channel
/// the interval is there to spare.
fn repeat_of(p: &Properties, interval: Duration) -> Result<Option<Duration>, PropertyError> {
    const NAME: &str = "repeatIntervalSeconds";
    let Some(seconds) = p.parsed::<u64>(NAME)? else {
        return Ok(None);
    };
    if seconds == 0 {
        return Err(PropertyError::property(
            NAME,
            "must be a positive number of seconds",
        ));
    }
    let repeat = Duration::from_secs(seconds);
    if repeat < interval {
        return Err(PropertyError::property(
            NAME,
            format!(
                "must be at least groupIntervalSeconds ({})",
                interval.as_secs()
            ),
        ));
    }
    Ok(Some(repeat))
}

/// Why a job is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The action groups its events.
    Grouped,
    /// Its destination had no token.
    Storm,
}

/// What the worker and the flusher share: the groups, the buckets, the metrics.
pub struct Grouping {
    pub store: GroupStore,
    pub storm: StormControl,
    metrics: Arc<Metrics>,
}

impl Grouping {
    pub fn new(store: GroupStore, metrics: Arc<Metrics>) -> Self {
        Grouping {
            store,
            storm: StormControl::default(),
            metrics,
        }
    }

    /// Whether a job of `action` goes into a group instead of out now (no store round trip).
    pub fn holds(&self, action: &Action, plan: &Plan) -> Option<Held> {
        if plan.groups.is_some() {
            return Some(Held::Grouped);
        }
        let rate = plan.rate?;
        (!self.storm.admit(&action.name, rate)).then_some(Held::Storm)
    }

    /// Writes `job` into its group; once this returns, its queue message may be acked.
    pub async fn hold(&self, job: &DeliveryJob, plan: &Plan, why: Held) -> Result<(), StoreError> {
        let member = Member {
            event_id: job.event.id.clone(),
            job: serde_json::to_string(job).expect("jobs serialize"),
        };
        let now = clock::now_epoch_millis();
        let added = self
            .store
            .add(&plan.group_of(job), &member, plan.timing(), now)
            .await?;
        if added {
            self.metrics.event_held(why == Held::Storm);
        }
        Ok(())
    }

    /// A `Retry-After` from `action`'s destination: nothing more to it until then.
    pub fn throttled(&self, action: &str, wait: Duration) {
        self.storm.throttled(action, wait);
    }
}

/// One digest: the events of one group, to go out as one message.
pub struct Digest {
    /// The group's `groupBy` values, by property key (empty for an action's one group).
    pub labels: BTreeMap<String, String>,
    /// The events as accepted, oldest first, each job as it was held.
    pub jobs: Vec<DeliveryJob>,
}

impl Digest {
    /// The digest of `jobs` for `group`, oldest accepted first: the order they were held in
    /// may differ, as several delivery partitions hold the events of different alerts side by
    /// side (the sort is stable: jobs accepted in the same millisecond keep their order).
    pub fn new(group: &GroupId, mut jobs: Vec<DeliveryJob>) -> Self {
        jobs.sort_by_key(|job| job.accepted_at_ms);
        Digest {
            labels: serde_json::from_str(&group.key).unwrap_or_default(),
            jobs,
        }
    }

    /// The events that fire (or change their alert), oldest first.
    pub fn firing(&self) -> impl Iterator<Item = &DeliveryJob> {
        self.jobs
            .iter()
            .filter(|job| Transition::of(&job.event) != Transition::Close)
    }

    /// The events that resolve their alert, oldest first.
    pub fn resolved(&self) -> impl Iterator<Item = &DeliveryJob> {
        self.jobs
            .iter()
            .filter(|job| Transition::of(&job.event) == Transition::Close)
    }

    /// One line that says what the digest holds: `12 alerts firing, 2 resolved on db-1`.
    pub fn headline(&self) -> String {
        let (firing, resolved) = (self.firing().count(), self.resolved().count());
        let alerts = |n: usize| if n == 1 { "alert" } else { "alerts" };
        let mut line = match (firing, resolved) {
            (0, n) => format!("{n} {} resolved", alerts(n)),
            (n, 0) => format!("{n} {} firing", alerts(n)),
            (n, m) => format!("{n} {} firing, {m} resolved", alerts(n)),
        };
        if !self.labels.is_empty() {
            let values: Vec<&str> = self.labels.values().map(String::as_str).collect();
            line.push_str(" on ");
            line.push_str(&values.join(" · "));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{action, job_with_id, loopback};
    use crate::outbound::OutboundPolicy;
    use serde_json::json;

    fn plan(properties: serde_json::Value) -> Result<Plan, PropertyError> {
        let action = action("a", "SLACK", properties);
        let outbound = OutboundPolicy::new(loopback());
        Plan::read(&Properties::of(&action, &outbound), 60)
    }

    #[test]
    fn plans_are_read_with_alertmanager_defaults_and_wrong_values_name_their_property() {
        assert_eq!(
            plan(json!({})).unwrap(),
            Plan {
                groups: None,
                rate: Some(Rate { per_minute: 60 })
            }
        );
        let grouped =
            plan(json!({"groupBy": "resource.resourceName, eventType", "messagesPerMinute": "0"}))
                .unwrap();
        let groups = grouped.groups.unwrap();
        assert_eq!(
            (groups.wait, groups.interval),
            (DEFAULT_WAIT, DEFAULT_INTERVAL)
        );
        assert_eq!(groups.by.len(), 2);
        assert_eq!(grouped.rate, None, "0: no limit");
        assert_eq!(groups.repeat, None, "no repeats unless asked for");
        let repeating = plan(json!({"repeatIntervalSeconds": "14400"})).unwrap();
        assert_eq!(repeating.repeat(), Some(Duration::from_secs(14_400)));
        for (properties, named) in [
            (json!({"groupBy": "resource.nope"}), "groupBy"),
            (json!({"groupWaitSeconds": "soon"}), "groupWaitSeconds"),
            (
                json!({"groupIntervalSeconds": "-1"}),
                "groupIntervalSeconds",
            ),
            (json!({"messagesPerMinute": "lots"}), "messagesPerMinute"),
            (
                json!({"repeatIntervalSeconds": "0"}),
                "repeatIntervalSeconds",
            ),
            (
                json!({"repeatIntervalSeconds": "often"}),
                "repeatIntervalSeconds",
            ),
            (
                json!({"groupIntervalSeconds": "60", "repeatIntervalSeconds": "30"}),
                "repeatIntervalSeconds",
            ),
        ] {
            let refused = plan(properties).unwrap_err().to_string();
            assert!(refused.contains(named), "{refused}");
        }
    }

    #[test]
    fn a_group_is_named_by_its_values_and_a_digest_says_what_it_holds() {
        let plan = plan(json!({"groupBy": "resource.resourceName,eventType"})).unwrap();
        let firing = job_with_id("e1", json!({}));
        let resolved = job_with_id("e2", json!({"ans:status": "CLOSE"}));
        let group = plan.group_of(&firing);
        assert_eq!(
            group.key,
            r#"{"eventType":"HighCPU","resource.resourceName":"web-1"}"#
        );
        assert_eq!(group, plan.group_of(&resolved));
        let digest = Digest::new(&group, vec![firing.clone(), firing, resolved]);
        assert_eq!(
            digest.headline(),
            "2 alerts firing, 1 resolved on HighCPU · web-1"
        );
        let storm = Digest::new(
            &Plan::NONE.group_of(&digest.jobs[2]),
            vec![digest.jobs[2].clone()],
        );
        assert_eq!(storm.headline(), "1 alert resolved");
    }

    #[test]
    fn a_digest_lists_its_events_as_accepted_whatever_order_they_were_held_in() {
        let group = Plan::NONE.group_of(&job_with_id("x", json!({})));
        let accepted = |id: &str, at_ms: i64| {
            let mut job = job_with_id(id, json!({}));
            job.accepted_at_ms = at_ms;
            job
        };
        let held = vec![
            accepted("a", 1_000),
            accepted("d", 3_000),
            accepted("c", 2_000),
            accepted("c2", 2_000),
        ];
        let digest = Digest::new(&group, held);
        let order: Vec<&str> = digest.jobs.iter().map(|j| j.event.id.as_str()).collect();
        assert_eq!(order, ["a", "c", "c2", "d"]);
    }
}
