//! Delivery: runs each delivery job's action through its channel and records how it ended.
//!
//! The worker consumes the deliveries queue, looks the job's action up in the current
//! configuration, hands the job to the channel registered for the action's `type`
//! ([`channels`]), and settles the job only after the outcome is on record ([`records`]):
//! a STORE action records the event as `MATCHED`; a failure is recorded `UNDELIVERED` with its
//! reasons. Jobs run concurrently up to the prefetch; on shutdown the worker stops taking jobs,
//! finishes those in hand and leaves the rest queued.

pub mod channels;
pub mod consumer_api;
pub mod http;
pub mod lifecycle;
pub mod links;
pub mod properties;
pub mod records;
pub mod templates;

use bus::{Bus, Delivery, Queue};
use channels::{Channels, Failure, Outcome};
use model::{DeliveryJob, DeliveryStatus, FailureReason, SharedCatalog};
use records::RecordStore;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Settings of the delivery workers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Jobs in progress at most.
    pub prefetch: u16,
}

pub struct DeliveryWorker {
    config: DeliveryConfig,
    bus: Arc<dyn Bus>,
    shared: Arc<Shared>,
}

struct Shared {
    catalog: SharedCatalog,
    channels: Channels,
    records: RecordStore,
}

impl DeliveryWorker {
    pub fn new(
        config: DeliveryConfig,
        bus: Arc<dyn Bus>,
        catalog: SharedCatalog,
        channels: Channels,
        records: RecordStore,
    ) -> Self {
        DeliveryWorker {
            config,
            bus,
            shared: Arc::new(Shared {
                catalog,
                channels,
                records,
            }),
        }
    }

    /// Delivers until `shutdown` turns true, then finishes the jobs in hand.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), bus::BusError> {
        let mut jobs = self
            .bus
            .subscribe(Queue::Deliveries, self.config.prefetch)
            .await?;
        let mut in_hand = JoinSet::new();
        loop {
            let delivery = tokio::select! {
                delivery = jobs.next() => delivery,
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(delivery) = delivery else { break };
            let shared = Arc::clone(&self.shared);
            in_hand.spawn(async move { shared.handle(delivery).await });
            // Reap finished tasks as we go so the set does not grow with the backlog.
            while in_hand.try_join_next().is_some() {}
        }
        drop(jobs);
        while in_hand.join_next().await.is_some() {}
        tracing::info!("delivery stopped");
        Ok(())
    }
}

impl Shared {
    async fn handle(&self, delivery: Delivery) {
        let job: DeliveryJob = match serde_json::from_slice(&delivery.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, "undecodable delivery job; dead-lettering it");
                if let Err(e) = delivery.dead_letter().await {
                    tracing::warn!(error = %e, "cannot dead-letter");
                }
                return;
            }
        };
        let outcome = self.deliver(&job).await;
        let recorded = match &outcome {
            Outcome::Delivered => Ok(()),
            Outcome::Failed(failure) => {
                let reason = FailureReason {
                    code: failure.code,
                    reason: failure.reason.clone(),
                    timestamp: model::now_epoch_seconds(),
                };
                self.records
                    .record(&job, DeliveryStatus::Undelivered, &[reason])
                    .await
            }
        };
        match &outcome {
            Outcome::Delivered => {
                tracing::info!(event = %job.event.id, action = %job.action, "delivered")
            }
            Outcome::Failed(f) => {
                tracing::warn!(event = %job.event.id, action = %job.action, code = f.code, reason = %f.reason, "undelivered")
            }
        }
        let settled = match recorded {
            Ok(()) => delivery.ack().await,
            Err(e) => {
                tracing::error!(error = %e, event = %job.event.id, "cannot record the outcome; requeueing");
                delivery.requeue().await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, event = %job.event.id, "cannot settle the job; it will run again");
        }
    }

    async fn deliver(&self, job: &DeliveryJob) -> Outcome {
        let catalog = self.catalog.load();
        let Some(action) = catalog.action(&job.action) else {
            return Outcome::Failed(Failure::permanent(
                channels::CODE_ACTION_MISSING,
                format!("action `{}` no longer exists", job.action),
            ));
        };
        match self.channels.get(&action.action_type) {
            Some(channel) => channel.deliver(job, action).await,
            None => Outcome::Failed(Failure::permanent(
                channels::CODE_UNSUPPORTED_TYPE,
                format!(
                    "action type `{}` is not supported by this Tocsin version",
                    action.action_type
                ),
            )),
        }
    }
}
