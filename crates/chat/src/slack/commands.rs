//! The `/tocsin` slash command (CONTRACT.md §3): the form's `text` is the command line.
//!
//! - `help` (or nothing) — what follows;
//! - `status` — how many alerts fire and are acknowledged, and the firing ones, latest first;
//! - `ack <alert>`, `resolve <alert>` — acts on the alert with that key;
//! - `silence <matchers> <duration> [comment]` — a silence: `<matchers>` is an alert key, or
//!   `property=value` / `property=~regex` pairs joined by `,` (`resource.resourceName=db-1`),
//!   `<duration>` like `30m`, `2h`, `1d`;
//! - `undelivered` — how many undelivered events each action has;
//! - `redeliver <action> since <duration>` — sends that action's undelivered events of that
//!   time again.
//!
//! Only allow-listed workspaces and channels are answered at all; every command but `help` is
//! admitted like a click ([`Chat::admit`]: scope `responder`, or
//! `configuration` for `undelivered` and `redeliver`), and an act is once-only per command
//! (its `trigger_id`). The answer is ephemeral JSON, sent
//! at once: every command is a store read or one act, well within Slack's three seconds.

use crate::acts::{Ask, Since};
use crate::{Caller, Chat};
use model::alert::HumanAction;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use store::alerts::{AlertQuery, AlertState};
use store::silences::{MatchPredicate, SilenceMatcher};
use warp::reply::Response;
use warp::Reply;
use web::Scope;

/// The longest silence a command makes.
const MAX_SILENCE_MS: i64 = 30 * 24 * 3_600_000;
/// Undelivered records `undelivered` counts at most.
const UNDELIVERED_COUNTS: u32 = 10_000;
/// Firing alerts `status` lists.
const STATUS_LISTS: u64 = 10;

const HELP: &str = "*/tocsin* — control Tocsin from Slack:\n\
• `/tocsin status` — the firing and acknowledged alerts\n\
• `/tocsin ack <alert>` — acknowledge an alert (its key)\n\
• `/tocsin resolve <alert>` — resolve an alert\n\
• `/tocsin silence <matchers> <duration> [comment]` — silence an alert key, or \
`property=value`/`property=~regex` pairs joined by `,`, for e.g. `30m`, `2h`, `1d`\n\
• `/tocsin undelivered` — the undelivered events per action\n\
• `/tocsin redeliver <action> since <duration>` — send an action's undelivered events again\n\
• `/tocsin help` — this";

/// A command line, read.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Status,
    Undelivered,
    Do(Ask),
}

impl Command {
    /// The scope it needs (`help` needs none).
    fn needs(&self) -> Scope {
        match self {
            Command::Help | Command::Status => Scope::Responder,
            Command::Undelivered => Scope::Configuration,
            Command::Do(ask) => ask.needs(),
        }
    }
}

pub(super) async fn handle(chat: Arc<Chat>, form: HashMap<String, String>) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let caller = Caller {
        team: field("team_id"),
        channel: field("channel_id"),
        user: field("user_id"),
    };
    // Not even `help` outside the allowed workspaces and channels.
    if let Err(reason) = chat.served(&caller) {
        return answer(&chat.refused(&caller, "command", reason).await);
    }
    let command = match read(&field("text")) {
        Ok(command) => command,
        Err(problem) => return answer(&format!("{problem}\n\n{HELP}")),
    };
    if command == Command::Help {
        return answer(HELP);
    }
    let identity = match chat.admit(&caller, command.needs(), "command").await {
        Ok(identity) => identity,
        Err(reason) => return answer(&reason),
    };
    match command {
        Command::Help => answer(HELP),
        Command::Status => answer(&chat.status().await),
        Command::Undelivered => answer(&chat.undelivered().await),
        Command::Do(ask) => {
            let once = format!(
                "slack:{}/{}/command/{}",
                caller.team,
                caller.user,
                field("trigger_id")
            );
            let outcome = chat.carry_out(&caller, &identity.name, ask, once).await;
            answer(outcome.text())
        }
    }
}

/// An ephemeral answer to the command's user.
fn answer(text: &str) -> Response {
    warp::reply::json(&json!({"response_type": "ephemeral", "text": text})).into_response()
}

/// The command in `text`, or what is wrong with it.
fn read(text: &str) -> Result<Command, String> {
    let text = text.trim();
    let (verb, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let rest = rest.trim();
    let one_key = |verb: &str| -> Result<String, String> {
        match rest.split_whitespace().collect::<Vec<_>>()[..] {
            [key] => Ok(key.to_owned()),
            _ => Err(format!("`{verb}` takes one alert key")),
        }
    };
    match verb {
        "" | "help" => Ok(Command::Help),
        "status" => Ok(Command::Status),
        "undelivered" => Ok(Command::Undelivered),
        "redeliver" => match rest.split_whitespace().collect::<Vec<_>>()[..] {
            [action, "since", duration] => Ok(Command::Do(Ask::Redeliver {
                action: action.to_owned(),
                since: Since::Last(read_duration(duration)?),
            })),
            _ => Err("`redeliver` takes `<action> since <duration>`".into()),
        },
        "ack" | "acknowledge" => Ok(Command::Do(Ask::Act(
            HumanAction::Acknowledge,
            one_key(verb)?,
        ))),
        "resolve" => Ok(Command::Do(Ask::Act(HumanAction::Resolve, one_key(verb)?))),
        "silence" => {
            let mut words = rest.splitn(3, char::is_whitespace);
            let (Some(matchers), Some(duration)) = (words.next(), words.next()) else {
                return Err("`silence` takes matchers and a duration".into());
            };
            let comment = words.next().map(str::trim).filter(|c| !c.is_empty());
            Ok(Command::Do(Ask::Silence {
                matchers: read_matchers(matchers)?,
                for_ms: read_duration(duration)?,
                comment: comment.map(str::to_owned),
            }))
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

/// `key`, or `property=value,property=~regex,…`.
fn read_matchers(text: &str) -> Result<Vec<SilenceMatcher>, String> {
    if !text.contains('=') {
        return Ok(vec![router::silences::alert_matcher(text)]);
    }
    text.split(',')
        .map(|pair| {
            if let Some((key, regex)) = pair.split_once("=~") {
                Ok(SilenceMatcher {
                    property_key: key.to_owned(),
                    predicate: MatchPredicate::MatchesRegex,
                    property_value: Some(regex.to_owned()),
                })
            } else if let Some((key, value)) = pair.split_once('=') {
                Ok(equals(key, value))
            } else {
                Err(format!("`{pair}` is not `property=value`"))
            }
        })
        .collect()
}

fn equals(key: &str, value: &str) -> SilenceMatcher {
    SilenceMatcher {
        property_key: key.to_owned(),
        predicate: MatchPredicate::Condition(model::config::Predicate::Equals),
        property_value: Some(value.to_owned()),
    }
}

/// `90s`, `30m`, `2h`, `1d`, in ms, at most thirty days.
fn read_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a duration like 30m, 2h or 1d (at most 30d)");
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = number.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms <= 0 || ms > MAX_SILENCE_MS {
        return Err(bad());
    }
    Ok(ms)
}

impl Chat {
    /// `/tocsin status`: the counts, and the latest firing alerts.
    async fn status(&self) -> String {
        let count = |state| AlertQuery {
            state: Some(state),
            page_size: STATUS_LISTS,
            ..AlertQuery::default()
        };
        let (firing, acknowledged) = match (
            self.alerts.alerts.list(count(AlertState::Firing)).await,
            self.alerts
                .alerts
                .list(count(AlertState::Acknowledged))
                .await,
        ) {
            (Ok(firing), Ok(acknowledged)) => (firing, acknowledged),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot read the alerts for /tocsin status");
                return "The alerts cannot be read now; retry later.".into();
            }
        };
        let mut text = format!("*{}* firing, *{}* acknowledged.", firing.0, acknowledged.0);
        for alert in &firing.1 {
            text.push_str(&format!(
                "\n• `{}` {} — {}",
                alert.key, alert.severity, alert.subject
            ));
        }
        text
    }
}

impl Chat {
    /// `/tocsin undelivered`: the undelivered events per action (of the latest ones).
    async fn undelivered(&self) -> String {
        let selection = store::records::Selection {
            limit: UNDELIVERED_COUNTS,
            ..Default::default()
        };
        let found = match self.alerts.records.undelivered(selection).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the undelivered records for /tocsin undelivered");
                return "The undelivered events cannot be read now; retry later.".into();
            }
        };
        if found.is_empty() {
            return "No undelivered events.".into();
        }
        let mut per_action = std::collections::BTreeMap::<&str, usize>::new();
        for undelivered in &found {
            *per_action.entry(&undelivered.action).or_default() += 1;
        }
        let mut text = String::from("Undelivered events:");
        for (action, count) in per_action {
            text.push_str(&format!("\n• `{action}`: {count}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_read_as_commands_or_say_what_is_wrong() {
        assert_eq!(read(""), Ok(Command::Help));
        assert_eq!(read(" status "), Ok(Command::Status));
        assert_eq!(
            read("ack disk-db-1"),
            Ok(Command::Do(Ask::Act(
                HumanAction::Acknowledge,
                "disk-db-1".into()
            )))
        );
        assert_eq!(
            read("resolve disk-db-1"),
            Ok(Command::Do(Ask::Act(
                HumanAction::Resolve,
                "disk-db-1".into()
            )))
        );
        let Ok(Command::Do(Ask::Silence {
            matchers,
            for_ms,
            comment,
        })) = read("silence resource.resourceName=db-1,severity=~FATAL|ERROR 2h disk swap")
        else {
            panic!("a silence");
        };
        assert_eq!(for_ms, 7_200_000);
        assert_eq!(comment.as_deref(), Some("disk swap"));
        assert_eq!(matchers[0], equals("resource.resourceName", "db-1"));
        assert_eq!(matchers[1].predicate, MatchPredicate::MatchesRegex);
        let Ok(Command::Do(Ask::Silence { matchers, .. })) = read("silence disk-db-1 30m") else {
            panic!("a silence of one alert");
        };
        assert_eq!(matchers, [equals("tags.ans:sourceEventId", "disk-db-1")]);
        assert_eq!(read("undelivered"), Ok(Command::Undelivered));
        let redeliver = read("redeliver to-hook since 2h").unwrap();
        assert_eq!(
            redeliver,
            Command::Do(Ask::Redeliver {
                action: "to-hook".into(),
                since: Since::Last(7_200_000)
            })
        );
        assert_eq!(redeliver.needs(), Scope::Configuration);
        assert_eq!(Command::Status.needs(), Scope::Responder);
        for (line, problem) in [
            ("ack", "one alert key"),
            ("ack a b", "one alert key"),
            ("silence disk-db-1", "a duration"),
            ("silence disk-db-1 31d", "at most 30d"),
            ("silence disk-db-1 0m", "not a duration"),
            ("silence a=b,c 1h", "`c` is not"),
            ("reboot db-1", "unknown command `reboot`"),
            ("redeliver to-hook 1h", "<action> since <duration>"),
            ("redeliver to-hook since 1y", "not a duration"),
        ] {
            let err = read(line).unwrap_err();
            assert!(err.contains(problem), "{line}: {err}");
        }
    }
}
