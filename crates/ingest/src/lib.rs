//! Ingest: the HTTP sources that take alarms in, and the publisher that puts them on the bus.
//!
//! Each source (`sources::*`) is one module with one job: parse its wire format, normalize it
//! into [`model::ResourceEvent`]s and hand them to the [`EventPublisher`], answering the caller
//! only after the publisher reports them durably queued. Sources know nothing of each other.

pub mod publisher;
pub mod sources;

pub use publisher::EventPublisher;
