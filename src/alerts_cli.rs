//! `tocsin alerts list|show|ack|unack|resolve|comment`: the alerts of a running Tocsin from a
//! shell or a runbook, through its own alerts API (`/tocsin/v1/alerts`, the `responder` scope).
//!
//! Each command is one request. `list` and `show` print the answer as a table for people, or
//! as the API's JSON with `--output json` for scripts; an act prints what became of it. An
//! error answer (404 unknown alert, 409 resolved alert, …) ends the command with its message
//! and a non-zero exit.

use crate::config_cli::{path_segment, Remote};
use delivery::templates::datetime;
use model::Severity;
use reqwest::Method;
use serde_json::Value;
use store::alerts::{AlertState, HumanAction};

const ALERTS: &str = "/tocsin/v1/alerts";

/// How `list` and `show` print their answer (and `tocsin silence list`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    /// A table, times in UTC.
    Table,
    /// The API's answer, as it came.
    Json,
}

#[derive(clap::Subcommand)]
pub enum AlertsCommand {
    /// List the alerts, last seen first, one page at a time.
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only alerts in this state: firing, acknowledged or resolved.
        #[arg(long, value_parser = state)]
        state: Option<&'static str>,
        /// Only alerts of this severity: INFO, NOTICE, WARNING, ERROR or FATAL.
        #[arg(long, value_parser = severity)]
        severity: Option<&'static str>,
        /// Only alerts of this event type.
        #[arg(long)]
        event_type: Option<String>,
        /// Only alerts about this resource (its name).
        #[arg(long)]
        resource_name: Option<String>,
        /// Only alerts last seen at or after this time (epoch seconds).
        #[arg(long)]
        since: Option<u64>,
        /// Only alerts last seen before this time (epoch seconds).
        #[arg(long)]
        until: Option<u64>,
        /// Only alerts with this text in their key or subject (any case).
        #[arg(long, short)]
        query: Option<String>,
        /// The page, from 0.
        #[arg(long, default_value_t = 0)]
        page: u64,
        /// Alerts per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: u64,
        /// How to print the answer.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print the alert KEY and its timeline: its events, people's acts and delivery attempts.
    Show {
        #[command(flatten)]
        remote: Remote,
        key: String,
        /// How to print the answer.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Acknowledge the alert KEY: someone is on it.
    Ack(Act),
    /// Take back the acknowledgement of the alert KEY: it fires again.
    Unack(Act),
    /// Resolve the alert KEY (a new firing event reopens it).
    Resolve(Act),
    /// Leave a comment on the alert KEY.
    Comment {
        #[command(flatten)]
        remote: Remote,
        key: String,
        /// The comment (at most 4,096 characters).
        #[arg(long, short)]
        comment: String,
    },
}

/// What an act names: the alert, and why.
#[derive(clap::Args)]
pub struct Act {
    #[command(flatten)]
    remote: Remote,
    key: String,
    /// A comment, noted with the act and sent on with it to the destinations.
    #[arg(long, short)]
    comment: Option<String>,
}

pub async fn run(command: AlertsCommand) -> anyhow::Result<()> {
    match command {
        AlertsCommand::List {
            remote,
            state,
            severity,
            event_type,
            resource_name,
            since,
            until,
            query,
            page,
            page_size,
            output,
        } => {
            let filters = [
                ("state", state.map(str::to_owned)),
                ("severity", severity.map(str::to_owned)),
                ("eventType", event_type),
                ("resourceName", resource_name),
                ("since", since.map(|s| s.to_string())),
                ("until", until.map(|s| s.to_string())),
                ("q", query),
                ("page", Some(page.to_string())),
                ("pageSize", Some(page_size.to_string())),
            ];
            let given: Vec<(&str, String)> = filters
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect();
            let request = remote.request(Method::GET, ALERTS).query(&given);
            let listed = remote.send(request).await?;
            match output {
                Output::Json => print_json(&listed)?,
                Output::Table => print_list(&listed),
            }
        }
        AlertsCommand::Show {
            remote,
            key,
            output,
        } => {
            let path = format!("{ALERTS}/{}", path_segment(&key));
            let found = remote.send(remote.request(Method::GET, &path)).await?;
            match output {
                Output::Json => print_json(&found)?,
                Output::Table => print_alert(&found),
            }
        }
        AlertsCommand::Ack(act) => act.run(HumanAction::Acknowledge).await?,
        AlertsCommand::Unack(act) => act.run(HumanAction::Unacknowledge).await?,
        AlertsCommand::Resolve(act) => act.run(HumanAction::Resolve).await?,
        AlertsCommand::Comment {
            remote,
            key,
            comment,
        } => {
            let act = Act {
                remote,
                key,
                comment: Some(comment),
            };
            act.run(HumanAction::Comment).await?
        }
    }
    Ok(())
}

impl Act {
    /// Asks for `action` on the alert and says what became of it.
    async fn run(self, action: HumanAction) -> anyhow::Result<()> {
        let path = format!("{ALERTS}/{}/{}", path_segment(&self.key), action.as_str());
        let mut request = self.remote.request(Method::POST, &path);
        if let Some(comment) = &self.comment {
            request = request.json(&serde_json::json!({ "comment": comment }));
        }
        let answer = self.remote.send(request).await?;
        let state = text(&answer["alert"]["state"]);
        if answer["changed"] == true {
            // 202: queued; the alert's state changes when the router folds the act in.
            println!(
                "{} {}: now {state} (event {})",
                done(action),
                self.key,
                text(&answer["eventId"])
            );
        } else {
            println!("{} is already {state}: nothing done", self.key);
        }
        Ok(())
    }
}

/// `action` in the past tense, ready for the alert's key.
fn done(action: HumanAction) -> &'static str {
    match action {
        HumanAction::Acknowledge => "acknowledged",
        HumanAction::Unacknowledge => "unacknowledged",
        HumanAction::Resolve => "resolved",
        HumanAction::Comment => "commented on",
    }
}

/// A state as the API spells it.
fn state(text: &str) -> Result<&'static str, String> {
    AlertState::parse(text)
        .map(AlertState::as_str)
        .ok_or_else(|| "one of firing, acknowledged, resolved".to_owned())
}

/// A severity as the API spells it, from any case.
fn severity(text: &str) -> Result<&'static str, String> {
    Severity::ALL
        .iter()
        .map(|s| s.as_str())
        .find(|s| s.eq_ignore_ascii_case(text))
        .ok_or_else(|| "one of INFO, NOTICE, WARNING, ERROR, FATAL".to_owned())
}

pub(crate) fn print_json(answer: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(answer)?);
    Ok(())
}

/// The page as a table on stdout, and where it is in the list on stderr.
fn print_list(listed: &Value) {
    let rows = items(&listed["results"])
        .map(|alert| {
            vec![
                text(&alert["key"]),
                text(&alert["state"]),
                text(&alert["severity"]),
                text(&alert["events"]),
                time(&alert["lastSeenMs"]),
                text(&alert["subject"]),
            ]
        })
        .collect();
    print_table(
        &["KEY", "STATE", "SEVERITY", "EVENTS", "LAST SEEN", "SUBJECT"],
        rows,
    );
    let metadata = &listed["responseMetadata"];
    eprintln!(
        "{} alerts in all; page {} of {}",
        metadata["totalResultsCount"], metadata["page"], metadata["totalPages"]
    );
}

/// The alert, a field a line, then its timeline as a table.
fn print_alert(found: &Value) {
    let alert = &found["alert"];
    let fields = [
        ("key", text(&alert["key"])),
        ("state", text(&alert["state"])),
        ("severity", text(&alert["severity"])),
        ("event type", text(&alert["eventType"])),
        (
            "resource",
            format!(
                "{} ({})",
                text(&alert["resourceName"]),
                text(&alert["resourceType"])
            ),
        ),
        ("subject", text(&alert["subject"])),
        ("events", text(&alert["events"])),
        ("first seen", time(&alert["firstSeenMs"])),
        ("last seen", time(&alert["lastSeenMs"])),
        ("firing since", time(&alert["firingSinceMs"])),
        ("acknowledged", time(&alert["acknowledgedAtMs"])),
        ("resolved", time(&alert["resolvedAtMs"])),
    ];
    for (name, value) in fields {
        println!("{:<13} {value}", format!("{name}:"));
    }
    println!();
    let rows = items(&found["timeline"])
        .map(|line| {
            vec![
                time(&line["atMs"]),
                text(&line["kind"]),
                timeline_line(line),
            ]
        })
        .collect();
    print_table(&["TIME", "KIND", "WHAT"], rows);
}

/// What one line of the timeline says, in words.
fn timeline_line(line: &Value) -> String {
    let maybe = |value: &Value, before: &str| {
        value
            .as_str()
            .map_or(String::new(), |v| format!("{before}{v}"))
    };
    match line["kind"].as_str() {
        Some("event") => format!(
            "{}{} (event {})",
            text(&line["subject"]),
            maybe(&line["status"], ", status "),
            text(&line["eventId"])
        ),
        Some("action") => format!(
            "{} by {} via {}{}",
            text(&line["action"]),
            text(&line["who"]),
            text(&line["via"]),
            maybe(&line["comment"], ": ")
        ),
        Some("delivery") => format!(
            "to {} (attempt {}, event {}): {}{}{}, {} ms",
            text(&line["action"]),
            text(&line["attempt"]),
            text(&line["eventId"]),
            text(&line["outcome"]),
            line["code"]
                .as_i64()
                .map_or(String::new(), |code| format!(" {code}")),
            maybe(&line["reason"], " "),
            text(&line["durationMs"])
        ),
        _ => line.to_string(),
    }
}

/// `header` and `rows` in aligned columns (the last one as it is), on stdout.
pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(header).chain(rows) {
        let last = row.len() - 1;
        let cells: Vec<String> = row
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    cell
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", cells.join("  "));
    }
}

/// The items of a JSON array (none if it is not one).
pub(crate) fn items(array: &Value) -> impl Iterator<Item = &Value> {
    array.as_array().into_iter().flatten()
}

/// A JSON value as text: strings as they are, numbers written out, nothing as `-`.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Epoch milliseconds as a UTC time; nothing as `-`.
pub(crate) fn time(value: &Value) -> String {
    value
        .as_i64()
        .map_or_else(|| "-".to_owned(), |ms| datetime(ms.div_euclid(1000)))
}
