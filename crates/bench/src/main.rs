//! `tocsin-bench`: measures how fast a Tocsin accepts a burst of events and how fast it stores
//! them end to end.
//!
//! It starts a Tocsin itself (`--backend embedded|rabbitmq`, the `tocsin` binary next to this
//! one, a fresh data directory, a STORE subscription) or points at one (`--url`, which must
//! route `eventType` `--event-type` to a STORE action). It then posts `--events` events with
//! `--concurrency` connections as fast as they are answered, and reports accepted/s, the POST
//! latency percentiles, and stored/s — the time until the last event shows up in
//! matched-events.
//!
//! `--mode pipeline` measures the whole path instead (see [`pipeline`]): WEB_HOOK to a local
//! sink plus STORE, open-loop at `--rate` for `--duration`, ingest→delivery percentiles, peak
//! RSS and lost events. `--mode rabbitmq-ceiling` measures the broker alone ([`ceiling`]).
//!
//! `--source oci` posts OCI alarm messages to the OCI Notifications endpoint instead, as OCI
//! would (one message per request, each with its own `X-OCI-NS-MessageId` and `dedupeKey`), and
//! waits for the `OCIAlarm` events.

mod ceiling;
mod pipeline;

/// The same allocator as Tocsin (docs/src/performance.md: measured with it in).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Burst)]
    mode: Mode,
    /// Events per second offered in pipeline mode (0: as fast as the connections allow).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of load in pipeline mode with a --rate.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The broker, for the rabbitmq backend and the ceiling mode.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Start a Tocsin on this backend (ignored with --url).
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
    /// Use a running Tocsin instead of starting one.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "admin")]
    user: String,
    /// Password for --user (with --url).
    #[arg(long, default_value = "")]
    password: String,
    /// The tocsin binary to start (default: next to this one).
    #[arg(long)]
    tocsin: Option<PathBuf>,
    /// Events in the burst.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events per request (1: resource-events; more: resource-events-batch).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value = "BenchStore")]
    event_type: String,
    /// What to post: ANS resource events, or OCI alarm messages (`--batch` is then 1).
    #[arg(long, value_enum, default_value_t = Source::Ans)]
    source: Source,
    /// Where the started Tocsins keep their state (`[store] backend`).
    #[arg(long, value_enum, default_value_t = Store::Sqlite)]
    store: Store,
    /// The PostgreSQL database for `--store postgres` (each run uses a fresh schema in it, and
    /// drops it after); by default the tests' database that `.ci/run` creates.
    #[arg(
        long,
        default_value = "postgres://tocsin_test:tocsin_test@127.0.0.1:5432/tocsin_test"
    )]
    store_url: String,
    /// Tocsin processes to start in pipeline mode (more than one needs `--backend rabbitmq`);
    /// the load is posted to them in turn.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// In pipeline mode, make the sink action group by these event property keys
    /// (comma-separated, e.g. `eventType`), waiting 1 s per group and between digests.
    #[arg(long)]
    group_by: Option<String>,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Store {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Source {
    Ans,
    Oci,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Mode {
    /// A burst of posts: accepted/s, POST latency, stored/s.
    Burst,
    /// The whole path: WEB_HOOK + STORE, delivered/s, ingest→delivery latency, RSS, losses.
    Pipeline,
    /// RabbitMQ alone: publish with confirms and consume through one quorum queue.
    RabbitmqCeiling,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Backend {
    Embedded,
    Rabbitmq,
}

struct Target {
    base: String,
    user: String,
    password: String,
    process: Option<Spawned>,
}

impl Target {
    /// The peak resident set of the Tocsin the bench started (Linux `VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.process.as_ref()?.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

struct Spawned {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.source == Source::Oci {
        args.batch = 1;
        args.event_type = "OCIAlarm".into();
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    match args.mode {
        Mode::Burst => {}
        Mode::RabbitmqCeiling => return ceiling::run(&args.amqp_url, args.events).await,
        Mode::Pipeline => {
            let load = pipeline::Load {
                rate: args.rate,
                duration: Duration::from_secs(args.duration),
                events: args.events,
                concurrency: args.concurrency,
                event_type: args.event_type.clone(),
                group_by: args.group_by.clone(),
            };
            if args.processes > 1 && matches!(args.backend, Backend::Embedded) {
                bail!("--processes above 1 needs --backend rabbitmq");
            }
            let store = StoreEnv::new(&args).await?;
            let ran = pipeline::run(load, store.shared(), async |routing| {
                let mut targets = Vec::with_capacity(args.processes);
                for _ in 0..args.processes {
                    targets.push(spawn(&args, &http, routing.clone(), &store.env).await?);
                }
                Ok(targets)
            })
            .await;
            store.drop_schema().await;
            return ran;
        }
    }
    let store = StoreEnv::new(&args).await?;
    let target = match &args.url {
        Some(url) => Target {
            base: url.clone(),
            user: args.user.clone(),
            password: args.password.clone(),
            process: None,
        },
        None => spawn(&args, &http, store_routing(&args.event_type), &store.env).await?,
    };
    let label = match &args.url {
        Some(url) => url.clone(),
        None => format!("{:?} backend (started by the bench)", args.backend),
    };
    let requests = args.events.div_ceil(args.batch);
    // Every event its own alert (its own `ans:sourceEventId`), as in a storm of many: events
    // sharing a key are delivered one after the other, by design.
    let path = match (args.source, args.batch) {
        (Source::Oci, _) => "/oci/v1/notifications",
        (Source::Ans, 1) => "/cf/producer/v1/resource-events",
        (Source::Ans, _) => "/cf/producer/v1/resource-events-batch",
    };
    let bodies = Arc::new(Bodies::new(&args.event_type));
    let oci_body = Arc::new(serde_json::to_vec(&oci_alarm())?);
    let url = Arc::new(format!("{}{path}", target.base));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, url, bodies, oci_body, next) = (
                http.clone(),
                Arc::clone(&url),
                Arc::clone(&bodies),
                Arc::clone(&oci_body),
                Arc::clone(&next),
            );
            let batch = args.batch;
            let (user, password) = (target.user.clone(), target.password.clone());
            let source = args.source;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= requests {
                        break;
                    }
                    let mut request = http
                        .post(url.as_str())
                        .basic_auth(&user, Some(&password))
                        .header("content-type", "application/json");
                    request = match source {
                        Source::Ans if batch == 1 => request.body(bodies.body(index)),
                        Source::Ans => request.body(bodies.batch(index * batch, batch)),
                        // Each message its own: OCI's redeliveries are not published twice.
                        Source::Oci => request
                            .header("X-OCI-NS-MessageType", "Notification")
                            .header("X-OCI-NS-MessageId", format!("bench-{index}"))
                            .header("X-OCI-NS-TopicName", "bench")
                            .body(
                                String::from_utf8_lossy(&oci_body)
                                    .replace(INDEX, &index.to_string()),
                            ),
                    };
                    let sent = Instant::now();
                    let response = request.send().await?;
                    if response.status() != 202 {
                        bail!(
                            "{} {}",
                            response.status(),
                            response.text().await.unwrap_or_default()
                        );
                    }
                    latencies.push(sent.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let accepted_in = started.elapsed();
    let total_events = requests * args.batch;
    let stored_in = wait_stored(&http, &target, &args.event_type, total_events, started).await?;
    latencies.sort();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    println!("target:      {label}");
    println!("source:      {:?}", args.source);
    println!(
        "burst:       {total_events} events, {requests} requests of {} event(s), {} connections",
        args.batch, args.concurrency
    );
    println!(
        "accepted/s:  {:.0}  ({:.2} s)",
        total_events as f64 / accepted_in.as_secs_f64(),
        accepted_in.as_secs_f64()
    );
    println!(
        "stored/s:    {:.0}  (last stored after {:.2} s)",
        total_events as f64 / stored_in.as_secs_f64(),
        stored_in.as_secs_f64()
    );
    println!(
        "POST latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        percentile(0.999),
        percentile(1.0)
    );
    drop(target);
    store.drop_schema().await;
    Ok(())
}

/// Where an OCI message's index goes.
const INDEX: &str = "{index}";

/// A split-mode v1.5 alarm message, as OCI Monitoring sends it, for metric stream [`INDEX`].
fn oci_alarm() -> serde_json::Value {
    json!({
        "dedupeKey": format!("bench-alarm-{INDEX}"),
        "title": "High CPU Utilization",
        "body": "Follow runbook at http://example.com/runbooks",
        "type": "OK_TO_FIRING",
        "severity": "CRITICAL",
        "timestampEpochMillis": 1_684_337_663_852_i64,
        "timestamp": "2023-05-17T15:34:23.852Z",
        "alarmMetaData": [{
            "id": "ocid1.alarm.oc1.iad.bench",
            "status": "FIRING",
            "severity": "CRITICAL",
            "namespace": "oci_computeagent",
            "query": "CpuUtilization[1m].mean() > 90",
            "totalMetricsFiring": 1,
            "dimensions": [{"resourceDisplayName": format!("bench-{INDEX}"), "resourceId": format!("ocid1.instance.oc1.iad.bench{INDEX}"), "region": "us-ashburn-1"}],
            "alarmUrl": "https://cloud.oracle.com/monitoring/alarms/ocid1.alarm.oc1.iad.bench?region=us-ashburn-1",
            "alarmSummary": "Alarm \"High CPU Utilization\" is in a \"FIRING\" state",
            "metricValues": [{"CpuUtilization[1m].mean()": "92"}]
        }],
        "notificationType": "Split messages per metric streams",
        "version": 1.5
    })
}

/// The request body of event `index`, from a template rendered once.
pub struct Bodies {
    parts: Vec<String>,
}

impl Bodies {
    const SLOT: &'static str = "p-SLOT";

    pub fn new(event_type: &str) -> Self {
        let template = event_keyed(event_type, Self::SLOT).to_string();
        Bodies {
            parts: template.split(Self::SLOT).map(str::to_owned).collect(),
        }
    }

    pub fn body(&self, index: usize) -> Bytes {
        Bytes::from(self.parts.join(&format!("p-{index}")))
    }

    /// A resource-events-batch body: events `first..first + count`.
    fn batch(&self, first: usize, count: usize) -> Bytes {
        let events: Vec<String> = (first..first + count)
            .map(|i| self.parts.join(&format!("p-{i}")))
            .collect();
        Bytes::from(format!("[{}]", events.join(",")))
    }
}

/// A realistic alert (about 350 bytes) whose `ans:sourceEventId` is `key`.
fn event_keyed(event_type: &str, key: &str) -> serde_json::Value {
    json!({
        "eventType": event_type,
        "resource": {"resourceName": key, "resourceType": "vm"},
        "severity": "WARNING",
        "category": "ALERT",
        "subject": "CPU above 90% on bench host",
        "body": "CPU utilization has been above 90% for 5 minutes on the bench host",
        "tags": {"ans:sourceEventId": key}
    })
}

async fn wait_stored(
    http: &reqwest::Client,
    target: &Target,
    event_type: &str,
    expected: usize,
    started: Instant,
) -> anyhow::Result<Duration> {
    let url = format!(
        "{}/cf/consumer/v1/matched-events?eventType={event_type}&pageSize=1",
        target.base
    );
    loop {
        let page: serde_json::Value = http
            .get(&url)
            .basic_auth(&target.user, Some(&target.password))
            .send()
            .await?
            .json()
            .await?;
        let stored = page["responseMetadata"]["totalResultsCount"]
            .as_u64()
            .context("a consumer page")? as usize;
        if stored >= expected {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {stored} of {expected} stored after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every bench event to a STORE action.
fn store_routing(event_type: &str) -> serde_json::Value {
    json!({
        "actions": [{"name": "bench-store", "type": "STORE", "state": "ENABLED"}],
        "conditions": [{"name": "bench-type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": event_type}],
        "subscriptions": [{"name": "bench", "state": "ENABLED", "conditions": ["bench-type"], "actions": ["bench-store"]}]
    })
}

/// The settings that put the started Tocsins' state where `--store` says: for PostgreSQL, a
/// fresh schema (so that counts see this run's records only) and one sealing key for all.
struct StoreEnv {
    env: Vec<(&'static str, String)>,
    scratch: Option<(String, String)>,
}

impl StoreEnv {
    async fn new(args: &Args) -> anyhow::Result<Self> {
        if args.store == Store::Sqlite {
            return Ok(StoreEnv {
                env: Vec::new(),
                scratch: None,
            });
        }
        let schema = format!("bench_{}", std::process::id());
        execute(&args.store_url, &format!("CREATE SCHEMA {schema}")).await?;
        let separator = if args.store_url.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{separator}options=-c%20search_path%3D{schema}",
            args.store_url
        );
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        Ok(StoreEnv {
            env: vec![
                ("TOCSIN_STORE_BACKEND", "postgres".into()),
                ("TOCSIN_STORE_URL", url),
                (
                    "TOCSIN_STORE_SECRET_KEY",
                    base64::engine::Engine::encode(&base64::engine::general_purpose::STANDARD, key),
                ),
            ],
            scratch: Some((args.store_url.clone(), schema)),
        })
    }

    /// Whether every process answers for every record (so one process's count is the count).
    fn shared(&self) -> bool {
        self.scratch.is_some()
    }

    async fn drop_schema(&self) {
        if let Some((url, schema)) = &self.scratch {
            if let Err(e) = execute(url, &format!("DROP SCHEMA {schema} CASCADE")).await {
                eprintln!("cannot drop the bench's schema {schema}: {e}");
            }
        }
    }
}

async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("PostgreSQL at {url}"))?;
    let connection = tokio::spawn(connection);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

async fn spawn(
    args: &Args,
    http: &reqwest::Client,
    routing_json: serde_json::Value,
    store_env: &[(&'static str, String)],
) -> anyhow::Result<Target> {
    let binary = match &args.tocsin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tocsin"),
    };
    let dir = tempfile::tempdir()?;
    let routing = dir.path().join("routing.json");
    std::fs::write(&routing, routing_json.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut command = Command::new(&binary);
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--config-import")
        .arg(&routing)
        .env("TOCSIN_LOG", "warn")
        // The sink listens on loopback, which the outbound policy forbids by default.
        .env("TOCSIN_CHANNELS_OUTBOUND_ALLOW", "127.0.0.0/8")
        .envs(store_env.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Backend::Rabbitmq = args.backend {
        // One fixed prefix: each run drains what it queued, so nothing piles up on the broker.
        command
            .env("TOCSIN_BUS_BACKEND", "rabbitmq")
            .env("TOCSIN_BUS_URL", &args.amqp_url)
            .env("TOCSIN_BUS_PREFIX", "tocsin-bench");
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            let credentials: toml::Table = toml::from_str(&std::fs::read_to_string(
                dir.path().join("data/initial-credentials.toml"),
            )?)?;
            let password = credentials["password"]
                .as_str()
                .context("a password")?
                .to_owned();
            return Ok(Target {
                base,
                user: "admin".into(),
                password,
                process: Some(Spawned { child, _dir: dir }),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("tocsin did not become ready")
}
