//! A person's act as an event of its alert's chain: built from the latest event that opened or
//! closed the alert (same type, resource, severity, keys), saying who did what, with the
//! `ans:status` the act calls for (`CLOSE` for a resolve, `COMMENT` otherwise).

use model::alert::{HumanAct, HumanAction};
use model::event::TAG_STATUS;
use model::ResourceEvent;
use store::alerts::Alert;

/// The event that carries `by` for `alert`, made at `now_ms` with the id `id`; `None` if the
/// alert's latest event cannot be read back (it was stored by this Tocsin, so it always can).
pub fn act_event(alert: &Alert, by: &HumanAct, id: String, now_ms: i64) -> Option<ResourceEvent> {
    let mut event: ResourceEvent = serde_json::from_str(&alert.latest_event).ok()?;
    event.id = id;
    event.event_timestamp = now_ms / 1000;
    let done = match by.action {
        HumanAction::Acknowledge => "Acknowledged",
        HumanAction::Unacknowledge => "Unacknowledged",
        HumanAction::Resolve => "Resolved",
        HumanAction::Comment => "Comment",
    };
    event.subject = format!("{done} by {}: {}", by.who, alert.subject);
    event.body = match &by.comment {
        Some(comment) => format!("{done} by {} ({}): {comment}", by.who, by.via),
        None => format!("{done} by {} ({}).", by.who, by.via),
    };
    // The alert's keys stay, so that the destinations find what they made for it.
    let tags = event.tags.get_or_insert_with(Default::default);
    tags.insert(TAG_STATUS.to_owned(), by.action.status().to_owned());
    tags.insert("tocsin:action".to_owned(), by.action.as_str().to_owned());
    tags.insert("tocsin:actor".to_owned(), by.who.clone());
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::alerts::AlertState;

    #[test]
    fn an_act_keeps_the_alerts_keys_and_says_who_did_what() {
        let latest = serde_json::json!({
            "id": "e1", "eventType": "DiskFull", "severity": "FATAL", "category": "ALERT",
            "subject": "Disk full on db-1", "body": "/var is full", "eventTimestamp": 1,
            "resource": {"resourceName": "db-1", "resourceType": "database"},
            "tags": {"ans:sourceEventId": "disk-db-1", "ans:correlationId": "c-1"}
        });
        let alert = Alert {
            key: "disk-db-1".into(),
            state: AlertState::Firing,
            severity: "FATAL".into(),
            event_type: "DiskFull".into(),
            subject: "Disk full on db-1".into(),
            resource_name: "db-1".into(),
            resource_type: "database".into(),
            first_seen_ms: 1,
            last_seen_ms: 1,
            firing_since_ms: 1,
            acknowledged_at_ms: None,
            resolved_at_ms: None,
            events: 1,
            latest_event: latest.to_string(),
            muted_for: Vec::new(),
        };
        let by = HumanAct {
            action: HumanAction::Resolve,
            who: "oncall".into(),
            via: "api".into(),
            comment: Some("swapped the disk".into()),
        };
        let event = act_event(&alert, &by, "e2".into(), 5_000).unwrap();
        assert_eq!(event.id, "e2");
        assert_eq!(event.event_timestamp, 5);
        assert_eq!(event.source_event_id(), Some("disk-db-1"));
        assert_eq!(event.correlation_id(), Some("c-1"));
        assert_eq!(event.tag(TAG_STATUS), Some("CLOSE"));
        assert_eq!(event.subject, "Resolved by oncall: Disk full on db-1");
        assert_eq!(event.body, "Resolved by oncall (api): swapped the disk");
        assert_eq!(event.resource.resource_name, "db-1");
    }
}
