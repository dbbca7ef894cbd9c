//! `tocsin config export|import|test-action`: configuration as code against a running Tocsin,
//! through its own configuration API, so that teams can keep their routing in git, apply it in
//! CI, and try an action once it is saved.

use anyhow::{bail, Context};
use std::io::Read;
use std::path::PathBuf;

/// Where the running Tocsin is and who we are to it (the other commands that talk to a
/// running Tocsin use it too).
#[derive(clap::Args)]
pub struct Remote {
    /// Base URL of the running Tocsin.
    #[arg(long, env = "TOCSIN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API client with the scope the command needs (configuration; responder for alerts).
    #[arg(long, env = "TOCSIN_USER", default_value = "admin")]
    user: String,
    /// Its password.
    #[arg(long, env = "TOCSIN_PASSWORD", hide_env_values = true)]
    password: String,
}

#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the running configuration (ANS export format; secrets masked) to stdout.
    Export {
        #[command(flatten)]
        remote: Remote,
    },
    /// Replace the running configuration with FILE (`-` for stdin). Masked secrets in FILE keep
    /// the values the server has.
    Import {
        #[command(flatten)]
        remote: Remote,
        file: PathBuf,
    },
    /// Send a test event through action NAME now and print how the attempt ended (nothing is
    /// recorded); exit 1 when it was not delivered.
    TestAction {
        #[command(flatten)]
        remote: Remote,
        name: String,
        /// An ANS resource event to send (`-` for stdin) instead of the sample event.
        #[arg(long)]
        event: Option<PathBuf>,
    },
}

const CONFIGURATION: &str = "/cf/configuration/v1/configuration";

impl Remote {
    /// A `method` request to `path` on the running Tocsin, with our credentials.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .basic_auth(&self.user, Some(&self.password))
    }

    /// Sends `request` and returns the JSON answer; an error answer fails with its message.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("the answer is not JSON")?;
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(body)
    }
}

pub async fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Export { remote } => {
            let request = remote.request(reqwest::Method::GET, CONFIGURATION);
            println!(
                "{}",
                serde_json::to_string_pretty(&remote.send(request).await?)?
            );
        }
        ConfigCommand::Import { remote, file } => {
            let document = read_json(&file)?;
            let request = remote
                .request(reqwest::Method::POST, CONFIGURATION)
                .json(&document);
            let imported = remote.send(request).await?;
            let count = |key: &str| imported[key].as_array().map_or(0, Vec::len);
            eprintln!(
                "imported {} actions, {} conditions, {} subscriptions",
                count("actions"),
                count("conditions"),
                count("subscriptions")
            );
        }
        ConfigCommand::TestAction {
            remote,
            name,
            event,
        } => {
            let path = format!("/tocsin/v1/actions/{}/test", path_segment(&name));
            let mut request = remote.request(reqwest::Method::POST, &path);
            if let Some(file) = event {
                request = request.json(&read_json(&file)?);
            }
            let outcome = remote.send(request).await?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            if outcome["delivered"] != true {
                bail!(
                    "not delivered: {}",
                    outcome["reason"].as_str().unwrap_or("no reason given")
                );
            }
        }
    }
    Ok(())
}

/// The JSON document in `file` (`-`: stdin).
fn read_json(file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// `text` percent-encoded as one URL path segment (the other commands that name something in
/// a path use it too).
pub fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
