//! Channels: one per action `type`, each in its own file, each implementing [`Channel`].
//! Adding one means writing the file and registering it in [`Channels::open`]; nothing else.
//!
//! A channel gets the job (the event) and the action (its properties), makes one attempt and
//! says how it ended: [`Outcome::Delivered`], or a [`Failure`] with a code, a reason fit for
//! the undelivered record (never a secret), and whether trying again can help. Channels share
//! their plumbing through [`Tools`]: the HTTP client with its per-destination limits
//! ([`crate::http`]), the template engine ([`crate::templates`]), the action-property readers
//! ([`crate::properties`]) and the map from alert keys to what a destination created for them
//! ([`crate::links`]).

mod b2c;
mod email;
mod slack;
mod slack_threaded;
mod store;
mod teams;
mod webhook;

pub use b2c::B2cIncidentChannel;
pub use email::EmailChannel;
pub use slack::SlackChannel;
pub use slack_threaded::SlackThreadedChannel;
pub use store::StoreChannel;
pub use teams::TeamsChannel;
pub use webhook::WebhookChannel;

use crate::http::Http;
use crate::links::Links;
use crate::templates::Templates;
use async_trait::async_trait;
use model::{Action, DeliveryJob};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Failure code: the job names an action that is no longer configured.
pub const CODE_ACTION_MISSING: i32 = 901;
/// Failure code: no channel serves the action's type.
pub const CODE_UNSUPPORTED_TYPE: i32 = 902;
/// Failure code: Tocsin could not record the outcome locally.
pub const CODE_LOCAL_STORAGE: i32 = 903;
/// Failure code: the destination could not be reached, or the connection broke.
pub const CODE_CONNECTION: i32 = 904;
/// Failure code: no answer in time (or no free slot for the destination in that time).
pub const CODE_TIMEOUT: i32 = 905;
/// Failure code: the action's properties are missing, invalid, or a template does not render.
pub const CODE_BAD_ACTION: i32 = 906;
/// Failure code: the destination answered with success but its answer reports an error, or
/// cannot be used (Slack `ok:false`, an incident created without an id).
pub const CODE_BAD_ANSWER: i32 = 907;
/// Failure code: the destination's circuit is open — it failed too often in a row, so Tocsin
/// does not try it again until the next probe.
pub const CODE_CIRCUIT_OPEN: i32 = 908;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    Failed(Failure),
}

impl From<Result<(), Failure>> for Outcome {
    fn from(result: Result<(), Failure>) -> Self {
        match result {
            Ok(()) => Outcome::Delivered,
            Err(failure) => Outcome::Failed(failure),
        }
    }
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The destination's status (HTTP, or SMTP for email), or one of the `CODE_*` constants.
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

    /// Retryable, after `after` when the destination said how long to wait.
    pub fn transient_after(code: i32, reason: impl Into<String>, after: Option<Duration>) -> Self {
        Failure {
            code,
            reason: reason.into(),
            retry: Some(after),
        }
    }

    /// The action is configured wrongly: permanent until someone fixes it.
    pub fn bad_action(reason: impl Into<String>) -> Self {
        Failure::permanent(CODE_BAD_ACTION, reason)
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

/// The `[channels]` settings: how Tocsin treats the destinations it talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// Requests in flight to one destination (scheme, host and port) at most; further jobs for
    /// it wait, so that one slow endpoint cannot take every worker.
    pub max_in_flight_per_destination: usize,
    /// Longest wait for an answer (and for a free slot at the destination), unless an action
    /// sets its own.
    pub request_timeout_ms: u64,
    /// Consecutive failures (no answer, 5xx, 429) after which a destination's circuit opens:
    /// attempts to it fail at once, without a request, until the cooldown has passed.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit stays open before one probe request may test the destination.
    pub circuit_cooldown_ms: u64,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            max_in_flight_per_destination: 8,
            request_timeout_ms: 15_000,
            circuit_failure_threshold: 5,
            circuit_cooldown_ms: 30_000,
        }
    }
}

/// What channels share: one HTTP client, one template engine, one link map.
#[derive(Clone)]
pub struct Tools {
    pub http: Arc<Http>,
    pub templates: Arc<Templates>,
    pub links: Links,
}

impl Tools {
    /// Opens the link map in `data_dir` (`links.db`) and sets up HTTP per `settings`.
    pub fn open(
        data_dir: &Path,
        settings: &ChannelSettings,
    ) -> Result<Self, storage::StorageError> {
        Ok(Tools {
            http: Arc::new(Http::new(settings)),
            templates: Arc::new(Templates::new()),
            links: Links::open(&data_dir.join("links.db"))?,
        })
    }
}

/// The channels by action type.
#[derive(Clone)]
pub struct Channels {
    by_type: HashMap<&'static str, Arc<dyn Channel>>,
    http: Arc<Http>,
}

impl Channels {
    /// Every channel, sharing the tools opened on `data_dir` with `settings`.
    pub fn open(
        records: crate::records::RecordStore,
        data_dir: &Path,
        settings: &ChannelSettings,
    ) -> Result<Self, storage::StorageError> {
        let tools = Tools::open(data_dir, settings)?;
        let http = Arc::clone(&tools.http);
        let all: Vec<Arc<dyn Channel>> = vec![
            Arc::new(StoreChannel::new(records)),
            Arc::new(WebhookChannel::new(tools.clone())),
            Arc::new(SlackChannel::new(tools.clone())),
            Arc::new(SlackThreadedChannel::new(tools.clone())),
            Arc::new(TeamsChannel::new(tools.clone())),
            Arc::new(EmailChannel::new(tools.clone())),
            Arc::new(B2cIncidentChannel::new(tools)),
        ];
        Ok(Channels {
            by_type: all.into_iter().map(|c| (c.action_type(), c)).collect(),
            http,
        })
    }

    /// How many destinations have an open circuit, and how many a half-open one (for metrics:
    /// the destinations themselves are URLs, never a label).
    pub fn circuit_counts(&self) -> (u64, u64) {
        use crate::http::CircuitState;
        let states = self.http.circuit_states();
        let count = |wanted| states.iter().filter(|(_, s)| *s == wanted).count() as u64;
        (count(CircuitState::Open), count(CircuitState::HalfOpen))
    }

    pub fn get(&self, action_type: &str) -> Option<&Arc<dyn Channel>> {
        self.by_type.get(action_type)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tools on a fresh data directory (kept alive by the returned guard), 5 s timeout.
    pub fn tools() -> (Tools, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let settings = ChannelSettings {
            max_in_flight_per_destination: 4,
            request_timeout_ms: 5000,
            ..ChannelSettings::default()
        };
        (Tools::open(dir.path(), &settings).unwrap(), dir)
    }

    pub fn action(name: &str, action_type: &str, properties: serde_json::Value) -> Action {
        serde_json::from_value(serde_json::json!({
            "name": name, "type": action_type, "state": "ENABLED", "properties": properties
        }))
        .unwrap()
    }

    /// A FATAL alert about `web-1` with `tags`.
    pub fn job(tags: serde_json::Value) -> DeliveryJob {
        job_with_id("0196a1b2-0000-7000-8000-000000000001", tags)
    }

    pub fn job_with_id(id: &str, tags: serde_json::Value) -> DeliveryJob {
        serde_json::from_value(serde_json::json!({
            "event": {
                "id": id, "eventType": "HighCPU", "severity": "FATAL", "category": "ALERT",
                "subject": "CPU above 90%", "body": "CPU has been above 90% for 5 minutes",
                "eventTimestamp": 1_700_000_000,
                "resource": {"resourceName": "web-1", "resourceType": "vm"},
                "tags": tags
            },
            "acceptedAtMs": 0,
            "action": "a"
        }))
        .unwrap()
    }
}
