//! What an event does to its alert, for destinations that keep something per alert (a B2C
//! incident, a Slack thread) and for templates (`resolved`).
//!
//! The `ans:status` tag says it (`CREATE_OR_UPDATE`, `CREATE`, `UPDATE`, `COMMENT`, `CLOSE`):
//! `CLOSE` closes the alert, `COMMENT` only adds to it, anything else (or no tag) opens it or
//! keeps it open. The OCI source sets it from the alarm's type: OK_TO_FIRING and REPEAT open,
//! FIRING_TO_OK and RESET close.

use model::event::TAG_STATUS;
use model::ResourceEvent;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The alert is (still) firing: open it, or add to it.
    Open,
    /// Add to the alert, change nothing else.
    Comment,
    /// The alert is over.
    Close,
}

impl Transition {
    pub fn of(event: &ResourceEvent) -> Self {
        let status = event.tag(TAG_STATUS).map(str::trim).unwrap_or_default();
        if status.eq_ignore_ascii_case("CLOSE") {
            Transition::Close
        } else if status.eq_ignore_ascii_case("COMMENT") {
            Transition::Comment
        } else {
            Transition::Open
        }
    }
}

/// The alert `event` belongs to, as a destination that keeps one thing per alert names it (a
/// PagerDuty `dedup_key`, a Splunk On-Call `entity_id`): its `ans:sourceEventId`, else its own
/// id — and, where the destination takes at most `max` bytes, a longer key's SHA-256 in hex
/// (the same key always gives the same name).
pub fn alert_key(event: &ResourceEvent, max: usize) -> Cow<'_, str> {
    let key = event.source_event_id().unwrap_or(&event.id);
    if key.len() <= max {
        return Cow::Borrowed(key);
    }
    Cow::Owned(
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: Option<&str>) -> ResourceEvent {
        let mut event = serde_json::json!({
            "id": "e", "eventType": "OCIAlarm", "severity": "INFO", "category": "ALERT",
            "subject": "s", "body": "b", "eventTimestamp": 0,
            "resource": {"resourceName": "r", "resourceType": "t"}
        });
        if let Some(status) = status {
            event["tags"] = serde_json::json!({ "ans:status": status });
        }
        serde_json::from_value(event).unwrap()
    }

    #[test]
    fn the_status_tag_decides() {
        assert_eq!(Transition::of(&event(None)), Transition::Open);
        assert_eq!(
            Transition::of(&event(Some("CREATE_OR_UPDATE"))),
            Transition::Open
        );
        assert_eq!(Transition::of(&event(Some("UPDATE"))), Transition::Open);
        assert_eq!(Transition::of(&event(Some("close"))), Transition::Close);
        assert_eq!(Transition::of(&event(Some(" CLOSE "))), Transition::Close);
        assert_eq!(Transition::of(&event(Some("COMMENT"))), Transition::Comment);
    }
}
