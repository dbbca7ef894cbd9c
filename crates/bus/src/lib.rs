//! The durable bus between Tocsin's stages, with two interchangeable backends.
//!
//! Sources publish on the events queue, the router consumes it and publishes on the deliveries
//! queue, delivery workers consume that. Every payload is JSON bytes; under load several
//! payloads share one queue message ([`batch`]), which consumers never see. The contract is the
//! same on both backends:
//! - `publish` returns only once every payload is durable (RabbitMQ publisher confirms for
//!   persistent messages on quorum queues; a committed SQLite transaction);
//! - a delivery leaves its queue only when it is acked; a consumer that crashes or drops a
//!   delivery gets it again (at least once), flagged `redelivered`;
//! - at most `prefetch` deliveries of a subscription are unsettled at a time;
//! - a delivery its consumer hands back ([`Delivery::requeue`]) comes back after a growing
//!   delay ([`requeue_delay`]), and one handed out more than the delivery limit times goes to
//!   the dead letters instead ([`dead_letters`]), where it waits to be read and replayed.
//!
//!
//! Order: payloads published together, or one call after another, are consumed in publish
//! order per *ordering key* ([`ordering_key`]: a delivery job's `ans:sourceEventId`, else its
//! event id). A backend may split a queue into partitions by that key — RabbitMQ does, each
//! partition with a single active consumer, so that one key is in flight in one process at a
//! time — and keeps a payload's retries and requeues on its partition.
//!
//! The [`Bus`] trait is the whole face of a backend: the stages publish and consume through
//! it, and the operator's side (queue depths, delayed messages, reconnects, dead letters)
//! reads it too, without knowing which backend runs.

mod batch;
pub mod dead_letters;
pub mod embedded;
pub mod rabbitmq;

use async_trait::async_trait;
use batch::{Item, Settlement};
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::mpsc;

pub use dead_letters::{DeadLetter, DeadLetterPage, Reason};
pub use embedded::EmbeddedBus;
pub use rabbitmq::{RabbitBus, RabbitSettings, DEFAULT_DELIVERY_PARTITIONS};

/// Deliveries of one message after which it is dead-lettered, unless configured otherwise
/// (`bus.delivery_limit`).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The first wait of a requeued message; each requeue of the same message doubles it.
const FIRST_REQUEUE_DELAY: Duration = Duration::from_secs(1);
/// The longest wait of a requeued message.
const MAX_REQUEUE_DELAY: Duration = Duration::from_secs(300);

/// How long a message handed back by its consumer after its `deliveries`-th delivery waits
/// before it is handed out again: 1 s after the first, doubling each time (2 s, 4 s, …), at
/// most 5 minutes. With the default delivery limit of 20, a message that keeps coming back
/// reaches the dead letters about an hour after its first delivery: time for a local failure
/// (a full disk, a locked file) to clear, without a tight loop in the meantime.
pub fn requeue_delay(deliveries: u32) -> Duration {
    let doublings = deliveries.saturating_sub(1).min(16);
    (FIRST_REQUEUE_DELAY * 2u32.pow(doublings)).min(MAX_REQUEUE_DELAY)
}

/// The key that orders a payload of `queue`, hashed ([`ordering_hash`]): a delivery job's
/// ordering key, else its event id; undecodable payloads hash as they are; every accepted
/// event has the same key (one line through the router). Publishers that have the job in hand
/// give the key with [`Bus::publish_keyed`] instead, so that the bus need not decode it.
pub fn ordering_key(queue: Queue, payload: &[u8]) -> u64 {
    match queue {
        Queue::Events => 0,
        Queue::Deliveries => match serde_json::from_slice::<model::DeliveryJob>(payload) {
            Ok(job) => event_key(&job.event),
            Err(_) => ordering_hash(payload),
        },
    }
}

/// The ordering key of the jobs of `event`, hashed: its `ans:sourceEventId` (what the
/// delivery lanes order by, `DeliveryJob::ordering_key`), else its id.
pub fn event_key(event: &model::ResourceEvent) -> u64 {
    ordering_hash(event.source_event_id().unwrap_or(&event.id).as_bytes())
}

/// FNV-1a (64 bits): the same in every process and every build, as partitions need.
pub fn ordering_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The queues of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Accepted events, waiting for the router.
    Events,
    /// One job per (event, action), waiting for a delivery worker.
    Deliveries,
}

impl Queue {
    pub const ALL: [Queue; 2] = [Queue::Events, Queue::Deliveries];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Events => "events",
            Queue::Deliveries => "deliveries",
        }
    }

    /// The queue called `name` (as [`Queue::as_str`] writes it).
    pub fn named(name: &str) -> Option<Queue> {
        Queue::ALL.into_iter().find(|queue| queue.as_str() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The backend cannot take messages right now (broker down, reconnecting); retry later.
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
    /// The backend refused a message (broker nack, unroutable).
    #[error("the bus refused a message: {0}")]
    Refused(String),
    #[error("{0} already has a subscriber in this process")]
    AlreadySubscribed(&'static str),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The dead letter cannot go back: its queue is not one of Tocsin's.
    #[error("{0}")]
    NotReplayable(String),
}

impl BusError {
    /// The same error for another caller of a shared operation (a batch answers many).
    fn copy(&self) -> BusError {
        match self {
            BusError::Unavailable(reason) => BusError::Unavailable(reason.clone()),
            BusError::Refused(reason) => BusError::Refused(reason.clone()),
            BusError::AlreadySubscribed(queue) => BusError::AlreadySubscribed(queue),
            BusError::NotReplayable(reason) => BusError::NotReplayable(reason.clone()),
            BusError::Storage(e) => BusError::Storage(storage::StorageError::Commit(e.to_string())),
        }
    }
}

/// The interface the pipeline stages see; `Arc<dyn Bus>` is passed around.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Durably enqueues `payloads` on `queue`, in order, returning once all of them are safe.
    async fn publish(&self, queue: Queue, payloads: Vec<Bytes>) -> Result<(), BusError>;

    /// [`Bus::publish`] for payloads whose [`ordering_key`] the caller has at hand (the
    /// router, for every job): `(key, payload)`, in order.
    async fn publish_keyed(
        &self,
        queue: Queue,
        payloads: Vec<(u64, Bytes)>,
    ) -> Result<(), BusError> {
        self.publish(
            queue,
            payloads.into_iter().map(|(_, payload)| payload).collect(),
        )
        .await
    }

    /// Durably enqueues `payload` on `queue` to be delivered after `delay`, without holding
    /// anything in the meantime: the message waits in the backend, not in a consumer.
    async fn publish_delayed(
        &self,
        queue: Queue,
        payload: Bytes,
        delay: std::time::Duration,
    ) -> Result<(), BusError>;

    /// Starts consuming `queue` with at most `prefetch` unsettled deliveries.
    async fn subscribe(&self, queue: Queue, prefetch: u16) -> Result<Subscription, BusError>;

    /// Whether publishing can succeed now: connected and topology declared.
    fn is_ready(&self) -> bool;

    /// Which backend this is, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Messages waiting in `queue`. A message holds one payload or a batch of them; whether
    /// those handed out and not yet settled count depends on the backend (the embedded queue
    /// counts them, RabbitMQ does not).
    async fn depth(&self, queue: Queue) -> Result<u64, BusError>;

    /// Messages waiting for their delay to pass, on every queue.
    async fn delayed_count(&self) -> Result<u64, BusError>;

    /// Connections to the backend lost and re-established since start.
    fn reconnects(&self) -> u64 {
        0
    }

    /// Dead letters waiting (see [`dead_letters`] for what one is on each backend).
    async fn dead_letter_count(&self) -> Result<u64, BusError>;

    /// The dead letters, newest first: `limit` of them after skipping `skip`.
    async fn dead_letters(&self, skip: usize, limit: usize) -> Result<DeadLetterPage, BusError>;

    /// Puts the dead letter `id` back on its queue, as a fresh message, and removes it from the
    /// dead letters once that is durable. `false` when there is no such dead letter.
    async fn replay_dead_letter(&self, id: &str) -> Result<bool, BusError>;

    /// Replays every dead letter there is when the call starts; returns how many.
    async fn replay_dead_letters(&self) -> Result<u64, BusError>;

    /// Sends a configuration snapshot to every other process sharing this bus, returning once
    /// it sits in their update queues. A bus private to one process has no one to tell.
    async fn broadcast_config(&self, _snapshot: Bytes) -> Result<(), BusError> {
        Ok(())
    }

    /// Snapshots broadcast since the last call (this process's own included), oldest first;
    /// after a reconnect, also the latest snapshot anyone broadcast, since updates sent while
    /// disconnected are gone.
    async fn config_updates(&self) -> Result<Vec<Bytes>, BusError> {
        Ok(Vec::new())
    }
}

/// A stream of deliveries from one queue. Dropping it stops consumption; deliveries not yet
/// settled are handed out again later (to this process after a restart, or to another one).
pub struct Subscription {
    deliveries: mpsc::Receiver<Delivery>,
}

impl Subscription {
    pub(crate) fn new(deliveries: mpsc::Receiver<Delivery>) -> Self {
        Subscription { deliveries }
    }

    /// The next delivery; `None` once the bus has shut down.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// Waits for one delivery, then takes those already waiting too, up to `limit` in all:
    /// consumers that batch their work use this. Empty once the bus has shut down.
    pub async fn next_batch(&mut self, limit: usize) -> Vec<Delivery> {
        let mut batch = Vec::new();
        self.deliveries.recv_many(&mut batch, limit.max(1)).await;
        batch
    }

    /// [`Subscription::next_batch`] for a stage's consume loop: `None` once `shutdown` turns
    /// true or the bus has shut down, so that the stage stops taking work and finishes what it
    /// has in hand.
    pub async fn next_batch_until(
        &mut self,
        limit: usize,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<Vec<Delivery>> {
        let batch = tokio::select! {
            batch = self.next_batch(limit) => batch,
            _ = shutdown.wait_for(|stop| *stop) => return None,
        };
        (!batch.is_empty()).then_some(batch)
    }
}

/// One payload handed to a consumer; settle it with `ack`, `requeue` or `dead_letter`.
///
/// A payload that shared its queue message with others ([`batch`]) is settled for good when
/// the last of them is: until then `ack` returns at once, and a crash in between hands the
/// payload out again (at least once, as ever).
pub struct Delivery {
    pub payload: Bytes,
    /// The message may have been handed out before (a crash, a requeue, a lost connection).
    pub redelivered: bool,
    item: Item,
}

impl Delivery {
    pub(crate) fn new(payload: Bytes, redelivered: bool, item: Item) -> Self {
        Delivery {
            payload,
            redelivered,
            item,
        }
    }

    pub async fn ack(self) -> Result<(), BusError> {
        self.item.settle(Settlement::Ack).await
    }

    /// Hands the payload back to run again: it comes back after [`requeue_delay`], or goes to
    /// the dead letters if it has been handed out `delivery_limit` times already.
    pub async fn requeue(self) -> Result<(), BusError> {
        self.item.settle(Settlement::Requeue).await
    }

    pub async fn dead_letter(self) -> Result<(), BusError> {
        self.item.settle(Settlement::DeadLetter).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeues_wait_longer_each_time_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|n| requeue_delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(requeue_delay(0), Duration::from_secs(1));
        assert_eq!(requeue_delay(u32::MAX), Duration::from_secs(300));
    }
}
