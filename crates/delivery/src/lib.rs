//! Delivery: runs each job's action through its channel, retries what can be retried, and
//! records how every (event, action) ended.
//!
//! The worker consumes the deliveries queue in batches; a delivery naming several actions
//! becomes one job per action, each holding a [`ticket`] on it. A job that shares an alert key
//! with an earlier one still in progress for the same action is parked behind it ([`lanes`]);
//! the others run concurrently. An attempt looks the action up in the current configuration and
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
pub mod failure;
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
pub mod ticket;

use bus::{Bus, Delivery, Queue};
use bytes::Bytes;
use channels::Channels;
use failure::{Code, Failure};
use lanes::{Claim, LaneJob, Lanes};
use metrics::{DeliveryOutcome, Metrics};
use model::{
    Action, ActionTypeError, DeliveryJob, DeliveryStatus, FailureReason, Prepared, SharedCatalog,
};
use records::{Attempt, AttemptOutcome, RecordStore};
use retry::{Next, RetrySchedule};
use std::sync::Arc;
use std::time::Instant;
use ticket::Ticket;
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
    /// The lanes this process is working on; see [`lanes`]. A tokio mutex: making a lane
    /// durable awaits SQLite while no new job may slip into it.
    lanes_in_memory: tokio::sync::Mutex<LaneMemory>,
}

type LaneKey = (String, String);

#[derive(Default)]
struct LaneMemory {
    /// Lanes whose head is being attempted here, with the jobs waiting behind it.
    active: std::collections::HashMap<LaneKey, std::collections::VecDeque<(Ticket, DeliveryJob)>>,
    /// Lanes that are durable in SQLite (a head waits for a retry): their jobs go there.
    durable: std::collections::HashSet<LaneKey>,
}

fn lane_key(job: &DeliveryJob) -> Option<LaneKey> {
    Some((job.action.clone(), job.ordering_key()?.to_owned()))
}

/// A job with a lane, as `payload`: where it queues behind others with the same key.
fn lane_of(job: &DeliveryJob, payload: Bytes) -> Option<LaneJob> {
    let (action, key) = lane_key(job)?;
    Some(LaneJob {
        action,
        key,
        id: job_id(job),
        payload,
    })
}

fn job_id(job: &DeliveryJob) -> String {
    format!("{}/{}", job.event.id, job.action)
}

fn encode(job: &DeliveryJob) -> Bytes {
    Bytes::from(serde_json::to_vec(job).expect("jobs serialize"))
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
                lanes_in_memory: Default::default(),
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
                in_hand.spawn(shared.process(delivery, job));
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
    /// Lane heads promoted just before a crash may never have reached the queue; and the
    /// durable lanes must be known before the first job arrives.
    async fn republish_stranded_heads(&self) -> Result<(), bus::BusError> {
        self.lanes_in_memory.lock().await.durable =
            self.lanes.durable_lanes().await?.into_iter().collect();
        for head in self.lanes.stranded_heads().await? {
            self.bus
                .publish(Queue::Deliveries, vec![head.payload])
                .await?;
            self.lanes.forget(head.seq).await?;
        }
        Ok(())
    }

    /// Decodes a batch and sorts it out: undecodable jobs are dead-lettered, jobs behind a lane
    /// head wait or are parked; the rest are returned to run, in arrival order. A delivery for
    /// several actions becomes one job per action, each with its [`Ticket`].
    async fn admit(&self, batch: Vec<Delivery>) -> Vec<(Ticket, DeliveryJob)> {
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
            let jobs = job.split();
            runnable.extend(Ticket::split(delivery, jobs.len()).into_iter().zip(jobs));
        }
        let mut memory = self.lanes_in_memory.lock().await;
        let mut run = Vec::with_capacity(runnable.len());
        let mut to_durable: Vec<(Ticket, DeliveryJob)> = Vec::new();
        for (delivery, job) in runnable {
            let Some(key) = lane_key(&job) else {
                run.push((delivery, job));
                continue;
            };
            if memory.durable.contains(&key) {
                to_durable.push((delivery, job));
            } else if let Some(waiting) = memory.active.get_mut(&key) {
                tracing::debug!(event = %job.event.id, action = %job.action, "waiting behind an earlier event with the same key");
                waiting.push_back((delivery, job));
            } else {
                memory.active.insert(key, Default::default());
                run.push((delivery, job));
            }
        }
        if !to_durable.is_empty() {
            // Still under the lock: a job admitted later cannot claim before these.
            run.extend(self.claim_durably(to_durable).await);
        }
        run
    }

    /// Claims durable lanes for `jobs`, in order: heads back from a retry run, the others are
    /// parked (and acked). Returns the jobs to run.
    async fn claim_durably(&self, jobs: Vec<(Ticket, DeliveryJob)>) -> Vec<(Ticket, DeliveryJob)> {
        let lane_jobs = jobs
            .iter()
            .filter_map(|(_, job)| lane_of(job, encode(job)))
            .collect();
        let claims = match self.lanes.claim(lane_jobs).await {
            Ok(claims) => claims,
            Err(e) => {
                // Without the lanes, order cannot be kept: leave these jobs queued.
                tracing::error!(error = %e, "cannot claim ordering lanes; requeueing");
                for (delivery, _) in jobs {
                    settle(delivery.requeue().await, "requeue");
                }
                return Vec::new();
            }
        };
        let mut run = Vec::new();
        for ((delivery, job), claim) in jobs.into_iter().zip(claims) {
            if claim == Claim::Parked {
                tracing::debug!(event = %job.event.id, action = %job.action, "parked behind an earlier event that waits for a retry");
                settle(delivery.ack().await, "ack");
            } else {
                run.push((delivery, job));
            }
        }
        run
    }

    /// Runs `delivery`, then the jobs that were waiting behind it in its lane, one by one.
    async fn process(self: Arc<Self>, delivery: Ticket, job: DeliveryJob) {
        let mut next = Some((delivery, job));
        while let Some((delivery, job)) = next {
            next = self.process_one(delivery, job).await;
        }
    }

    /// Makes one attempt and takes the next step: done, retry later, or give up. Returns the
    /// job that was waiting behind this one in its lane, now free to run.
    async fn process_one(
        &self,
        delivery: Ticket,
        mut job: DeliveryJob,
    ) -> Option<(Ticket, DeliveryJob)> {
        let started_at_ms = model::now_epoch_millis();
        job.first_attempt_at_ms.get_or_insert(started_at_ms);
        let catalog = self.catalog.load_full();
        let prepared = catalog.prepared(&job.action);
        let action = prepared.map(|(action, _)| action);
        // The metrics label: the channel's own (static) name, `none` when no channel serves it.
        let channel = action
            .and_then(|a| self.channels.type_name(&a.action_type))
            .unwrap_or("none");
        let clock = Instant::now();
        let outcome = self.attempt(&job, prepared).await;
        let took = clock.elapsed();
        let mut attempt = Attempt {
            action: job.action.clone(),
            attempt: job.attempt + 1,
            started_at_ms,
            duration_ms: clock.elapsed().as_millis() as i64,
            outcome: AttemptOutcome::Delivered,
            code: None,
            reason: None,
        };
        let failure = match outcome {
            Ok(()) => {
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
            Err(failure) => failure,
        };
        job.attempt += 1;
        job.failures.push(FailureReason {
            code: failure.code.number(),
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
        let retryable = matches!(next, Next::Retry { .. });
        let kind = failure.code.kind();
        self.metrics
            .delivery_attempt(channel, metrics::Attempt::Failure { kind, retryable }, took);
        attempt.code = Some(failure.code.number());
        attempt.reason = Some(failure.reason.clone());
        attempt.outcome = if retryable {
            AttemptOutcome::Retrying
        } else {
            AttemptOutcome::Failed
        };
        self.note_attempt(&job, attempt).await;
        match next {
            Next::Retry { after } => {
                tracing::warn!(event = %job.event.id, action = %job.action, attempt = job.attempt, code = failure.code.number(), reason = %failure.reason, retry_in_ms = after.as_millis() as u64, "attempt failed; retrying");
                let payload = encode(&job);
                // The lane stays taken while this job waits: later events with the same key
                // wait behind it, durably.
                if let Err(e) = self.make_lane_durable(&job, &payload).await {
                    tracing::error!(error = %e, event = %job.event.id, "cannot record an ordering lane; the job will run again");
                    settle(delivery.requeue().await, "requeue");
                    return None;
                }
                let delayed = self
                    .bus
                    .publish_delayed(Queue::Deliveries, payload, after)
                    .await;
                settle_after(delayed, delivery).await;
                None
            }
            Next::GiveUp { fallback, why } => {
                tracing::warn!(event = %job.event.id, action = %job.action, attempts = job.attempt, code = failure.code.number(), reason = %failure.reason, why, "undelivered");
                let recorded = self
                    .records
                    .record(&job, DeliveryStatus::Undelivered, &job.failures)
                    .await;
                if let Err(e) = recorded {
                    tracing::error!(error = %e, event = %job.event.id, "cannot record an undelivered event; it will run again");
                    settle(delivery.requeue().await, "requeue");
                    return None;
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
                        settle(delivery.requeue().await, "requeue");
                        return None;
                    }
                }
                self.finish(delivery, &job).await
            }
        }
    }

    /// One attempt through the channel, with the action as prepared when it was saved.
    async fn attempt(
        &self,
        job: &DeliveryJob,
        prepared: Option<(&Action, &Result<Prepared, ActionTypeError>)>,
    ) -> Result<(), Failure> {
        let Some((action, prepared)) = prepared else {
            return Err(Failure::permanent(
                Code::ActionMissing,
                format!("action `{}` no longer exists", job.action),
            ));
        };
        match prepared {
            Ok(prepared) => self.channels.deliver(job, action, prepared).await,
            Err(ActionTypeError::Unknown { .. }) => Err(Failure::permanent(
                Code::UnsupportedType,
                format!(
                    "action type `{}` is not supported by this Tocsin version",
                    action.action_type
                ),
            )),
            Err(refused) => Err(Failure::bad_action(format!(
                "action `{}`: {refused}",
                action.name
            ))),
        }
    }

    async fn note_attempt(&self, job: &DeliveryJob, attempt: Attempt) {
        if let Err(e) = self.records.record_attempt(&job.event.id, attempt).await {
            tracing::warn!(error = %e, event = %job.event.id, "cannot record an attempt");
        }
    }

    /// The head of an in-memory lane is going to wait for a retry: record its lane in SQLite
    /// and park the jobs waiting behind it there, in order, before anything else can arrive.
    async fn make_lane_durable(
        &self,
        job: &DeliveryJob,
        payload: &Bytes,
    ) -> Result<(), storage::StorageError> {
        let Some(key) = lane_key(job) else {
            return Ok(());
        };
        let mut memory = self.lanes_in_memory.lock().await;
        if memory.durable.contains(&key) {
            return Ok(());
        }
        let head = lane_of(job, payload.clone()).expect("a keyed job");
        self.lanes.claim(vec![head]).await?;
        memory.durable.insert(key.clone());
        let waiting: Vec<_> = memory.active.remove(&key).unwrap_or_default().into();
        drop(self.claim_durably(waiting).await);
        Ok(())
    }

    /// The job is over: ack it and hand its lane to the next job with its key — returned
    /// when it waits here in memory, put back on the queue when it was parked durably.
    async fn finish(&self, delivery: Ticket, job: &DeliveryJob) -> Option<(Ticket, DeliveryJob)> {
        let mut after = None;
        if let Some(key) = lane_key(job) {
            let mut memory = self.lanes_in_memory.lock().await;
            if memory.durable.contains(&key) {
                match self.lanes.release(&job.action, &key.1, &job_id(job)).await {
                    Ok(None) => {
                        memory.durable.remove(&key);
                    }
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
                        settle(delivery.requeue().await, "requeue");
                        return None;
                    }
                }
            } else if let Some(waiting) = memory.active.get_mut(&key) {
                after = waiting.pop_front();
                if after.is_none() {
                    memory.active.remove(&key);
                }
            }
        }
        settle(delivery.ack().await, "ack");
        after
    }
}

/// Acks `delivery` once `step` (which put the job somewhere durable) succeeded; otherwise
/// hands it back to the queue so that nothing is lost.
async fn settle_after(step: Result<(), bus::BusError>, delivery: Ticket) {
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
