//! Batching: many payloads in one queue message, so that a busy pipeline pays the backend's
//! price per message (a publisher confirm, a quorum-queue append, an ack; a row inserted and
//! deleted) once per batch instead of once per event.
//!
//! Publishing: concurrent `publish` calls on one queue meet in a [`Coalescer`]. It takes every
//! call waiting, packs their payloads — in call order, each partition's apart (a message goes
//! to one partition) — into as few messages as the limits allow, and hands them to the backend
//! in one go; each caller returns once its payloads are
//! durable. Nothing waits for company: an idle pipeline publishes each call at once, and a busy
//! one gathers new calls while up to [`IN_FLIGHT`] earlier batches are being confirmed, so
//! batches grow with the load.
//!
//! Framing: a message with one payload is that payload, unchanged. Several payloads are framed:
//! [`MAGIC`], then each payload preceded by its length (u32, big-endian). JSON cannot start
//! with `MAGIC`, so both kinds live side by side in a queue.
//!
//! Consuming: a message is split into one [`Delivery`] per payload. Items are settled one by
//! one and the message once its last item is ([`Ending`]): acked when every item was; handed
//! back whole at once when every item was dropped unsettled (its consumer is stopping);
//! otherwise *replaced* — the items to run again go back as a new message after the requeue
//! delay and the dead-lettered ones to the dead letters, atomically with the message's removal
//! where the backend allows — so an acked item never runs twice because a neighbour failed.

use crate::{BusError, Delivery, Queue};
use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// How a framed message starts.
pub(crate) const MAGIC: &[u8] = b"TOCSIN-BATCH/1\n";
/// Payloads per message at most: bounds what one message holds in a consumer's hands.
const MAX_ITEMS: usize = 128;
/// Bytes per framed message at most (a larger single payload travels alone).
const MAX_BYTES: usize = 256 * 1024;
/// Batches of one queue being published at a time.
const IN_FLIGHT: usize = 4;
/// Publish calls gathered into one batch at most.
const MAX_CALLS: usize = 1024;

/// Whether `message` is a framed batch.
pub(crate) fn is_framed(message: &[u8]) -> bool {
    message.starts_with(MAGIC)
}

/// Packs `payloads` into messages within the limits, keeping their order.
pub(crate) fn pack(payloads: Vec<Bytes>) -> Vec<Bytes> {
    let mut messages = Vec::new();
    let mut group: Vec<Bytes> = Vec::new();
    let mut group_bytes = 0;
    for payload in payloads {
        let size = payload.len() + 4;
        if !group.is_empty() && (group.len() == MAX_ITEMS || group_bytes + size > MAX_BYTES) {
            messages.push(frame(std::mem::take(&mut group)));
            group_bytes = 0;
        }
        group_bytes += size;
        group.push(payload);
    }
    if !group.is_empty() {
        messages.push(frame(group));
    }
    messages
}

/// A partition of a queue (always 0 where the queue is not partitioned).
pub(crate) type Partition = u16;

/// Packs `payloads` into messages within the limits, each partition's apart and in order.
pub(crate) fn pack_partitioned(payloads: Vec<(Partition, Bytes)>) -> Vec<(Partition, Bytes)> {
    let Some(&(first, _)) = payloads.first() else {
        return Vec::new();
    };
    if payloads.iter().all(|(partition, _)| *partition == first) {
        let payloads = payloads.into_iter().map(|(_, payload)| payload).collect();
        return pack(payloads).into_iter().map(|m| (first, m)).collect();
    }
    let mut by_partition: std::collections::BTreeMap<Partition, Vec<Bytes>> = Default::default();
    for (partition, payload) in payloads {
        by_partition.entry(partition).or_default().push(payload);
    }
    by_partition
        .into_iter()
        .flat_map(|(partition, payloads)| pack(payloads).into_iter().map(move |m| (partition, m)))
        .collect()
}

/// One message holding `payloads` (at least one).
pub(crate) fn frame(mut payloads: Vec<Bytes>) -> Bytes {
    if payloads.len() == 1 {
        return payloads.pop().expect("one payload");
    }
    let size = MAGIC.len() + payloads.iter().map(|p| p.len() + 4).sum::<usize>();
    let mut message = BytesMut::with_capacity(size);
    message.put_slice(MAGIC);
    for payload in &payloads {
        message.put_u32(payload.len() as u32);
        message.put_slice(payload);
    }
    message.freeze()
}

/// The payloads in `message`, without copying them. A message whose framing is broken is
/// returned whole, as one payload, for its consumer to reject as undecodable.
pub(crate) fn unframe(message: Bytes) -> Vec<Bytes> {
    if !is_framed(&message) {
        return vec![message];
    }
    let mut rest = message.slice(MAGIC.len()..);
    let mut payloads = Vec::new();
    while rest.len() >= 4 {
        let len = rest.get_u32() as usize;
        if len > rest.len() {
            return vec![message];
        }
        payloads.push(rest.split_to(len));
    }
    if !rest.is_empty() || payloads.is_empty() {
        return vec![message];
    }
    payloads
}

/// What a backend does with whole messages.
#[async_trait]
pub(crate) trait Enqueue: Send + Sync + 'static {
    /// Durably enqueues `messages` on `queue`, each on its partition, in order.
    async fn enqueue(
        &self,
        queue: Queue,
        messages: Vec<(Partition, Bytes)>,
    ) -> Result<(), BusError>;
}

struct Call {
    payloads: Vec<(Partition, Bytes)>,
    done: oneshot::Sender<Result<(), BusError>>,
}

/// Gathers concurrent publishes on each queue into batches; see the module documentation.
pub(crate) struct Coalescer {
    calls: std::collections::HashMap<Queue, mpsc::Sender<Call>>,
}

impl Coalescer {
    /// Starts one gathering task per queue, publishing through `backend`. While calls come
    /// in groups, a batch waits `linger` for more before it goes (a backend whose own writer
    /// lingers passes zero). The tasks end when the coalescer is dropped.
    pub(crate) fn start(backend: Arc<dyn Enqueue>, linger: Duration) -> Self {
        let calls = Queue::ALL
            .into_iter()
            .map(|queue| {
                let (sender, receiver) = mpsc::channel(MAX_CALLS);
                tokio::spawn(gather(queue, Arc::clone(&backend), receiver, linger));
                (queue, sender)
            })
            .collect();
        Coalescer { calls }
    }

    /// Durably enqueues `payloads` on `queue`, each on its partition, in order, sharing
    /// messages with concurrent callers.
    pub(crate) async fn publish(
        &self,
        queue: Queue,
        payloads: Vec<(Partition, Bytes)>,
    ) -> Result<(), BusError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let (done, outcome) = oneshot::channel();
        let gone = || BusError::Unavailable("the bus is shutting down".into());
        self.calls[&queue]
            .send(Call { payloads, done })
            .await
            .map_err(|_| gone())?;
        outcome.await.map_err(|_| gone())?
    }
}

async fn gather(
    queue: Queue,
    backend: Arc<dyn Enqueue>,
    mut calls: mpsc::Receiver<Call>,
    linger: Duration,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut waiting = Vec::new();
    let mut linger = storage::Linger::new(linger);
    loop {
        // Room first, then whatever has arrived by then: while the batches in flight are
        // being confirmed, the next one grows.
        let Ok(room) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        if calls.recv_many(&mut waiting, MAX_CALLS).await == 0 {
            return;
        }
        // Under load, a moment's wait makes fewer, larger messages; a lone caller does not wait.
        if let Some(wait) = linger.wait_for_company(waiting.len(), MAX_CALLS) {
            tokio::time::sleep(wait).await;
            while waiting.len() < MAX_CALLS {
                match calls.try_recv() {
                    Ok(call) => waiting.push(call),
                    Err(_) => break,
                }
            }
        }
        let mut payloads = Vec::new();
        let mut replies = Vec::with_capacity(waiting.len());
        for call in waiting.drain(..) {
            payloads.extend(call.payloads);
            replies.push(call.done);
        }
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let outcome = backend.enqueue(queue, pack_partitioned(payloads)).await;
            for reply in replies {
                let _ = reply.send(outcome.as_ref().map(|_| ()).map_err(BusError::copy));
            }
            drop(room);
        });
    }
}

/// How a consumer settles one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Done: remove it from the queue.
    Ack,
    /// Not done, try again later.
    Requeue,
    /// Cannot ever be processed (e.g. undecodable): park it with the dead letters.
    DeadLetter,
    /// Dropped unsettled: its consumer is going away.
    Release,
}

/// How a message ends once all its items are settled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every item is done: remove the message.
    Ack,
    /// Every item was dropped unsettled: hand the message back as it is, at once.
    Release,
    /// Remove the message; `again` goes back on its queue as one message after the requeue
    /// delay (or to the dead letters, past the delivery limit), and `dead` to the dead letters.
    Replace { again: Vec<Bytes>, dead: Vec<Bytes> },
}

/// A backend's handle on one consumed message.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    /// Ends the message. If a replacement fails, the message is handed back whole.
    async fn end(self: Box<Self>, ending: Ending) -> Result<(), BusError>;
}

/// A consumed message whose items are out with the consumer.
struct Message {
    settler: Mutex<Option<Box<dyn Settle>>>,
    outcomes: Mutex<Outcomes>,
}

#[derive(Default)]
struct Outcomes {
    pending: usize,
    /// Items to run again, by position, so that a replacement keeps their order.
    again: Vec<(usize, Bytes)>,
    dead: Vec<Bytes>,
    /// Whether an item was acked, dead-lettered or requeued (rather than dropped).
    settled_one: bool,
}

impl Outcomes {
    fn ending(self) -> Ending {
        if self.again.is_empty() && self.dead.is_empty() {
            return Ending::Ack;
        }
        if !self.settled_one {
            return Ending::Release;
        }
        let mut again = self.again;
        again.sort_by_key(|(index, _)| *index);
        Ending::Replace {
            again: again.into_iter().map(|(_, payload)| payload).collect(),
            dead: self.dead,
        }
    }
}

impl Message {
    /// Notes how item `index` ended; returns the message's ending once it was the last.
    fn note(&self, index: usize, settlement: Settlement, payload: Bytes) -> Option<Ending> {
        let mut outcomes = self.outcomes.lock().expect("outcomes poisoned");
        match settlement {
            Settlement::Ack => {}
            Settlement::Requeue | Settlement::Release => outcomes.again.push((index, payload)),
            Settlement::DeadLetter => outcomes.dead.push(payload),
        }
        outcomes.settled_one |= settlement != Settlement::Release;
        outcomes.pending -= 1;
        if outcomes.pending > 0 {
            return None;
        }
        Some(std::mem::take(&mut *outcomes).ending())
    }

    /// Notes `rest`, the items from `first` on that were never handed out (the consumer is
    /// stopping), as dropped, and ends the message if they were its last.
    async fn release_rest(&self, rest: impl Iterator<Item = Bytes>, first: usize) {
        let mut ending = None;
        for (offset, payload) in rest.enumerate() {
            ending = self.note(first + offset, Settlement::Release, payload);
        }
        if let Some(ending) = ending {
            if let Err(e) = self.end(ending).await {
                tracing::warn!(error = %e, "cannot hand back what a stopping consumer was not handed");
            }
        }
    }

    async fn end(&self, ending: Ending) -> Result<(), BusError> {
        let Some(settler) = self.settler.lock().expect("settler poisoned").take() else {
            return Ok(());
        };
        settler.end(ending).await
    }
}

/// One item of a consumed message, holding one prefetch permit until it is settled.
pub(crate) struct Item {
    message: Arc<Message>,
    index: usize,
    /// Kept for a replacement message, should the item have to run again.
    payload: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    settled: bool,
}

impl Item {
    pub(crate) async fn settle(mut self, settlement: Settlement) -> Result<(), BusError> {
        self.settled = true;
        let payload = std::mem::take(&mut self.payload);
        // The permit goes last: a message handed back must be in line again before the
        // consumer has room for whatever comes next.
        let _permit = self.permit.take();
        match self.message.note(self.index, settlement, payload) {
            Some(ending) => self.message.end(ending).await,
            // The message is settled with its last item; until then this one is noted.
            None => Ok(()),
        }
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Dropped unsettled: run it again. The last item ends the message, which is async;
        // without a runtime the backend's own drop hands the message back.
        let payload = std::mem::take(&mut self.payload);
        let Some(ending) = self.message.note(self.index, Settlement::Release, payload) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let message = Arc::clone(&self.message);
            let permit = self.permit.take();
            runtime.spawn(async move {
                let _permit = permit;
                if let Err(e) = message.end(ending).await {
                    tracing::warn!(error = %e, "cannot hand back a dropped delivery");
                }
            });
        }
    }
}

/// Splits a consumed message into its deliveries, each waiting for a permit from `prefetch`
/// as it is handed to `consumer`. Returns false once the consumer is gone; the items it was
/// not handed are then noted as dropped, so that the message still ends by what its items
/// became (the ones handed out and finished are not run again) before this returns.
pub(crate) async fn hand_out(
    message: Bytes,
    redelivered: bool,
    settler: Box<dyn Settle>,
    prefetch: &Arc<Semaphore>,
    spare_permits: &mut Vec<OwnedSemaphorePermit>,
    consumer: &mpsc::Sender<Delivery>,
) -> bool {
    let payloads = unframe(message);
    let message = Arc::new(Message {
        settler: Mutex::new(Some(settler)),
        outcomes: Mutex::new(Outcomes {
            pending: payloads.len(),
            ..Default::default()
        }),
    });
    let mut payloads = payloads.into_iter().enumerate().peekable();
    while let Some(&(index, _)) = payloads.peek() {
        let permit = match spare_permits.pop() {
            Some(permit) => Some(permit),
            None => tokio::select! {
                permit = Arc::clone(prefetch).acquire_owned() => permit.ok(),
                _ = consumer.closed() => None,
            },
        };
        // A slot first, so that an item is only made once it can be handed over.
        let slot = match permit {
            Some(permit) => consumer.reserve().await.ok().map(|slot| (permit, slot)),
            None => None,
        };
        let Some((permit, slot)) = slot else {
            message
                .release_rest(payloads.map(|(_, payload)| payload), index)
                .await;
            return false;
        };
        let (_, payload) = payloads.next().expect("peeked");
        let item = Item {
            message: Arc::clone(&message),
            index,
            payload: payload.clone(),
            permit: Some(permit),
            settled: false,
        };
        slot.send(Delivery::new(payload, redelivered, item));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize, size: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(size))))
            .collect()
    }

    #[test]
    fn packing_keeps_order_and_limits_and_unframing_restores_it() {
        let sent = payloads(300, 10);
        let messages = pack(sent.clone());
        assert_eq!(messages.len(), 3, "128 + 128 + 44");
        let received: Vec<Bytes> = messages.into_iter().flat_map(unframe).collect();
        assert_eq!(received, sent);

        let big = payloads(10, 100 * 1024);
        let messages = pack(big.clone());
        assert!(messages.iter().all(|m| m.len() <= MAX_BYTES + MAGIC.len()));
        assert_eq!(
            messages.into_iter().flat_map(unframe).collect::<Vec<_>>(),
            big
        );

        let one = payloads(1, 5);
        assert_eq!(pack(one.clone()), one, "a lone payload travels unframed");
    }

    #[test]
    fn a_broken_frame_comes_out_whole() {
        let mut framed = frame(payloads(2, 3)).to_vec();
        framed.truncate(framed.len() - 1);
        let broken = Bytes::from(framed);
        assert_eq!(unframe(broken.clone()), vec![broken]);
        let empty = Bytes::from_static(MAGIC);
        assert_eq!(unframe(empty.clone()), vec![empty]);
    }

    fn ending_of(settlements: &[Settlement]) -> Ending {
        let message = Message {
            settler: Mutex::new(None),
            outcomes: Mutex::new(Outcomes {
                pending: settlements.len(),
                ..Default::default()
            }),
        };
        let mut ending = None;
        for (index, settlement) in settlements.iter().enumerate() {
            ending = message.note(index, *settlement, Bytes::from(format!("m{index}")));
        }
        ending.expect("the last item ends the message")
    }

    #[test]
    fn a_message_ends_by_what_its_items_became() {
        use Settlement::*;
        let payloads = |names: &[&str]| names.iter().map(|n| Bytes::from(n.to_string())).collect();
        assert_eq!(ending_of(&[Ack, Ack]), Ending::Ack);
        assert_eq!(ending_of(&[Release, Release]), Ending::Release);
        assert_eq!(
            ending_of(&[Requeue, Release]),
            Ending::Replace {
                again: payloads(&["m0", "m1"]),
                dead: vec![]
            },
            "a requeue waits, even beside a dropped item"
        );
        assert_eq!(
            ending_of(&[Ack, DeadLetter, Requeue]),
            Ending::Replace {
                again: payloads(&["m2"]),
                dead: payloads(&["m1"])
            }
        );
        assert_eq!(
            ending_of(&[DeadLetter]),
            Ending::Replace {
                again: vec![],
                dead: payloads(&["m0"])
            }
        );
    }
}
