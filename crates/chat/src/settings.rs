//! `[chat]`: who may act from chat, and from where. Owned here, read by `src/settings.rs` like
//! the channels' settings.
//!
//! ```toml
//! [chat]
//! # chat user → Tocsin identity and scopes: `slack:{team id}/{user id}={identity}:{scope}+{scope}`,
//! # or, for the action links in emails, `email:{address}={identity}:{scope}+{scope}`
//! identities = ["slack:T0TEAM/U0ALICE=alice:responder+configuration",
//!               "email:alice@example.com=alice:responder"]
//! acts_per_minute = 20
//! [chat.slack]
//! signing_secret = "…"          # the Slack app's Signing Secret; never logged
//! allowed_teams = ["T0TEAM"]
//! allowed_channels = ["C0ALERTS"]
//! response_hosts = ["hooks.slack.com"]
//! ```

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use web::Scope;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatSettings {
    /// Chat users mapped to Tocsin identities and scopes, as
    /// `slack:{team id}/{user id}={identity}:{scope}+{scope}…`, and mailboxes, as
    /// `email:{address}={identity}:{scope}+{scope}…` (an email's action links act as the
    /// identity of the address it went to); anyone else is refused.
    pub identities: Vec<String>,
    /// Acts (clicks and commands) each identity may make per minute; 0 for no limit.
    pub acts_per_minute: u32,
    pub slack: SlackSettings,
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            identities: Vec::new(),
            acts_per_minute: 20,
            slack: SlackSettings::default(),
        }
    }
}

/// `[chat.slack]`: the Slack app whose requests Tocsin serves.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackSettings {
    /// The app's Signing Secret; empty: the Slack endpoints answer 404.
    pub signing_secret: String,
    /// The workspaces (team ids, `T…`) served; requests from any other are refused.
    pub allowed_teams: Vec<String>,
    /// The channels (ids, `C…`/`G…`) served; requests from any other are refused.
    pub allowed_channels: Vec<String>,
    /// The hosts a `response_url` may point at (Slack's own); Tocsin posts nowhere else.
    pub response_hosts: Vec<String>,
}

impl Default for SlackSettings {
    fn default() -> Self {
        SlackSettings {
            signing_secret: String::new(),
            allowed_teams: Vec::new(),
            allowed_channels: Vec::new(),
            response_hosts: vec!["hooks.slack.com".into(), "hooks.slack-gov.com".into()],
        }
    }
}

impl std::fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.signing_secret.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        };
        f.debug_struct("SlackSettings")
            .field("signing_secret", &secret)
            .field("allowed_teams", &self.allowed_teams)
            .field("allowed_channels", &self.allowed_channels)
            .field("response_hosts", &self.response_hosts)
            .finish()
    }
}

/// A chat user's Tocsin identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// A mapping that does not read.
#[derive(Debug, thiserror::Error)]
#[error("chat.identities: `{entry}`: {problem}")]
pub struct BadIdentity {
    entry: String,
    problem: String,
}

/// The chat users Tocsin knows, by `slack:{team}/{user}` and `email:{address}` (lower case).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_user: HashMap<String, Identity>,
}

impl Directory {
    /// Reads `entries` (see [`ChatSettings::identities`]), naming the first that is wrong.
    pub fn read(entries: &[String]) -> Result<Directory, BadIdentity> {
        let mut by_user = HashMap::new();
        for entry in entries {
            let bad = |problem: &str| BadIdentity {
                entry: entry.clone(),
                problem: problem.into(),
            };
            let (user, identity) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected `slack:{team}/{user}={identity}:{scopes}`"))?;
            let user = user.trim();
            let user = if let Some(slack) = user.strip_prefix("slack:") {
                if !slack
                    .split_once('/')
                    .is_some_and(|(team, id)| !team.is_empty() && !id.is_empty())
                {
                    return Err(bad("the Slack user must be `{team id}/{user id}`"));
                }
                user.to_owned()
            } else if let Some(address) = user.strip_prefix("email:") {
                if !address
                    .split_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
                {
                    return Err(bad(
                        "the mailbox must be an address like `alice@example.com`",
                    ));
                }
                format!("email:{}", address.to_ascii_lowercase())
            } else {
                return Err(bad("the user must start with `slack:` or `email:`"));
            };
            let (name, scopes) = identity
                .split_once(':')
                .ok_or_else(|| bad("expected `{identity}:{scope}+{scope}`"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad("the identity is empty"));
            }
            let scopes = scopes
                .split('+')
                .map(|s| {
                    let s = s.trim();
                    Scope::ALL
                        .into_iter()
                        .find(|scope| scope.as_str() == s)
                        .ok_or_else(|| bad(&format!("unknown scope `{s}`")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let identity = Identity {
                name: name.to_owned(),
                scopes,
            };
            if by_user.insert(user, identity).is_some() {
                return Err(bad("the user is mapped twice"));
            }
        }
        Ok(Directory { by_user })
    }

    /// The identity of Slack user `user` of workspace `team`.
    pub fn slack_user(&self, team: &str, user: &str) -> Option<&Identity> {
        self.by_user.get(&format!("slack:{team}/{user}"))
    }

    /// The identity the mailbox `address` is mapped to.
    pub fn mailbox(&self, address: &str) -> Option<&Identity> {
        self.by_user
            .get(&format!("email:{}", address.to_ascii_lowercase()))
    }

    /// The mailboxes mapped to an identity holding `scope`: whose emails carry action links.
    pub fn mailboxes_with(&self, scope: Scope) -> impl Iterator<Item = &str> {
        self.by_user.iter().filter_map(move |(user, identity)| {
            let address = user.strip_prefix("email:")?;
            identity.scopes.contains(&scope).then_some(address)
        })
    }

    /// Every identity's name, for the rate limiter's buckets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_user.values().map(|i| i.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_read_and_bad_ones_are_named() {
        let directory = Directory::read(&[
            "slack:T1/U1=alice:responder+configuration".into(),
            "slack:T1/U2 = bob : responder".into(),
            "email:Alice@Example.com=alice:responder".into(),
            "email:audit@example.com=auditor:configuration".into(),
        ])
        .unwrap();
        let alice = directory.slack_user("T1", "U1").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.scopes, [Scope::Responder, Scope::Configuration]);
        assert_eq!(directory.slack_user("T1", "U2").unwrap().name, "bob");
        assert!(
            directory.slack_user("T2", "U1").is_none(),
            "the team counts"
        );
        assert_eq!(
            directory.mailbox("alice@EXAMPLE.com").unwrap().name,
            "alice"
        );
        assert_eq!(
            directory
                .mailboxes_with(Scope::Responder)
                .collect::<Vec<_>>(),
            ["alice@example.com"]
        );
        for (entry, problem) in [
            ("slack:T1/U1", "expected"),
            ("teams:T1/U1=a:responder", "`slack:` or `email:`"),
            ("email:alice=a:responder", "an address like"),
            ("slack:T1=a:responder", "{team id}/{user id}"),
            ("slack:T1/U1=a:root", "unknown scope `root`"),
            ("slack:T1/U1=:responder", "empty"),
        ] {
            let err = Directory::read(&[entry.into()]).unwrap_err().to_string();
            assert!(err.contains(problem) && err.contains(entry), "{err}");
        }
    }

    #[test]
    fn the_signing_secret_never_shows_in_debug() {
        let settings = SlackSettings {
            signing_secret: "8f742231b10e8888abcd99yyyzzz85a5".into(),
            ..SlackSettings::default()
        };
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("8f74") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
