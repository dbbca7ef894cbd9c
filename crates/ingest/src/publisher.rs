//! The one way into the pipeline: wraps accepted events as [`IngestedEvent`]s and publishes
//! them on the events queue, returning once the bus holds them durably, and counts them as
//! accepted for their source (`tocsin_events_accepted_total`).

use bus::{Bus, BusError, Queue};
use bytes::Bytes;
use metrics::Metrics;
use model::{IngestedEvent, ResourceEvent};
use std::sync::Arc;

#[derive(Clone)]
pub struct EventPublisher {
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    source: &'static str,
}

impl EventPublisher {
    /// The publisher of the source named `source` (its metrics label, e.g. `ans`).
    pub fn new(bus: Arc<dyn Bus>, metrics: Arc<Metrics>, source: &'static str) -> Self {
        metrics.register_source(source);
        EventPublisher {
            bus,
            metrics,
            source,
        }
    }

    /// Durably queues `events`, in order.
    pub async fn publish(&self, events: &[ResourceEvent]) -> Result<(), BusError> {
        let accepted_at_ms = clock::now_epoch_millis();
        let payloads = events
            .iter()
            .map(|event| Bytes::from(IngestedEvent::encode(event, accepted_at_ms)))
            .collect();
        self.bus.publish(Queue::Events, payloads).await?;
        self.metrics
            .events_accepted(self.source, events.len() as u64);
        Ok(())
    }

    /// Counts `count` events sent again and not published again.
    pub(crate) fn deduplicated(&self, count: u64) {
        self.metrics.events_deduplicated(self.source, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn published_events_count_as_accepted_for_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(bus::EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap());
        let metrics = Arc::new(Metrics::new());
        let publisher = EventPublisher::new(bus.clone(), Arc::clone(&metrics), "alertmanager");
        let event = |id: &str| {
            let body = br#"{"eventType": "T", "severity": "INFO", "category": "ALERT",
                "subject": "s", "body": "b",
                "resource": {"resourceName": "r", "resourceType": "vm"}}"#;
            model::parse_event(body, id.into(), 0).unwrap()
        };
        let series = "tocsin_events_accepted_total{source=\"alertmanager\"} ";
        let accepted = || {
            let text = metrics.render().unwrap();
            let line = text.lines().find(|l| l.starts_with(series)).unwrap();
            line[series.len()..].to_owned()
        };
        assert_eq!(accepted(), "0");
        publisher.publish(&[event("a"), event("b")]).await.unwrap();
        assert_eq!(accepted(), "2");
        let mut queued = bus.subscribe(Queue::Events, 10).await.unwrap();
        for id in ["a", "b"] {
            let delivery = queued.next().await.unwrap();
            let ingested: IngestedEvent = serde_json::from_slice(&delivery.payload).unwrap();
            assert_eq!(ingested.event.id, id);
        }
    }
}
