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

use super::{Digest, Grouping};
use crate::channels::Channels;
use crate::delivery_status::{self, Status};
use crate::failure::{Failure, Retry};
use crate::records::{Attempt, AttemptOutcome, RecordStore};
use crate::retry::{self, Next, RetrySchedule};
use bus::{Bus, Queue};
use metrics::{DeliveryOutcome, Metrics};
use model::{Action, DeliveryJob, DeliveryStatus, FailureReason, IngestedEvent, SharedCatalog};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::groups::Claimed;
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
        let jobs: Vec<DeliveryJob> = group
            .members
            .iter()
            .filter_map(|m| match serde_json::from_str(&m.job) {
                Ok(job) => Some(job),
                Err(e) => {
                    tracing::error!(error = %e, event = %m.event_id, "undecodable held job; dropping it from its group");
                    None
                }
            })
            .collect();
        let sent: Vec<String> = group.members.iter().map(|m| m.event_id.clone()).collect();
        if jobs.is_empty() {
            // Nothing left to send (an empty claim, or only undecodable members).
            self.done(&group, &sent, clock::now_epoch_millis(), false)
                .await;
            return;
        }
        let mut failures: Vec<FailureReason> =
            serde_json::from_str(&group.failures).unwrap_or_default();
        let catalog = self.catalog.load_full();
        let prepared = catalog.prepared(&group.id.action);
        let plan = prepared.and_then(|(_, p)| p.as_ref().ok().and_then(Channels::plan));
        if let (Some((action, _)), Some(rate)) = (prepared, plan.and_then(|p| p.rate)) {
            if let Err(wait) = self.grouping.storm.take(&action.name, rate) {
                let due = clock::now_epoch_millis() + wait.as_millis() as i64;
                self.put_off(&group, due, &group.failures).await;
                return;
            }
        }
        let digest = Digest::new(&group.id, jobs);
        let channel = prepared
            .and_then(|(action, _)| self.channels.type_name(&action.action_type))
            .unwrap_or("none");
        let started_at_ms = clock::now_epoch_millis();
        let clock = Instant::now();
        let outcome = self
            .channels
            .attempt_digest(&digest, &group.id.action, prepared)
            .await;
        let took = clock.elapsed();
        let attempt = failures.len() as u32 + 1;
        let interval = plan.map_or(Duration::ZERO, |p| p.interval());
        let truncated = sent.len() as u32 >= DIGEST_LIMIT;
        let next_ms = if truncated {
            started_at_ms
        } else {
            clock::now_epoch_millis() + interval.as_millis() as i64
        };
        let note = |outcome, failure: Option<&Failure>| Attempt {
            action: group.id.action.clone(),
            attempt,
            started_at_ms,
            duration_ms: took.as_millis() as i64,
            outcome,
            code: failure.map(|f| f.code.number()),
            reason: failure.map(|f| f.reason.clone()),
        };
        let failure = match outcome {
            Ok(()) => {
                tracing::info!(action = %group.id.action, events = digest.jobs.len(), "digest delivered");
                self.metrics
                    .delivery_attempt(channel, metrics::Attempt::Success, took);
                for job in &digest.jobs {
                    self.note(job, note(AttemptOutcome::Delivered, None)).await;
                    self.metrics.delivery_finished(
                        channel,
                        DeliveryOutcome::Delivered,
                        job.accepted_at_ms,
                        clock::now_epoch_millis(),
                    );
                }
                self.metrics.digest_finished(
                    channel,
                    DeliveryOutcome::Delivered,
                    digest.jobs.len(),
                );
                let action = prepared.map(|(action, _)| action);
                if self
                    .follow_up(action, &digest.jobs, (Status::Delivered, attempt), None)
                    .await
                {
                    self.done(&group, &sent, next_ms, truncated).await;
                }
                return;
            }
            Err(failure) => failure,
        };
        if let (Some((action, _)), Retry::After(wait)) = (prepared, failure.retry) {
            self.grouping.throttled(&action.name, wait);
        }
        failures.push(FailureReason {
            code: failure.code.number(),
            reason: failure.reason.clone(),
            timestamp: started_at_ms / 1000,
        });
        let next = match (prepared, digest.jobs.first()) {
            (Some((action, _)), Some(first)) => self.next_step(action, first, &failures, &failure),
            _ => Next::GiveUp {
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
            took,
        );
        let outcome = if retrying {
            AttemptOutcome::Retrying
        } else {
            AttemptOutcome::Failed
        };
        for job in &digest.jobs {
            self.note(job, note(outcome, Some(&failure))).await;
        }
        match next {
            Next::Retry { after } => {
                tracing::warn!(action = %group.id.action, events = digest.jobs.len(), attempt, code = failure.code.number(), reason = %failure.reason, retry_in_ms = after.as_millis() as u64, "digest failed; retrying");
                let due = clock::now_epoch_millis() + after.as_millis() as i64;
                let failures = serde_json::to_string(&failures).expect("failures serialize");
                self.put_off(&group, due, &failures).await;
            }
            Next::GiveUp { fallback, why } => {
                tracing::warn!(action = %group.id.action, events = digest.jobs.len(), attempts = attempt, code = failure.code.number(), reason = %failure.reason, why, "digest undelivered");
                let undelivered: Vec<DeliveryJob> = digest
                    .jobs
                    .iter()
                    .map(|job| DeliveryJob {
                        attempt,
                        failures: failures.clone(),
                        ..job.clone()
                    })
                    .collect();
                for job in &undelivered {
                    if let Err(e) = self
                        .records
                        .record(job, DeliveryStatus::Undelivered, &failures)
                        .await
                    {
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
                self.metrics.digest_finished(
                    channel,
                    DeliveryOutcome::Undelivered,
                    digest.jobs.len(),
                );
                let action = prepared.map(|(action, _)| action);
                let fallback = action
                    .filter(|_| fallback)
                    .and_then(|a| a.fallback_action.as_deref());
                if self
                    .follow_up(
                        action,
                        &undelivered,
                        (Status::Undelivered, attempt),
                        fallback,
                    )
                    .await
                {
                    self.done(&group, &sent, next_ms, truncated).await;
                }
            }
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

    async fn note(&self, job: &DeliveryJob, attempt: Attempt) {
        if let Err(e) = self.records.record_attempt(&job.event.id, attempt).await {
            tracing::warn!(error = %e, event = %job.event.id, "cannot record an attempt");
        }
    }

    /// The digest ended: its members leave the group.
    async fn done(&self, group: &Claimed, sent: &[String], next_ms: i64, truncated: bool) {
        if let Err(e) = self.grouping.store.flushed(&group.id, sent, next_ms).await {
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
