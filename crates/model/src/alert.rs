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
