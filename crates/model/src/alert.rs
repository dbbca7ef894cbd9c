//! What people do to alerts, as it travels with an event on the events queue: the API turns a
//! person's acknowledge, unacknowledge, resolve or comment into an event of the alert's chain
//! (`ans:status` `COMMENT`, or `CLOSE` for a resolve) that carries the [`HumanAct`] beside it —
//! never inside it, so no producer can pass an event off as a person's act. The router folds the
//! act into the alert's state when it routes the event, and routes the event like any other,
//! so the destinations hear of it.

use serde::{Deserialize, Serialize};

/// Something a person does to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HumanAction {
    Acknowledge,
    Unacknowledge,
    Resolve,
    Comment,
}

impl HumanAction {
    pub const ALL: [HumanAction; 4] = [
        HumanAction::Acknowledge,
        HumanAction::Unacknowledge,
        HumanAction::Resolve,
        HumanAction::Comment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HumanAction::Acknowledge => "acknowledge",
            HumanAction::Unacknowledge => "unacknowledge",
            HumanAction::Resolve => "resolve",
            HumanAction::Comment => "comment",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// What it did, as people read it: `Acknowledged`, `Resolved`, …
    pub fn done(self) -> &'static str {
        match self {
            HumanAction::Acknowledge => "Acknowledged",
            HumanAction::Unacknowledge => "Unacknowledged",
            HumanAction::Resolve => "Resolved",
            HumanAction::Comment => "Commented",
        }
    }

    /// The `ans:status` of the event that carries it: a resolve closes the alert, anything
    /// else only adds to it.
    pub fn status(self) -> &'static str {
        match self {
            HumanAction::Resolve => "CLOSE",
            _ => "COMMENT",
        }
    }
}

/// A person's act: what, who, through what, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HumanAct {
    pub action: HumanAction,
    /// The Tocsin client (later: the chat user) that acted.
    pub who: String,
    /// `api`, `cli`; later `slack`, `teams`, `email`, `console`.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A control a chat message carries for its alert (Slack buttons): what the chat endpoints
/// do when it is used. Its action id is the contract between the message and the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Acknowledge,
    Resolve,
    /// Silence the alert for an hour.
    SilenceHour,
}

impl Control {
    pub const ALL: [Control; 3] = [Control::Acknowledge, Control::Resolve, Control::SilenceHour];
    /// How long [`Control::SilenceHour`] silences, in ms.
    pub const SILENCE_HOUR_MS: i64 = 3_600_000;

    /// The Block Kit `action_id` (≤ 255 characters).
    pub fn action_id(self) -> &'static str {
        match self {
            Control::Acknowledge => "tocsin_acknowledge",
            Control::Resolve => "tocsin_resolve",
            Control::SilenceHour => "tocsin_silence_1h",
        }
    }

    /// The button's text (≤ 75 characters).
    pub fn label(self) -> &'static str {
        match self {
            Control::Acknowledge => "Acknowledge",
            Control::Resolve => "Resolve",
            Control::SilenceHour => "Silence 1 h",
        }
    }

    pub fn parse(action_id: &str) -> Option<Control> {
        Self::ALL.into_iter().find(|c| c.action_id() == action_id)
    }
}

/// The Redeliver control a chat message of undelivered events carries (a Slack button) for each
/// action that failed: send again that action's undelivered events from `since` on — the
/// earliest of them the message reported, so that a click sends again what it reported and
/// any that failed after. Its `value` is the contract between the message and the endpoint:
/// JSON `{"action": …, "since": …}` (epoch seconds), the same for the same message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeliverControl {
    pub action: String,
    pub since: i64,
}

impl RedeliverControl {
    /// The Block Kit `action_id` of the first button; the others are `tocsin_redeliver.1`, …
    /// (an action id is unique in its block).
    pub const ACTION_ID: &'static str = "tocsin_redeliver";
    /// Slack's limits: a button's text, its value.
    const LABEL_CHARS: usize = 75;
    pub const VALUE_CHARS: usize = 2000;

    /// The action id of the `n`th button in a message.
    pub fn action_id(n: usize) -> String {
        match n {
            0 => Self::ACTION_ID.to_owned(),
            n => format!("{}.{n}", Self::ACTION_ID),
        }
    }

    /// Whether `action_id` is one of [`Self::action_id`]'s.
    pub fn is_action_id(action_id: &str) -> bool {
        action_id.strip_prefix(Self::ACTION_ID).is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('.')
                    .is_some_and(|n| n.parse::<usize>().is_ok())
        })
    }

    /// The button's text (≤ 75 characters): `Redeliver <action>`, cut with `…`.
    pub fn label(&self) -> String {
        let label = format!("Redeliver {}", self.action);
        if label.chars().count() <= Self::LABEL_CHARS {
            return label;
        }
        let mut cut: String = label.chars().take(Self::LABEL_CHARS - 1).collect();
        cut.push('…');
        cut
    }

    /// The button's value.
    pub fn value(&self) -> String {
        serde_json::to_string(self).expect("a redeliver control serializes")
    }

    /// The control a button's value names, if it is one.
    pub fn parse(value: &str) -> Option<Self> {
        serde_json::from_str(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redeliver_control_reads_back_from_its_button_within_slacks_limits() {
        let control = RedeliverControl {
            action: "to-hook \"eu\"".into(),
            since: 1_764_926_000,
        };
        assert_eq!(
            control.value(),
            r#"{"action":"to-hook \"eu\"","since":1764926000}"#,
            "stable: the same message, the same value"
        );
        assert_eq!(
            RedeliverControl::parse(&control.value()),
            Some(control.clone())
        );
        assert_eq!(RedeliverControl::parse("disk-db-1"), None, "an alert key");
        assert_eq!(RedeliverControl::parse(r#"{"action":"a"}"#), None);
        assert_eq!(control.label(), "Redeliver to-hook \"eu\"");
        let long = RedeliverControl {
            action: "x".repeat(200),
            since: 0,
        };
        assert_eq!(long.label().chars().count(), 75);
        assert!(long.label().ends_with('…'));
        assert_eq!(RedeliverControl::action_id(0), "tocsin_redeliver");
        assert_eq!(RedeliverControl::action_id(24), "tocsin_redeliver.24");
        for id in ["tocsin_redeliver", "tocsin_redeliver.3"] {
            assert!(RedeliverControl::is_action_id(id), "{id}");
        }
        for id in [
            "tocsin_redeliverx",
            "tocsin_redeliver.",
            "tocsin_redeliver.a",
            "tocsin_resolve",
        ] {
            assert!(!RedeliverControl::is_action_id(id), "{id}");
        }
        assert_eq!(
            Control::parse("tocsin_redeliver"),
            None,
            "not an alert's control"
        );
    }
}
