//! Delivery: runs each job's action through its channel, retries what can be retried, and
//! records how every (event, action) ended.
//!
//! The worker consumes the deliveries queue in batches. A job that shares an alert key with an
//! earlier one still in progress for the same action is parked behind it ([`lanes`]); the
//! others run concurrently. An attempt looks the action up in the current configuration and
//! hands the job to the channel of its `type` ([`channels`]); every attempt is recorded
//! ([`records`]). After a failure, [`retry`] decides: the job goes back on the bus with a delay
//! — holding nothing while it waits, carrying its own history — or it is given up: recorded
//! `UNDELIVERED` with every failure reason, and handed to the action's fallback if it has one.
//! A job's queue message is acked only after its next step is durable. Attempts and outcomes
//! are counted in the metrics (by channel, result and failure kind), with each attempt's
//! duration and, for deliveries, the time since the event was accepted.
//! On shutdown the worker stops taking jobs and finishes those in hand.

pub mod channels;
pub mod consumer_api;
pub mod http;
pub mod lanes;
pub mod lifecycle;
pub mod links;
pub mod operator_api;
pub mod properties;
pub mod records;
pub mod retention;
pub mod retry;
pub mod templates;

use bus::{Bus, Delivery, Queue};
use bytes::Bytes;
use channels::{Channels, Failure, Outcome};
use lanes::{Claim, LaneJob, Lanes};
use metrics::{DeliveryOutcome, FailureKind, Metrics};
use model::{Action, DeliveryJob, DeliveryStatus, FailureReason, SharedCatalog};
use records::{Attempt, RecordStore};
use retry::{Next, RetrySchedule};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Settings of the delivery workers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Jobs in progress at most.
    pub prefetch: u16,
    /// The default retry schedule; actions may override it.
    pub retry: RetrySchedule,
}

pub struct DeliveryWorker {
    config: DeliveryConfig,
    shared: Arc<Shared>,
}

struct Shared {
    bus: Arc<dyn Bus>,
    catalog: SharedCatalog,
    channels: Channels,
    records: RecordStore,
    lanes: Lanes,
    retry: RetrySchedule,
    metrics: Arc<Metrics>,
}

/// A job with a lane: where it queues behind others with the same key.
fn lane_of(job: &DeliveryJob, payload: &Bytes) -> Option<LaneJob> {
    Some(LaneJob {
        action: job.action.clone(),
        key: job.ordering_key()?.to_owned(),
        id: job_id(job),
        payload: payload.clone(),
    })
}

fn job_id(job: &DeliveryJob) -> String {
    format!("{}/{}", job.event.id, job.action)
}

fn encode(job: &DeliveryJob) -> Bytes {
    Bytes::from(serde_json::to_vec(job).expect("jobs serialize"))
}

/// How long until `job` may run, if it came back from a delay too early.
fn too_early(job: &DeliveryJob, now_ms: i64) -> Option<Duration> {
    let wait = job.not_before_ms? - now_ms;
    // A few milliseconds early is on time: clocks and timers are not that precise.
    (wait > 20).then(|| Duration::from_millis(wait as u64))
}

impl DeliveryWorker {
    pub fn new(
        config: DeliveryConfig,
        bus: Arc<dyn Bus>,
        catalog: SharedCatalog,
        channels: Channels,
        records: RecordStore,
        lanes: Lanes,
        metrics: Arc<Metrics>,
    ) -> Self {
        let retry = config.retry.clone();
        DeliveryWorker {
            config,
            shared: Arc::new(Shared {
                bus,
                catalog,
                channels,
                records,
                lanes,
                retry,
                metrics,
            }),
        }
    }

    /// Delivers until `shutdown` turns true, then finishes the jobs in hand.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), bus::BusError> {
        self.shared.republish_stranded_heads().await?;
        let mut jobs = self
            .shared
            .bus
            .subscribe(Queue::Deliveries, self.config.prefetch)
            .await?;
        let mut in_hand = JoinSet::new();
        loop {
            let batch = tokio::select! {
                batch = jobs.next_batch(usize::from(self.config.prefetch)) => batch,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if batch.is_empty() {
                break;
            }
            for (delivery, job) in self.shared.admit(batch).await {
                let shared = Arc::clone(&self.shared);
                in_hand.spawn(async move { shared.process(delivery, job).await });
            }
            // Reap finished tasks as we go so the set does not grow with the backlog.
            while in_hand.try_join_next().is_some() {}
        }
        drop(jobs);
        while in_hand.join_next().await.is_some() {}
        tracing::info!("delivery stopped");
        Ok(())
    }
}

impl Shared {
    /// Lane heads promoted just before a crash may never have reached the queue.
    async fn republish_stranded_heads(&self) -> Result<(), bus::BusError> {
        for head in self.lanes.stranded_heads().await? {
            self.bus
                .publish(Queue::Deliveries, vec![head.payload])
                .await?;
            self.lanes.forget(head.seq).await?;
        }
        Ok(())
    }

    /// Decodes a batch and sorts it out: undecodable jobs are dead-lettered, jobs back too
    /// early wait again, jobs behind a lane head are parked; the rest are returned to run, in
    /// arrival order.
    async fn admit(&self, batch: Vec<Delivery>) -> Vec<(Delivery, DeliveryJob)> {
        let now = model::now_epoch_millis();
        let mut runnable = Vec::with_capacity(batch.len());
        for delivery in batch {
            let job: DeliveryJob = match serde_json::from_slice(&delivery.payload) {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable delivery job; dead-lettering it");
                    settle(delivery.dead_letter().await, "dead-letter");
                    continue;
                }
            };
            if let Some(wait) = too_early(&job, now) {
                let delayed = self
                    .bus
                    .publish_delayed(Queue::Deliveries, delivery.payload.clone(), wait)
                    .await;
                settle_after(delayed, delivery).await;
                continue;
            }
            runnable.push((delivery, job));
        }
        let keyed: Vec<(usize, LaneJob)> = runnable
            .iter()
            .enumerate()
            .filter_map(|(i, (delivery, job))| Some((i, lane_of(job, &delivery.payload)?)))
            .collect();
        if keyed.is_empty() {
            return runnable;
        }
        let (positions, lane_jobs): (Vec<usize>, Vec<LaneJob>) = keyed.into_iter().unzip();
        let claims = match self.lanes.claim(lane_jobs).await {
            Ok(claims) => claims,
            Err(e) => {
                // Without the lanes, order cannot be kept: leave the keyed jobs queued.
                tracing::error!(error = %e, "cannot claim ordering lanes; requeueing");
                let mut keep = Vec::new();
                for (i, entry) in runnable.into_iter().enumerate() {
                    if positions.contains(&i) {
                        settle(entry.0.requeue().await, "requeue");
                    } else {
                        keep.push(entry);
                    }
                }
                return keep;
            }
        };
        let mut parked = vec![false; runnable.len()];
        for (position, claim) in positions.into_iter().zip(claims) {
            parked[position] = claim == Claim::Parked;
        }
        let mut run = Vec::with_capacity(runnable.len());
        for ((delivery, job), parked) in runnable.into_iter().zip(parked) {
            if parked {
                tracing::debug!(event = %job.event.id, action = %job.action, "parked behind an earlier event with the same key");
                settle(delivery.ack().await, "ack");
            } else {
                run.push((delivery, job));
            }
        }
        run
    }

    /// Makes one attempt and takes the next step: done, retry later, or give up.
    async fn process(&self, delivery: Delivery, mut job: DeliveryJob) {
        let started_at_ms = model::now_epoch_millis();
        job.first_attempt_at_ms.get_or_insert(started_at_ms);
        let catalog = self.catalog.load_full();
        let action = catalog.action(&job.action);
        // The metrics label: the channel's own (static) name, `none` when no channel serves it.
        let channel = action
            .and_then(|a| self.channels.get(&a.action_type))
            .map_or("none", |c| c.action_type());
        let clock = Instant::now();
        let outcome = self.attempt(&job, action).await;
        let took = clock.elapsed();
        let mut attempt = Attempt {
            action: job.action.clone(),
            attempt: job.attempt + 1,
            started_at_ms,
            duration_ms: clock.elapsed().as_millis() as i64,
            outcome: "delivered".into(),
            code: None,
            reason: None,
        };
        let failure = match outcome {
            Outcome::Delivered => {
                self.metrics
                    .delivery_attempt(channel, metrics::Attempt::Success, took);
                self.metrics.delivery_finished(
                    channel,
                    DeliveryOutcome::Delivered,
                    job.accepted_at_ms,
                    model::now_epoch_millis(),
                );
                tracing::info!(event = %job.event.id, action = %job.action, attempt = attempt.attempt, "delivered");
                self.note_attempt(&job, attempt).await;
                return self.finish(delivery, &job).await;
            }
            Outcome::Failed(failure) => failure,
        };
        job.attempt += 1;
        job.failures.push(FailureReason {
            code: failure.code,
            reason: failure.reason.clone(),
            timestamp: started_at_ms / 1000,
        });
        let next = match action {
            Some(action) => retry::decide(
                &self.retry,
                action,
                &job,
                &failure,
                model::now_epoch_millis(),
                rand::random(),
            ),
            None => Next::GiveUp {
                fallback: false,
                why: "the action no longer exists",
            },
        };
        let kind = if channel == "EMAIL" {
            FailureKind::of_smtp_code(failure.code)
        } else {
            FailureKind::of_code(failure.code)
        };
        let retryable = matches!(next, Next::Retry { .. });
        self.metrics
            .delivery_attempt(channel, metrics::Attempt::Failure { kind, retryable }, took);
        attempt.code = Some(failure.code);
        attempt.reason = Some(failure.reason.clone());
        attempt.outcome = if matches!(next, Next::Retry { .. }) {
            "retrying"
        } else {
            "failed"
        }
        .into();
        self.note_attempt(&job, attempt).await;
        match next {
            Next::Retry { after } => {
                tracing::warn!(event = %job.event.id, action = %job.action, attempt = job.attempt, code = failure.code, reason = %failure.reason, retry_in_ms = after.as_millis() as u64, "attempt failed; retrying");
                job.not_before_ms = Some(model::now_epoch_millis() + after.as_millis() as i64);
                // The lane stays taken: later events with the same key wait for this one.
                let delayed = self
                    .bus
                    .publish_delayed(Queue::Deliveries, encode(&job), after)
                    .await;
                settle_after(delayed, delivery).await;
            }
            Next::GiveUp { fallback, why } => {
                tracing::warn!(event = %job.event.id, action = %job.action, attempts = job.attempt, code = failure.code, reason = %failure.reason, why, "undelivered");
                let recorded = self
                    .records
                    .record(&job, DeliveryStatus::Undelivered, &job.failures)
                    .await;
                if let Err(e) = recorded {
                    tracing::error!(error = %e, event = %job.event.id, "cannot record an undelivered event; it will run again");
                    return settle(delivery.requeue().await, "requeue");
                }
                self.metrics.delivery_finished(
                    channel,
                    DeliveryOutcome::Undelivered,
                    job.accepted_at_ms,
                    model::now_epoch_millis(),
                );
                let fallback = action
                    .filter(|_| fallback)
                    .and_then(|a| a.fallback_action.as_deref());
                if let Some(fallback) = fallback {
                    let mut stand_in =
                        DeliveryJob::new(job.event.clone(), job.accepted_at_ms, fallback);
                    stand_in.fallback_for = Some(job.action.clone());
                    tracing::info!(event = %job.event.id, action = %job.action, fallback, "handing over to the fallback action");
                    if let Err(e) = self
                        .bus
                        .publish(Queue::Deliveries, vec![encode(&stand_in)])
                        .await
                    {
                        tracing::error!(error = %e, event = %job.event.id, "cannot queue the fallback; the job will run again");
                        return settle(delivery.requeue().await, "requeue");
                    }
                }
                self.finish(delivery, &job).await;
            }
        }
    }

    async fn attempt(&self, job: &DeliveryJob, action: Option<&Action>) -> Outcome {
        let Some(action) = action else {
            return Outcome::Failed(Failure::permanent(
                channels::CODE_ACTION_MISSING,
                format!("action `{}` no longer exists", job.action),
            ));
        };
        match self.channels.get(&action.action_type) {
            Some(channel) => channel.deliver(job, action).await,
            None => Outcome::Failed(Failure::permanent(
                channels::CODE_UNSUPPORTED_TYPE,
                format!(
                    "action type `{}` is not supported by this Tocsin version",
                    action.action_type
                ),
            )),
        }
    }

    async fn note_attempt(&self, job: &DeliveryJob, attempt: Attempt) {
        if let Err(e) = self.records.record_attempt(&job.event.id, attempt).await {
            tracing::warn!(error = %e, event = %job.event.id, "cannot record an attempt");
        }
    }

    /// The job is over: free its lane for the next job with its key, then ack.
    async fn finish(&self, delivery: Delivery, job: &DeliveryJob) {
        if let Some(key) = job.ordering_key() {
            match self.lanes.release(&job.action, key, &job_id(job)).await {
                Ok(None) => {}
                Ok(Some(next)) => {
                    let queued = self
                        .bus
                        .publish(Queue::Deliveries, vec![next.payload])
                        .await;
                    match queued {
                        Ok(()) => {
                            if let Err(e) = self.lanes.forget(next.seq).await {
                                tracing::warn!(error = %e, "cannot forget a promoted job; it may run twice");
                            }
                        }
                        // It stays parked as the head: the next start publishes it.
                        Err(e) => {
                            tracing::error!(error = %e, "cannot queue the next job of a lane")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, event = %job.event.id, "cannot release an ordering lane; the job will run again");
                    return settle(delivery.requeue().await, "requeue");
                }
            }
        }
        settle(delivery.ack().await, "ack");
    }
}

/// Acks `delivery` once `step` (which put the job somewhere durable) succeeded; otherwise
/// hands it back to the queue so that nothing is lost.
async fn settle_after(step: Result<(), bus::BusError>, delivery: Delivery) {
    match step {
        Ok(()) => settle(delivery.ack().await, "ack"),
        Err(e) => {
            tracing::error!(error = %e, "cannot queue a delayed job; it will run again");
            settle(delivery.requeue().await, "requeue");
        }
    }
}

fn settle(result: Result<(), bus::BusError>, what: &str) {
    if let Err(e) = result {
        tracing::warn!(error = %e, what, "cannot settle a delivery job; it will run again");
    }
}
