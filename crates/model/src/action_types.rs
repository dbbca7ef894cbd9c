//! What the configuration needs to know about action types, without knowing the channels.
//!
//! The delivery crate implements [`ActionTypes`] with its channel registry, and the binary hands
//! it to the configuration store: every action is checked by the channel of its `type` when it
//! is saved, and the channel's parsed configuration ([`Prepared`]) is kept in the
//! [`crate::Catalog`] beside the action, built once per configuration change and read by every
//! delivery attempt. The router depends on this trait, never on delivery.

use crate::config::Action;
use std::any::Any;
use std::sync::Arc;

/// A channel's parsed configuration of one action; the channel downcasts it to its own type.
pub type Prepared = Arc<dyn Any + Send + Sync>;

/// Why an action cannot be used. The message names the property at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionTypeError {
    #[error("`type` `{action_type}` is not a supported action type; supported: {supported}")]
    Unknown {
        action_type: String,
        supported: String,
    },
    #[error("`properties.{property}` {problem}")]
    Property { property: String, problem: String },
}

impl ActionTypeError {
    pub fn property(property: impl Into<String>, problem: impl Into<String>) -> Self {
        ActionTypeError::Property {
            property: property.into(),
            problem: problem.into(),
        }
    }
}

/// The action types an installation delivers.
pub trait ActionTypes: Send + Sync {
    /// Checks `action`'s type and properties and parses them for its channel.
    fn prepare(&self, action: &Action) -> Result<Prepared, ActionTypeError>;

    /// Whether the URL in `property` of an action of `action_type` is itself a credential
    /// (a Slack or Teams webhook), so that its whole path is masked.
    fn url_is_credential(&self, action_type: &str, property: &str) -> bool;

    /// Whether `property` of an action of `action_type` is a secret although its name does not
    /// say so (a PagerDuty `routingKey`), so that it is masked whole.
    fn property_is_secret(&self, action_type: &str, property: &str) -> bool;
}

/// Accepts every action type and prepares nothing: for tools and tests that route events
/// without delivering them.
pub struct AnyActionType;

impl ActionTypes for AnyActionType {
    fn prepare(&self, _: &Action) -> Result<Prepared, ActionTypeError> {
        Ok(Arc::new(()))
    }

    fn url_is_credential(&self, _: &str, _: &str) -> bool {
        false
    }

    fn property_is_secret(&self, _: &str, _: &str) -> bool {
        false
    }
}
