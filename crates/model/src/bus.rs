//! The messages Tocsin puts on its bus (RabbitMQ or the embedded queue), as JSON.
//!
//! `IngestedEvent`s flow from the sources to the router on the events queue; the router turns
//! each into one `DeliveryJob` per selected action on the deliveries queue. A job names its action
//! rather than carrying it, so that credentials in action properties never sit in the broker.

use crate::alert::HumanAct;
use crate::consumer::FailureReason;
use crate::event::ResourceEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestedEvent {
    pub event: ResourceEvent,
    /// When the API accepted the event (ms since the epoch), for ingest→delivery latency.
    pub accepted_at_ms: i64,
    /// The person's act this event carries, for events the alerts API made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<HumanAct>,
    /// For a copy of an alert's latest event that the end of a silence or of a mute window
    /// released: which. The router routes such a copy once, however often it is queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<Released>,
}

/// What released a copy of an alert's latest event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum Released {
    /// The end of this silence (its id, as the bus has always carried it): the copy is routed
    /// as any event.
    Silence(String),
    /// The end of a time interval that muted this subscription: the copy goes to that
    /// subscription's actions only, the others having had the alert already.
    MuteWindow { subscription: String },
}

impl Released {
    /// The silence that released the copy, if a silence did.
    pub fn silence(&self) -> Option<&str> {
        match self {
            Released::Silence(id) => Some(id),
            Released::MuteWindow { .. } => None,
        }
    }

    /// The subscription whose mute window released the copy, if one did.
    pub fn subscription(&self) -> Option<&str> {
        match self {
            Released::Silence(_) => None,
            Released::MuteWindow { subscription } => Some(subscription),
        }
    }
}

impl IngestedEvent {
    /// `event`, accepted at `accepted_at_ms`, as it travels on the events queue — written from
    /// a borrowed event, which the hot path then need not clone.
    pub fn encode(event: &ResourceEvent, accepted_at_ms: i64) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Borrowed<'a> {
            event: &'a ResourceEvent,
            accepted_at_ms: i64,
        }
        serde_json::to_vec(&Borrowed {
            event,
            accepted_at_ms,
        })
        .expect("events serialize")
    }
}

/// One action to run for one event, with what earlier attempts left behind: a retried job
/// carries its own history, so waiting for the next attempt needs nothing but the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryJob {
    pub event: ResourceEvent,
    pub accepted_at_ms: i64,
    /// The name of the action to run.
    pub action: String,
    /// More actions to run for the same event, each as a job of its own: the router sends an
    /// event once for all the actions it matched, so that the queue carries it once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// Attempts already made.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// When the first attempt started (ms since the epoch): `fallbackTime` and `discardAfter`
    /// count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at_ms: Option<i64>,
    /// Why the earlier attempts failed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureReason>,
    /// The action this job stands in for, when it runs as that action's fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_for: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DeliveryJob {
    /// The job as it travels on the deliveries queue.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("jobs serialize")
    }

    /// The first job of `event` for `action` and, in `also`, its other actions, as it travels
    /// on the deliveries queue — written from a borrowed event, which the router then need not
    /// clone.
    pub fn encode_first(
        event: &ResourceEvent,
        accepted_at_ms: i64,
        action: &str,
        also: &[&str],
    ) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Borrowed<'a> {
            event: &'a ResourceEvent,
            accepted_at_ms: i64,
            action: &'a str,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            also: &'a [&'a str],
        }
        serde_json::to_vec(&Borrowed {
            event,
            accepted_at_ms,
            action,
            also,
        })
        .expect("jobs serialize")
    }

    /// A first attempt of `action` for `event`.
    pub fn new(event: ResourceEvent, accepted_at_ms: i64, action: impl Into<String>) -> Self {
        DeliveryJob {
            event,
            accepted_at_ms,
            action: action.into(),
            also: Vec::new(),
            attempt: 0,
            first_attempt_at_ms: None,
            failures: Vec::new(),
            fallback_for: None,
        }
    }

    /// This job and the jobs it carries for its other actions (`also`), one per action.
    pub fn split(mut self) -> Vec<DeliveryJob> {
        let also = std::mem::take(&mut self.also);
        let mut jobs = Vec::with_capacity(1 + also.len());
        for action in also {
            jobs.push(DeliveryJob {
                action,
                ..self.clone()
            });
        }
        jobs.insert(0, self);
        jobs
    }

    /// The source's key for the alert this event belongs to, if it has one.
    pub fn ordering_key(&self) -> Option<&str> {
        self.event.source_event_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ResourceEvent {
        serde_json::from_value(serde_json::json!({
            "id": "e1", "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
            "subject": "s", "body": "b", "eventTimestamp": 1,
            "resource": {"resourceName": "db-1", "resourceType": "database"}
        }))
        .unwrap()
    }

    #[test]
    fn borrowed_encodings_decode_into_the_messages() {
        let ingested: IngestedEvent =
            serde_json::from_slice(&IngestedEvent::encode(&event(), 7)).unwrap();
        assert_eq!(
            ingested,
            IngestedEvent {
                event: event(),
                accepted_at_ms: 7,
                by: None,
                released_by: None,
            }
        );
        let job: DeliveryJob =
            serde_json::from_slice(&DeliveryJob::encode_first(&event(), 7, "a", &["b"])).unwrap();
        let mut expected = DeliveryJob::new(event(), 7, "a");
        expected.also = vec!["b".into()];
        assert_eq!(job, expected);
        assert_eq!(
            serde_json::from_slice::<DeliveryJob>(&expected.encode()).unwrap(),
            expected
        );
    }
}
