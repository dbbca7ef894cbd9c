//! Which actions an event goes to.
//!
//! A subscription fires for an event when it is enabled, not snoozed, and its conditions hold:
//! every `mandatory` condition must hold; the other conditions are grouped by property key, a
//! group holds when any of its conditions holds (OR), and every group must hold (AND). A
//! subscription without conditions fires for every event. The event goes to the enabled actions
//! of every subscription that fires, each action once.
//!
//! Conditions are compiled once per configuration: keys resolved to accessors, numbers parsed.

use model::config::{Predicate, State};
use model::{Catalog, ResourceEvent};
use std::collections::BTreeMap;

/// The event property a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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
    ResourceTag(String),
    Tag(String),
    /// A key no event has: it never has a value.
    Unknown(String),
}

impl PropertyKey {
    pub fn parse(key: &str) -> PropertyKey {
        match key {
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
                if let Some(tag) = key.strip_prefix("resource.tags.") {
                    PropertyKey::ResourceTag(tag.to_owned())
                } else if let Some(tag) = key.strip_prefix("tags.") {
                    PropertyKey::Tag(tag.to_owned())
                } else {
                    PropertyKey::Unknown(key.to_owned())
                }
            }
        }
    }

    /// The property's value in `event`, if it has one.
    pub fn value<'e>(&self, event: &'e ResourceEvent) -> Option<std::borrow::Cow<'e, str>> {
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
            PropertyKey::Unknown(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledCondition {
    key: PropertyKey,
    predicate: Predicate,
    value: String,
    number: Option<f64>,
}

impl CompiledCondition {
    fn holds(&self, event: &ResourceEvent) -> bool {
        let actual = self.key.value(event);
        let Some(actual) = actual.as_deref() else {
            // No value: only the negative predicates hold (nothing does not contain "x").
            return matches!(
                self.predicate,
                Predicate::NoValue
                    | Predicate::NotEquals
                    | Predicate::DoesNotContain
                    | Predicate::DoesNotStartWith
                    | Predicate::DoesNotEndWith
            );
        };
        let expected = self.value.as_str();
        let number = || actual.trim().parse::<f64>().ok().zip(self.number);
        match self.predicate {
            Predicate::Contains => actual.contains(expected),
            Predicate::DoesNotContain => !actual.contains(expected),
            Predicate::StartsWith => actual.starts_with(expected),
            Predicate::DoesNotStartWith => !actual.starts_with(expected),
            Predicate::EndsWith => actual.ends_with(expected),
            Predicate::DoesNotEndWith => !actual.ends_with(expected),
            Predicate::Equals => actual == expected,
            Predicate::NotEquals => actual != expected,
            Predicate::Any => !actual.is_empty(),
            Predicate::NoValue => actual.is_empty(),
            Predicate::LessThan => number().is_some_and(|(a, e)| a < e),
            Predicate::GreaterThan => number().is_some_and(|(a, e)| a > e),
            Predicate::NumberEquals => number().is_some_and(|(a, e)| a == e),
        }
    }
}

#[derive(Debug)]
struct CompiledSubscription {
    snooze_until: Option<i64>,
    mandatory: Vec<CompiledCondition>,
    groups: Vec<Vec<CompiledCondition>>,
    actions: Vec<String>,
}

impl CompiledSubscription {
    fn fires(&self, event: &ResourceEvent, now: i64) -> bool {
        self.snooze_until.is_none_or(|until| until <= now)
            && self.mandatory.iter().all(|c| c.holds(event))
            && self
                .groups
                .iter()
                .all(|group| group.iter().any(|c| c.holds(event)))
    }
}

/// A configuration compiled for matching.
#[derive(Debug, Default)]
pub struct Matcher {
    subscriptions: Vec<CompiledSubscription>,
}

impl Matcher {
    pub fn new(catalog: &Catalog) -> Self {
        let configuration = catalog.configuration();
        let conditions: std::collections::HashMap<&str, &model::Condition> = configuration
            .conditions
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        let subscriptions = configuration
            .subscriptions
            .iter()
            .filter(|s| s.state == State::Enabled)
            .map(|subscription| {
                let mut mandatory = Vec::new();
                let mut groups: BTreeMap<PropertyKey, Vec<CompiledCondition>> = BTreeMap::new();
                for condition in subscription
                    .conditions
                    .iter()
                    .filter_map(|n| conditions.get(n.as_str()))
                {
                    let value = condition.property_value.clone().unwrap_or_default();
                    let compiled = CompiledCondition {
                        key: PropertyKey::parse(&condition.property_key),
                        predicate: condition.predicate,
                        number: value.trim().parse().ok(),
                        value,
                    };
                    if condition.mandatory {
                        mandatory.push(compiled);
                    } else {
                        groups
                            .entry(compiled.key.clone())
                            .or_default()
                            .push(compiled);
                    }
                }
                let actions = subscription
                    .actions
                    .iter()
                    .filter(|name| {
                        catalog
                            .action(name)
                            .is_some_and(|a| a.state == State::Enabled)
                    })
                    .cloned()
                    .collect();
                CompiledSubscription {
                    snooze_until: subscription.snooze_timestamp,
                    mandatory,
                    groups: groups.into_values().collect(),
                    actions,
                }
            })
            .collect();
        Matcher { subscriptions }
    }

    /// The names of the actions `event` goes to, each once, in configuration order.
    pub fn select(&self, event: &ResourceEvent, now: i64) -> Vec<&str> {
        let mut selected: Vec<&str> = Vec::new();
        for subscription in self.subscriptions.iter().filter(|s| s.fires(event, now)) {
            for action in &subscription.actions {
                if !selected.contains(&action.as_str()) {
                    selected.push(action);
                }
            }
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Configuration;

    fn event(event_type: &str) -> ResourceEvent {
        serde_json::from_value(serde_json::json!({
            "id": "e1", "eventType": event_type, "severity": "WARNING", "category": "ALERT",
            "subject": "s", "body": "b", "eventTimestamp": 1,
            "resource": {"resourceName": "web-1", "resourceType": "vm"},
            "tags": {"ans:sourceEventId": "k1"}
        }))
        .unwrap()
    }

    fn catalog(json: serde_json::Value) -> Catalog {
        Catalog::new(serde_json::from_value::<Configuration>(json).unwrap()).unwrap()
    }

    #[test]
    fn event_type_equality_selects_enabled_actions_once() {
        let catalog = catalog(serde_json::json!({
            "actions": [
                {"name": "store", "type": "STORE", "state": "ENABLED"},
                {"name": "off", "type": "STORE", "state": "DISABLED"}
            ],
            "conditions": [
                {"name": "is-cpu", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "HighCPU"},
                {"name": "is-mem", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "LowMemory"}
            ],
            "subscriptions": [
                {"name": "a", "state": "ENABLED", "conditions": ["is-cpu", "is-mem"], "actions": ["store", "off"]},
                {"name": "b", "state": "ENABLED", "conditions": ["is-cpu"], "actions": ["store"]},
                {"name": "c", "state": "DISABLED", "conditions": [], "actions": ["store"]},
                {"name": "d", "state": "ENABLED", "conditions": [], "actions": ["store"], "snoozeTimestamp": 100}
            ]
        }));
        let matcher = Matcher::new(&catalog);
        assert_eq!(matcher.select(&event("HighCPU"), 50), ["store"]);
        assert_eq!(matcher.select(&event("LowMemory"), 50), ["store"]);
        assert!(
            matcher.select(&event("Other"), 50).is_empty(),
            "d is snoozed until 100"
        );
        assert_eq!(
            matcher.select(&event("Other"), 100),
            ["store"],
            "snooze over"
        );
    }
}
