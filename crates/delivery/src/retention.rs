//! Retention: matched and undelivered records and delivery attempts older than the retention
//! time are deleted, a small batch at a time, so that the API never waits behind a big delete.

use crate::records::RecordStore;
use std::time::Duration;
use tokio::sync::watch;

/// Rows deleted per write at most.
const BATCH: u32 = 500;

/// Purges every `every` until `shutdown`.
pub async fn run(
    records: RecordStore,
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
        let mut purged = 0;
        loop {
            match records.purge_before(cutoff, BATCH).await {
                Ok(0) => break,
                Ok(n) => purged += n,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: cannot purge old records");
                    break;
                }
            }
            // Let the API's writes in between batches.
            tokio::task::yield_now().await;
        }
        if purged > 0 {
            tracing::info!(purged, "retention: purged old records and attempts");
        }
    }
}
