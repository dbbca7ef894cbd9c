//! The `tocsin` command: parses the command line, sets up logging, and runs the chosen
//! subcommand; those that need the settings load them (`config`, `alerts`, `silence` and
//! `dead-letters` need only their own options).
//! Errors end here, as `anyhow` reports with their causes.

mod alerts_cli;
mod check;
mod config_cli;
mod credentials;
mod dead_letters;
mod dead_letters_cli;
mod healthcheck;
mod listener;
mod observability;
mod server;
mod settings;
mod silence_cli;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: bursts delivered more with it, inside the noise; CPU per event at a fixed rate was
/// the same (docs/src/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tocsin: a self-hosted alert broker. It takes alarms in (the SAP Alert Notification service
/// producer API, OCI Notifications, …), routes them through subscriptions to actions, delivers
/// them, and keeps a record of every event it could not deliver.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Settings file (TOML). Every setting can also be given as a TOCSIN_* variable.
    #[arg(long, short, global = true, env = "TOCSIN_SETTINGS")]
    settings: Option<PathBuf>,

    /// Log format.
    #[arg(long, global = true, value_enum, env = "TOCSIN_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: HTTP APIs, router and delivery workers.
    Serve {
        /// Address to listen on (overrides `listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// AMQP URI of a RabbitMQ broker; selects the rabbitmq backend (overrides `bus.url`).
        #[arg(long)]
        bus_url: Option<String>,
        /// Replace the stored configuration with this file at start (ANS import format:
        /// actions, conditions, subscriptions).
        #[arg(long)]
        config_import: Option<PathBuf>,
    },
    /// Export or import the configuration of a running Tocsin.
    #[command(subcommand)]
    Config(config_cli::ConfigCommand),
    /// List, show and act on the alerts of a running Tocsin.
    #[command(subcommand)]
    Alerts(alerts_cli::AlertsCommand),
    /// Add, list and expire the silences of a running Tocsin.
    #[command(subcommand)]
    Silence(silence_cli::SilenceCommand),
    /// List or replay the dead letters of a running Tocsin.
    #[command(subcommand)]
    DeadLetters(dead_letters_cli::DeadLettersCommand),
    /// Check the settings (file, if given, and TOCSIN_* variables) and, optionally, a routing
    /// file, offline. Exit 0: fine; 1: problems (printed); 2: usage error.
    Check {
        /// A configuration in the ANS import format, checked as an import would be.
        #[arg(long)]
        routing: Option<PathBuf>,
    },
    /// Print the Argon2id hash of the password read from stdin (first line), for
    /// `[[auth.clients]] password`.
    HashPassword,
    /// GET /readyz on the configured listen address: exit 0 when ready, 1 when not. For
    /// container health checks.
    Healthcheck,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOCSIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let load_settings = || settings::Settings::load(cli.settings.as_deref(), std::env::vars());
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            bus_url,
            config_import,
        } => {
            let mut settings = load_settings()?;
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if let Some(data_dir) = data_dir {
                settings.data_dir = data_dir;
            }
            if let Some(url) = bus_url {
                settings.bus.url = url;
                settings.bus.backend = settings::Backend::Rabbitmq;
            }
            if let Some(file) = config_import {
                settings.config_import = file;
            }
            server::serve(settings).await?;
        }
        Command::Config(command) => config_cli::run(command).await?,
        Command::Alerts(command) => alerts_cli::run(command).await?,
        Command::Silence(command) => silence_cli::run(command).await?,
        Command::DeadLetters(command) => dead_letters_cli::run(command).await?,
        Command::Check { ref routing } => {
            return Ok(check::run(cli.settings.as_deref(), routing.as_deref()).await)
        }
        Command::HashPassword => credentials::print_password_hash()?,
        Command::Healthcheck => return Ok(healthcheck::run(&load_settings()?).await),
    }
    Ok(ExitCode::SUCCESS)
}
