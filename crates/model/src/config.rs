//! The configuration model (ANS §3): actions say *how* to deliver, conditions say *what* an
//! event must look like, subscriptions tie conditions to actions. The same types are the
//! import/export format, so a configuration exported from SAP ANS loads as is.

use crate::event::wire_enum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

wire_enum!(
    /// Whether an action or subscription takes part in routing.
    State { Enabled => "ENABLED", Disabled => "DISABLED" }
);

wire_enum!(
    /// How a condition compares an event property with its `propertyValue`.
    Predicate {
        Contains => "CONTAINS",
        DoesNotContain => "DOES_NOT_CONTAIN",
        StartsWith => "STARTS_WITH",
        DoesNotStartWith => "DOES_NOT_START_WITH",
        EndsWith => "ENDS_WITH",
        DoesNotEndWith => "DOES_NOT_END_WITH",
        Equals => "EQUALS",
        NotEquals => "NOT_EQUALS",
        Any => "ANY",
        NoValue => "NO_VALUE",
        LessThan => "LESS_THAN",
        GreaterThan => "GREATER_THAN",
        NumberEquals => "NUMBER_EQUALS",
    }
);

/// A value in an action's `properties`: ANS documents strings, but exports carry booleans and
/// numbers too (`"sslTrustAll": false`), and they must survive a round trip unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Flag(bool),
    Number(serde_json::Number),
}

impl PropertyValue {
    /// The value as text, whatever its JSON type.
    pub fn to_text(&self) -> String {
        match self {
            PropertyValue::Text(text) => text.clone(),
            PropertyValue::Flag(flag) => flag.to_string(),
            PropertyValue::Number(number) => number.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub name: String,
    #[serde(rename = "type")]
    pub action_type: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertyValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_action: Option<String>,
    /// Seconds to keep retrying before switching to the fallback action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_time: Option<u64>,
    /// Seconds after which an undeliverable event is given up on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_delivery_status: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub name: String,
    pub property_key: String,
    pub predicate: Predicate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default)]
    pub mandatory: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub name: String,
    pub state: State,
    #[serde(default)]
    pub conditions: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
    /// Epoch seconds until which the subscription is snoozed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snooze_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
}

/// The import/export document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
}

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    #[error("{kind} `{name}` is defined twice")]
    Duplicate { kind: &'static str, name: String },
    #[error("subscription `{subscription}` names {kind} `{name}`, which does not exist")]
    Missing {
        subscription: String,
        kind: &'static str,
        name: String,
    },
}

impl Configuration {
    /// Checks that names are unique and that subscriptions only name what exists.
    pub fn check(&self) -> Result<(), ConfigurationError> {
        fn unique<'a>(
            kind: &'static str,
            names: impl Iterator<Item = &'a str>,
        ) -> Result<std::collections::HashSet<&'a str>, ConfigurationError> {
            let mut seen = std::collections::HashSet::new();
            for name in names {
                if !seen.insert(name) {
                    return Err(ConfigurationError::Duplicate {
                        kind,
                        name: name.to_owned(),
                    });
                }
            }
            Ok(seen)
        }
        let actions = unique("action", self.actions.iter().map(|a| a.name.as_str()))?;
        let conditions = unique("condition", self.conditions.iter().map(|c| c.name.as_str()))?;
        unique(
            "subscription",
            self.subscriptions.iter().map(|s| s.name.as_str()),
        )?;
        for subscription in &self.subscriptions {
            let references = (subscription
                .conditions
                .iter()
                .map(|n| ("condition", n, &conditions)))
            .chain(subscription.actions.iter().map(|n| ("action", n, &actions)));
            for (kind, name, known) in references {
                if !known.contains(name.as_str()) {
                    return Err(ConfigurationError::Missing {
                        subscription: subscription.name.clone(),
                        kind,
                        name: name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
