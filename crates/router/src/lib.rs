//! The router: consumes accepted events, decides which actions each one goes to, and publishes
//! one delivery job per (event, action).
//!
//! It works in batches: it takes every event waiting (up to its prefetch), matches them against
//! the current configuration ([`matcher`]), publishes all resulting jobs in one durable publish
//! — in event order, so that events of one source reach the delivery queue in the order they
//! were accepted — and only then acks the events. A crash in between re-routes the batch; the
//! jobs it had already queued are duplicates that delivery absorbs (records are idempotent).

pub mod api;
pub mod matcher;
pub mod store;

use bus::{Bus, Delivery, Queue};
use bytes::Bytes;
use matcher::Matcher;
use model::{Catalog, IngestedEvent, ResourceEvent};
use std::sync::Arc;
use std::time::Duration;
use store::ConfigStore;
use tokio::sync::watch;

/// Settings of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Events in flight (read but not yet acked) at most; also the largest batch.
    pub prefetch: u16,
}

pub struct Router {
    config: RouterConfig,
    bus: Arc<dyn Bus>,
    store: Arc<ConfigStore>,
    compiled: (Arc<Catalog>, Matcher),
}

impl Router {
    pub fn new(config: RouterConfig, bus: Arc<dyn Bus>, store: Arc<ConfigStore>) -> Self {
        let current = store.current();
        let matcher = Matcher::new(&current);
        Router {
            config,
            bus,
            store,
            compiled: (current, matcher),
        }
    }

    /// Routes until `shutdown` turns true; the batch in hand is finished first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), bus::BusError> {
        let mut events = self
            .bus
            .subscribe(Queue::Events, self.config.prefetch)
            .await?;
        loop {
            let batch = tokio::select! {
                batch = events.next_batch(usize::from(self.config.prefetch)) => batch,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if batch.is_empty() {
                break;
            }
            // Changes made through other processes are waiting in our update queue by now if
            // they returned before these events were accepted: take them first.
            self.store.refresh().await;
            self.route(batch, &mut shutdown).await;
        }
        tracing::info!("router stopped");
        Ok(())
    }

    /// The matcher for the configuration as it is now, recompiled only when it changed.
    fn matcher(&mut self) -> &Matcher {
        let current = self.store.current();
        if !Arc::ptr_eq(&current, &self.compiled.0) {
            self.compiled = (Arc::clone(&current), Matcher::new(&current));
        }
        &self.compiled.1
    }

    async fn route(&mut self, batch: Vec<Delivery>, shutdown: &mut watch::Receiver<bool>) {
        let now = model::now_epoch_seconds();
        let mut jobs = Vec::new();
        let mut routed = Vec::with_capacity(batch.len());
        for delivery in batch {
            let ingested: IngestedEvent = match serde_json::from_slice(&delivery.payload) {
                Ok(ingested) => ingested,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable event on the events queue; dead-lettering it");
                    if let Err(e) = delivery.dead_letter().await {
                        tracing::warn!(error = %e, "cannot dead-letter");
                    }
                    continue;
                }
            };
            let actions = self.matcher().select(&ingested.event, now);
            tracing::debug!(event = %ingested.event.id, actions = ?actions, "routed");
            for action in actions {
                jobs.push(job_payload(
                    &ingested.event,
                    ingested.accepted_at_ms,
                    action,
                ));
            }
            routed.push(delivery);
        }
        if !jobs.is_empty() && !self.publish_until_done(jobs, shutdown).await {
            // Shutting down with the jobs unpublished: leave the events unacked for next time.
            return;
        }
        let acks = routed.into_iter().map(|d| d.ack());
        for result in futures::future::join_all(acks).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot ack a routed event; it will be routed again");
            }
        }
    }

    /// Publishes, retrying while the bus is unavailable; false if shutdown came first.
    async fn publish_until_done(
        &self,
        jobs: Vec<Bytes>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.bus.publish(Queue::Deliveries, jobs.clone()).await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(error = %e, "cannot queue delivery jobs; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

fn job_payload(event: &ResourceEvent, accepted_at_ms: i64, action: &str) -> Bytes {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct View<'a> {
        event: &'a ResourceEvent,
        accepted_at_ms: i64,
        action: &'a str,
    }
    let view = View {
        event,
        accepted_at_ms,
        action,
    };
    Bytes::from(serde_json::to_vec(&view).expect("jobs always serialize"))
}
