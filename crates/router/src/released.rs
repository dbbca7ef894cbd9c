//! Copies of an alert's latest event that the end of a silence ([`crate::silences::release`])
//! or of a mute window ([`crate::mutes::release`]) puts back on the events queue, and what can
//! stop a release.

use bus::BusError;
use bytes::Bytes;
use model::bus::Released;
use model::{IngestedEvent, ResourceEvent};
use store::alerts::Alert;
use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot queue the released events: {0}")]
    Bus(#[from] BusError),
}

/// The copy of `alert`'s latest event that `released` releases, as queued at `now_ms`. Its
/// id is the latest event's and the silence's (or the subscription's): the same wherever and
/// however often it is made, so that the router routes it once.
pub fn copy(alert: &Alert, released: Released, now_ms: i64) -> Option<Bytes> {
    let mut event: ResourceEvent = serde_json::from_str(&alert.latest_event)
        .map_err(|e| tracing::error!(alert = %alert.key, error = %e, "the latest event of an alert cannot be read; not released"))
        .ok()?;
    let by = match &released {
        Released::Silence(id) => id,
        Released::MuteWindow { subscription } => subscription,
    };
    event.id = format!("{}~{by}", event.id);
    let ingested = IngestedEvent {
        event,
        accepted_at_ms: now_ms,
        by: None,
        released_by: Some(released),
    };
    Some(Bytes::from(
        serde_json::to_vec(&ingested).expect("events serialize"),
    ))
}
