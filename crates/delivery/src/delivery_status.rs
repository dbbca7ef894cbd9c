//! Delivery-status events (ANS's `enableDeliveryStatus`): when an action with the flag is done
//! with an event — delivered, or undelivered with its reasons — that outcome becomes an event of
//! its own, published on the events queue like any accepted event, so that subscriptions route
//! it: to a STORE action (then it is in `matched-events`), to a fallback channel, to a team that
//! watches delivery. Status events never produce status events.
//!
//! The event: `eventType` `TocsinDeliveryStatus`, category `NOTIFICATION`, severity `INFO`
//! (delivered) or `ERROR` (undelivered), the original event's resource, and the tags
//! `tocsin:deliveryStatus` (`DELIVERED` or `UNDELIVERED`), `tocsin:originalEventId`,
//! `tocsin:originalEventType`, `tocsin:action`, `tocsin:attempts` and, when undelivered,
//! `tocsin:failureReasons` (the reasons as a JSON array of `{code, reason, timestamp}`).
//! Conditions select on them like on any tag (`tags.tocsin:deliveryStatus`).
//!
//! Its id is derived from (original event, action, status), so a status event published twice
//! (after a crash, delivery is at least once) is the same event: stored once, and recognisable.

use model::{Action, Category, DeliveryJob, FailureReason, ResourceEvent, Severity, Tags};
use sha2::{Digest, Sha256};

pub const EVENT_TYPE: &str = "TocsinDeliveryStatus";
pub const TAG_STATUS: &str = "tocsin:deliveryStatus";
pub const TAG_ORIGINAL_EVENT_ID: &str = "tocsin:originalEventId";
pub const TAG_ORIGINAL_EVENT_TYPE: &str = "tocsin:originalEventType";
pub const TAG_ACTION: &str = "tocsin:action";
pub const TAG_ATTEMPTS: &str = "tocsin:attempts";
pub const TAG_FAILURE_REASONS: &str = "tocsin:failureReasons";

/// How long before its status event an undelivered event's record can have been stored: the
/// record is written first (its time, in whole seconds, taken before the write), then the
/// status event is made. A selection of what status events reported reaches back this far.
pub const RECORDED_BEFORE_S: i64 = 10;

/// How an action ended with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Delivered,
    Undelivered,
}

impl Status {
    /// Its `tocsin:deliveryStatus` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "DELIVERED",
            Status::Undelivered => "UNDELIVERED",
        }
    }
}

/// Whether `job`'s outcome is to be reported: its action asks for it, and the job's event is
/// not itself a status event.
pub fn wanted(action: Option<&Action>, job: &DeliveryJob) -> bool {
    action.is_some_and(|a| a.enable_delivery_status == Some(true))
        && job.event.event_type != EVENT_TYPE
}

/// The status event of `job`'s outcome; `failures` when it is undelivered.
pub fn event(job: &DeliveryJob, status: Status, attempts: u32, now: i64) -> ResourceEvent {
    let original = &job.event;
    let mut tags = Tags::new();
    tags.insert(TAG_STATUS.into(), status.as_str().into());
    tags.insert(TAG_ORIGINAL_EVENT_ID.into(), original.id.clone());
    tags.insert(TAG_ORIGINAL_EVENT_TYPE.into(), original.event_type.clone());
    tags.insert(TAG_ACTION.into(), job.action.clone());
    tags.insert(TAG_ATTEMPTS.into(), attempts.to_string());
    let (severity, subject, body) = match status {
        Status::Delivered => (
            Severity::Info,
            format!("Delivered by {}: {}", job.action, original.subject),
            format!(
                "Event {} ({}) was delivered by action {} after {attempts} attempt(s).",
                original.id, original.event_type, job.action
            ),
        ),
        Status::Undelivered => {
            tags.insert(
                TAG_FAILURE_REASONS.into(),
                serde_json::to_string(&job.failures).expect("reasons serialize"),
            );
            (
                Severity::Error,
                format!("Undelivered by {}: {}", job.action, original.subject),
                format!(
                    "Event {} ({}) could not be delivered by action {}:\n{}",
                    original.id,
                    original.event_type,
                    job.action,
                    reasons(&job.failures)
                ),
            )
        }
    };
    ResourceEvent {
        id: id(&original.id, &job.action, status),
        event_type: EVENT_TYPE.into(),
        severity,
        category: Category::Notification,
        subject,
        body,
        resource: original.resource.clone(),
        event_timestamp: now,
        priority: None,
        tags: Some(tags),
    }
}

fn reasons(failures: &[FailureReason]) -> String {
    failures
        .iter()
        .map(|f| format!("- {} {}", f.code, f.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A UUID (version 8, from SHA-256) that names (event, action, status) and nothing else.
fn id(event_id: &str, action: &str, status: Status) -> String {
    let digest = Sha256::digest(format!("{event_id}\n{action}\n{}", status.as_str()));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(event_type: &str) -> DeliveryJob {
        serde_json::from_value(serde_json::json!({
            "event": {
                "id": "0196a1b2-0000-7000-8000-000000000001", "eventType": event_type,
                "severity": "FATAL", "category": "ALERT", "subject": "Disk full", "body": "b",
                "eventTimestamp": 1_700_000_000,
                "resource": {"resourceName": "db-1", "resourceType": "host"},
                "tags": {"ans:sourceEventId": "db-1-disk"}
            },
            "acceptedAtMs": 0, "action": "pager", "attempt": 2,
            "failures": [{"code": 503, "reason": "http://pager/… answered 503", "timestamp": 1}]
        }))
        .unwrap()
    }

    fn action(flag: Option<bool>) -> Action {
        serde_json::from_value(serde_json::json!({
            "name": "pager", "type": "WEB_HOOK", "state": "ENABLED", "properties": {},
            "enableDeliveryStatus": flag
        }))
        .unwrap()
    }

    #[test]
    fn only_flagged_actions_report_and_never_about_a_status_event() {
        assert!(wanted(Some(&action(Some(true))), &job("DiskFull")));
        assert!(!wanted(Some(&action(Some(false))), &job("DiskFull")));
        assert!(!wanted(Some(&action(None)), &job("DiskFull")));
        assert!(!wanted(None, &job("DiskFull")));
        assert!(!wanted(Some(&action(Some(true))), &job(EVENT_TYPE)));
    }

    #[test]
    fn the_status_event_names_the_outcome_and_is_the_same_each_time() {
        let job = job("DiskFull");
        let undelivered = event(&job, Status::Undelivered, 2, 1_800_000_000);
        let tag = |name: &str| undelivered.tag(name).unwrap().to_owned();
        assert_eq!(undelivered.event_type, EVENT_TYPE);
        assert_eq!(undelivered.severity, Severity::Error);
        assert_eq!(tag(TAG_STATUS), "UNDELIVERED");
        assert_eq!(tag(TAG_ORIGINAL_EVENT_ID), job.event.id);
        assert_eq!(tag(TAG_ACTION), "pager");
        let reasons: serde_json::Value = serde_json::from_str(&tag(TAG_FAILURE_REASONS)).unwrap();
        assert_eq!(reasons[0]["code"], 503);
        assert!(
            undelivered.tag("ans:sourceEventId").is_none(),
            "not part of the original alert"
        );
        assert_eq!(undelivered.resource, job.event.resource);
        assert_eq!(undelivered.id, event(&job, Status::Undelivered, 2, 0).id);
        let delivered = event(&job, Status::Delivered, 3, 0);
        assert_ne!(delivered.id, undelivered.id);
        assert_eq!(delivered.severity, Severity::Info);
        assert!(delivered.tag(TAG_FAILURE_REASONS).is_none());
        assert!(uuid::Uuid::parse_str(&delivered.id).is_ok());
    }
}
