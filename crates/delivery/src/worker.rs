//! The delivery worker: takes jobs off the deliveries queue and runs each through its steps.
//!
//! [`DeliveryWorker::run`] consumes the queue in batches; a delivery naming several actions
//! becomes one job per action, each holding a [`Ticket`] on it, and the ordering lanes decide
//! which may run now ([`OrderingLanes::admit`]). Each job then goes through typed steps:
//! [`Shared::attempt`] makes one attempt and records it, and its [`Step`] says what follows —
//! [`Shared::on_delivered`], [`Shared::on_retry`] (back on the bus with a delay, holding
//! nothing while it waits, its lane held durably) or [`Shared::on_give_up`] (recorded
//! `UNDELIVERED` with every reason, handed to the fallback action if it has one). A job's queue
//! message is acked only after its next step is durable; when a step cannot be made durable the
//! message is handed back, so nothing is lost. A job whose action groups its events, or that
//! storm control holds back, is written into its group instead ([`Shared::on_held`]) and sent
//! later in a digest by the [`flusher`](crate::grouping::flusher), which the worker runs too.
//! On shutdown the worker stops taking jobs and finishes those in hand.

use crate::channels::Channels;
use crate::delivery_status::{self, Status};
use crate::failure::{Failure, Retry};
use crate::grouping::flusher::Flusher;
use crate::grouping::{Grouping, Held, Plan};
use crate::lanes::{Lanes, OrderingLanes, RecoverError, STRANDED_AFTER};
use crate::records::{Attempt, AttemptOutcome, RecordStore};
use crate::retry::{self, Next, RetrySchedule};
use crate::ticket::Ticket;
use bus::{Bus, Delivery, Queue};
use bytes::Bytes;
use metrics::{DeliveryOutcome, Metrics};
use model::{
    Action, ActionTypeError, DeliveryJob, DeliveryStatus, FailureReason, IngestedEvent, Prepared,
    SharedCatalog,
};
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

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Lanes(#[from] RecoverError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

/// What the worker keeps durably besides the records: the ordering lanes whose head waits for
/// a retry, and the groups of jobs held for digests.
pub struct Durable {
    pub lanes: Lanes,
    pub groups: store::groups::GroupStore,
}

impl Durable {
    /// Both, where `location` keeps the state.
    pub async fn open(location: &store::Location) -> Result<Self, store::StoreError> {
        Ok(Durable {
            lanes: Lanes::open(location).await?,
            groups: store::groups::GroupStore::open(location).await?,
        })
    }
}

pub struct DeliveryWorker {
    prefetch: u16,
    shared: Arc<Shared>,
}

struct Shared {
    bus: Arc<dyn Bus>,
    catalog: SharedCatalog,
    channels: Channels,
    records: RecordStore,
    lanes: OrderingLanes,
    retry: RetrySchedule,
    metrics: Arc<Metrics>,
    grouping: Arc<Grouping>,
}

/// What follows a failed attempt.
enum Step {
    Retry { after: Duration },
    GiveUp { fallback: bool, why: &'static str },
}

/// One attempt's facts, for the records and the metrics.
struct Attempted {
    /// The channel's name, the metrics label (`none` when no channel serves the action).
    channel: &'static str,
    started_at_ms: i64,
    took: Duration,
}

impl DeliveryWorker {
    pub fn new(
        config: DeliveryConfig,
        bus: Arc<dyn Bus>,
        catalog: SharedCatalog,
        channels: Channels,
        records: RecordStore,
        durable: Durable,
        metrics: Arc<Metrics>,
    ) -> Self {
        DeliveryWorker {
            prefetch: config.prefetch,
            shared: Arc::new(Shared {
                lanes: OrderingLanes::new(durable.lanes, Arc::clone(&bus)),
                bus,
                catalog,
                channels,
                records,
                retry: config.retry,
                grouping: Arc::new(Grouping::new(durable.groups, Arc::clone(&metrics))),
                metrics,
            }),
        }
    }

    /// Delivers until `shutdown` turns true, then finishes the jobs in hand.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        self.shared.lanes.recover().await?;
        let sweeper = {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(STRANDED_AFTER);
                every.tick().await;
                loop {
                    every.tick().await;
                    shared.lanes.sweep_stranded().await;
                }
            })
        };
        let flusher = Arc::new(Flusher {
            bus: Arc::clone(&self.shared.bus),
            grouping: Arc::clone(&self.shared.grouping),
            catalog: self.shared.catalog.clone(),
            channels: self.shared.channels.clone(),
            records: self.shared.records.clone(),
            retry: self.shared.retry.clone(),
            metrics: Arc::clone(&self.shared.metrics),
        });
        let flusher = tokio::spawn(flusher.run(shutdown.clone()));
        let mut jobs = self
            .shared
            .bus
            .subscribe(Queue::Deliveries, self.prefetch)
            .await?;
        let mut in_hand = JoinSet::new();
        let limit = usize::from(self.prefetch);
        let store = self.shared.records.availability();
        loop {
            // While the store cannot record outcomes, take no more work: it waits on the
            // queue, and the jobs in hand retry on their schedule.
            if !store.is_available() {
                tokio::select! {
                    () = store.wait() => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => break,
                }
            }
            let Some(batch) = jobs.next_batch_until(limit, &mut shutdown).await else {
                break;
            };
            let runnable = self.shared.lanes.admit(split(batch).await).await;
            for (delivery, job) in runnable {
                let shared = Arc::clone(&self.shared);
                in_hand.spawn(shared.process(delivery, job));
            }
            // Reap finished tasks as we go so the set does not grow with the backlog.
            while in_hand.try_join_next().is_some() {}
        }
        drop(jobs);
        sweeper.abort();
        while in_hand.join_next().await.is_some() {}
        if let Err(e) = flusher.await {
            tracing::error!(error = %e, "the digest flusher failed");
        }
        tracing::info!("delivery stopped");
        Ok(())
    }
}

/// Decodes a batch into one job per action, each with its [`Ticket`]; undecodable deliveries
/// are dead-lettered.
async fn split(batch: Vec<Delivery>) -> Vec<(Ticket, DeliveryJob)> {
    let mut jobs = Vec::with_capacity(batch.len());
    for delivery in batch {
        let job: DeliveryJob = match serde_json::from_slice(&delivery.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, "undecodable delivery job; dead-lettering it");
                settle(delivery.dead_letter().await, "dead-letter");
                continue;
            }
        };
        let split = job.split();
        jobs.extend(Ticket::split(delivery, split.len()).into_iter().zip(split));
    }
    jobs
}

impl Shared {
    /// Runs `delivery`, then the jobs that were waiting behind it in its lane, one by one.
    async fn process(self: Arc<Self>, delivery: Ticket, job: DeliveryJob) {
        let mut next = Some((delivery, job));
        while let Some((delivery, job)) = next {
            next = self.process_one(delivery, job).await;
        }
    }

    /// One attempt and the step after it. Returns the job that was waiting behind this one in
    /// its lane, now free to run.
    async fn process_one(
        &self,
        delivery: Ticket,
        mut job: DeliveryJob,
    ) -> Option<(Ticket, DeliveryJob)> {
        let catalog = self.catalog.load_full();
        let prepared = catalog.prepared(&job.action);
        let action = prepared.map(|(action, _)| action);
        if self.delivered_before(&delivery, &job).await {
            tracing::info!(event = %job.event.id, action = %job.action, "delivered before, by a copy of this job; not again");
            // The copy may have stopped before reporting it (a status event is at least once).
            let delivery = self
                .report(delivery, action, &job, Status::Delivered)
                .await?;
            return self.finish(delivery, &job).await;
        }
        let plan = prepared.and_then(|(_, p)| p.as_ref().ok().and_then(Channels::plan));
        if let (Some(action), Some(plan)) = (action, plan) {
            if let Some(why) = self.grouping.holds(action, plan) {
                return self.on_held(delivery, &job, plan, why).await;
            }
        }
        let (outcome, attempted) = self.attempt(&mut job, prepared).await;
        let failure = match outcome {
            Ok(()) => return self.on_delivered(delivery, &job, action, &attempted).await,
            Err(failure) => failure,
        };
        if let (Some(action), Retry::After(wait)) = (action, failure.retry) {
            // What comes for this destination meanwhile waits in its group, not for a 429.
            self.grouping.throttled(&action.name, wait);
        }
        job.attempt += 1;
        job.failures.push(FailureReason {
            code: failure.code.number(),
            reason: failure.reason.clone(),
            timestamp: attempted.started_at_ms / 1000,
        });
        let step = self.next_step(action, &job, &failure);
        self.note_failure(&job, &attempted, &failure, &step).await;
        match step {
            Step::Retry { after } => {
                tracing::warn!(event = %job.event.id, action = %job.action, attempt = job.attempt, code = failure.code.number(), reason = %failure.reason, retry_in_ms = after.as_millis() as u64, "attempt failed; retrying");
                self.on_retry(delivery, &job, after).await;
                None
            }
            Step::GiveUp { fallback, why } => {
                tracing::warn!(event = %job.event.id, action = %job.action, attempts = job.attempt, code = failure.code.number(), reason = %failure.reason, why, "undelivered");
                let fallback = action
                    .filter(|_| fallback)
                    .and_then(|a| a.fallback_action.as_deref());
                self.on_give_up(delivery, &job, action, fallback, attempted.channel)
                    .await
            }
        }
    }

    /// Whether a copy of `job` delivered it already. Only a job that may have run before asks:
    /// a redelivered one (Tocsin stopped before settling it, or handed it back with a sibling)
    /// or a retry, whose older copy can come back after a crash and run first. A fresh first
    /// attempt — the hot path — reads nothing.
    async fn delivered_before(&self, delivery: &Ticket, job: &DeliveryJob) -> bool {
        if !delivery.redelivered() && job.attempt == 0 {
            return false;
        }
        self.records
            .delivered(&job.event.id, &job.action)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, event = %job.event.id, "cannot tell whether a copy delivered this job; attempting it");
                false
            })
    }

    /// Makes one attempt through the channel, with the action as prepared when it was saved.
    async fn attempt(
        &self,
        job: &mut DeliveryJob,
        prepared: Option<(&Action, &Result<Prepared, ActionTypeError>)>,
    ) -> (Result<(), Failure>, Attempted) {
        let started_at_ms = clock::now_epoch_millis();
        job.first_attempt_at_ms.get_or_insert(started_at_ms);
        let channel = prepared
            .and_then(|(action, _)| self.channels.type_name(&action.action_type))
            .unwrap_or("none");
        let clock = Instant::now();
        let outcome = self.channels.attempt(job, prepared).await;
        let attempted = Attempted {
            channel,
            started_at_ms,
            took: clock.elapsed(),
        };
        (outcome, attempted)
    }

    /// Retry, or give up: the schedule and the ANS rules decide ([`retry::decide`]).
    fn next_step(&self, action: Option<&Action>, job: &DeliveryJob, failure: &Failure) -> Step {
        let Some(action) = action else {
            return Step::GiveUp {
                fallback: false,
                why: "the action no longer exists",
            };
        };
        let now = clock::now_epoch_millis();
        match retry::decide(&self.retry, action, job, failure, now, rand::random()) {
            Next::Retry { after } => Step::Retry { after },
            Next::GiveUp { fallback, why } => Step::GiveUp { fallback, why },
        }
    }

    async fn on_delivered(
        &self,
        delivery: Ticket,
        job: &DeliveryJob,
        action: Option<&Action>,
        attempted: &Attempted,
    ) -> Option<(Ticket, DeliveryJob)> {
        let channel = attempted.channel;
        self.metrics
            .delivery_attempt(channel, metrics::Attempt::Success, attempted.took);
        self.metrics.delivery_finished(
            channel,
            DeliveryOutcome::Delivered,
            job.accepted_at_ms,
            clock::now_epoch_millis(),
        );
        tracing::info!(event = %job.event.id, action = %job.action, attempt = job.attempt + 1, "delivered");
        self.note_attempt(
            job,
            job.attempt + 1,
            attempted,
            AttemptOutcome::Delivered,
            None,
        )
        .await;
        let delivery = self
            .report(delivery, action, job, Status::Delivered)
            .await?;
        self.finish(delivery, job).await
    }

    /// The job waits in its group for a digest: acked once it is written there.
    async fn on_held(
        &self,
        delivery: Ticket,
        job: &DeliveryJob,
        plan: &Plan,
        why: Held,
    ) -> Option<(Ticket, DeliveryJob)> {
        if let Err(e) = self.grouping.hold(job, plan, why).await {
            tracing::error!(error = %e, event = %job.event.id, "cannot hold a job in its group; it will run again");
            self.hand_back(delivery, job).await;
            return None;
        }
        tracing::debug!(event = %job.event.id, action = %job.action, ?why, "held for a digest");
        self.finish(delivery, job).await
    }

    /// Publishes the status event of `job`'s outcome when its action asks for one
    /// ([`delivery_status`]), as a new event on the events queue, and gives the ticket back;
    /// when it cannot, hands the job back to run again.
    async fn report(
        &self,
        delivery: Ticket,
        action: Option<&Action>,
        job: &DeliveryJob,
        status: Status,
    ) -> Option<Ticket> {
        if !delivery_status::wanted(action, job) {
            return Some(delivery);
        }
        let attempts = match status {
            Status::Delivered => job.attempt + 1,
            Status::Undelivered => job.attempt,
        };
        let now_ms = clock::now_epoch_millis();
        let event = delivery_status::event(job, status, attempts, now_ms / 1000);
        let queued = self
            .bus
            .publish(
                Queue::Events,
                vec![IngestedEvent::encode(&event, now_ms).into()],
            )
            .await;
        match queued {
            Ok(()) => Some(delivery),
            Err(e) => {
                tracing::error!(error = %e, event = %job.event.id, "cannot queue a delivery-status event; the job will run again");
                self.hand_back(delivery, job).await;
                None
            }
        }
    }

    /// The job waits for its retry on the bus, its lane held durably so that later events with
    /// its key wait behind it.
    async fn on_retry(&self, delivery: Ticket, job: &DeliveryJob, after: Duration) {
        let payload = Bytes::from(job.encode());
        if let Err(e) = self.lanes.hold(job, &payload).await {
            tracing::error!(error = %e, event = %job.event.id, "cannot record an ordering lane; the job will run again");
            self.hand_back(delivery, job).await;
            return;
        }
        let delayed = self
            .bus
            .publish_delayed(Queue::Deliveries, payload, after)
            .await;
        match delayed {
            Ok(()) => {
                if let Err(e) = self.lanes.waiting(job).await {
                    // Only a guard against a duplicate after a crash: the retry is queued.
                    tracing::warn!(error = %e, event = %job.event.id, "cannot note that a retry waits");
                }
                settle(delivery.ack().await, "ack")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot queue a delayed job; it will run again");
                self.hand_back(delivery, job).await;
            }
        }
    }

    /// The job is undelivered: recorded with every reason, then handed to `fallback`.
    async fn on_give_up(
        &self,
        delivery: Ticket,
        job: &DeliveryJob,
        action: Option<&Action>,
        fallback: Option<&str>,
        channel: &'static str,
    ) -> Option<(Ticket, DeliveryJob)> {
        let recorded = self
            .records
            .record(job, DeliveryStatus::Undelivered, &job.failures)
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, event = %job.event.id, "cannot record an undelivered event; it will run again");
            self.hand_back(delivery, job).await;
            return None;
        }
        let delivery = self
            .report(delivery, action, job, Status::Undelivered)
            .await?;
        self.metrics.delivery_finished(
            channel,
            DeliveryOutcome::Undelivered,
            job.accepted_at_ms,
            clock::now_epoch_millis(),
        );
        if let Some(fallback) = fallback {
            let mut stand_in = DeliveryJob::new(job.event.clone(), job.accepted_at_ms, fallback);
            stand_in.fallback_for = Some(job.action.clone());
            tracing::info!(event = %job.event.id, action = %job.action, fallback, "handing over to the fallback action");
            let queued = self
                .bus
                .publish(Queue::Deliveries, vec![stand_in.encode().into()])
                .await;
            if let Err(e) = queued {
                tracing::error!(error = %e, event = %job.event.id, "cannot queue the fallback; the job will run again");
                self.hand_back(delivery, job).await;
                return None;
            }
        }
        self.finish(delivery, job).await
    }

    /// Counts and records a failed attempt.
    async fn note_failure(
        &self,
        job: &DeliveryJob,
        attempted: &Attempted,
        failure: &Failure,
        step: &Step,
    ) {
        let retryable = matches!(step, Step::Retry { .. });
        let kind = failure.code.kind();
        self.metrics.delivery_attempt(
            attempted.channel,
            metrics::Attempt::Failure { kind, retryable },
            attempted.took,
        );
        let outcome = if retryable {
            AttemptOutcome::Retrying
        } else {
            AttemptOutcome::Failed
        };
        // `job` already counts this attempt.
        self.note_attempt(job, job.attempt, attempted, outcome, Some(failure))
            .await;
    }

    /// Records attempt `number` (1 for the first) of `job`.
    async fn note_attempt(
        &self,
        job: &DeliveryJob,
        number: u32,
        attempted: &Attempted,
        outcome: AttemptOutcome,
        failure: Option<&Failure>,
    ) {
        let attempt = Attempt {
            action: job.action.clone(),
            attempt: number,
            started_at_ms: attempted.started_at_ms,
            duration_ms: attempted.took.as_millis() as i64,
            outcome,
            code: failure.map(|f| f.code.number()),
            reason: failure.map(|f| f.reason.clone()),
            digest: None,
        };
        if let Err(e) = self.records.record_attempt(&job.event.id, attempt).await {
            tracing::warn!(error = %e, event = %job.event.id, "cannot record an attempt");
        }
    }

    /// The job is over: its lane goes on to the next job with its key, and it is acked.
    async fn finish(&self, delivery: Ticket, job: &DeliveryJob) -> Option<(Ticket, DeliveryJob)> {
        match self.lanes.release(job).await {
            Ok(next) => {
                settle(delivery.ack().await, "ack");
                next
            }
            Err(e) => {
                tracing::error!(error = %e, event = %job.event.id, "cannot release an ordering lane; the job will run again");
                self.hand_back(delivery, job).await;
                None
            }
        }
    }
}

impl Shared {
    /// Puts `job` back on the queue, and the jobs that waited behind it in its lane after it.
    async fn hand_back(&self, delivery: Ticket, job: &DeliveryJob) {
        settle(delivery.requeue().await, "requeue");
        for (waiting, _) in self.lanes.abandon(job).await {
            settle(waiting.requeue().await, "requeue");
        }
    }
}

/// Logs a settle that failed: the job then simply runs again.
pub(crate) fn settle(result: Result<(), bus::BusError>, what: &str) {
    if let Err(e) = result {
        tracing::warn!(error = %e, what, "cannot settle a delivery job; it will run again");
    }
}
