//! A person's act on an alert — the one path every way of acting takes (the alerts API, Slack,
//! signed links, the console): [`perform`] checks the act against the alert as it is, records
//! it in the audit log (claiming its once-only key, if it has one, so that a click delivered
//! twice or a link used twice acts once), and sends it into the pipeline as an event of the
//! alert's chain ([`act_event`]): built from the latest event that opened or closed the alert
//! (same type, resource, severity, keys), saying who did what, with the `ans:status` the act
//! calls for (`CLOSE` for a resolve, `COMMENT` otherwise). The router folds it into the alert's
//! state and timeline; the destinations hear of it.

use crate::api::State;
use bus::Queue;
use bytes::Bytes;
use model::alert::{HumanAct, HumanAction};
use model::event::TAG_STATUS;
use model::{IngestedEvent, ResourceEvent};
use store::alerts::{Acted, Alert};
use store::audit::{AuditEntry, Recorded};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;
use web::ApiError;

/// What an act came to.
#[derive(Debug)]
pub enum Performed {
    /// Queued: the alert as the act leaves it, and the event that carries the act.
    Done { alert: Alert, event_id: String },
    /// The alert was so already (acknowledged twice, …): nothing queued.
    Unchanged(Alert),
    /// This once-only act (its key) was done before: nothing queued, the alert as it is.
    Repeated(Alert),
}

/// Why an act was not done.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("alert `{0}` does not exist")]
    NotFound(String),
    #[error("alert `{0}` is {1}: it can no longer be acted on (a new firing event reopens it)")]
    Refused(String, &'static str),
    #[error("the act was not accepted, retry later: {0}")]
    Unavailable(String),
}

impl ActError {
    pub fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl From<ActError> for ApiError {
    fn from(e: ActError) -> ApiError {
        let status = match &e {
            ActError::NotFound(_) => StatusCode::NOT_FOUND,
            ActError::Refused(..) => StatusCode::CONFLICT,
            ActError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Does `by` to the alert `key`: audited (with `once` as its once-only key, if given), then
/// queued. An act the alert's state makes moot is audited as `unchanged`, one it refuses as
/// `refused`.
pub async fn perform(
    state: &State,
    key: &str,
    by: HumanAct,
    once: Option<String>,
) -> Result<Performed, ActError> {
    let unavailable = |e: store::StoreError| {
        tracing::error!(error = %e, "cannot read or record an act");
        ActError::Unavailable("the store cannot be reached".into())
    };
    let alert = match state.alerts.get(key).await.map_err(unavailable)? {
        Some((alert, _)) => alert,
        None => return Err(ActError::NotFound(key.to_owned())),
    };
    let now = clock::now_epoch_millis();
    let entry_id = uuid::Uuid::now_v7().to_string();
    let (outcome, result) = match alert.act(by.action, now) {
        Acted::Done(after) => ("done", Ok(after)),
        Acted::Unchanged(alert) => ("unchanged", Err(Ok(alert))),
        Acted::Refused(alert) => (
            "refused",
            Err(Err(ActError::Refused(key.to_owned(), alert.state.as_str()))),
        ),
    };
    let entry = AuditEntry {
        id: entry_id.clone(),
        at_ms: now,
        who: by.who.clone(),
        via: by.via.clone(),
        action: by.action.as_str().to_owned(),
        target: key.to_owned(),
        outcome: outcome.to_owned(),
        detail: by.comment.clone(),
        dedupe_key: once,
    };
    if state.audit.record(&entry).await.map_err(unavailable)? == Recorded::Duplicate {
        let current = state.alerts.get(key).await.map_err(unavailable)?;
        return Ok(Performed::Repeated(current.map_or(alert, |(a, _)| a)));
    }
    let after = match result {
        Ok(after) => after,
        Err(Ok(alert)) => return Ok(Performed::Unchanged(alert)),
        Err(Err(refused)) => return Err(refused),
    };
    let id = uuid::Uuid::now_v7().to_string();
    let Some(event) = act_event(&alert, &by, id, now) else {
        let _ = state.audit.forget(&entry_id).await;
        return Err(ActError::Unavailable(format!(
            "the latest event of alert `{key}` cannot be read"
        )));
    };
    let event_id = event.id.clone();
    let ingested = IngestedEvent {
        event,
        accepted_at_ms: now,
        by: Some(by),
        released_by: None,
    };
    let payload = Bytes::from(serde_json::to_vec(&ingested).expect("events serialize"));
    if let Err(e) = state.bus.publish(Queue::Events, vec![payload]).await {
        tracing::warn!(error = %e, "cannot queue a person's act");
        // Given back, so that the retry of a once-only act can act.
        if let Err(e) = state.audit.forget(&entry_id).await {
            tracing::warn!(error = %e, "cannot give back an act's audit entry");
        }
        return Err(ActError::Unavailable(e.to_string()));
    }
    let by = ingested.by.as_ref().expect("set above");
    tracing::info!(alert = %key, action = by.action.as_str(), who = %by.who, via = %by.via, "a person acted on an alert");
    Ok(Performed::Done {
        alert: after,
        event_id,
    })
}

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
