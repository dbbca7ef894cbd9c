//! The messages Tocsin puts on its bus (RabbitMQ or the embedded queue), as JSON.
//!
//! `IngestedEvent`s flow from the sources to the router on the events queue; the router turns
//! each into one `DeliveryJob` per selected action on the deliveries queue. A job names its action
//! rather than carrying it, so that credentials in action properties never sit in the broker.

use crate::event::ResourceEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngestedEvent {
    pub event: ResourceEvent,
    /// When the API accepted the event (ms since the epoch), for ingest→delivery latency.
    pub accepted_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryJob {
    pub event: ResourceEvent,
    pub accepted_at_ms: i64,
    /// The name of the action to run.
    pub action: String,
}
