//! What the consumer API (matched-events, undelivered-events) returns (ANS §2).

use crate::event::{wire_enum, AffectedResource, Category, ResourceEvent, Severity, Tags};
use serde::{Deserialize, Serialize};
use std::fmt;

wire_enum!(
    /// How an (event, action) pair ended: stored by a STORE action, or given up on.
    DeliveryStatus { Matched => "MATCHED", Undelivered => "UNDELIVERED" }
);

/// One reason a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReason {
    /// The destination's HTTP status, or a documented Tocsin code for failures without one.
    pub code: i32,
    pub reason: String,
    /// Seconds since the epoch.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerEventMetadata {
    /// When Tocsin stored the record, in seconds since the epoch.
    pub cache_time: i64,
    /// The name of the action the record is about (ANS puts the action name here too).
    pub affected_action_id: String,
    pub delivery_status: DeliveryStatus,
    /// Only present when the query asked for `include=FAILURE_REASON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reasons: Option<Vec<FailureReason>>,
}

/// A stored event: the resource event plus where it was processed and how delivery ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerEvent {
    pub id: String,
    pub event_type: String,
    pub severity: Severity,
    pub category: Category,
    pub subject: String,
    pub body: String,
    pub resource: AffectedResource,
    pub event_timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    pub region: String,
    pub region_type: String,
    pub metadata: ConsumerEventMetadata,
}

impl ConsumerEvent {
    pub fn new(
        event: ResourceEvent,
        region: String,
        region_type: String,
        metadata: ConsumerEventMetadata,
    ) -> Self {
        let ResourceEvent {
            id,
            event_type,
            severity,
            category,
            subject,
            body,
            resource,
            event_timestamp,
            priority,
            tags,
        } = event;
        ConsumerEvent {
            id,
            event_type,
            severity,
            category,
            subject,
            body,
            resource,
            event_timestamp,
            priority,
            tags,
            region,
            region_type,
            metadata,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMetadata {
    pub page: u64,
    pub page_size: u64,
    pub total_pages: u64,
    pub total_results_count: u64,
}

/// The paged envelope of every consumer API answer, by-id variants included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerPagedResponse {
    pub response_metadata: ResponseMetadata,
    pub results: Vec<ConsumerEvent>,
}
