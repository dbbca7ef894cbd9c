//! Ordering: events that share an `ans:sourceEventId` reach an action in the order they were
//! accepted, even while an earlier one waits for a retry — a close never overtakes its open —
//! and without holding up anything else.
//!
//! Each (action, key) with work in progress is a *lane* whose *head* is the one job allowed to
//! run. While the head is being attempted, later jobs of the lane simply wait in memory, their
//! queue messages unacked (a crash hands them out again, in order). Only when the head has to
//! wait for a retry does the lane become durable, in the store ([`store::lanes`]: `lanes.db`,
//! or the shared PostgreSQL database): the head's lane is recorded and the jobs behind it are
//! *parked* (their queue messages then acked). When a durable lane's head is done — delivered
//! or given up — the next parked job becomes the head and goes back on the queue. Jobs without
//! a key have no lane.
//!
//! Across processes (RabbitMQ, PostgreSQL): the bus hands one key's jobs to one process at a
//! time (its partition's single active consumer), and the durable lanes are shared, so a
//! process that takes a partition over finds the lanes the previous one held. What this
//! process remembers of durable lanes may then be out of date, so before it runs a job whose
//! lane it does not know it reads the store once per batch ([`Lanes::durable_among`]); and it
//! sweeps for heads that a process promoted and died before queueing
//! ([`OrderingLanes::sweep_stranded`]). The hot path, where deliveries succeed, writes nothing
//! here; on a shared store it reads once per batch of keyed jobs.
//!
//! [`OrderingLanes`] is the whole of it, both halves. The worker asks it three things: which of
//! the jobs just taken from the queue may run ([`OrderingLanes::admit`]), to hold a lane while
//! its head waits for a retry ([`OrderingLanes::hold`]), and to hand a lane on when its head is
//! done ([`OrderingLanes::release`]).

use crate::ticket::Ticket;
use bus::{Bus, Queue};
use bytes::Bytes;
use model::DeliveryJob;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use store::lanes::{Claim, LaneJob};
use store::StoreError;

pub use store::lanes::Lanes;

/// How long a promoted head may take to reach the queue before a sweep of a shared store takes
/// it for stranded (its process died in between) and queues it again: well past the bus's
/// publish timeout, so that a head still on its way is not queued twice.
pub const STRANDED_AFTER: Duration = Duration::from_secs(60);

/// Why the lanes could not be recovered at start.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("ordering lanes: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

/// A lane: (action, alert key).
type LaneKey = (String, String);

/// The lanes this process is working on.
#[derive(Default)]
struct LaneMemory {
    /// Lanes whose head is being attempted here, with the jobs waiting behind it.
    active: HashMap<LaneKey, VecDeque<(Ticket, DeliveryJob)>>,
    /// Lanes known to be durable in the store (a head waits for a retry): their jobs go there.
    durable: HashSet<LaneKey>,
}

/// The ordering lanes, in memory and durable; see the module doc.
pub struct OrderingLanes {
    durable: Lanes,
    bus: Arc<dyn Bus>,
    /// A tokio mutex: making a lane durable awaits the store while no new job may slip into it.
    memory: tokio::sync::Mutex<LaneMemory>,
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
        attempt: job.attempt,
        payload,
    })
}

fn job_id(job: &DeliveryJob) -> String {
    format!("{}/{}", job.event.id, job.action)
}

impl OrderingLanes {
    pub fn new(durable: Lanes, bus: Arc<dyn Bus>) -> Self {
        OrderingLanes {
            durable,
            bus,
            memory: Default::default(),
        }
    }

    /// At start: learns which lanes are durable (from its own file; a shared store is read as
    /// jobs come), and puts back on the queue the heads that were promoted before a crash and
    /// may never have reached it.
    pub async fn recover(&self) -> Result<(), RecoverError> {
        if !self.durable.shared() {
            self.memory.lock().await.durable =
                self.durable.durable_lanes().await?.into_iter().collect();
        }
        self.requeue_stranded().await
    }

    /// Queues again the heads of a shared store that were promoted [`STRANDED_AFTER`] ago and
    /// are still not on the queue: their process died in between. The worker calls this every
    /// [`STRANDED_AFTER`]; a store of this process's own needs it only at start.
    pub async fn sweep_stranded(&self) {
        if !self.durable.shared() {
            return;
        }
        if let Err(e) = self.requeue_stranded().await {
            tracing::warn!(error = %e, "cannot sweep for stranded lane heads; next time");
        }
    }

    async fn requeue_stranded(&self) -> Result<(), RecoverError> {
        let before = clock::now_epoch_millis() - STRANDED_AFTER.as_millis() as i64;
        let cutoff = if self.durable.shared() {
            before
        } else {
            i64::MAX
        };
        for head in self.durable.stranded_heads(cutoff).await? {
            tracing::info!("queueing a lane's next job again: its promotion was interrupted");
            self.bus
                .publish(Queue::Deliveries, vec![head.payload])
                .await?;
            self.durable.forget(head.seq).await?;
        }
        Ok(())
    }

    /// Sorts jobs just taken from the queue: those behind a lane head wait (in memory) or are
    /// parked (durably, and acked); the rest are returned to run, in arrival order.
    pub async fn admit(&self, jobs: Vec<(Ticket, DeliveryJob)>) -> Vec<(Ticket, DeliveryJob)> {
        let mut memory = self.memory.lock().await;
        let jobs = self.learn_shared_lanes(&mut memory, jobs).await;
        let mut run = Vec::with_capacity(jobs.len());
        let mut to_durable: Vec<(Ticket, DeliveryJob)> = Vec::new();
        for (delivery, job) in jobs {
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

    /// On a shared store, another process may have made a lane durable since this one last
    /// looked (it held the key's partition before): reads, once for the batch, which of the
    /// lanes this process does not know are durable. Jobs whose lane cannot be looked up go
    /// back to the queue, since they might overtake a parked job; the others are returned.
    async fn learn_shared_lanes(
        &self,
        memory: &mut LaneMemory,
        jobs: Vec<(Ticket, DeliveryJob)>,
    ) -> Vec<(Ticket, DeliveryJob)> {
        if !self.durable.shared() {
            return jobs;
        }
        let unknown: HashSet<LaneKey> = jobs
            .iter()
            .filter_map(|(_, job)| lane_key(job))
            .filter(|key| !memory.active.contains_key(key) && !memory.durable.contains(key))
            .collect();
        match self
            .durable
            .durable_among(unknown.iter().cloned().collect())
            .await
        {
            Ok(durable) => {
                memory.durable.extend(durable);
                jobs
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot look up ordering lanes; requeueing");
                let mut known = Vec::with_capacity(jobs.len());
                for (delivery, job) in jobs {
                    if lane_key(&job).is_some_and(|key| unknown.contains(&key)) {
                        crate::worker::settle(delivery.requeue().await, "requeue");
                    } else {
                        known.push((delivery, job));
                    }
                }
                known
            }
        }
    }

    /// Claims durable lanes for `jobs`, in order: heads back from a retry run, the others are
    /// parked (and acked). Returns the jobs to run.
    async fn claim_durably(&self, jobs: Vec<(Ticket, DeliveryJob)>) -> Vec<(Ticket, DeliveryJob)> {
        let lane_jobs = jobs
            .iter()
            .filter_map(|(_, job)| lane_of(job, job.encode().into()))
            .collect();
        let claims = match self.durable.claim(lane_jobs).await {
            Ok(claims) => claims,
            Err(e) => {
                // Without the lanes, order cannot be kept: leave these jobs queued.
                tracing::error!(error = %e, "cannot claim ordering lanes; requeueing");
                for (delivery, _) in jobs {
                    crate::worker::settle(delivery.requeue().await, "requeue");
                }
                return Vec::new();
            }
        };
        let mut run = Vec::new();
        for ((delivery, job), claim) in jobs.into_iter().zip(claims) {
            match claim {
                Claim::Run => run.push((delivery, job)),
                Claim::Parked => {
                    tracing::debug!(event = %job.event.id, action = %job.action, "parked behind an earlier event that waits for a retry");
                    crate::worker::settle(delivery.ack().await, "ack");
                }
                Claim::Stale => {
                    tracing::info!(event = %job.event.id, action = %job.action, attempts = job.attempt, "an older copy of a job that waits for its retry; dropped");
                    crate::worker::settle(delivery.ack().await, "ack");
                }
            }
        }
        run
    }

    /// The head `job` of an in-memory lane is going to wait for a retry, as `payload`: record
    /// its lane durably and park the jobs waiting behind it there, in order, before anything
    /// else can arrive.
    pub async fn hold(&self, job: &DeliveryJob, payload: &Bytes) -> Result<(), StoreError> {
        let Some(key) = lane_key(job) else {
            return Ok(());
        };
        let mut memory = self.memory.lock().await;
        if memory.durable.contains(&key) {
            return Ok(());
        }
        let head = lane_of(job, payload.clone()).expect("a keyed job");
        self.durable.claim(vec![head]).await?;
        memory.durable.insert(key.clone());
        let waiting: Vec<_> = memory.active.remove(&key).unwrap_or_default().into();
        drop(self.claim_durably(waiting).await);
        Ok(())
    }

    /// The head `job`'s copy for its retry is on the queue now: an older copy of it that comes
    /// back (after a crash, from a message that was not yet settled) is dropped. Keyless jobs
    /// have no lane, and no such guard.
    pub async fn waiting(&self, job: &DeliveryJob) -> Result<(), StoreError> {
        match lane_key(job) {
            Some((action, key)) => {
                self.durable
                    .waiting(&action, &key, &job_id(job), job.attempt)
                    .await
            }
            None => Ok(()),
        }
    }

    /// `job` goes back to the queue unfinished (Tocsin could not make its next step durable):
    /// its in-memory lane is given up, or its redelivery would wait behind itself, and the jobs
    /// waiting behind it are returned, to go back after it. A durable lane stays: its head
    /// comes back to it.
    pub async fn abandon(&self, job: &DeliveryJob) -> Vec<(Ticket, DeliveryJob)> {
        let Some(key) = lane_key(job) else {
            return Vec::new();
        };
        let mut memory = self.memory.lock().await;
        memory.active.remove(&key).unwrap_or_default().into()
    }

    /// `job` is over: its lane goes to the next job with its key — returned when it waits here
    /// in memory, put back on the queue when it was parked durably. An error means the lane
    /// could not be handed on, and `job` must run again.
    pub async fn release(
        &self,
        job: &DeliveryJob,
    ) -> Result<Option<(Ticket, DeliveryJob)>, StoreError> {
        let Some(key) = lane_key(job) else {
            return Ok(None);
        };
        let mut memory = self.memory.lock().await;
        if !memory.durable.contains(&key) {
            let Some(waiting) = memory.active.get_mut(&key) else {
                return Ok(None);
            };
            let next = waiting.pop_front();
            if next.is_none() {
                memory.active.remove(&key);
            }
            return Ok(next);
        }
        match self
            .durable
            .release(&job.action, &key.1, &job_id(job))
            .await?
        {
            None => {
                memory.durable.remove(&key);
            }
            Some(next) => {
                let queued = self
                    .bus
                    .publish(Queue::Deliveries, vec![next.payload])
                    .await;
                match queued {
                    Ok(()) => {
                        if let Err(e) = self.durable.forget(next.seq).await {
                            tracing::warn!(error = %e, "cannot forget a promoted job; it may run twice");
                        }
                    }
                    // It stays parked as the head: the next start publishes it.
                    Err(e) => tracing::error!(error = %e, "cannot queue the next job of a lane"),
                }
            }
        }
        Ok(None)
    }
}
