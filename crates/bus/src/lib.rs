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
//! - at most `prefetch` deliveries of a subscription are unsettled at a time.

mod batch;
pub mod embedded;
pub mod rabbitmq;

use async_trait::async_trait;
use batch::{Item, Settlement};
use bytes::Bytes;
use tokio::sync::mpsc;

pub use embedded::EmbeddedBus;
pub use rabbitmq::{RabbitBus, RabbitSettings};

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
}

impl BusError {
    /// The same error for another caller of a shared operation (a batch answers many).
    fn copy(&self) -> BusError {
        match self {
            BusError::Unavailable(reason) => BusError::Unavailable(reason.clone()),
            BusError::Refused(reason) => BusError::Refused(reason.clone()),
            BusError::AlreadySubscribed(queue) => BusError::AlreadySubscribed(queue),
            BusError::Storage(e) => BusError::Storage(storage::StorageError::Commit(e.to_string())),
        }
    }
}

/// The interface the pipeline stages see; `Arc<dyn Bus>` is passed around.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Durably enqueues `payloads` on `queue`, in order, returning once all of them are safe.
    async fn publish(&self, queue: Queue, payloads: Vec<Bytes>) -> Result<(), BusError>;

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

    pub async fn requeue(self) -> Result<(), BusError> {
        self.item.settle(Settlement::Requeue).await
    }

    pub async fn dead_letter(self) -> Result<(), BusError> {
        self.item.settle(Settlement::DeadLetter).await
    }
}
