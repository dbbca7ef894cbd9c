//! Channels: one per action `type`, each in its own file, each implementing [`Channel`].
//! Adding one means writing the file and registering it in [`Channels::new`]; nothing else.

mod store;

pub use store::StoreChannel;

use async_trait::async_trait;
use model::{Action, DeliveryJob};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Failure code: the job names an action that is no longer configured.
pub const CODE_ACTION_MISSING: i32 = 901;
/// Failure code: no channel serves the action's type.
pub const CODE_UNSUPPORTED_TYPE: i32 = 902;
/// Failure code: Tocsin could not record the outcome locally.
pub const CODE_LOCAL_STORAGE: i32 = 903;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    Failed(Failure),
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The destination's HTTP status, or one of the `CODE_*` constants.
    pub code: i32,
    pub reason: String,
    /// `None`: permanent. `Some(None)`: retry on the usual schedule. `Some(Some(d))`: the
    /// destination asked for `d`.
    pub retry: Option<Option<Duration>>,
}

impl Failure {
    pub fn permanent(code: i32, reason: impl Into<String>) -> Self {
        Failure {
            code,
            reason: reason.into(),
            retry: None,
        }
    }

    pub fn transient(code: i32, reason: impl Into<String>) -> Self {
        Failure {
            code,
            reason: reason.into(),
            retry: Some(None),
        }
    }
}

/// Delivers a job for an action of one type.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The action `type` this channel serves, e.g. `STORE`.
    fn action_type(&self) -> &'static str;

    /// Makes one attempt.
    async fn deliver(&self, job: &DeliveryJob, action: &Action) -> Outcome;
}

/// The channels by action type.
#[derive(Clone)]
pub struct Channels {
    by_type: HashMap<&'static str, Arc<dyn Channel>>,
}

impl Channels {
    pub fn new(records: crate::records::RecordStore) -> Self {
        let all: Vec<Arc<dyn Channel>> = vec![Arc::new(StoreChannel::new(records))];
        Channels {
            by_type: all.into_iter().map(|c| (c.action_type(), c)).collect(),
        }
    }

    pub fn get(&self, action_type: &str) -> Option<&Arc<dyn Channel>> {
        self.by_type.get(action_type)
    }
}
