//! `tocsin check`: validates a settings file and, optionally, a routing file (ANS import
//! format) offline, for CI: exit 0 when both are fine; 1 with one line per problem when not
//! (usage errors exit 2, as for every subcommand). It calls the checks `serve` applies at start
//! and on import (every action checked by its channel), so it accepts what the server would.

use crate::listener::Certificate;
use crate::server::read_configuration;
use crate::settings::Settings;
use anyhow::Context;
use delivery::channels::{ChannelSettings, Channels};
use delivery::records::{RecordStore, Region};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(settings_file: Option<&Path>, routing_file: Option<&Path>) -> ExitCode {
    let mut problems: Vec<anyhow::Error> = Vec::new();
    let settings = Settings::load(settings_file, std::env::vars());
    match &settings {
        Ok(settings) => problems.extend(settings_problems(settings)),
        Err(e) => problems.push(anyhow::anyhow!("{e}")),
    }
    if let Some(path) = routing_file {
        let channels = settings.map(|s| s.channels).unwrap_or_default();
        problems.extend(check_routing(path, &channels).await.err());
    }
    for problem in &problems {
        eprintln!("{problem:#}");
    }
    if !problems.is_empty() {
        return ExitCode::FAILURE;
    }
    let described = |what: &str, path: Option<&Path>| {
        path.map_or(format!("{what}: defaults and environment"), |p| {
            format!("{what} {}", p.display())
        })
    };
    println!("ok: {}", described("settings", settings_file));
    if let Some(path) = routing_file {
        println!("ok: routing {}", path.display());
    }
    ExitCode::SUCCESS
}

/// Checks a routing file as an import is checked: by [`model::Catalog::new`] with the channels
/// `serve` opens (over a scratch data directory, so nothing is written where Tocsin lives).
async fn check_routing(path: &Path, settings: &ChannelSettings) -> anyhow::Result<()> {
    let configuration = read_configuration(path)?;
    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let region = Region {
        name: String::new(),
        kind: String::new(),
    };
    let records = RecordStore::open(&scratch.path().join("records.db"), region, None)?;
    let scratch_dir = store::Location::Sqlite(scratch.path().to_owned());
    let channels = Channels::open(records, &scratch_dir, settings, None).await?;
    model::Catalog::new(configuration, &channels)
        .with_context(|| format!("{} would be refused", path.display()))?;
    Ok(())
}

/// What `serve` would refuse at start in settings that parsed.
fn settings_problems(settings: &Settings) -> Vec<anyhow::Error> {
    [
        settings
            .sources
            .oci
            .config(settings.body_limit_bytes)
            .err()
            .map(Into::into),
        settings.rate_limit.limit().err().map(Into::into),
        settings.store.check().err().map(Into::into),
        settings.links.check().err().map(anyhow::Error::msg),
        Certificate::open(&settings.tls).err(),
        web::Authenticator::new(&settings.auth.clients, Vec::new(), Duration::ZERO)
            .err()
            .map(Into::into),
    ]
    .into_iter()
    .flatten()
    .collect()
}
