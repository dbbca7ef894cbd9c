//! Dead letters: payloads that could not be processed, kept until an operator replays them.
//!
//! A payload becomes a dead letter when its consumer rejects it for good
//! ([`crate::Delivery::dead_letter`], e.g. it does not decode: reason `rejected`), or when it
//! has been handed out more than the delivery limit times (`bus.delivery_limit`; reason
//! `delivery_limit`) — requeued again and again after local failures, or lost with a crashing
//! consumer again and again. Each dead letter is one payload: a batched message
//! (`TOCSIN-BATCH/1`) that dies whole is split.
//!
//! Where they wait, on each backend:
//! - embedded: the `dead_letters` table of the queue file, one row per payload, its id the
//!   row's; a replay moves the row back into `messages` in one transaction;
//! - RabbitMQ: the quorum queue `<prefix>.dead`, read without taking anything off it (the
//!   `rabbitmq::dead_letters` module says how); the id is a digest of the payload, its queue
//!   and when it died, so it stays the same across reads and processes.
//!
//! A replay publishes the payload on its queue as a fresh message (its delivery count starts
//! over) and removes the dead letter only once that publish is durable: a crash in between
//! leaves both, and the payload runs twice, which at-least-once allows.

use crate::Queue;
use bytes::Bytes;

/// Why a payload was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its consumer rejected it for good (it does not decode).
    Rejected,
    /// It was handed out more than `bus.delivery_limit` times.
    DeliveryLimit,
    /// The broker's own word for another reason (`expired`, `maxlen`).
    Other(String),
}

impl Reason {
    pub fn as_str(&self) -> &str {
        match self {
            Reason::Rejected => "rejected",
            Reason::DeliveryLimit => "delivery_limit",
            Reason::Other(reason) => reason,
        }
    }

    /// The reason [`Reason::as_str`] wrote (RabbitMQ writes the same words).
    pub fn parse(text: &str) -> Reason {
        match text {
            "rejected" => Reason::Rejected,
            "delivery_limit" => Reason::DeliveryLimit,
            other => Reason::Other(other.to_owned()),
        }
    }
}

/// One dead payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Stable while the dead letter exists; what a replay names.
    pub id: String,
    /// The queue it died on, where a replay puts it; `None` for a message on the dead-letter
    /// queue that did not come from one of Tocsin's queues.
    pub queue: Option<Queue>,
    pub payload: Bytes,
    pub reason: Reason,
    /// When it died, in ms since the epoch (RabbitMQ records whole seconds for the messages
    /// it dead-letters itself).
    pub dead_at_ms: i64,
    /// How many times it was handed out before it died (as far as the backend counted).
    pub deliveries: u32,
}

/// A page of dead letters, newest first, and how many there are in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterPage {
    pub total: u64,
    pub letters: Vec<DeadLetter>,
}

impl DeadLetterPage {
    /// The page of `all` (newest first already) after skipping `skip`, at most `limit` long.
    pub(crate) fn of(all: Vec<DeadLetter>, skip: usize, limit: usize) -> DeadLetterPage {
        DeadLetterPage {
            total: all.len() as u64,
            letters: all.into_iter().skip(skip).take(limit).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_back_as_written() {
        for reason in [
            Reason::Rejected,
            Reason::DeliveryLimit,
            Reason::Other("expired".into()),
        ] {
            assert_eq!(Reason::parse(reason.as_str()), reason);
        }
    }
}
