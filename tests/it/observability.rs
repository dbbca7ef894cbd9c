//! Operating Tocsin, against the real binary: `/metrics` moves by exactly what happened on
//! both backends; promtool accepts the exposition, the alerting rules (and their unit tests)
//! and the scrape configuration; every metric the dashboard and the alerts query is exported;
//! `/readyz` says which part is down and nothing more; `/metrics` needs the consumer scope
//! unless made public; JSON logs carry one line per delivery outcome and no secret.

use crate::common::{
    event, refusing_address, route_everything_to, wait_for_listening, webhook, Backend,
    Destination, Tocsin,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One scrape of `/metrics`: every sample by its series as rendered (`name{labels}`).
pub(crate) struct Scrape {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("series and value");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of `series`, which must be exported.
    pub(crate) fn value(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} is not exported:\n{}", self.text))
    }

    /// The value of `series` as a starting point: zero when it does not exist yet (series
    /// with label values known in advance exist from the start, the others from their first
    /// event).
    fn since(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The metric families (`# TYPE` lines), with their types.
    fn families(&self) -> BTreeMap<&str, &str> {
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split_once(' '))
            .collect()
    }
}

async fn scrape(tocsin: &Tocsin) -> Scrape {
    let response = tocsin.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::parse(response.text().await.unwrap())
}

/// Scrapes until `done` holds for a scrape (the gauges sampled at scrape time catch up with
/// acks a moment after the records appear).
pub(crate) async fn scrape_until(
    tocsin: &Tocsin,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let started = Instant::now();
    loop {
        let scrape = scrape(tocsin).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// STORE for `HighCPU`, a webhook that cannot connect (one attempt) for `Unsupported`.
fn configuration() -> Value {
    json!({
        "actions": [
            {"name": "to-store", "type": "STORE", "state": "ENABLED"},
            {"name": "to-nowhere", "type": "WEB_HOOK", "state": "ENABLED",
             "properties": {"destination": format!("http://{}/refused", refusing_address()), "retryMaxAttempts": "1",
                            "password": "webhook-secret-w8", "username": "u"}}
        ],
        "conditions": [
            {"name": "stored-type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "HighCPU"},
            {"name": "unsupported-type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "Unsupported"}
        ],
        "subscriptions": [
            {"name": "store-it", "state": "ENABLED", "conditions": ["stored-type"], "actions": ["to-store"]},
            {"name": "cannot-deliver", "state": "ENABLED", "conditions": ["unsupported-type"], "actions": ["to-nowhere"]}
        ]
    })
}

const SINGLE: &str = "/cf/producer/v1/resource-events";
const BATCH: &str = "/cf/producer/v1/resource-events-batch";

async fn metrics_count_exactly_what_happened(backend: Backend) {
    let tocsin = Tocsin::start(backend, &configuration(), &[]).await;
    let before = scrape(&tocsin).await;

    // Accepted: 2 single + 2 in a batch + 1 that no subscription wants.
    tocsin.send(&event("HighCPU", "m-1")).await;
    tocsin.send(&event("HighCPU", "m-2")).await;
    let batch = json!([event("HighCPU", "m-3"), event("Unsupported", "m-4")]);
    let response = tocsin.post(BATCH, &batch).send().await.unwrap();
    assert_eq!(response.status(), 202);
    tocsin.send(&event("Nobody", "m-5")).await;
    // Rejected: one invalid, one without credentials.
    let mut invalid = event("HighCPU", "m-6");
    invalid.as_object_mut().unwrap().remove("severity");
    let response = tocsin.post(SINGLE, &invalid).send().await.unwrap();
    let message = crate::common::error_message(response, 400).await;
    assert!(message.contains("`severity`"), "{message}");
    let response = tocsin
        .http
        .post(tocsin.url(SINGLE))
        .json(&event("HighCPU", "m-7"))
        .send()
        .await
        .unwrap();
    crate::common::error_message(response, 401).await;

    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 3)
        .await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;
    let stored = "tocsin_deliveries_total{channel=\"STORE\",outcome=\"delivered\"}";
    let after = scrape_until(&tocsin, "queues drained, outcomes counted", |s| {
        s.samples.get("tocsin_queue_depth{queue=\"events\"}") == Some(&0.0)
            && s.samples.get("tocsin_queue_depth{queue=\"deliveries\"}") == Some(&0.0)
            && s.samples.get("tocsin_undelivered_records") == Some(&1.0)
            && s.value(stored) - before.value(stored) == 3.0
    })
    .await;
    let delta = |series: &str| after.value(series) - before.since(series);
    for (series, expected) in [
        ("tocsin_events_accepted_total{source=\"ans\"}", 5.0),
        (
            "tocsin_events_rejected_total{reason=\"invalid\",source=\"ans\"}",
            1.0,
        ),
        (
            "tocsin_events_rejected_total{reason=\"unauthenticated\",source=\"ans\"}",
            1.0,
        ),
        (
            "tocsin_events_rejected_total{reason=\"unavailable\",source=\"ans\"}",
            0.0,
        ),
        ("tocsin_events_accepted_total{source=\"alertmanager\"}", 0.0),
        ("tocsin_events_routed_total{outcome=\"matched\"}", 4.0),
        ("tocsin_events_routed_total{outcome=\"unmatched\"}", 1.0),
        ("tocsin_events_routed_total{outcome=\"undecodable\"}", 0.0),
        ("tocsin_delivery_jobs_queued_total", 4.0),
        (
            "tocsin_subscription_matches_total{subscription=\"store-it\"}",
            3.0,
        ),
        (
            "tocsin_subscription_matches_total{subscription=\"cannot-deliver\"}",
            1.0,
        ),
        ("tocsin_bus_reconnects_total", 0.0),
        // Delivery: 3 stored, 1 webhook that could not connect and may not retry.
        (stored, 3.0),
        (
            "tocsin_deliveries_total{channel=\"WEB_HOOK\",outcome=\"undelivered\"}",
            1.0,
        ),
        (
            "tocsin_deliveries_total{channel=\"WEB_HOOK\",outcome=\"delivered\"}",
            0.0,
        ),
        (
            "tocsin_delivery_attempts_total{channel=\"STORE\",reason=\"none\",result=\"success\"}",
            3.0,
        ),
        (
            "tocsin_delivery_attempts_total{channel=\"WEB_HOOK\",reason=\"connection\",result=\"permanent_failure\"}",
            1.0,
        ),
        (
            "tocsin_delivery_duration_seconds_count{channel=\"STORE\"}",
            3.0,
        ),
        (
            "tocsin_delivery_duration_seconds_count{channel=\"WEB_HOOK\"}",
            1.0,
        ),
        (
            "tocsin_delivery_latency_seconds_count{channel=\"STORE\"}",
            3.0,
        ),
        (
            "tocsin_delivery_latency_seconds_count{channel=\"WEB_HOOK\"}",
            0.0,
        ),
    ] {
        assert_eq!(delta(series), expected, "{series}");
    }
    // Requests by route pattern and status; the batch counts once.
    let requests = |route: &str, status: u16| {
        let series = format!(
            "tocsin_http_requests_total{{method=\"POST\",route=\"/{{platform}}/producer/v1/{route}\",status=\"{status}\"}}"
        );
        after.samples.get(&series).copied().unwrap_or(0.0)
            - before.samples.get(&series).copied().unwrap_or(0.0)
    };
    assert_eq!(requests("resource-events", 202), 3.0);
    assert_eq!(requests("resource-events-batch", 202), 1.0);
    assert_eq!(requests("resource-events", 400), 1.0);
    assert_eq!(requests("resource-events", 401), 1.0);

    // State sampled at scrape time.
    assert_eq!(after.value("tocsin_bus_connected"), 1.0);
    assert_eq!(after.value("tocsin_delivery_retry_backlog"), 0.0);
    assert_eq!(after.value("tocsin_build_info{version=\"0.1.0\"}"), 1.0);
    // Every record written is a commit of records.db; the embedded queue commits too.
    let commits = |database: &str| {
        let series =
            format!("tocsin_sqlite_commit_duration_seconds_count{{database=\"{database}\"}}");
        after.samples.get(&series).copied().unwrap_or(0.0)
            - before.samples.get(&series).copied().unwrap_or(0.0)
    };
    assert!(commits("records") >= 1.0, "{}", after.text);
    if backend == Backend::Embedded {
        assert!(commits("queue") >= 1.0, "{}", after.text);
    }
    tocsin.shutdown().await;
}

#[tokio::test]
async fn metrics_count_exactly_what_happened_embedded() {
    metrics_count_exactly_what_happened(Backend::Embedded).await;
}

#[tokio::test]
async fn metrics_count_exactly_what_happened_rabbitmq() {
    metrics_count_exactly_what_happened(Backend::Rabbitmq).await;
}

/// A webhook that fails once (503) and then succeeds: one retryable failure, a retry that
/// waits on the bus (the backlog), one success, one delivery whose latency includes the wait.
async fn metrics_count_a_retry(backend: Backend) {
    let mut answered = 0;
    let destination = Destination::start(move |_| {
        answered += 1;
        if answered == 1 {
            503
        } else {
            200
        }
    })
    .await;
    let flaky = webhook(
        "flaky",
        &destination.url,
        json!({"retryInitialDelayMs": "2000", "retryMaxAttempts": "3"}),
    );
    let tocsin = Tocsin::start(backend, &route_everything_to(vec![flaky]), &[]).await;
    let before = scrape(&tocsin).await;
    tocsin.send(&event("HighCPU", "r-1")).await;
    scrape_until(&tocsin, "the retry waiting", |s| {
        s.samples.get("tocsin_delivery_retry_backlog") == Some(&1.0)
    })
    .await;
    let delivered = "tocsin_deliveries_total{channel=\"WEB_HOOK\",outcome=\"delivered\"}";
    let after = scrape_until(&tocsin, "the retry delivered", |s| {
        s.value(delivered) - before.value(delivered) == 1.0
            && s.samples.get("tocsin_delivery_retry_backlog") == Some(&0.0)
    })
    .await;
    assert_eq!(destination.received().len(), 2);
    let delta = |series: &str| after.value(series) - before.since(series);
    for (series, expected) in [
        (
            "tocsin_delivery_attempts_total{channel=\"WEB_HOOK\",reason=\"server_error\",result=\"retryable_failure\"}",
            1.0,
        ),
        (
            "tocsin_delivery_attempts_total{channel=\"WEB_HOOK\",reason=\"none\",result=\"success\"}",
            1.0,
        ),
        (
            "tocsin_deliveries_total{channel=\"WEB_HOOK\",outcome=\"undelivered\"}",
            0.0,
        ),
        (
            "tocsin_delivery_duration_seconds_count{channel=\"WEB_HOOK\"}",
            2.0,
        ),
        (
            "tocsin_delivery_latency_seconds_count{channel=\"WEB_HOOK\"}",
            1.0,
        ),
        ("tocsin_events_accepted_total{source=\"ans\"}", 1.0),
    ] {
        assert_eq!(delta(series), expected, "{series}");
    }
    // The delivery came after the retry delay (2 s, less at most 20 % jitter).
    let latency = delta("tocsin_delivery_latency_seconds_sum{channel=\"WEB_HOOK\"}");
    assert!(latency >= 1.6, "latency {latency}");
    assert_eq!(after.value("tocsin_undelivered_records"), 0.0);
    tocsin.shutdown().await;
}

#[tokio::test]
async fn metrics_count_a_retry_embedded() {
    metrics_count_a_retry(Backend::Embedded).await;
}

#[tokio::test]
async fn metrics_count_a_retry_rabbitmq() {
    metrics_count_a_retry(Backend::Rabbitmq).await;
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// promtool, from `TOCSIN_PROMTOOL` or the `PATH`.
fn promtool() -> PathBuf {
    let path: PathBuf =
        std::env::var_os("TOCSIN_PROMTOOL").map_or_else(|| "promtool".into(), Into::into);
    let found = Command::new(&path).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool is not installed: run scripts/test (it installs the Debian package \
         `prometheus`), or put promtool on the PATH, or set TOCSIN_PROMTOOL"
    );
    path
}

/// Runs promtool with `args` (and `stdin`), asserting success; returns its output.
fn run_promtool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(stdin) = stdin {
        input.write_all(stdin.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The `tocsin_*` metric families an expression reads (a histogram's `_bucket`, `_sum` and
/// `_count` series belong to its family).
fn families_in(expression: &str, histograms: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expression;
    while let Some(start) = rest.find("tocsin_") {
        let name: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[start + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|family| histograms.contains(family))
            })
            .unwrap_or(&name)
            .to_owned();
        found.insert(family);
    }
    found
}

#[tokio::test]
async fn promtool_accepts_the_exposition_and_the_dashboard_and_alerts_read_exported_metrics() {
    let tocsin = Tocsin::start(Backend::Embedded, &configuration(), &[]).await;
    // Some traffic, so that histograms and labelled series have samples.
    tocsin.send(&event("HighCPU", "p-1")).await;
    tocsin.send(&event("Unsupported", "p-2")).await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;
    let scrape = scrape(&tocsin).await;

    let lint = run_promtool(&["check", "metrics"], Some(&scrape.text));
    assert!(lint.trim().is_empty(), "promtool lint findings:\n{lint}");
    run_promtool(
        &[
            "check",
            "rules",
            repo("deploy/prometheus/alerts.yml").to_str().unwrap(),
        ],
        None,
    );
    run_promtool(
        &[
            "test",
            "rules",
            repo("deploy/prometheus/alerts.test.yml").to_str().unwrap(),
        ],
        None,
    );
    run_promtool(
        &[
            "check",
            "config",
            repo("deploy/prometheus/prometheus.yml").to_str().unwrap(),
        ],
        None,
    );

    let families = scrape.families();
    let histograms: BTreeSet<&str> = families
        .iter()
        .filter(|(_, kind)| **kind == "histogram")
        .map(|(name, _)| *name)
        .collect();
    // The dashboard: every query reads exported families, and the panels an operator needs
    // at a glance are there.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/dashboards/tocsin.json")).unwrap(),
    )
    .unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queried.extend(families_in(target["expr"].as_str().unwrap(), &histograms));
        }
    }
    for needed in [
        "tocsin_events_accepted_total",             // ingest rate
        "tocsin_deliveries_total",                  // delivery success ratio
        "tocsin_delivery_latency_seconds",          // latency percentiles
        "tocsin_delivery_retry_backlog",            // retry backlog
        "tocsin_undelivered_records",               // undelivered count
        "tocsin_delivery_attempts_total",           // per-channel failures
        "tocsin_dead_letters",                      // dead letters
        "tocsin_alerts",                            // alerts firing by severity
        "tocsin_alert_time_to_acknowledge_seconds", // MTTA
        "tocsin_alert_time_to_resolve_seconds",     // MTTR
        "tocsin_alert_acts_total",                  // people's acts
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    // The alerting rules.
    let alerts = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    queried.extend(families_in(&alerts, &histograms));
    for family in &queried {
        assert!(
            families.contains_key(family.as_str()),
            "{family} is queried but not exported:\n{}",
            scrape.text
        );
    }
    tocsin.shutdown().await;
}

#[tokio::test]
async fn readyz_says_which_part_is_down_and_nothing_else() {
    // All up.
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let response = tocsin.http.get(tocsin.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ready", "backend": "embedded",
               "checks": {"bus": "ok", "records": "ok", "configuration": "ok"}})
    );
    tocsin.shutdown().await;

    // A broker that is not there: alive, not ready, and the URL (with its password) is not
    // told to whoever asks.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tocsin"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("TOCSIN_BUS_BACKEND", "rabbitmq")
        .env(
            "TOCSIN_BUS_URL",
            format!("amqp://tocsin:broker-pw-x7@{}/%2f", refusing_address()),
        )
        .env("TOCSIN_METRICS_PUBLIC", "true")
        .env("TOCSIN_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let base = format!(
        "http://{}",
        wait_for_listening(&mut child, &dir.path().join("log"), 0).await
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(started.elapsed() < Duration::from_secs(20), "not alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let text = response.text().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"status": "not ready", "backend": "rabbitmq",
               "checks": {"bus": "unavailable", "records": "ok", "configuration": "ok"}})
    );
    assert!(
        !text.contains("broker-pw-x7") && !text.contains("amqp"),
        "{text}"
    );
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = Scrape::parse(metrics.text().await.unwrap());
    assert_eq!(metrics.value("tocsin_bus_connected"), 0.0);
    assert!(!metrics.text.contains("broker-pw-x7"));
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("RabbitMQ"), "it tried to connect:\n{log}");
    assert!(
        !log.contains("broker-pw-x7"),
        "the broker password reached the log"
    );
}

#[tokio::test]
async fn metrics_need_the_consumer_scope_unless_public() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("tocsin.toml");
    std::fs::write(
        &settings,
        "[[auth.clients]]\nname = \"producer\"\npassword = \"p-pw\"\nscopes = [\"producer\"]\n\
         [[auth.clients]]\nname = \"scraper\"\npassword = \"s-pw\"\nscopes = [\"consumer\"]\n",
    )
    .unwrap();
    let settings = settings.display().to_string();
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &Value::Null,
        &[("TOCSIN_SETTINGS", &settings)],
    )
    .await;
    let metrics = tocsin.url("/metrics");
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(status(tocsin.http.get(&metrics)).await, 401);
    assert_eq!(
        status(
            tocsin
                .http
                .get(&metrics)
                .basic_auth("producer", Some("p-pw"))
        )
        .await,
        403
    );
    assert_eq!(
        status(
            tocsin
                .http
                .get(&metrics)
                .basic_auth("scraper", Some("s-pw"))
        )
        .await,
        200
    );
    let token: Value = tocsin
        .http
        .post(tocsin.url("/oauth/token?grant_type=client_credentials"))
        .basic_auth("scraper", Some("s-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap();
    assert_eq!(
        status(tocsin.http.get(&metrics).bearer_auth(bearer)).await,
        200
    );
    // Health and the API description need nothing.
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            status(tocsin.http.get(tocsin.url(open))).await,
            200,
            "{open}"
        );
    }
    tocsin.shutdown().await;

    let public = Tocsin::start(
        Backend::Embedded,
        &Value::Null,
        &[("TOCSIN_METRICS_PUBLIC", "true")],
    )
    .await;
    let response = public
        .http
        .get(public.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("tocsin_build_info"));
    public.shutdown().await;
}

#[tokio::test]
async fn json_logs_carry_each_delivery_outcome_and_no_secret() {
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &configuration(),
        &[("TOCSIN_LOG_FORMAT", "json")],
    )
    .await;
    let stored = tocsin.send(&event("HighCPU", "l-1")).await;
    let failed = tocsin.send(&event("Unsupported", "l-2")).await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;
    tocsin
        .wait_for_count("/cf/consumer/v1/matched-events", 1)
        .await;
    // The lines are written before the job is settled: wait for both.
    let started = Instant::now();
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = tocsin
            .log()
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .collect();
        let outcomes = lines
            .iter()
            .filter(|l| {
                ["delivered", "undelivered"]
                    .contains(&l["fields"]["message"].as_str().unwrap_or(""))
            })
            .count();
        if outcomes >= 2 {
            break lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let outcome = |message: &str, event: &Value| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message && l["fields"]["event"] == event["id"])
            .unwrap_or_else(|| panic!("no `{message}` line for {}:\n{}", event["id"], tocsin.log()))
            .clone()
    };
    let delivered = outcome("delivered", &stored);
    assert_eq!(delivered["fields"]["action"], "to-store");
    let undelivered = outcome("undelivered", &failed);
    assert_eq!(undelivered["fields"]["action"], "to-nowhere");
    let reason = undelivered["fields"]["reason"].as_str().unwrap();
    assert!(!reason.is_empty(), "{undelivered}");
    let log = tocsin.log();
    for secret in [tocsin.password.as_str(), "webhook-secret-w8"] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    tocsin.shutdown().await;
}

/// `/readyz` until it answers `status`, its body.
async fn readyz_until(tocsin: &Tocsin, status: u16) -> Value {
    let started = Instant::now();
    loop {
        let response = tocsin.http.get(tocsin.url("/readyz")).send().await.unwrap();
        if response.status() == status {
            return response.json().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz does not answer {status}: {}\n{}",
            response.text().await.unwrap(),
            tocsin.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_records_database_is_unreachable() {
    let (url, database) = crate::common::relayed_postgres_schema().await;
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &Value::Null,
        &crate::shared_store::shared_store(&url),
    )
    .await;
    readyz_until(&tocsin, 200).await;
    database.cut();
    let body = readyz_until(&tocsin, 503).await;
    // The configuration lives in the same database as the records.
    assert_eq!(
        body,
        json!({"status": "not ready", "backend": "embedded",
               "checks": {"bus": "ok", "records": "unavailable", "configuration": "unavailable"}})
    );
    // Ready again once the database is back, without a restart.
    database.restore();
    let body = readyz_until(&tocsin, 200).await;
    assert_eq!(body["checks"]["records"], "ok");
    tocsin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_stored_configuration_is_unreadable() {
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    readyz_until(&tocsin, 200).await;
    // The configuration's table goes away under the running process, as in a damaged file.
    let config = rusqlite::Connection::open(tocsin.data_dir.join("config.db")).unwrap();
    config.busy_timeout(Duration::from_secs(5)).unwrap();
    config
        .execute_batch("ALTER TABLE configuration RENAME TO configuration_away")
        .unwrap();
    let body = readyz_until(&tocsin, 503).await;
    assert_eq!(
        body,
        json!({"status": "not ready", "backend": "embedded",
               "checks": {"bus": "ok", "records": "ok", "configuration": "unavailable"}})
    );
    config
        .execute_batch("ALTER TABLE configuration_away RENAME TO configuration")
        .unwrap();
    readyz_until(&tocsin, 200).await;
    tocsin.shutdown().await;
}
