//! What the end of a mute window releases: every alert not resolved that a subscription's time
//! interval kept it from hearing in its latest state is delivered to that subscription once,
//! when the subscription is no longer muted.
//!
//! Flow: each process runs [`run`], which every [`LOOK_EVERY`] reads the alerts with
//! something muted
//! ([`AlertStore::muted`], a partial index: nothing to read while nothing is muted), asks the
//! configuration in force whether each subscription they name is still muted (a window
//! removed from the configuration, or its subscription, ends it too), and for the
//! alerts with one that is not, claims the release in the store for [`CLAIM_FOR`] (one
//! process wins) and queues a copy of the latest event per such subscription on the events
//! queue. The router routes a copy to its subscription's actions only and folds it, which
//! settles the subscription for that alert. A copy's id is the latest event's and the
//! subscription's, and the router routes a copy it folded before no further, so a release
//! queued again (its claim lapsed before the router got to it) delivers nothing twice.

use crate::matcher::Matcher;
use crate::released::{self, ReleaseError};
use crate::store::ConfigStore;
use bus::{Bus, Queue};
use model::bus::Released;
use model::Catalog;
use std::sync::Arc;
use std::time::Duration;
use store::alerts::AlertStore;
use tokio::sync::watch;

/// How often the muted alerts are looked at: the bound on how late after its window ends an
/// alert is released (windows are whole minutes).
pub const LOOK_EVERY: Duration = Duration::from_secs(5);
/// How long a release is claimed: far above the time to queue and route the copies.
pub const CLAIM_FOR: Duration = Duration::from_secs(30);
/// Alerts looked at per round at most (the oldest first); the rest wait for the next.
const ROUND: u32 = 500;

/// Releases what ended mute windows held back, until `shutdown` turns true.
pub async fn run(
    config: Arc<ConfigStore>,
    alerts: AlertStore,
    bus: Arc<dyn Bus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut compiled: Option<(Arc<Catalog>, Matcher)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let current = config.current();
        let matcher = match &compiled {
            Some((catalog, matcher)) if Arc::ptr_eq(catalog, &current) => matcher,
            _ => {
                &compiled
                    .insert((Arc::clone(&current), Matcher::new(&current)))
                    .1
            }
        };
        if let Err(e) = release_round(matcher, &alerts, &*bus).await {
            tracing::warn!(error = %e, "cannot release what mute windows held back; trying again");
        }
    }
}

/// One look at the muted alerts, releasing those whose window ended.
async fn release_round(
    matcher: &Matcher,
    alerts: &AlertStore,
    bus: &dyn Bus,
) -> Result<(), ReleaseError> {
    let now = clock::now_epoch_millis();
    let mut copies = Vec::new();
    for alert in alerts.muted(ROUND).await? {
        let ended: Vec<&str> = alert
            .muted_for
            .iter()
            .map(String::as_str)
            .filter(|s| window_ended(matcher, s, now))
            .collect();
        if ended.is_empty()
            || !alerts
                .claim_mute_release(&alert.key, now, CLAIM_FOR.as_millis() as i64)
                .await?
        {
            continue;
        }
        copies.extend(ended.iter().filter_map(|s| {
            let released = Released::MuteWindow {
                subscription: (*s).to_owned(),
            };
            released::copy(&alert, released, now)
        }));
    }
    if !copies.is_empty() {
        let released = copies.len();
        bus.publish(Queue::Events, copies).await?;
        tracing::info!(
            released,
            "mute windows ended; the alerts they held back are released"
        );
    }
    Ok(())
}

/// Whether `subscription` is no longer muted at `now_ms` — gone, disabled or out of its window.
fn window_ended(matcher: &Matcher, subscription: &str, now_ms: i64) -> bool {
    matcher
        .subscription_number(subscription)
        .is_none_or(|number| !matcher.muted_at(number, now_ms))
}
