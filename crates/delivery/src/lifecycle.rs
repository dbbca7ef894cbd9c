//! What an event does to its alert, for destinations that keep something per alert (a B2C
//! incident, a Slack thread) and for templates (`resolved`): [`Transition`] (the model's
//! reading of `ans:status`, which the alert state shares) and the alert's key as destinations
//! with a length limit take it.

pub use model::event::Transition;
use model::ResourceEvent;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// The alert `event` belongs to, as a destination that keeps one thing per alert names it (a
/// PagerDuty `dedup_key`, a Splunk On-Call `entity_id`): its `ans:sourceEventId`, else its own
/// id — and, where the destination takes at most `max` bytes, a longer key's SHA-256 in hex
/// (the same key always gives the same name).
pub fn alert_key(event: &ResourceEvent, max: usize) -> Cow<'_, str> {
    let key = event.alert_key();
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
