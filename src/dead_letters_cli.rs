//! `tocsin dead-letters list|replay`: the dead-letters API of a running Tocsin
//! ([`crate::dead_letters`]) from a shell or a runbook.

use crate::config_cli::{path_segment, Remote};
use reqwest::Method;

const DEAD_LETTERS: &str = "/tocsin/v1/dead-letters";

#[derive(clap::Subcommand)]
pub enum DeadLettersCommand {
    /// Print one page of the dead letters, newest first, as JSON (the API's answer).
    List {
        #[command(flatten)]
        remote: Remote,
        /// The page, from 0.
        #[arg(long, default_value_t = 0)]
        page: u64,
        /// Dead letters per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        page_size: u64,
    },
    /// Put dead letters back on their queue: the one with ID, or every one with `--all`.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
    Replay {
        #[command(flatten)]
        remote: Remote,
        /// The dead letter's id, as `list` shows it.
        id: Option<String>,
        /// Every dead letter there is.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List {
            remote,
            page,
            page_size,
        } => {
            let request = remote
                .request(Method::GET, DEAD_LETTERS)
                .query(&[("page", page), ("pageSize", page_size)]);
            let listed = remote.send(request).await?;
            println!("{}", serde_json::to_string_pretty(&listed)?);
            eprintln!(
                "{} dead letters in all",
                listed["responseMetadata"]["totalResultsCount"]
            );
        }
        DeadLettersCommand::Replay { remote, id, all: _ } => {
            let path = match &id {
                Some(id) => format!("{DEAD_LETTERS}/{}/replay", path_segment(id)),
                None => format!("{DEAD_LETTERS}/replay"),
            };
            let replayed = remote.send(remote.request(Method::POST, &path)).await?;
            eprintln!("replayed {}", replayed["replayed"]);
        }
    }
    Ok(())
}
