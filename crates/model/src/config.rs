//! The configuration model (ANS §3): actions say *how* to deliver, conditions say *what* an
//! event must look like, subscriptions tie conditions to actions. The same types are the
//! import/export format, so a configuration exported from SAP ANS loads as is.

use crate::action_types::ActionTypeError;
use crate::event::wire_enum;
use crate::intervals::TimeInterval;
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

/// What the server sets on every entity: an id, and when it was created and last changed
/// (epoch seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<i64>,
}

impl EntityMeta {
    /// The metadata after a change at `now`: the id and creation time of `previous` are kept.
    pub fn stamped(
        previous: Option<&EntityMeta>,
        now: i64,
        new_id: impl FnOnce() -> String,
    ) -> Self {
        EntityMeta {
            id: previous
                .and_then(|p| p.id.clone())
                .or_else(|| Some(new_id())),
            time_created: previous.and_then(|p| p.time_created).or(Some(now)),
            last_modified: Some(now),
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
    #[serde(flatten)]
    pub meta: EntityMeta,
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
    #[serde(flatten)]
    pub meta: EntityMeta,
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
    /// Tocsin extension: names of time intervals during which the subscription selects nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mute_time_intervals: Vec<String>,
    /// Tocsin extension: names of time intervals outside all of which the subscription selects
    /// nothing; empty means always active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_time_intervals: Vec<String>,
    #[serde(flatten)]
    pub meta: EntityMeta,
}

/// The import/export document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Configuration {
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    /// Tocsin extension, left out when empty so that an ANS document round-trips unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_intervals: Vec<TimeInterval>,
}

/// Documented limits on what a configuration may hold (docs/src/routing.md lists them): beyond
/// them a save is refused, so that a pasted log or a runaway script cannot bloat every snapshot.
pub mod limits {
    /// Characters in the name of an action, condition or subscription.
    pub const NAME: usize = 128;
    /// Characters in a description.
    pub const DESCRIPTION: usize = 1_024;
    /// Labels on one entity, and characters in one label.
    pub const LABELS: usize = 32;
    pub const LABEL: usize = 128;
    /// Properties of one action.
    pub const PROPERTIES: usize = 100;
    /// Characters in a property key.
    pub const PROPERTY_KEY: usize = 128;
    /// Characters in a property value (templates included).
    pub const PROPERTY_VALUE: usize = 16_384;
    /// Characters in a condition's `propertyValue`.
    pub const CONDITION_VALUE: usize = 1_024;
}

/// The event property a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PropertyKey {
    EventType,
    Severity,
    Category,
    Subject,
    Body,
    Priority,
    ResourceName,
    ResourceType,
    ResourceInstance,
    /// `resource.tags.<key>`
    ResourceTag(String),
    /// `tags.<key>`, including the reserved `ans:` tags.
    Tag(String),
}

impl PropertyKey {
    /// Parses a condition's `propertyKey`; `None` for a key no event has.
    pub fn parse(key: &str) -> Option<PropertyKey> {
        Some(match key {
            "eventType" => PropertyKey::EventType,
            "severity" => PropertyKey::Severity,
            "category" => PropertyKey::Category,
            "subject" => PropertyKey::Subject,
            "body" => PropertyKey::Body,
            "priority" => PropertyKey::Priority,
            "resource.resourceName" => PropertyKey::ResourceName,
            "resource.resourceType" => PropertyKey::ResourceType,
            "resource.resourceInstance" => PropertyKey::ResourceInstance,
            _ => {
                if let Some(tag) = key.strip_prefix("resource.tags.").filter(|t| !t.is_empty()) {
                    PropertyKey::ResourceTag(tag.to_owned())
                } else if let Some(tag) = key.strip_prefix("tags.").filter(|t| !t.is_empty()) {
                    PropertyKey::Tag(tag.to_owned())
                } else {
                    return None;
                }
            }
        })
    }

    /// The property's value in `event`, if it has one.
    pub fn value<'e>(&self, event: &'e crate::ResourceEvent) -> Option<std::borrow::Cow<'e, str>> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            PropertyKey::EventType => Some(Borrowed(&event.event_type)),
            PropertyKey::Severity => Some(Borrowed(event.severity.as_str())),
            PropertyKey::Category => Some(Borrowed(event.category.as_str())),
            PropertyKey::Subject => Some(Borrowed(&event.subject)),
            PropertyKey::Body => Some(Borrowed(&event.body)),
            PropertyKey::Priority => event.priority.map(|p| Owned(p.to_string())),
            PropertyKey::ResourceName => Some(Borrowed(&event.resource.resource_name)),
            PropertyKey::ResourceType => Some(Borrowed(&event.resource.resource_type)),
            PropertyKey::ResourceInstance => {
                event.resource.resource_instance.as_deref().map(Borrowed)
            }
            PropertyKey::ResourceTag(tag) => event
                .resource
                .tags
                .as_ref()?
                .get(tag)
                .map(|v| Borrowed(v.as_str())),
            PropertyKey::Tag(tag) => event.tag(tag).map(Borrowed),
        }
    }
}

impl Predicate {
    /// Whether the predicate compares numbers.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Predicate::LessThan | Predicate::GreaterThan | Predicate::NumberEquals
        )
    }

    /// Whether the predicate needs a `propertyValue`.
    pub fn needs_value(self) -> bool {
        !matches!(self, Predicate::Any | Predicate::NoValue)
    }
}

/// Why a configuration cannot be used. Each message names the entity and field at fault.
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
    #[error("{kind} `{name}`: `{field}` {problem}")]
    Invalid {
        kind: &'static str,
        name: String,
        field: String,
        problem: String,
    },
    /// The action's channel refused its type or properties.
    #[error("action `{name}`: {error}")]
    Action {
        name: String,
        error: ActionTypeError,
    },
}

impl ConfigurationError {
    pub(crate) fn invalid(
        kind: &'static str,
        name: &str,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigurationError::Invalid {
            kind,
            name: name.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

pub(crate) fn check_name(kind: &'static str, name: &str) -> Result<(), ConfigurationError> {
    if name.trim().is_empty() {
        return Err(ConfigurationError::invalid(
            kind,
            name,
            "name",
            "must not be empty",
        ));
    }
    if name.chars().count() > limits::NAME {
        return Err(ConfigurationError::invalid(
            kind,
            &shortened(name),
            "name",
            format!("is longer than {} characters", limits::NAME),
        ));
    }
    if name.contains(['/', '?', '#']) {
        return Err(ConfigurationError::invalid(
            kind,
            name,
            "name",
            "must not contain `/`, `?` or `#` (it is part of the URL)",
        ));
    }
    Ok(())
}

/// A name cut for a message, so that a refused 10,000-character name is not echoed whole.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Checks what every entity has besides its name: the description and the labels.
fn check_text_fields(
    kind: &'static str,
    name: &str,
    description: Option<&str>,
    labels: &[String],
) -> Result<(), ConfigurationError> {
    let too_long = |field: &str, limit: usize| {
        ConfigurationError::invalid(
            kind,
            name,
            field,
            format!("is longer than {limit} characters"),
        )
    };
    if description.is_some_and(|d| d.chars().count() > limits::DESCRIPTION) {
        return Err(too_long("description", limits::DESCRIPTION));
    }
    if labels.len() > limits::LABELS {
        return Err(ConfigurationError::invalid(
            kind,
            name,
            "labels",
            format!("has more than {} labels", limits::LABELS),
        ));
    }
    if let Some(i) = labels
        .iter()
        .position(|l| l.chars().count() > limits::LABEL)
    {
        return Err(too_long(&format!("labels[{i}]"), limits::LABEL));
    }
    Ok(())
}

impl Action {
    /// Checks the action on its own, as far as the model knows it: its name, sizes and limits.
    /// Its type and properties are checked by its channel ([`crate::ActionTypes`]), its fallback with
    /// the whole configuration.
    pub fn check(&self) -> Result<(), ConfigurationError> {
        check_name("action", &self.name)?;
        check_text_fields(
            "action",
            &self.name,
            self.description.as_deref(),
            &self.labels,
        )?;
        if self.properties.len() > limits::PROPERTIES {
            return Err(ConfigurationError::invalid(
                "action",
                &self.name,
                "properties",
                format!("has more than {} properties", limits::PROPERTIES),
            ));
        }
        for (key, value) in &self.properties {
            if key.chars().count() > limits::PROPERTY_KEY {
                return Err(ConfigurationError::invalid(
                    "action",
                    &self.name,
                    format!("properties.{}", shortened(key)),
                    format!("is a key longer than {} characters", limits::PROPERTY_KEY),
                ));
            }
            if value.to_text().chars().count() > limits::PROPERTY_VALUE {
                return Err(ConfigurationError::invalid(
                    "action",
                    &self.name,
                    format!("properties.{key}"),
                    format!("is longer than {} characters", limits::PROPERTY_VALUE),
                ));
            }
        }
        Ok(())
    }
}

impl Condition {
    pub fn check(&self) -> Result<(), ConfigurationError> {
        check_name("condition", &self.name)?;
        check_text_fields(
            "condition",
            &self.name,
            self.description.as_deref(),
            &self.labels,
        )?;
        if self
            .property_value
            .as_ref()
            .is_some_and(|v| v.chars().count() > limits::CONDITION_VALUE)
        {
            return Err(ConfigurationError::invalid(
                "condition",
                &self.name,
                "propertyValue",
                format!("is longer than {} characters", limits::CONDITION_VALUE),
            ));
        }
        if PropertyKey::parse(&self.property_key).is_none() {
            return Err(ConfigurationError::invalid(
                "condition",
                &self.name,
                "propertyKey",
                format!(
                    "`{}` is not an event property; use eventType, severity, category, subject, \
                     body, priority, resource.resourceName, resource.resourceType, \
                     resource.resourceInstance, resource.tags.<key> or tags.<key>",
                    self.property_key
                ),
            ));
        }
        let value = self.property_value.as_deref().unwrap_or_default();
        if self.predicate.needs_value() && self.property_value.is_none() {
            return Err(ConfigurationError::invalid(
                "condition",
                &self.name,
                "propertyValue",
                format!("is required with {}", self.predicate),
            ));
        }
        if self.predicate.is_numeric()
            && value.trim().parse::<f64>().map_or(true, |n| !n.is_finite())
        {
            return Err(ConfigurationError::invalid(
                "condition",
                &self.name,
                "propertyValue",
                format!("must be a number with {}, got `{value}`", self.predicate),
            ));
        }
        Ok(())
    }
}

impl Subscription {
    pub fn check(&self) -> Result<(), ConfigurationError> {
        check_name("subscription", &self.name)?;
        check_text_fields(
            "subscription",
            &self.name,
            self.description.as_deref(),
            &self.labels,
        )
    }
}

impl Configuration {
    /// Checks every entity on its own, that names are unique, that subscriptions name only what
    /// exists, and that fallback actions exist and never lead back to where they started. The
    /// actions' types and properties are their channels' to check ([`crate::Catalog::new`]).
    pub fn check_structure(&self) -> Result<(), ConfigurationError> {
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
        self.actions.iter().try_for_each(Action::check)?;
        self.conditions.iter().try_for_each(Condition::check)?;
        self.subscriptions
            .iter()
            .try_for_each(Subscription::check)?;
        let actions = unique("action", self.actions.iter().map(|a| a.name.as_str()))?;
        let conditions = unique("condition", self.conditions.iter().map(|c| c.name.as_str()))?;
        for interval in &self.time_intervals {
            interval.compile()?;
        }
        let intervals = unique(
            "time interval",
            self.time_intervals.iter().map(|i| i.name.as_str()),
        )?;
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
            let named = [
                ("muteTimeIntervals", &subscription.mute_time_intervals),
                ("activeTimeIntervals", &subscription.active_time_intervals),
            ];
            for (field, names) in named {
                if let Some(name) = names.iter().find(|n| !intervals.contains(n.as_str())) {
                    return Err(ConfigurationError::invalid(
                        "subscription",
                        &subscription.name,
                        field,
                        format!("names time interval `{name}`, which does not exist"),
                    ));
                }
            }
        }
        self.check_fallbacks()
    }

    fn check_fallbacks(&self) -> Result<(), ConfigurationError> {
        let fallback_of: std::collections::HashMap<&str, &str> = self
            .actions
            .iter()
            .filter_map(|a| Some((a.name.as_str(), a.fallback_action.as_deref()?)))
            .collect();
        for action in &self.actions {
            let mut chain = vec![action.name.as_str()];
            let mut current = action.name.as_str();
            while let Some(&next) = fallback_of.get(current) {
                if !self.actions.iter().any(|a| a.name == next) {
                    return Err(ConfigurationError::invalid(
                        "action",
                        current,
                        "fallbackAction",
                        format!("names `{next}`, which does not exist"),
                    ));
                }
                if chain.contains(&next) {
                    chain.push(next);
                    return Err(ConfigurationError::invalid(
                        "action",
                        &action.name,
                        "fallbackAction",
                        format!("loops: {}", chain.join(" → ")),
                    ));
                }
                chain.push(next);
                current = next;
            }
        }
        Ok(())
    }
}
