//! Button clicks (`block_actions`, CONTRACT.md §2): the form's `payload` field holds the
//! interaction as JSON. A click on one of Tocsin's controls — an alert's
//! ([`model::alert::Control`], the button's `value` being the alert key), or a Redeliver
//! button of a message of undelivered events ([`model::alert::RedeliverControl`], its `value`
//! the action and since when) — is read as an [`Ask`], admitted with the scope that needs
//! ([`Chat::admit`]: `responder`, `configuration` to redeliver), carried out once per click —
//! its key is the team, user, action id and the click's `action_ts`, which a re-sent click
//! keeps — and answered with an empty 200. Then the message is updated through the
//! `response_url` to say who did what (`replace_original`), or the clicker alone is told why
//! nothing changed (ephemeral). Other interactions and other buttons are acknowledged and
//! ignored.

use crate::acts::{Ask, Outcome, Since};
use crate::{Caller, Chat};
use model::alert::{Control, HumanAction, RedeliverControl};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use warp::reply::Response;
use warp::Reply;

/// The parts of a `block_actions` payload Tocsin reads; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: Id,
    team: Option<Id>,
    channel: Option<Id>,
    container: Option<Container>,
    message: Option<Value>,
    response_url: Option<String>,
    #[serde(default)]
    actions: Vec<Click>,
}

#[derive(Debug, Deserialize)]
struct Id {
    id: String,
    team_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Container {
    channel_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Click {
    action_id: String,
    value: Option<String>,
    action_ts: String,
}

pub(super) async fn handle(chat: Arc<Chat>, form: HashMap<String, String>) -> Response {
    let Some(interaction) = form
        .get("payload")
        .and_then(|p| serde_json::from_str::<Interaction>(p).ok())
    else {
        return web::ApiError::bad_request("`payload` must hold a Slack interaction as JSON")
            .into_response();
    };
    if interaction.kind != "block_actions" {
        return super::acknowledged();
    }
    let Some((what, ask, click)) = interaction.actions.iter().find_map(|click| {
        let (what, ask) = ask_of(click)?;
        Some((what, ask, click))
    }) else {
        return super::acknowledged();
    };
    let caller = Caller {
        team: interaction
            .team
            .as_ref()
            .map(|t| t.id.clone())
            .or_else(|| interaction.user.team_id.clone())
            .unwrap_or_default(),
        channel: interaction
            .channel
            .as_ref()
            .map(|c| c.id.clone())
            .or_else(|| interaction.container.as_ref()?.channel_id.clone())
            .unwrap_or_default(),
        user: interaction.user.id.clone(),
    };
    let response_url = interaction.response_url.as_deref();
    let identity = match chat.admit(&caller, ask.needs(), what).await {
        Ok(identity) => identity,
        Err(reason) => {
            chat.respond(response_url, ephemeral(&reason));
            return super::acknowledged();
        }
    };
    let once = format!(
        "slack:{}/{}/{}/{}",
        caller.team, caller.user, click.action_id, click.action_ts
    );
    let outcome = chat.carry_out(&caller, &identity.name, ask, once).await;
    let message = match &outcome {
        Outcome::Changed(line) => updated(interaction.message.as_ref(), line),
        Outcome::Told(line) => ephemeral(line),
    };
    chat.respond(response_url, message);
    super::acknowledged()
}

/// What a click on one of Tocsin's buttons asks, and the name its refusal is audited under;
/// `None` for any other button (or a value that is not the button's).
fn ask_of(click: &Click) -> Option<(&'static str, Ask)> {
    let value = click.value.clone()?;
    if RedeliverControl::is_action_id(&click.action_id) {
        let control = RedeliverControl::parse(&value)?;
        let ask = Ask::Redeliver {
            action: control.action,
            since: Since::Reported(control.since),
        };
        return Some((RedeliverControl::ACTION_ID, ask));
    }
    let control = Control::parse(&click.action_id)?;
    let ask = match control {
        Control::Acknowledge => Ask::Act(HumanAction::Acknowledge, value),
        Control::Resolve => Ask::Act(HumanAction::Resolve, value),
        Control::SilenceHour => Ask::Silence {
            matchers: vec![router::silences::alert_matcher(&value)],
            for_ms: Control::SILENCE_HOUR_MS,
            comment: Some("from Slack".into()),
        },
    };
    Some((control.action_id(), ask))
}

/// A message for the clicker alone, leaving the original as it is.
fn ephemeral(text: &str) -> Value {
    json!({"response_type": "ephemeral", "replace_original": false, "text": text})
}

/// The clicked message, replaced by itself with `line` added under it (who did what).
fn updated(original: Option<&Value>, line: &str) -> Value {
    let original = original.cloned().unwrap_or(Value::Null);
    let mut blocks = original["blocks"].as_array().cloned().unwrap_or_default();
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": line}]}));
    let mut message = json!({
        "replace_original": true,
        "text": original["text"].as_str().unwrap_or(line),
        "blocks": blocks,
    });
    if let Some(attachments) = original.get("attachments") {
        message["attachments"] = attachments.clone();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_keeps_the_message_and_adds_who_did_what() {
        let original = json!({
            "ts": "1700000000.000001", "text": "[FATAL] Disk full",
            "attachments": [{"color": "#a30200", "blocks": [{"type": "section"}]}]
        });
        let update = updated(Some(&original), "Acknowledged by <@U1> (as `alice`).");
        assert_eq!(update["replace_original"], true);
        assert_eq!(update["text"], "[FATAL] Disk full");
        assert_eq!(update["attachments"], original["attachments"]);
        assert_eq!(
            update["blocks"][0]["elements"][0]["text"],
            "Acknowledged by <@U1> (as `alice`)."
        );
        assert_eq!(ephemeral("no")["response_type"], "ephemeral");
    }

    #[test]
    fn a_click_asks_what_its_button_says() {
        let click = |action_id: &str, value: &str| Click {
            action_id: action_id.into(),
            value: Some(value.into()),
            action_ts: "1.000001".into(),
        };
        let redeliver = RedeliverControl {
            action: "to-hook".into(),
            since: 1_800_000_000,
        };
        let (what, ask) = ask_of(&click("tocsin_redeliver.2", &redeliver.value())).unwrap();
        assert_eq!(what, "tocsin_redeliver");
        assert_eq!(
            ask,
            Ask::Redeliver {
                action: "to-hook".into(),
                since: Since::Reported(1_800_000_000)
            }
        );
        assert_eq!(ask.needs(), web::Scope::Configuration);
        let (what, ask) = ask_of(&click("tocsin_acknowledge", "disk-db-1")).unwrap();
        assert_eq!(what, "tocsin_acknowledge");
        assert_eq!(ask, Ask::Act(HumanAction::Acknowledge, "disk-db-1".into()));
        assert_eq!(ask.needs(), web::Scope::Responder);
        assert!(
            ask_of(&click("tocsin_redeliver", "disk-db-1")).is_none(),
            "not a redeliver value"
        );
        assert!(ask_of(&click("someone_elses", "x")).is_none());
    }
}
