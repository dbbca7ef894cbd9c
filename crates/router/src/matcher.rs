//! Which actions an event goes to.
//!
//! The rule: a subscription fires for an event when it is enabled, not snoozed, and its
//! conditions hold — every `mandatory` condition must hold; the other conditions are grouped by
//! property key, a group holds when any of its conditions holds (OR), and every group must hold
//! (AND). A subscription without conditions fires for every event. The event goes to the
//! enabled actions of every subscription that fires, each action once. A subscription whose
//! conditions hold but that is muted at the event's acceptance — one of its `muteTimeIntervals`
//! contains that instant, or none of its `activeTimeIntervals` does — does not fire; it is
//! reported as muted instead.
//!
//! How it is fast: a configuration is compiled once. Each distinct condition is evaluated once
//! per event however many subscriptions share it; `EQUALS` conditions — the common case — are
//! not evaluated at all but looked up by the event's value in a hash index; the event's
//! properties are read once per key. Subscriptions then only test bits. Time intervals are
//! parsed once per configuration, and asked about an instant only for a subscription that names
//! them and whose conditions hold.

use model::config::{Predicate, PropertyKey, State};
use model::{Catalog, CompiledTimeInterval, ResourceEvent};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// A condition compiled for evaluation: which property, and how it compares.
#[derive(Debug, Clone)]
struct Test {
    key: usize,
    comparison: Comparison,
}

/// How a condition compares a property's value: its predicate and `propertyValue`, the value
/// read as a number once. Silences compare event properties with it too.
#[derive(Debug, Clone)]
pub(crate) struct Comparison {
    predicate: Predicate,
    value: String,
    number: Option<f64>,
}

impl Comparison {
    pub(crate) fn new(predicate: Predicate, value: String) -> Self {
        let number = value.trim().parse().ok();
        Comparison {
            predicate,
            value,
            number,
        }
    }

    /// Whether the property's value (`None`: the event has none) satisfies the predicate.
    pub(crate) fn holds(&self, actual: Option<&str>) -> bool {
        let Some(actual) = actual else {
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
        let numbers = || actual.trim().parse::<f64>().ok().zip(self.number);
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
            Predicate::LessThan => numbers().is_some_and(|(a, e)| a < e),
            Predicate::GreaterThan => numbers().is_some_and(|(a, e)| a > e),
            Predicate::NumberEquals => numbers().is_some_and(|(a, e)| a == e),
        }
    }
}

#[derive(Debug)]
struct CompiledSubscription {
    name: String,
    snooze_until: Option<i64>,
    /// Condition slots that must all hold.
    mandatory: Vec<usize>,
    /// Groups of condition slots; each group needs one that holds.
    groups: Vec<Vec<usize>>,
    /// Indexes into `Matcher::actions`.
    actions: Vec<usize>,
    /// Muted while any of these contains the instant.
    mute: Vec<Arc<CompiledTimeInterval>>,
    /// When not empty, muted while none of these contains the instant.
    active: Vec<Arc<CompiledTimeInterval>>,
}

impl CompiledSubscription {
    /// Whether the subscription is muted at `at_ms` (epoch milliseconds).
    fn muted_at(&self, at_ms: i64) -> bool {
        self.mute.iter().any(|i| i.contains(at_ms))
            || (!self.active.is_empty() && !self.active.iter().any(|i| i.contains(at_ms)))
    }
}

/// A configuration compiled for matching.
#[derive(Debug, Default)]
pub struct Matcher {
    /// The distinct property keys conditions look at.
    keys: Vec<PropertyKey>,
    /// Conditions that need evaluating (every predicate but EQUALS), with their slot.
    tests: Vec<(usize, Test)>,
    /// EQUALS conditions, per key: value → the slots that hold when the event has that value.
    equals: Vec<HashMap<String, Vec<usize>>>,
    /// Number of condition slots.
    slots: usize,
    subscriptions: Vec<CompiledSubscription>,
    actions: Vec<String>,
}

impl Matcher {
    pub fn new(catalog: &Catalog) -> Self {
        let configuration = catalog.configuration();
        let mut matcher = Matcher::default();
        let mut key_index: HashMap<PropertyKey, usize> = HashMap::new();
        let mut slot_of_condition: HashMap<&str, usize> = HashMap::new();
        for condition in &configuration.conditions {
            // The configuration was checked: every key parses.
            let Some(key) = PropertyKey::parse(&condition.property_key) else {
                continue;
            };
            let key = *key_index.entry(key.clone()).or_insert_with(|| {
                matcher.keys.push(key);
                matcher.equals.push(HashMap::new());
                matcher.keys.len() - 1
            });
            let slot = matcher.slots;
            matcher.slots += 1;
            slot_of_condition.insert(&condition.name, slot);
            let value = condition.property_value.clone().unwrap_or_default();
            if condition.predicate == Predicate::Equals {
                matcher.equals[key].entry(value).or_default().push(slot);
            } else {
                let test = Test {
                    key,
                    comparison: Comparison::new(condition.predicate, value),
                };
                matcher.tests.push((slot, test));
            }
        }
        // The configuration was checked: every interval compiles.
        let intervals: HashMap<&str, Arc<CompiledTimeInterval>> = configuration
            .time_intervals
            .iter()
            .filter_map(|i| Some((i.name.as_str(), Arc::new(i.compile().ok()?))))
            .collect();
        let resolve = |names: &[String]| -> Vec<Arc<CompiledTimeInterval>> {
            names
                .iter()
                .filter_map(|n| intervals.get(n.as_str()).cloned())
                .collect()
        };
        let mut action_index: HashMap<&str, usize> = HashMap::new();
        let conditions: HashMap<&str, &model::Condition> = configuration
            .conditions
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect();
        for subscription in configuration
            .subscriptions
            .iter()
            .filter(|s| s.state == State::Enabled)
        {
            let mut compiled = CompiledSubscription {
                name: subscription.name.clone(),
                snooze_until: subscription.snooze_timestamp,
                mandatory: Vec::new(),
                groups: Vec::new(),
                actions: Vec::new(),
                mute: resolve(&subscription.mute_time_intervals),
                active: resolve(&subscription.active_time_intervals),
            };
            let mut group_of_key: HashMap<&str, usize> = HashMap::new();
            for name in &subscription.conditions {
                let (Some(&slot), Some(condition)) = (
                    slot_of_condition.get(name.as_str()),
                    conditions.get(name.as_str()),
                ) else {
                    continue;
                };
                if condition.mandatory {
                    compiled.mandatory.push(slot);
                } else {
                    let group = *group_of_key
                        .entry(condition.property_key.as_str())
                        .or_insert_with(|| {
                            compiled.groups.push(Vec::new());
                            compiled.groups.len() - 1
                        });
                    compiled.groups[group].push(slot);
                }
            }
            for name in &subscription.actions {
                if catalog
                    .action(name)
                    .is_some_and(|a| a.state == State::Enabled)
                {
                    let index = *action_index.entry(name.as_str()).or_insert_with(|| {
                        matcher.actions.push(name.clone());
                        matcher.actions.len() - 1
                    });
                    compiled.actions.push(index);
                }
            }
            if !compiled.actions.is_empty() {
                matcher.subscriptions.push(compiled);
            }
        }
        matcher
    }

    /// The names of the actions `event` goes to, each once, with `now` (epoch seconds) as both
    /// the time snoozes and time intervals are compared with.
    pub fn select(&self, event: &ResourceEvent, now: i64) -> Vec<&str> {
        self.select_reporting(event, now, now * 1000, |_| {}, |_| {})
    }

    /// The subscriptions that can fire (enabled, with an enabled action), in the order
    /// [`Matcher::select_reporting`] numbers them.
    pub fn subscription_names(&self) -> Vec<&str> {
        self.subscriptions.iter().map(|s| s.name.as_str()).collect()
    }

    /// Whether subscription `number` names time intervals: only such a one is ever muted.
    pub fn timed(&self, number: usize) -> bool {
        let subscription = &self.subscriptions[number];
        !subscription.mute.is_empty() || !subscription.active.is_empty()
    }

    /// The name of subscription `number`.
    pub fn subscription_name(&self, number: usize) -> &str {
        &self.subscriptions[number].name
    }

    /// The number of the subscription called `name`, if it can fire.
    pub fn subscription_number(&self, name: &str) -> Option<usize> {
        self.subscriptions.iter().position(|s| s.name == name)
    }

    /// The enabled actions of subscription `number`.
    pub fn actions_of(&self, number: usize) -> impl Iterator<Item = &str> {
        self.subscriptions[number]
            .actions
            .iter()
            .map(|&action| self.actions[action].as_str())
    }

    /// Whether subscription `number` is muted at `at_ms` (epoch milliseconds).
    pub fn muted_at(&self, number: usize, at_ms: i64) -> bool {
        self.subscriptions[number].muted_at(at_ms)
    }

    /// [`Matcher::select`] with time intervals compared with `at_ms` (the event's acceptance,
    /// epoch milliseconds), calling `fired` with the number of each subscription that fires and
    /// `muted` with that of each whose conditions hold but that a time interval mutes.
    pub fn select_reporting(
        &self,
        event: &ResourceEvent,
        now: i64,
        at_ms: i64,
        mut fired: impl FnMut(usize),
        mut muted: impl FnMut(usize),
    ) -> Vec<&str> {
        let values: Vec<Option<Cow<'_, str>>> = self.keys.iter().map(|k| k.value(event)).collect();
        let mut holds = vec![false; self.slots];
        for (value, index) in values.iter().zip(&self.equals) {
            if let Some(slots) = value.as_deref().and_then(|v| index.get(v)) {
                for &slot in slots {
                    holds[slot] = true;
                }
            }
        }
        for (slot, test) in &self.tests {
            holds[*slot] = test.comparison.holds(values[test.key].as_deref());
        }
        let mut chosen = vec![false; self.actions.len()];
        for (number, subscription) in self.subscriptions.iter().enumerate() {
            let fires = subscription.snooze_until.is_none_or(|until| until <= now)
                && subscription.mandatory.iter().all(|&slot| holds[slot])
                && subscription
                    .groups
                    .iter()
                    .all(|group| group.iter().any(|&slot| holds[slot]));
            if fires && subscription.muted_at(at_ms) {
                muted(number);
            } else if fires {
                fired(number);
                for &action in &subscription.actions {
                    chosen[action] = true;
                }
            }
        }
        chosen
            .iter()
            .zip(&self.actions)
            .filter(|(chosen, _)| **chosen)
            .map(|(_, name)| name.as_str())
            .collect()
    }
}
