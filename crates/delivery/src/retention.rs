//! Retention: matched and undelivered records and delivery attempts older than the retention
//! time are deleted, and so are alerts resolved before it (with their timelines) and silences
//! that ended before it once their release is done, a small batch at a time, so that the API
//! never waits behind a big delete.

use crate::records::RecordStore;
use std::future::Future;
use std::time::Duration;
use store::alerts::AlertStore;
use store::silences::SilenceStore;
use store::StoreError;
use tokio::sync::watch;

/// Rows deleted per write at most.
const BATCH: u32 = 500;

/// Purges every `every` until `shutdown`.
pub async fn run(
    records: RecordStore,
    alerts: AlertStore,
    silences: SilenceStore,
    keep: Duration,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let cutoff = clock::now_epoch_seconds() - keep.as_secs() as i64;
        in_batches("old records and attempts", || {
            records.purge_before(cutoff, BATCH)
        })
        .await;
        in_batches("alerts resolved long ago", || {
            alerts.purge_resolved_before(cutoff.saturating_mul(1000), BATCH)
        })
        .await;
        in_batches("silences ended long ago", || {
            silences.purge_released_before(cutoff.saturating_mul(1000), BATCH)
        })
        .await;
    }
}

/// Runs `purge` until it deletes nothing (or fails), letting other writes in between.
async fn in_batches<F, Fut>(what: &str, mut purge: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, StoreError>>,
{
    let mut purged = 0;
    loop {
        match purge().await {
            Ok(0) => break,
            Ok(n) => purged += n,
            Err(e) => {
                tracing::warn!(error = %e, what, "retention: cannot purge");
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    if purged > 0 {
        tracing::info!(purged, what, "retention: purged");
    }
}
