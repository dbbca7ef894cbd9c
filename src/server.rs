//! `tocsin serve`: opens the data directory, starts the bus, the router and the delivery
//! workers, and serves the HTTP APIs until SIGTERM or SIGINT.
//!
//! Shutdown runs in pipeline order: the HTTP server stops accepting and finishes the requests
//! in flight (so every 202 it sends is honoured); then the router and the workers stop taking
//! messages and finish those in hand; whatever they had not started stays queued.

use crate::credentials;
use crate::listener;
use crate::observability::{self, Probe};
use crate::settings::{Backend, Settings};
use anyhow::Context;
use bus::{Bus, EmbeddedBus, RabbitBus, RabbitSettings};
use delivery::channels::Channels;
use delivery::records::{RecordStore, Region};
use delivery::worker::Durable;
use delivery::{DeliveryConfig, DeliveryWorker};
use ingest::sources::idempotency::Idempotency;
use ingest::sources::oci::OciSource;
use metrics::Metrics;
use model::Configuration;
use router::silences::Silences;
use router::store::ConfigStore;
use router::{Router, RouterConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use warp::Filter;
use web::act_link::ActLinks;
use web::{Authenticator, RateLimiter, Scope};

/// Largest configuration import accepted: a whole routing setup can be far larger than an event.
const CONFIGURATION_BODY_LIMIT: u64 = 16 * 1024 * 1024;

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let _lock = lock_data_dir(data_dir)?;

    // --- observability (issue 7): one registry for the process -----------------------------
    let metrics = Arc::new(Metrics::new());
    let bus: Arc<dyn Bus> = match settings.bus.backend {
        Backend::Embedded => Arc::new(
            EmbeddedBus::open(
                &data_dir.join("queue.db"),
                Some(metrics.commit_observer("queue")),
            )?
            .with_delivery_limit(settings.bus.delivery_limit),
        ),
        Backend::Rabbitmq => Arc::new(RabbitBus::start(RabbitSettings {
            uri: settings.bus.url.clone(),
            prefix: settings.bus.prefix.clone(),
            delivery_limit: settings.bus.delivery_limit,
            publish_timeout: Duration::from_millis(settings.bus.publish_timeout_ms),
            delivery_partitions: settings.bus.delivery_partitions.get(),
        })),
    };
    // --- end of observability ---------------------------------------------------------------
    let region = Region {
        name: settings.region.clone(),
        kind: settings.region_type.clone(),
    };
    settings.store.check()?;
    settings.links.check().map_err(anyhow::Error::msg)?;
    let location = store::Location::open(settings.store.backend, data_dir, &settings.store.url.0)
        .await
        .context("cannot open the store ([store] backend and url)")?;
    let records = match &location {
        store::Location::Sqlite(dir) => RecordStore::open(
            &dir.join("records.db"),
            region,
            Some(metrics.commit_observer("records")),
        )?,
        store::Location::Postgres(database) => RecordStore::on_postgres(database, region).await?,
    };
    let clients = credentials::clients(&settings.auth.clients, data_dir)?;
    let auth = Arc::new(Authenticator::new(
        &clients,
        credentials::token_key(&settings.auth.token_secret.0, data_dir)?,
        Duration::from_secs(settings.auth.token_lifetime_seconds),
    )?);
    // Who may act through links and chat; the links' minter, shared by delivery and the pages.
    let directory = Arc::new(chat::settings::Directory::read(&settings.chat.identities)?);
    let act_links = ActLinks::new(
        &settings.links,
        auth.derived_key("action link"),
        directory
            .mailboxes_with(Scope::Responder)
            .map(str::to_owned),
    )
    .map(Arc::new);
    // The channels check every action when it is saved, so they come before the configuration.
    let channels = Channels::open(
        records.clone(),
        &location,
        &settings.channels,
        act_links.clone(),
    )
    .await?;
    for channel in channels.types() {
        metrics.register_channel(channel);
    }
    let config_store = Arc::new(
        ConfigStore::open(
            &location,
            Arc::clone(&bus),
            Arc::new(channels.clone()),
            credentials::store_keys(&settings.store, data_dir)?,
        )
        .await?,
    );
    if let Some(imported) = load_configuration(&settings)? {
        config_store
            .change(|configuration, types| router::api::replace(configuration, imported, types))
            .await
            .context("the imported configuration was refused")?;
    }
    let catalog = config_store.catalog();
    // Routers take changes from other processes before each batch; this keeps the delivery
    // side current too when no events flow here.
    let refresher = tokio::spawn(Arc::clone(&config_store).follow());
    let limiter = Arc::new(RateLimiter::new(
        settings.rate_limit.limit()?,
        clients.iter().map(|c| c.name.as_str()),
    ));

    let alerts = store::alerts::AlertStore::open(&location).await?;
    let audit = store::audit::AuditLog::open(&location).await?;
    let silences = Arc::new(
        Silences::open(store::silences::SilenceStore::open(&location).await?)
            .await
            .context("cannot read the silences")?,
    );
    let (stop_pipeline, pipeline_stopping) = watch::channel(false);
    let router = Router::new(
        RouterConfig {
            prefetch: settings.router.prefetch,
        },
        Arc::clone(&bus),
        Arc::clone(&config_store),
        alerts.clone(),
        Arc::clone(&silences),
        Arc::clone(&metrics),
    );
    let router = tokio::spawn(router.run(pipeline_stopping.clone()));
    let releaser = tokio::spawn(router::silences::release::run(
        Arc::clone(&silences),
        alerts.clone(),
        Arc::clone(&bus),
        pipeline_stopping.clone(),
    ));
    let unmuter = tokio::spawn(router::mutes::release::run(
        Arc::clone(&config_store),
        alerts.clone(),
        Arc::clone(&bus),
        pipeline_stopping.clone(),
    ));
    let durable = Durable::open(&location).await?;
    let groups = durable.groups.clone();
    let worker = DeliveryWorker::new(
        DeliveryConfig {
            prefetch: settings.delivery.prefetch,
            retry: settings.delivery.retry.clone(),
        },
        Arc::clone(&bus),
        catalog,
        channels.clone(),
        records.clone(),
        durable,
        Arc::clone(&metrics),
    );
    let retention = tokio::spawn(delivery::retention::run(
        records.clone(),
        alerts.clone(),
        silences.store().clone(),
        Duration::from_secs(settings.delivery.retention_hours * 3600),
        Duration::from_secs(settings.delivery.retention_sweep_seconds.max(1)),
        pipeline_stopping.clone(),
    ));
    let worker = tokio::spawn(worker.run(pipeline_stopping));

    let oci = OciSource::open(
        settings.sources.oci.config(settings.body_limit_bytes)?,
        &location,
    )
    .await?;
    let idempotency = Idempotency::open(
        &location,
        Duration::from_secs(settings.sources.idempotency_window_seconds),
    )
    .await
    .context("cannot open the idempotency window")?;
    let probe = Probe {
        bus: Arc::clone(&bus),
        records: records.clone(),
        alerts,
        config: Arc::clone(&config_store),
        channels,
        groups,
        metrics,
    };
    let routes = api_routes(
        &settings,
        &auth,
        &limiter,
        Arc::clone(&bus),
        SourceState { oci, idempotency },
        ActState {
            silences,
            audit,
            act_links,
            directory,
        },
        probe,
    );
    let certificate = listener::Certificate::open(&settings.tls)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        https = certificate.is_some(),
        backend = bus.backend(),
        data_dir = %data_dir.display(),
        "Tocsin is listening"
    );
    listener::serve(routes, listener, certificate, termination()).await;
    tracing::info!("HTTP stopped; finishing the work in hand");
    stop_pipeline.send_replace(true);
    refresher.abort();
    router.await?.context("router")?;
    releaser.await?;
    unmuter.await?;
    worker.await?.context("delivery")?;
    retention.await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// What the sources keep between requests.
struct SourceState {
    oci: OciSource,
    idempotency: Idempotency,
}

/// What people's acts go through besides the alerts: the silences, and the audit log.
struct ActState {
    silences: Arc<Silences>,
    audit: store::audit::AuditLog,
    /// The action links' minter and reader, when `[links] public_url` is set.
    act_links: Option<Arc<ActLinks>>,
    /// Who may act through chat and links.
    directory: Arc<chat::settings::Directory>,
}

fn api_routes(
    settings: &Settings,
    auth: &Arc<Authenticator>,
    limiter: &Arc<RateLimiter>,
    bus: Arc<dyn Bus>,
    SourceState { oci, idempotency }: SourceState,
    ActState {
        silences,
        audit,
        act_links,
        directory,
    }: ActState,
    probe: Probe,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
    let metrics = Arc::clone(&probe.metrics);
    let config_store = Arc::clone(&probe.config);
    // The alarm sources, each with its own routes.
    let mount = ingest::sources::Mount {
        bus: Arc::clone(&bus),
        metrics: Arc::clone(&metrics),
        body_limit: settings.body_limit_bytes,
        producer: limiter.guard(auth.identify(Scope::Producer)).boxed(),
        reader: auth.require(Scope::Configuration).boxed(),
        idempotency,
    };
    let sources = ingest::sources::ans::mount(&mount)
        .or(oci.mount(&mount))
        .unify()
        .or(ingest::sources::alertmanager::mount(&mount))
        .unify();
    let records = probe.records.clone();
    let consumer = delivery::consumer_api::routes(records.clone(), auth.require(Scope::Consumer));
    let operator = delivery::operator_api::routes(
        records,
        Arc::clone(&bus),
        auth.require(Scope::Consumer),
        auth.require(Scope::Configuration),
    );
    let catalog = config_store.catalog();
    let action_test = delivery::action_test::routes(
        Arc::clone(&catalog),
        probe.channels.clone(),
        settings.body_limit_bytes,
        auth.require(Scope::Configuration),
    );
    let configuration = router::api::routes(
        config_store,
        CONFIGURATION_BODY_LIMIT,
        auth.require(Scope::Configuration),
    );
    let acts = alerts::State {
        alerts: probe.alerts.clone(),
        records: probe.records.clone(),
        links: probe.channels.links(),
        catalog,
        bus: Arc::clone(&bus),
        audit: audit.clone(),
    };
    let alerts = alerts::routes(acts.clone(), auth.identify(Scope::Responder));
    let audit_api = alerts::audit::routes(audit.clone(), auth.require(Scope::Configuration));
    let console = console::routes(
        console::Console {
            alerts: acts.clone(),
            records: probe.records.clone(),
            bus: Arc::clone(&bus),
            config: Arc::clone(&probe.config),
            channels: probe.channels.clone(),
            silences: Arc::clone(&silences),
            metrics: Arc::clone(&metrics),
            body_limit: CONFIGURATION_BODY_LIMIT,
            act_links,
            directory: Arc::clone(&directory),
        },
        auth,
        &settings.console,
        matches!(settings.tls.files(), Ok(Some(_))),
    );
    let chat = chat::Chat::new(&settings.chat, directory, acts, Arc::clone(&silences));
    let silences = router::silences::api::routes(silences, audit, auth.identify(Scope::Responder));
    // /healthz, /readyz, /openapi.json, and /metrics (consumer scope unless metrics.public).
    let metrics_guard = if settings.metrics.public {
        warp::any().boxed()
    } else {
        auth.require(Scope::Consumer).boxed()
    };
    let health = observability::routes(probe, metrics_guard);
    auth.token_endpoint()
        .or(sources)
        .or(consumer)
        .or(operator)
        .or(action_test)
        .or(configuration)
        .or(alerts)
        .or(silences)
        .or(audit_api)
        .or(chat::slack::routes(chat))
        .or(console)
        .or(crate::dead_letters::routes(Arc::clone(&bus), auth))
        .or(health)
        .recover(web::recover)
        .with(observability::instrument(metrics))
}

/// The configuration file to import at start, if one is set.
fn load_configuration(settings: &Settings) -> anyhow::Result<Option<Configuration>> {
    let Some(path) = settings.config_import() else {
        return Ok(None);
    };
    let configuration = read_configuration(path)?;
    tracing::info!(
        file = %path.display(),
        actions = configuration.actions.len(),
        conditions = configuration.conditions.len(),
        subscriptions = configuration.subscriptions.len(),
        "configuration imported"
    );
    Ok(Some(configuration))
}

/// A configuration file in the ANS import format, parsed (not yet checked).
pub fn read_configuration(path: &std::path::Path) -> anyhow::Result<Configuration> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an ANS configuration", path.display()))
}

/// One process per data directory: the embedded queue's in-flight state lives in memory.
fn lock_data_dir(data_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("tocsin.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another Tocsin process is using {}; give each process its own data_dir",
            data_dir.display()
        )
    })?;
    Ok(file)
}

async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
