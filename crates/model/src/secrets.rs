//! Credentials in action properties are stored but never shown: every API answer, export and
//! log sees [`masked`] actions. A property is secret when its key says so (password, token,
//! secret, …); URLs lose their user-info and query values everywhere, and their whole path where
//! the action's channel says the URL *is* the credential (Slack and Teams webhooks).
//! When a client sends back a masked value — as the SAP clients do after a read — the stored
//! value is kept ([`restore`]).

use crate::action_types::ActionTypes;
use crate::config::{Action, PropertyValue};

/// What a masked secret reads as.
pub const MASK: &str = "********";

const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "credential",
    "authorization",
];

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace(['_', '-'], "");
    SECRET_WORDS.iter().any(|word| key.contains(word))
}

/// `value` with its secret parts replaced by [`MASK`], or `None` when nothing is secret.
fn mask_url(value: &str, hide_path: bool) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_owned(),
    };
    let path = if hide_path && path.len() > 1 {
        format!("/{MASK}")
    } else {
        match path.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) => format!("{key}={MASK}"),
                        None => pair.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => path.to_owned(),
        }
    };
    let masked = format!("{scheme}://{host}{path}");
    (masked != value).then_some(masked)
}

fn masked_value(
    types: &dyn ActionTypes,
    action_type: &str,
    key: &str,
    value: &PropertyValue,
) -> Option<PropertyValue> {
    if is_secret_key(key) || types.property_is_secret(action_type, key) {
        return Some(PropertyValue::Text(MASK.into()));
    }
    let PropertyValue::Text(text) = value else {
        return None;
    };
    mask_url(text, types.url_is_credential(action_type, key)).map(PropertyValue::Text)
}

/// The action as it may be shown: secrets masked.
pub fn masked(action: &Action, types: &dyn ActionTypes) -> Action {
    let mut shown = action.clone();
    for (key, value) in shown.properties.iter_mut() {
        if let Some(masked) = masked_value(types, &action.action_type, key, value) {
            *value = masked;
        }
    }
    shown
}

/// A property sent back masked cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("action `{action}`: property `{property}` is masked; send its real value")]
pub struct MaskedSecret {
    pub action: String,
    pub property: String,
}

/// Replaces every property of `incoming` that was sent back in its masked form with the stored
/// value of `stored` (the same action before the change).
pub fn restore(
    incoming: &mut Action,
    stored: Option<&Action>,
    types: &dyn ActionTypes,
) -> Result<(), MaskedSecret> {
    for (key, value) in incoming.properties.iter_mut() {
        let previous = stored.and_then(|s| s.properties.get(key));
        let sent_back_masked = previous.is_some_and(|previous| {
            masked_value(types, &incoming.action_type, key, previous).as_ref() == Some(value)
        });
        if sent_back_masked {
            *value = previous.expect("checked").clone();
        } else if matches!(value, PropertyValue::Text(t) if t.contains(MASK)) {
            return Err(MaskedSecret {
                action: incoming.name.clone(),
                property: key.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's webhook URL is a credential, as the delivery crate's registry says.
    struct SlackUrls;

    impl ActionTypes for SlackUrls {
        fn prepare(&self, _: &Action) -> Result<crate::Prepared, crate::ActionTypeError> {
            Ok(std::sync::Arc::new(()))
        }
        fn url_is_credential(&self, action_type: &str, property: &str) -> bool {
            action_type == "SLACK" && property == "webhookUrl"
        }
        fn property_is_secret(&self, action_type: &str, property: &str) -> bool {
            action_type == "PAGERDUTY" && property == "routingKey"
        }
    }

    fn action(action_type: &str, properties: &[(&str, &str)]) -> Action {
        serde_json::from_value(serde_json::json!({
            "name": "a", "type": action_type, "state": "ENABLED",
            "properties": properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()
        }))
        .unwrap()
    }

    fn text(action: &Action, key: &str) -> String {
        action.properties[key].to_text()
    }

    #[test]
    fn secrets_are_masked_and_the_rest_is_shown() {
        let stored = action(
            "WEB_HOOK",
            &[
                (
                    "destination",
                    "https://user:pw@example.com/hook?token=abc&x=1",
                ),
                ("password", "hunter2"),
                ("clientSecret", "s"),
                ("oauth_token_url", "https://login.example.com/token"),
                ("method", "POST"),
            ],
        );
        let shown = masked(&stored, &SlackUrls);
        assert_eq!(
            text(&shown, "destination"),
            "https://********@example.com/hook?token=********&x=********"
        );
        assert_eq!(text(&shown, "password"), MASK);
        assert_eq!(text(&shown, "clientSecret"), MASK);
        assert_eq!(
            text(&shown, "oauth_token_url"),
            MASK,
            "a key naming a token is secret"
        );
        assert_eq!(text(&shown, "method"), "POST");
        let slack = masked(
            &action(
                "SLACK",
                &[("webhookUrl", "https://hooks.slack.com/services/T0/B0/XyZ")],
            ),
            &SlackUrls,
        );
        assert_eq!(
            text(&slack, "webhookUrl"),
            "https://hooks.slack.com/********"
        );
        let pagerduty = masked(
            &action(
                "PAGERDUTY",
                &[
                    ("routingKey", "R0123456789abcdef0123456789abcdef"),
                    ("source", "web-1"),
                ],
            ),
            &SlackUrls,
        );
        assert_eq!(text(&pagerduty, "routingKey"), MASK, "the channel says so");
        assert_eq!(text(&pagerduty, "source"), "web-1");
    }

    #[test]
    fn masked_values_sent_back_keep_the_stored_secret() {
        let stored = action(
            "SLACK",
            &[
                ("webhookUrl", "https://hooks.slack.com/services/T0/B0/XyZ"),
                ("password", "p"),
            ],
        );
        let mut update = masked(&stored, &SlackUrls);
        update
            .properties
            .insert("channel".into(), PropertyValue::Text("#ops".into()));
        restore(&mut update, Some(&stored), &SlackUrls).unwrap();
        assert_eq!(
            text(&update, "webhookUrl"),
            "https://hooks.slack.com/services/T0/B0/XyZ"
        );
        assert_eq!(text(&update, "password"), "p");
        assert_eq!(text(&update, "channel"), "#ops");

        let mut changed = masked(&stored, &SlackUrls);
        changed
            .properties
            .insert("password".into(), PropertyValue::Text("new".into()));
        restore(&mut changed, Some(&stored), &SlackUrls).unwrap();
        assert_eq!(text(&changed, "password"), "new");

        let mut orphan = masked(&stored, &SlackUrls);
        assert!(
            restore(&mut orphan, None, &SlackUrls).is_err(),
            "nothing to restore from"
        );
    }
}
