//! The shared vocabulary of Tocsin: the ANS-compatible event model, the configuration model
//! (actions, conditions, subscriptions) and the messages that travel on the bus.
//!
//! Data flows through these types as: a producer's JSON is validated into a [`ResourceEvent`]
//! ([`validate`]), wrapped in an [`IngestedEvent`] on the bus, fanned out by the router into
//! [`DeliveryJob`]s, and finally recorded and served as a [`ConsumerEvent`].
//! Field names and field sets follow the SAP Alert Notification service API to the byte: the
//! official Java client rejects unknown fields, so nothing here serializes an extra one.

pub mod action_types;
pub mod alert;
pub mod bus;
pub mod catalog;
pub mod config;
pub mod consumer;
pub mod event;
pub mod intervals;
pub mod secrets;
pub mod validate;

pub use action_types::{ActionTypeError, ActionTypes, AnyActionType, Prepared};
pub use bus::{DeliveryJob, IngestedEvent};
pub use catalog::{Catalog, SharedCatalog};
pub use config::{
    Action, Condition, Configuration, EntityMeta, Predicate, PropertyKey, State, Subscription,
};
pub use consumer::{
    ConsumerEvent, ConsumerEventMetadata, ConsumerPagedResponse, DeliveryStatus, FailureReason,
    ResponseMetadata,
};
pub use event::{AffectedResource, Category, ResourceEvent, Severity, Tags};
pub use intervals::{CompiledTimeInterval, TimeInterval};
pub use validate::{parse_event, parse_events, ValidationError};
