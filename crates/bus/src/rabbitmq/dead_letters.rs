//! RabbitMQ's dead letters: the quorum queue `<prefix>.dead`, fed through the fanout exchange
//! `<prefix>.dlx`.
//!
//! What is on it: Tocsin dead-letters payloads itself, one message each, with headers saying
//! which queue, why, when and after how many deliveries ([`Death`]); the broker dead-letters
//! whole messages past a queue's `x-delivery-limit` (a consumer that keeps dying on one), which
//! say the same in its `x-death` header and may be batches, split when read.
//!
//! Reading without losing: a read takes the messages with `basic.get` on a channel of its own
//! *without acknowledging them*, and closes the channel when done, which hands every one back
//! to the queue; if Tocsin dies in between, the broker does the same when the connection ends.
//! The one thing that removes a dead letter is a replay's ack, sent only after the payload's
//! publish to its queue (and that of any payloads that shared its message, back to the dead
//! letters) was confirmed. A crash at any point therefore leaves every payload in the dead
//! letters, on its queue, or on both (it then runs twice, which at-least-once allows).
//! While a read holds them the messages are not ready, so `dead_letter_count` reads fewer;
//! reads in one process take turns. A read takes at most [`MAX_READ`] messages.

use super::{header, integer, persistent, Publisher, RabbitBus, DELIVERIES_HEADER};
use crate::batch::Enqueue;
use crate::{batch, Bus, BusError, DeadLetter, DeadLetterPage, Queue, Reason};
use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use sha2::{Digest, Sha256};

/// Messages one read takes off the dead-letter queue at most (and hands back).
pub const MAX_READ: usize = 10_000;

const QUEUE_HEADER: &str = "x-tocsin-dead-queue";
const REASON_HEADER: &str = "x-tocsin-dead-reason";
const DEAD_AT_HEADER: &str = "x-tocsin-dead-at-ms";

/// How, where and when a message died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Death {
    queue: Option<Queue>,
    reason: Reason,
    dead_at_ms: i64,
    deliveries: u32,
}

impl Death {
    /// A death on `queue` now, after `deliveries` deliveries.
    pub(super) fn now(queue: Queue, reason: Reason, deliveries: u32) -> Death {
        Death {
            queue: Some(queue),
            reason,
            dead_at_ms: clock::now_epoch_millis(),
            deliveries,
        }
    }

    /// The death a dead letter's headers tell: Tocsin's own, else the broker's latest
    /// `x-death` entry (whose queue is `<prefix>.<queue>`).
    fn of(properties: &BasicProperties, prefix: &str) -> Death {
        let text = |value: &AMQPValue| match value {
            AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into()),
            AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
            _ => None,
        };
        let earlier = header(properties, DELIVERIES_HEADER)
            .and_then(integer)
            .unwrap_or(0);
        let deliveries = |more: i64| u32::try_from(earlier + more).unwrap_or(u32::MAX);
        if let Some(reason) = header(properties, REASON_HEADER).and_then(text) {
            return Death {
                queue: header(properties, QUEUE_HEADER)
                    .and_then(text)
                    .and_then(|name| Queue::named(&name)),
                reason: Reason::parse(&reason),
                dead_at_ms: header(properties, DEAD_AT_HEADER)
                    .and_then(integer)
                    .unwrap_or(0),
                deliveries: deliveries(0),
            };
        }
        let latest = match header(properties, "x-death") {
            Some(AMQPValue::FieldArray(deaths)) => match deaths.as_slice().first() {
                Some(AMQPValue::FieldTable(death)) => Some(death.inner()),
                _ => None,
            },
            _ => None,
        };
        let field = |name: &str| latest.and_then(|death| death.get(name));
        let queue = field("queue").and_then(text).and_then(|name| {
            // `<prefix>.<queue>.<partition>`
            let name = name.strip_prefix(prefix)?.strip_prefix('.')?;
            Queue::named(name.split('.').next()?)
        });
        // This copy was handed out `x-delivery-count` times, the last of which died.
        let copy = header(properties, "x-delivery-count")
            .and_then(integer)
            .unwrap_or(0);
        Death {
            queue,
            reason: field("reason")
                .and_then(text)
                .map_or(Reason::Other("unknown".into()), |reason| {
                    Reason::parse(&reason)
                }),
            dead_at_ms: field("time").and_then(integer).unwrap_or(0) * 1000,
            deliveries: deliveries(copy.max(1)),
        }
    }

    /// The headers that tell this death on a message Tocsin dead-letters.
    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        if let Some(queue) = self.queue {
            headers.insert(
                QUEUE_HEADER.into(),
                AMQPValue::LongString(LongString::from(queue.as_str())),
            );
        }
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(self.reason.as_str())),
        );
        headers.insert(
            DEAD_AT_HEADER.into(),
            AMQPValue::LongLongInt(self.dead_at_ms),
        );
        headers.insert(
            DELIVERIES_HEADER.into(),
            AMQPValue::LongLongInt(self.deliveries.into()),
        );
        headers
    }

    /// The dead letter of `payload`: its id is a digest of what it is and how it died, so that
    /// every read (in any process) names it the same.
    fn letter(&self, payload: Bytes) -> DeadLetter {
        let mut digest = Sha256::new();
        digest.update(self.queue.map_or("", Queue::as_str));
        digest.update(self.dead_at_ms.to_be_bytes());
        digest.update(&payload);
        let id = digest.finalize()[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        DeadLetter {
            id,
            queue: self.queue,
            payload,
            reason: self.reason.clone(),
            dead_at_ms: self.dead_at_ms,
            deliveries: self.deliveries,
        }
    }
}

impl Publisher {
    /// Publishes each of `payloads` to the dead letters, telling `death`.
    pub(super) async fn publish_dead(
        &self,
        payloads: &[Bytes],
        death: &Death,
    ) -> Result<(), BusError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let exchange = format!("{}.dlx", self.settings.prefix);
        let properties = persistent().with_headers(death.headers());
        self.publish_retrying(&exchange, "", payloads, &properties)
            .await
    }
}

/// One message taken (not acked) off the dead-letter queue.
struct Held {
    acker: lapin::Acker,
    death: Death,
    letters: Vec<DeadLetter>,
}

/// Messages taken off the dead-letter queue on `channel`; closing it hands back the unacked.
struct Taken {
    channel: lapin::Channel,
    messages: Vec<Held>,
}

impl Taken {
    async fn hand_back(self) {
        drop(self.messages);
        if let Err(e) = self.channel.close(200, "read done".into()).await {
            // The channel ends with the connection anyway, handing them back.
            tracing::debug!(error = %e, "cannot close the dead-letter reading channel");
        }
    }
}

impl RabbitBus {
    /// Takes up to `limit` messages off the dead-letter queue, unacked.
    async fn take_dead_letters(&self, limit: usize) -> Result<Taken, BusError> {
        let settings = &self.publisher.settings;
        let channel = self.publisher.channel().await?;
        let queue = settings.dead_letter_queue_name();
        let mut messages = Vec::new();
        while messages.len() < limit {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(super::unavailable)?;
            let Some(got) = got else { break };
            let death = Death::of(&got.delivery.properties, &settings.prefix);
            let letters = batch::unframe(Bytes::from(got.delivery.data))
                .into_iter()
                .map(|payload| death.letter(payload))
                .collect();
            messages.push(Held {
                acker: got.delivery.acker,
                death,
                letters,
            });
        }
        Ok(Taken { channel, messages })
    }

    pub(super) async fn read_dead_letters(
        &self,
        skip: usize,
        limit: usize,
    ) -> Result<DeadLetterPage, BusError> {
        let taken = self.take_dead_letters(MAX_READ).await?;
        let mut all: Vec<DeadLetter> = taken
            .messages
            .iter()
            .flat_map(|held| held.letters.iter().cloned())
            .collect();
        taken.hand_back().await;
        all.sort_by_key(|letter| std::cmp::Reverse(letter.dead_at_ms));
        Ok(DeadLetterPage::of(all, skip, limit))
    }

    /// Replays the dead letter `id` (every one there is now, for `None`); returns how many.
    pub(super) async fn replay(&self, id: Option<&str>) -> Result<u64, BusError> {
        let limit = match id {
            Some(_) => MAX_READ,
            None => {
                let waiting = self.dead_letter_count().await?;
                usize::try_from(waiting).unwrap_or(MAX_READ).min(MAX_READ)
            }
        };
        let taken = self.take_dead_letters(limit).await?;
        let mut replayed = 0;
        let mut outcome = Ok(());
        for held in &taken.messages {
            // Named: the first payload with that id (equal ids are equal payloads); else all.
            let chosen = match id {
                Some(id) => match held.letters.iter().position(|letter| letter.id == id) {
                    Some(at) => at..at + 1,
                    None => continue,
                },
                None => 0..held.letters.len(),
            };
            let Some(queue) = held.death.queue else {
                if id.is_some() {
                    outcome = Err(BusError::NotReplayable(
                        "this dead letter did not come from one of Tocsin's queues".into(),
                    ));
                }
                continue;
            };
            let payloads = |letters: &[DeadLetter]| -> Vec<Bytes> {
                letters
                    .iter()
                    .map(|letter| letter.payload.clone())
                    .collect()
            };
            let replaying = payloads(&held.letters[chosen.clone()]);
            let mut rest = payloads(&held.letters[..chosen.start]);
            rest.extend(payloads(&held.letters[chosen.end..]));
            outcome = self.replay_held(held, queue, &replaying, &rest).await;
            if outcome.is_err() {
                break;
            }
            replayed += replaying.len() as u64;
            if id.is_some() {
                break;
            }
        }
        taken.hand_back().await;
        if replayed > 0 {
            tracing::info!(payloads = replayed, "dead letters replayed");
        }
        outcome.map(|()| replayed)
    }

    /// Publishes `replaying` on `queue` and `rest` back to the dead letters, then acks `held`.
    async fn replay_held(
        &self,
        held: &Held,
        queue: Queue,
        replaying: &[Bytes],
        rest: &[Bytes],
    ) -> Result<(), BusError> {
        let replaying = self.publisher.partitioned(queue, replaying.to_vec());
        self.publisher.enqueue(queue, replaying).await?;
        self.publisher.publish_dead(rest, &held.death).await?;
        held.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(super::unavailable)
    }
}
