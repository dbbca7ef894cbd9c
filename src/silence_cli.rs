//! `tocsin silence add|list|expire`: silences of a running Tocsin from a shell, through its
//! own silences API (`/tocsin/v1/silences`, the `responder` scope).
//!
//! `add` turns matchers written as Alertmanager's (`key=value`, `key!=value`, `key=~regex`,
//! `key!~regex`, the key an event property as conditions name it) and a duration or an end
//! into one request, and prints the new silence's id; `list` prints the silences as a table
//! or as the API's JSON; `expire` ends one now. An error answer ends the command with its
//! message and a non-zero exit.

use crate::alerts_cli::{items, print_json, print_table, text, time, Output};
use crate::config_cli::{path_segment, Remote};
use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};
use store::silences::{MatchPredicate, SilenceState};

const SILENCES: &str = "/tocsin/v1/silences";

#[derive(clap::Subcommand)]
pub enum SilenceCommand {
    /// Silence the matched events that every MATCHER matches, from now (or --starts) for
    /// --for, or until --until; prints the silence's id.
    Add {
        #[command(flatten)]
        remote: Remote,
        /// `key=value`, `key!=value`, `key=~regex` or `key!~regex`; the key is an event
        /// property as conditions name it (`severity`, `resource.resourceName`, `tags.team`, …).
        #[arg(required = true, value_parser = matcher)]
        matchers: Vec<Value>,
        /// How long it lasts from its start: `90s`, `30m`, `2h`, `1d`, `1h30m`.
        #[arg(long = "for", value_parser = duration_ms, required_unless_present = "until", conflicts_with = "until")]
        lasts: Option<i64>,
        /// When it ends (RFC 3339, `2026-12-24T18:00:00Z`).
        #[arg(long, value_parser = time_ms)]
        until: Option<i64>,
        /// When it starts (RFC 3339); now if absent.
        #[arg(long, value_parser = time_ms)]
        starts: Option<i64>,
        /// Why (at most 1,024 characters).
        #[arg(long, short)]
        comment: Option<String>,
    },
    /// List the silences, newest first.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only silences in this state: active, pending or expired.
        #[arg(long, value_parser = state)]
        state: Option<&'static str>,
        /// How to print the answer.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// End the silence ID now; what it held back that still fires is delivered once.
    Expire {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
}

pub async fn run(command: SilenceCommand) -> anyhow::Result<()> {
    match command {
        SilenceCommand::Add {
            remote,
            matchers,
            lasts,
            until,
            starts,
            comment,
        } => {
            let start = starts.unwrap_or_else(clock::now_epoch_millis);
            let ends = match (until, lasts) {
                (Some(until), _) => until,
                (None, Some(lasts)) => start.saturating_add(lasts),
                (None, None) => bail!("give --for or --until"),
            };
            let mut body = json!({"matchers": matchers, "endsAtMs": ends});
            if let Some(starts) = starts {
                body["startsAtMs"] = json!(starts);
            }
            if let Some(comment) = comment {
                body["comment"] = json!(comment);
            }
            let request = remote.request(Method::POST, SILENCES).json(&body);
            let created = remote.send(request).await?;
            println!(
                "{} ({} until {})",
                text(&created["id"]),
                text(&created["state"]),
                time(&created["endsAtMs"])
            );
        }
        SilenceCommand::List {
            remote,
            state,
            output,
        } => {
            let mut request = remote.request(Method::GET, SILENCES);
            if let Some(state) = state {
                request = request.query(&[("state", state)]);
            }
            let listed = remote.send(request).await?;
            match output {
                Output::Json => print_json(&listed)?,
                Output::Table => print_list(&listed),
            }
        }
        SilenceCommand::Expire { remote, id } => {
            let path = format!("{SILENCES}/{}", path_segment(&id));
            let expired = remote.send(remote.request(Method::DELETE, &path)).await?;
            println!("{id} expired at {}", time(&expired["endsAtMs"]));
        }
    }
    Ok(())
}

/// `key=value` (EQUALS), `key!=value` (NOT_EQUALS), `key=~regex` (MATCHES_REGEX) or
/// `key!~regex` (DOES_NOT_MATCH_REGEX), as the API's matcher. The server checks the key and
/// the regex.
fn matcher(text: &str) -> Result<Value, String> {
    let at = text.find(['=', '!']).filter(|&at| at > 0).ok_or_else(|| {
        format!("`{text}` is not key=value, key!=value, key=~regex or key!~regex")
    })?;
    let (key, rest) = text.split_at(at);
    let (predicate, value) = if let Some(value) = rest.strip_prefix("!=") {
        (
            MatchPredicate::Condition(model::Predicate::NotEquals),
            value,
        )
    } else if let Some(value) = rest.strip_prefix("!~") {
        (MatchPredicate::DoesNotMatchRegex, value)
    } else if let Some(value) = rest.strip_prefix("=~") {
        (MatchPredicate::MatchesRegex, value)
    } else if let Some(value) = rest.strip_prefix('=') {
        (MatchPredicate::Condition(model::Predicate::Equals), value)
    } else {
        return Err(format!("`{text}`: after `{key}` comes =, !=, =~ or !~"));
    };
    Ok(json!({"propertyKey": key, "predicate": predicate.as_str(), "propertyValue": value}))
}

/// `90s`, `30m`, `2h`, `1d` or a sum of them (`1h30m`), in milliseconds.
fn duration_ms(text: &str) -> Result<i64, String> {
    let wrong = || format!("`{text}` is not a duration such as 90s, 30m, 2h, 1d or 1h30m");
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(wrong()),
        };
        let count: i64 = number.parse().map_err(|_| wrong())?;
        total = count
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(wrong)?;
        number.clear();
    }
    if !number.is_empty() || total <= 0 {
        return Err(wrong());
    }
    Ok(total)
}

/// An RFC 3339 time, in epoch milliseconds.
fn time_ms(text: &str) -> Result<i64, String> {
    ingest::sources::rfc3339_seconds(text)
        .map(|seconds| seconds.saturating_mul(1000))
        .ok_or_else(|| format!("`{text}` is not an RFC 3339 time such as 2026-12-24T18:00:00Z"))
}

/// A state as the API spells it.
fn state(text: &str) -> Result<&'static str, String> {
    SilenceState::parse(text)
        .map(SilenceState::as_str)
        .ok_or_else(|| "one of active, pending, expired".to_owned())
}

/// The silences as a table on stdout.
fn print_list(listed: &Value) {
    let rows = items(&listed["results"])
        .map(|silence| {
            let matchers: Vec<String> = items(&silence["matchers"]).map(written).collect();
            vec![
                text(&silence["id"]),
                text(&silence["state"]),
                time(&silence["startsAtMs"]),
                time(&silence["endsAtMs"]),
                text(&silence["createdBy"]),
                matchers.join(" "),
                silence["comment"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    print_table(
        &["ID", "STATE", "STARTS", "ENDS", "BY", "MATCHERS", "COMMENT"],
        rows,
    );
}

/// A matcher as `add` takes it, or in the API's words for the other predicates.
fn written(matcher: &Value) -> String {
    let key = text(&matcher["propertyKey"]);
    let value = matcher["propertyValue"].as_str().unwrap_or("");
    let operator = match matcher["predicate"].as_str().unwrap_or("") {
        "EQUALS" => "=",
        "NOT_EQUALS" => "!=",
        MatchPredicate::MATCHES_REGEX => "=~",
        MatchPredicate::DOES_NOT_MATCH_REGEX => "!~",
        other => return format!("{key} {other} {value}").trim_end().to_owned(),
    };
    format!("{key}{operator}{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_durations_and_times_read_as_the_api_wants_them() {
        assert_eq!(
            matcher("resource.resourceName=db-1").unwrap(),
            json!({"propertyKey": "resource.resourceName", "predicate": "EQUALS", "propertyValue": "db-1"})
        );
        assert_eq!(
            matcher("severity!=INFO").unwrap()["predicate"],
            "NOT_EQUALS"
        );
        assert_eq!(
            matcher("subject=~disk.*").unwrap()["propertyValue"],
            "disk.*"
        );
        assert_eq!(
            matcher("tags.team!~db|ops").unwrap()["predicate"],
            "DOES_NOT_MATCH_REGEX"
        );
        assert_eq!(matcher("body=a=b").unwrap()["propertyValue"], "a=b");
        assert!(matcher("severity").is_err());
        assert!(matcher("=x").is_err());
        assert_eq!(duration_ms("2h"), Ok(7_200_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert!(duration_ms("2").is_err());
        assert!(duration_ms("0s").is_err());
        assert!(duration_ms("2w").is_err());
        assert_eq!(time_ms("2026-12-24T18:00:00Z"), Ok(1_798_135_200_000));
        assert!(time_ms("tomorrow").is_err());
        for (written_as, expected) in [
            ("severity=FATAL", "severity=FATAL"),
            ("tags.team!~db", "tags.team!~db"),
        ] {
            assert_eq!(written(&matcher(written_as).unwrap()), expected);
        }
    }
}
