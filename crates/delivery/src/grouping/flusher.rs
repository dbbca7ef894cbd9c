//! The flusher: sends the groups that are due as digests, and records what became of every
//! event in them.
//!
//! Every [`TICK`] it claims the due groups ([`store::groups::GroupStore::claim_due`], leased
//! so that one process sends each), and for each, as a task of its own: takes a token from its
//! destination's bucket (none: the group is put off until one is back, and what comes
//! meanwhile joins it), has the channel send one digest of its oldest [`DIGEST_LIMIT`]
//! members, and then, for every member: records a delivered attempt, or — when the digest
//! failed — a retrying attempt (the group is put off on the action's retry schedule, its
//! failures kept with it) or a failed one and the `UNDELIVERED` record with every reason,
//! handing the member to the action's fallback when the schedule says so. Members whose action
//! asks for delivery-status events get one, as delivered jobs do.
//! A `Retry-After` empties the bucket until then. After a crash the groups are still there,
//! and a claim that its process did not finish lapses after [`LEASE`].
//!
//! Repeats (`repeatIntervalSeconds`): a delivered digest leaves its firing alerts with the
//! group (the latest event of each alert named by `ans:sourceEventId`; a `CLOSE` drops its
//! alert, delivered or not). A group claimed for a repeat — nothing new for the repeat
//! interval — goes out again as a digest of those alerts, once, paced by storm control. A
//! repeat is not an attempt of its events' deliveries: their records stay as they ended, so a
//! repeat can never turn a delivered event undelivered; it is counted in
//! `tocsin_digest_repeats_total`, logged, and recorded as an attempt of each event it named
//! marked as a repeat (attempt 1 of its own, delivered or failed — never counted as
//! delivering the event), which the alert timeline shows as a line of its own; one that fails
//! is not retried — the next comes after another repeat interval.
//!
//! Every attempt a digest records for a member names the digest (its group key and how many
//! events it named), so that each member's timeline says it went out in a digest.

use super::{Digest, Grouping};
use crate::channels::Channels;
use crate::delivery_status::{self, Status};
use crate::failure::{Failure, Retry};
use crate::records::{Attempt, AttemptOutcome, Digested, RecordStore};
use crate::retry::{self, Next, RetrySchedule};
use bus::{Bus, Queue};
use metrics::{DeliveryOutcome, Metrics};
use model::event::{Transition, TAG_SOURCE_EVENT_ID};
use model::{
    Action, ActionTypeError, DeliveryJob, DeliveryStatus, FailureReason, IngestedEvent, Prepared,
    SharedCatalog,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::groups::{Claimed, Firing, Member, Repeats};
use tokio::sync::watch;

/// How often due groups are looked for.
const TICK: Duration = Duration::from_millis(200);
/// How long a claimed group is this process's to send: longer than any attempt takes.
const LEASE: Duration = Duration::from_secs(60);
/// Groups claimed per tick at most.
const GROUPS_PER_TICK: u32 = 32;
/// Events in one digest at most; the rest of a larger group go in the next one, at once. Each
/// channel's renderer fits this many into one message (Slack's 50 blocks, Teams' 28 KB).
pub const DIGEST_LIMIT: u32 = 100;

/// A digest that went out (or tried to): its group, the ids of its members, its events and
/// its action (`None`: gone since).
struct Sent<'a> {
    group: &'a Claimed,
    ids: Vec<String>,
    digest: Digest,
    action: Option<&'a Action>,
}

/// One attempt at a digest (or one repeat), for the records and the metrics.
struct Attempted {
    channel: &'static str,
    /// 1 for the first.
    attempt: u32,
    started_at_ms: i64,
    took: Duration,
    /// When the group's next digest may go.
    next_ms: i64,
    /// Whether the group had more members than the digest took.
    truncated: bool,
    /// The action's repeat interval (`None`: it does not repeat).
    repeat: Option<Duration>,
    /// Whether this digest repeats firing alerts rather than delivering its events.
    repeating: bool,
}

impl Attempted {
    /// The attempt as recorded for each member of `sent`: naming the digest (its group and
    /// size, and whether it was a repeat) so that each member's timeline says what it went
    /// out with.
    fn note(&self, sent: &Sent<'_>, outcome: AttemptOutcome, failure: Option<&Failure>) -> Attempt {
        Attempt {
            action: sent.group.id.action.clone(),
            attempt: self.attempt,
            started_at_ms: self.started_at_ms,
            duration_ms: self.took.as_millis() as i64,
            outcome,
            code: failure.map(|f| f.code.number()),
            reason: failure.map(|f| f.reason.clone()),
            digest: Some(Digested {
                group: sent.group.id.key.clone(),
                events: sent.digest.jobs.len() as u32,
                repeat: self.repeating,
            }),
        }
    }
}

/// What sending a digest needs.
pub struct Flusher {
    pub bus: Arc<dyn Bus>,
    pub grouping: Arc<Grouping>,
    pub catalog: SharedCatalog,
    pub channels: Channels,
    pub records: RecordStore,
    pub retry: RetrySchedule,
    pub metrics: Arc<Metrics>,
}

impl Flusher {
    /// Sends due groups until `shutdown` turns true, then finishes the digests in hand.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_hand = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => break,
            }
            while in_hand.try_join_next().is_some() {}
            let now = clock::now_epoch_millis();
            let claimed = self
                .grouping
                .store
                .claim_due(now, LEASE.as_millis() as i64, GROUPS_PER_TICK, DIGEST_LIMIT)
                .await;
            match claimed {
                Ok(groups) => {
                    for group in groups {
                        in_hand.spawn(Arc::clone(&self).flush(group));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot look for due groups"),
            }
        }
        while in_hand.join_next().await.is_some() {}
    }

    /// Sends one claimed group as a digest and records the outcome of each member.
    async fn flush(self: Arc<Self>, group: Claimed) {
        if group.repeat {
            return self.repeat(group).await;
        }
        let jobs = decode(&group.members);
        let sent: Vec<String> = group.members.iter().map(|m| m.event_id.clone()).collect();
        if jobs.is_empty() {
            // Nothing left to send (an empty claim, or only undecodable members).
            self.done(&group, &sent, clock::now_epoch_millis(), false, None)
                .await;
            return;
        }
        let catalog = self.catalog.load_full();
        let prepared = catalog.prepared(&group.id.action);
        let action = prepared.map(|(action, _)| action);
        let plan = prepared.and_then(|(_, p)| p.as_ref().ok().and_then(Channels::plan));
        if let (Some(action), Some(rate)) = (action, plan.and_then(|p| p.rate)) {
            if let Err(wait) = self.grouping.storm.take(&action.name, rate) {
                let due = clock::now_epoch_millis() + wait.as_millis() as i64;
                self.put_off(&group, due, &group.failures).await;
                return;
            }
        }
        let (digest, started_at_ms, took, outcome) = self.send(&group, jobs, prepared).await;
        let truncated = sent.len() as u32 >= DIGEST_LIMIT;
        let interval = plan.map_or(Duration::ZERO, |p| p.interval());
        let finished_at_ms = clock::now_epoch_millis();
        let failures: Vec<FailureReason> =
            serde_json::from_str(&group.failures).unwrap_or_default();
        let attempted = Attempted {
            channel: action
                .and_then(|a| self.channels.type_name(&a.action_type))
                .unwrap_or("none"),
            attempt: failures.len() as u32 + 1,
            started_at_ms,
            took,
            // What is left of a group larger than a digest goes at once.
            next_ms: if truncated {
                started_at_ms
            } else {
                finished_at_ms + interval.as_millis() as i64
            },
            truncated,
            repeat: plan.and_then(|p| p.repeat()),
            repeating: false,
        };
        let sent = Sent {
            group: &group,
            ids: sent,
            digest,
            action,
        };
        match outcome {
            Ok(()) => self.on_delivered(&sent, &attempted).await,
            Err(failure) => self.on_failed(&sent, &attempted, failures, failure).await,
        }
    }

    /// Every member is delivered.
    async fn on_delivered(&self, sent: &Sent<'_>, attempted: &Attempted) {
        let (channel, jobs) = (attempted.channel, &sent.digest.jobs);
        tracing::info!(action = %sent.group.id.action, events = jobs.len(), "digest delivered");
        self.metrics
            .delivery_attempt(channel, metrics::Attempt::Success, attempted.took);
        self.note(sent, attempted, AttemptOutcome::Delivered, None)
            .await;
        for job in jobs {
            self.metrics.delivery_finished(
                channel,
                DeliveryOutcome::Delivered,
                job.accepted_at_ms,
                clock::now_epoch_millis(),
            );
        }
        self.metrics
            .digest_finished(channel, DeliveryOutcome::Delivered, jobs.len());
        let status = (Status::Delivered, attempted.attempt);
        if self.follow_up(sent.action, jobs, status, None).await {
            self.settled(sent, attempted, jobs, true).await;
        }
    }

    /// The digest failed with `failure` after `failures`: retried on the action's schedule,
    /// or every member is undelivered.
    async fn on_failed(
        &self,
        sent: &Sent<'_>,
        attempted: &Attempted,
        mut failures: Vec<FailureReason>,
        failure: Failure,
    ) {
        let (channel, jobs, attempt) = (attempted.channel, &sent.digest.jobs, attempted.attempt);
        if let (Some(action), Retry::After(wait)) = (sent.action, failure.retry) {
            self.grouping.throttled(&action.name, wait);
        }
        failures.push(FailureReason {
            code: failure.code.number(),
            reason: failure.reason.clone(),
            timestamp: attempted.started_at_ms / 1000,
        });
        let next = match sent.action {
            Some(action) => self.next_step(action, &jobs[0], &failures, &failure),
            None => Next::GiveUp {
                fallback: false,
                why: "the action no longer exists",
            },
        };
        let retrying = matches!(next, Next::Retry { .. });
        self.metrics.delivery_attempt(
            channel,
            metrics::Attempt::Failure {
                kind: failure.code.kind(),
                retryable: retrying,
            },
            attempted.took,
        );
        let outcome = if retrying {
            AttemptOutcome::Retrying
        } else {
            AttemptOutcome::Failed
        };
        self.note(sent, attempted, outcome, Some(&failure)).await;
        let (fallback, why) = match next {
            Next::Retry { after } => {
                tracing::warn!(action = %sent.group.id.action, events = jobs.len(), attempt, code = failure.code.number(), reason = %failure.reason, retry_in_ms = after.as_millis() as u64, "digest failed; retrying");
                let due = clock::now_epoch_millis() + after.as_millis() as i64;
                let failures = serde_json::to_string(&failures).expect("failures serialize");
                self.put_off(sent.group, due, &failures).await;
                return;
            }
            Next::GiveUp { fallback, why } => (fallback, why),
        };
        tracing::warn!(action = %sent.group.id.action, events = jobs.len(), attempts = attempt, code = failure.code.number(), reason = %failure.reason, why, "digest undelivered");
        let undelivered: Vec<DeliveryJob> = jobs
            .iter()
            .map(|job| DeliveryJob {
                attempt,
                failures: failures.clone(),
                ..job.clone()
            })
            .collect();
        for job in &undelivered {
            let recorded = self
                .records
                .record(job, DeliveryStatus::Undelivered, &failures)
                .await;
            if let Err(e) = recorded {
                // The group keeps it: the digest is claimed and tried again later.
                tracing::error!(error = %e, event = %job.event.id, "cannot record an undelivered event; its group is sent again");
                return;
            }
            self.metrics.delivery_finished(
                channel,
                DeliveryOutcome::Undelivered,
                job.accepted_at_ms,
                clock::now_epoch_millis(),
            );
        }
        self.metrics
            .digest_finished(channel, DeliveryOutcome::Undelivered, jobs.len());
        let fallback = sent
            .action
            .filter(|_| fallback)
            .and_then(|a| a.fallback_action.as_deref());
        let status = (Status::Undelivered, attempt);
        if self
            .follow_up(sent.action, &undelivered, status, fallback)
            .await
        {
            // Nothing was said to be firing; what resolved is no longer repeated all the same.
            self.settled(sent, attempted, jobs, false).await;
        }
    }

    /// What follows a digest's outcome for its members, as for a job of their own: their
    /// status events (after `attempts` attempts) when their action asks for them, and,
    /// undelivered, their jobs for the `fallback` action. False when it cannot be queued: the group keeps them, its claim
    /// lapses and the digest goes again (at least once).
    async fn follow_up(
        &self,
        action: Option<&Action>,
        jobs: &[DeliveryJob],
        (status, attempts): (Status, u32),
        fallback: Option<&str>,
    ) -> bool {
        let now_ms = clock::now_epoch_millis();
        let events: Vec<_> = jobs
            .iter()
            .filter(|job| delivery_status::wanted(action, job))
            .map(|job| {
                let event = delivery_status::event(job, status, attempts, now_ms / 1000);
                IngestedEvent::encode(&event, now_ms).into()
            })
            .collect();
        if !events.is_empty() {
            if let Err(e) = self.bus.publish(Queue::Events, events).await {
                tracing::error!(error = %e, "cannot queue a digest's delivery-status events; it goes again");
                return false;
            }
        }
        let Some(fallback) = fallback else {
            return true;
        };
        let stand_ins: Vec<_> = jobs
            .iter()
            .map(|job| {
                let mut stand_in =
                    DeliveryJob::new(job.event.clone(), job.accepted_at_ms, fallback);
                stand_in.fallback_for = Some(job.action.clone());
                stand_in.encode().into()
            })
            .collect();
        tracing::info!(
            fallback,
            events = jobs.len(),
            "handing a digest's events over to the fallback action"
        );
        match self.bus.publish(Queue::Deliveries, stand_ins).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot queue a digest's fallback jobs; it goes again");
                false
            }
        }
    }

    /// Retry or give up, on the action's schedule, counting from the digest's first attempt.
    fn next_step(
        &self,
        action: &Action,
        first: &DeliveryJob,
        failures: &[FailureReason],
        failure: &Failure,
    ) -> Next {
        let mut job = first.clone();
        job.attempt = failures.len() as u32;
        job.first_attempt_at_ms = failures.first().map(|f| f.timestamp * 1000);
        retry::decide(
            &self.retry,
            action,
            &job,
            failure,
            clock::now_epoch_millis(),
            rand::random(),
        )
    }

    /// Records `attempted`, ended with `outcome`, as an attempt of each member of `sent`.
    async fn note(
        &self,
        sent: &Sent<'_>,
        attempted: &Attempted,
        outcome: AttemptOutcome,
        failure: Option<&Failure>,
    ) {
        for job in &sent.digest.jobs {
            let attempt = attempted.note(sent, outcome, failure);
            if let Err(e) = self.records.record_attempt(&job.event.id, attempt).await {
                tracing::warn!(error = %e, event = %job.event.id, "cannot record an attempt");
            }
        }
    }

    /// Sends `jobs` as one digest of `group` through its action (`prepared`): the digest, when
    /// the attempt started (epoch ms), how long it took, and how it ended.
    async fn send(
        &self,
        group: &Claimed,
        jobs: Vec<DeliveryJob>,
        prepared: Option<(&Action, &Result<Prepared, ActionTypeError>)>,
    ) -> (Digest, i64, Duration, Result<(), Failure>) {
        let digest = Digest::new(&group.id, jobs);
        let started_at_ms = clock::now_epoch_millis();
        let clock = Instant::now();
        let outcome = self
            .channels
            .attempt_digest(&digest, &group.id.action, prepared)
            .await;
        (digest, started_at_ms, clock.elapsed(), outcome)
    }

    /// Sends the firing alerts a group keeps again, and schedules the next repeat.
    async fn repeat(self: Arc<Self>, group: Claimed) {
        let catalog = self.catalog.load_full();
        let prepared = catalog.prepared(&group.id.action);
        let action = prepared.map(|(action, _)| action);
        let plan = prepared.and_then(|(_, p)| p.as_ref().ok().and_then(Channels::plan));
        let jobs = decode(&group.members);
        let (Some(every), false) = (plan.and_then(|p| p.repeat()), jobs.is_empty()) else {
            // The action is gone or repeats no more (or nothing fires): the group forgets.
            return self.repeated(&group, None).await;
        };
        if let (Some(action), Some(rate)) = (action, plan.and_then(|p| p.rate)) {
            if let Err(wait) = self.grouping.storm.take(&action.name, rate) {
                let due = clock::now_epoch_millis() + wait.as_millis() as i64;
                return self.repeated(&group, Some(due)).await;
            }
        }
        let channel = action
            .and_then(|a| self.channels.type_name(&a.action_type))
            .unwrap_or("none");
        let (digest, started_at_ms, took, outcome) = self.send(&group, jobs, prepared).await;
        let events = digest.jobs.len();
        let next_ms = clock::now_epoch_millis() + every.as_millis() as i64;
        let attempted = Attempted {
            channel,
            // Sent once, never retried: each repeat is its own first and only attempt.
            attempt: 1,
            started_at_ms,
            took,
            next_ms,
            truncated: false,
            repeat: Some(every),
            repeating: true,
        };
        let sent = Sent {
            group: &group,
            // A repeat takes no member out of its group.
            ids: Vec::new(),
            digest,
            action,
        };
        match outcome {
            Ok(()) => {
                tracing::info!(action = %group.id.action, events, "firing alerts repeated");
                self.metrics
                    .digest_repeated(channel, DeliveryOutcome::Delivered);
                self.note(&sent, &attempted, AttemptOutcome::Delivered, None)
                    .await;
            }
            Err(failure) => {
                if let (Some(action), Retry::After(wait)) = (action, failure.retry) {
                    self.grouping.throttled(&action.name, wait);
                }
                tracing::warn!(action = %group.id.action, events, code = failure.code.number(), reason = %failure.reason, "repeat of firing alerts failed; the next comes after the repeat interval");
                self.metrics
                    .digest_repeated(channel, DeliveryOutcome::Undelivered);
                self.note(&sent, &attempted, AttemptOutcome::Failed, Some(&failure))
                    .await;
            }
        }
        self.repeated(&group, Some(next_ms)).await;
    }

    async fn repeated(&self, group: &Claimed, next_ms: Option<i64>) {
        if let Err(e) = self.grouping.store.repeated(&group.id, next_ms).await {
            // The claim lapses and the repeat goes again.
            tracing::warn!(error = %e, action = %group.id.action, "cannot schedule a group's next repeat");
        }
    }

    /// The digest `sent` of `jobs` ended, `delivered` or not: [`Self::done`], keeping for
    /// repeats what it said was firing if the action repeats.
    async fn settled(
        &self,
        sent: &Sent<'_>,
        attempted: &Attempted,
        jobs: &[DeliveryJob],
        delivered: bool,
    ) {
        let repeats = attempted
            .repeat
            .map(|every| kept_for_repeats(jobs, delivered, every));
        self.done(
            sent.group,
            &sent.ids,
            attempted.next_ms,
            attempted.truncated,
            repeats.as_ref(),
        )
        .await;
    }

    /// The digest ended: its members leave the group, which keeps `repeats` if it repeats.
    async fn done(
        &self,
        group: &Claimed,
        sent: &[String],
        next_ms: i64,
        truncated: bool,
        repeats: Option<&Repeats>,
    ) {
        let flushed = self
            .grouping
            .store
            .flushed(&group.id, sent, next_ms, repeats)
            .await;
        if let Err(e) = flushed {
            // The claim lapses and the digest goes again: at least once, never lost.
            tracing::error!(error = %e, action = %group.id.action, "cannot remove a sent digest's events from their group");
            return;
        }
        if !truncated {
            self.grouping.storm.caught_up(&group.id.action);
        }
    }

    async fn put_off(&self, group: &Claimed, due_ms: i64, failures: &str) {
        if let Err(e) = self
            .grouping
            .store
            .postpone(&group.id, due_ms, failures)
            .await
        {
            tracing::warn!(error = %e, action = %group.id.action, "cannot put a group off; its claim lapses instead");
        }
    }
}

/// The held jobs of `members`, leaving out (and logging) any that cannot be read.
fn decode(members: &[Member]) -> Vec<DeliveryJob> {
    members
        .iter()
        .filter_map(|m| match serde_json::from_str(&m.job) {
            Ok(job) => Some(job),
            Err(e) => {
                tracing::error!(error = %e, event = %m.event_id, "undecodable held job; dropping it from its group");
                None
            }
        })
        .collect()
}

/// What a digest of `jobs` changes in its group's repeats, the next due `every` from now: the
/// alerts it said are firing (when it was `delivered`) — the latest event of each — and those
/// that resolved. Only events with an `ans:sourceEventId` are alerts that can resolve; others
/// are never repeated. Comments change nothing.
fn kept_for_repeats(jobs: &[DeliveryJob], delivered: bool, every: Duration) -> Repeats {
    let mut latest: BTreeMap<&str, Option<&DeliveryJob>> = BTreeMap::new();
    for job in jobs {
        let Some(alert) = job.event.tag(TAG_SOURCE_EVENT_ID) else {
            continue;
        };
        match Transition::of(&job.event) {
            Transition::Open => latest.insert(alert, Some(job)),
            Transition::Close => latest.insert(alert, None),
            Transition::Comment => continue,
        };
    }
    let mut repeats = Repeats {
        at_ms: clock::now_epoch_millis() + every.as_millis() as i64,
        ..Repeats::default()
    };
    for (alert, job) in latest {
        match job {
            Some(job) if delivered => repeats.firing.push(Firing {
                alert_key: alert.to_owned(),
                member: Member {
                    event_id: job.event.id.clone(),
                    job: serde_json::to_string(job).expect("jobs serialize"),
                },
            }),
            Some(_) => {}
            None => repeats.resolved.push(alert.to_owned()),
        }
    }
    repeats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::job_with_id;
    use serde_json::json;

    /// What each member's attempt says of its digest — the group, the digest's size, whether
    /// it was a repeat — as `schemas/attempt.json` describes it.
    #[test]
    fn every_member_records_its_digest_as_the_attempt_schema_says() {
        let schema: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas/attempt.json"
        )))
        .unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let group = Claimed {
            id: store::groups::GroupId {
                action: "hook".into(),
                key: r#"{"resource.resourceName":"db-1"}"#.into(),
            },
            members: Vec::new(),
            failures: String::new(),
            repeat: false,
        };
        let jobs = vec![job_with_id("e1", json!({})), job_with_id("e2", json!({}))];
        let sent = Sent {
            group: &group,
            ids: Vec::new(),
            digest: Digest::new(&group.id, jobs),
            action: None,
        };
        let attempted = |repeating| Attempted {
            channel: "WEB_HOOK",
            attempt: 2,
            started_at_ms: 1_000,
            took: Duration::from_millis(7),
            next_ms: 0,
            truncated: false,
            repeat: None,
            repeating,
        };
        let delivered = attempted(false).note(&sent, AttemptOutcome::Delivered, None);
        let written = serde_json::to_value(&delivered).unwrap();
        assert_eq!(
            written["digest"],
            json!({"group": r#"{"resource.resourceName":"db-1"}"#, "events": 2})
        );
        assert_eq!(
            (written["attempt"].clone(), written["action"].clone()),
            (json!(2), json!("hook"))
        );
        let failure = Failure {
            code: crate::failure::Code::Http(503),
            reason: "unavailable".into(),
            retry: Retry::OnSchedule,
        };
        let repeat = attempted(true).note(&sent, AttemptOutcome::Failed, Some(&failure));
        let repeat = serde_json::to_value(&repeat).unwrap();
        assert_eq!(repeat["digest"]["repeat"], true);
        assert_eq!(repeat["code"], 503);
        let plain = Attempt {
            digest: None,
            ..delivered
        };
        for attempt in [written, repeat, serde_json::to_value(&plain).unwrap()] {
            let errors: Vec<String> = validator
                .iter_errors(&attempt)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{attempt}: {errors:?}");
        }
    }

    #[test]
    fn a_digest_keeps_the_latest_event_of_each_firing_alert_for_repeats() {
        let jobs = [
            job_with_id("e1", json!({"ans:sourceEventId": "a"})),
            job_with_id("e2", json!({"ans:sourceEventId": "b"})),
            job_with_id("e3", json!({"ans:sourceEventId": "a"})),
            job_with_id(
                "e4",
                json!({"ans:sourceEventId": "a", "ans:status": "COMMENT"}),
            ),
            job_with_id(
                "e5",
                json!({"ans:sourceEventId": "b", "ans:status": "CLOSE"}),
            ),
            job_with_id("e6", json!({})),
        ];
        let kept = kept_for_repeats(&jobs, true, Duration::from_secs(60));
        let firing: Vec<(&str, &str)> = kept
            .firing
            .iter()
            .map(|f| (f.alert_key.as_str(), f.member.event_id.as_str()))
            .collect();
        assert_eq!(firing, [("a", "e3")], "no key: never repeated");
        assert_eq!(kept.resolved, ["b"]);
        let failed = kept_for_repeats(&jobs, false, Duration::from_secs(60));
        assert!(
            failed.firing.is_empty(),
            "an undelivered digest said nothing"
        );
        assert_eq!(failed.resolved, ["b"], "a CLOSE resolves all the same");
    }
}
