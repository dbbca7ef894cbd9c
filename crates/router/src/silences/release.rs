//! What the end of a silence releases: every alert it held back that still fires (firing or
//! acknowledged, not resolved) whose latest event it held back is delivered once, in its
//! latest state — a copy of that event goes through routing again.
//!
//! Flow: each process runs [`run`], which sleeps until the next silence in memory ends (or
//! the set changes, or [`LOOK_EVERY`] passes — then it reads the version for silences other
//! processes created), so it costs nothing while no silence ends. For an ended silence it
//! claims the release in the store for [`CLAIM_FOR`] (one process wins), queues the copies on
//! the events queue, and marks the release done. A process that dies in between leaves the
//! claim to lapse, and the next one queues the copies again: each copy's id is the latest
//! event's and the silence's, and the router routes a copy it folded before no further
//! ([`model::IngestedEvent::released_by`]), so no alert is delivered twice.
//!
//! A copy is routed as any event: matched by today's subscriptions, and held back again if
//! another silence is active (that one releases it when it ends).

use super::Silences;
use crate::released::{self, ReleaseError};
use bus::{Bus, Queue};
use bytes::Bytes;
use model::bus::Released;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use store::alerts::AlertStore;
use tokio::sync::watch;

/// How long a release is claimed: far above the time to queue the copies.
pub const CLAIM_FOR: Duration = Duration::from_secs(30);
/// How often a process reads the silences' version when nothing else wakes it: the bound on
/// how late a silence created through another process that this one alone would release (the
/// others having stopped) is released.
pub const LOOK_EVERY: Duration = Duration::from_secs(10);
/// How long a failed release waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Releases what ended silences held back, until `shutdown` turns true.
pub async fn run(
    silences: Arc<Silences>,
    alerts: AlertStore,
    bus: Arc<dyn Bus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let millis = |d: Duration| d.as_millis() as i64;
    // Silences this process tried to release without success: not again before then.
    let mut not_before: HashMap<String, i64> = HashMap::new();
    loop {
        let now = clock::now_epoch_millis();
        let set = silences.current();
        let mut wake = now + millis(LOOK_EVERY);
        for silence in set.unreleased() {
            let due = silence
                .ends_at_ms
                .max(not_before.get(&silence.id).copied().unwrap_or(0));
            if due > now {
                wake = wake.min(due);
                continue;
            }
            let retry = match release(&silences, &alerts, &*bus, &silence.id, now).await {
                Ok(true) => None,
                // Another process holds it, or released it already.
                Ok(false) => Some(now + millis(CLAIM_FOR)),
                Err(e) => {
                    tracing::warn!(silence = %silence.id, error = %e, "cannot release what a silence held back; retrying");
                    Some(now + millis(RETRY_AFTER))
                }
            };
            match retry {
                Some(at) => {
                    not_before.insert(silence.id.clone(), at);
                    wake = wake.min(at);
                }
                None => {
                    not_before.remove(&silence.id);
                }
            }
        }
        not_before.retain(|id, _| set.unreleased().any(|s| &s.id == id));
        let sleep = Duration::from_millis(u64::try_from(wake - now).unwrap_or(0));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = silences.changed.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        silences.refresh().await;
    }
}

/// Releases the ended silence `id` if this process wins its claim: true then.
async fn release(
    silences: &Silences,
    alerts: &AlertStore,
    bus: &dyn Bus,
    id: &str,
    now_ms: i64,
) -> Result<bool, ReleaseError> {
    let store = silences.store();
    if !store
        .claim_release(id, now_ms, CLAIM_FOR.as_millis() as i64)
        .await?
    {
        return Ok(false);
    }
    let held = alerts.held_back_by(id).await?;
    let copies: Vec<Bytes> = held
        .iter()
        .filter_map(|alert| released::copy(alert, Released::Silence(id.to_owned()), now_ms))
        .collect();
    if !copies.is_empty() {
        bus.publish(Queue::Events, copies).await?;
    }
    store.mark_released(id, now_ms).await?;
    tracing::info!(silence = %id, alerts = held.len(), "a silence ended; the alerts it held back are released");
    silences.reload_now().await;
    Ok(true)
}
