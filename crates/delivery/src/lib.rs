//! Delivery: runs each job's action through its channel, retries what can be retried, and
//! records how every (event, action) ended.
//!
//! Where a job goes, in order:
//! - [`worker`] takes it off the deliveries queue, keeps per-key order through the ordering
//!   [`lanes`], and runs it through its steps: attempt, then delivered, retry or give up;
//! - [`grouping`] holds back the jobs of actions that group their events (or that storm
//!   control slows down) and sends them as digests;
//! - [`channels`] make the attempt, one per action `type` (the registry lists them), each with
//!   the typed configuration its check built when the action was saved ([`properties`],
//!   [`templates`], [`http`], [`links`], [`lifecycle`] are their tools; [`outbound`] says
//!   where they may send);
//! - a failure is a [`failure::Failure`]; [`retry`] decides what follows it (the schedule is
//!   data, overridable per action);
//! - [`records`] keeps every attempt and every outcome, [`retention`] purges them, and the
//!   [`consumer_api`] (ANS) and the [`operator_api`] (attempts, redelivery) serve them;
//! - [`delivery_status`] turns the outcomes of actions that ask for it into events of their own;
//! - [`action_test`] sends a test event through one action, outside all of this.
//!
//! A job's queue message ([`ticket`]) is acked only after its next step is durable. Attempts
//! and outcomes are counted in the metrics (by channel, result and failure kind), with each
//! attempt's duration and, for deliveries, the time since the event was accepted.

pub mod action_test;
pub mod channels;
pub mod consumer_api;
pub mod delivery_status;
pub mod failure;
pub mod grouping;
pub mod http;
pub mod lanes;
pub mod lifecycle;
pub mod links;
pub mod operator_api;
pub use store::records;
pub mod outbound;
pub mod properties;
pub mod retention;
pub mod retry;
pub mod templates;
pub mod ticket;
pub mod worker;

pub use worker::{DeliveryConfig, DeliveryWorker};
