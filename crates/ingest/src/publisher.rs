//! The one way into the pipeline: wraps accepted events as [`IngestedEvent`]s and publishes
//! them on the events queue, returning once the bus holds them durably.

use bus::{Bus, BusError, Queue};
use bytes::Bytes;
use model::{IngestedEvent, ResourceEvent};
use std::sync::Arc;

#[derive(Clone)]
pub struct EventPublisher {
    bus: Arc<dyn Bus>,
}

impl EventPublisher {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        EventPublisher { bus }
    }

    /// Durably queues `events`, in order.
    pub async fn publish(&self, events: &[ResourceEvent]) -> Result<(), BusError> {
        let accepted_at_ms = model::now_epoch_millis();
        let payloads = events
            .iter()
            .map(|event| {
                // `IngestedEvent` borrows nothing, so serialize a view instead of cloning.
                #[derive(serde::Serialize)]
                #[serde(rename_all = "camelCase")]
                struct View<'a> {
                    event: &'a ResourceEvent,
                    accepted_at_ms: i64,
                }
                let json = serde_json::to_vec(&View {
                    event,
                    accepted_at_ms,
                })
                .expect("events always serialize");
                debug_assert!(serde_json::from_slice::<IngestedEvent>(&json).is_ok());
                Bytes::from(json)
            })
            .collect();
        self.bus.publish(Queue::Events, payloads).await
    }
}
