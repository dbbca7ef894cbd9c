//! Every metric Tocsin exports, in one Prometheus registry, as typed calls.
//!
//! The binary creates one [`Metrics`] and hands an `Arc<Metrics>` to each component, which
//! reports what it does (`metrics.events_accepted("ans", 3)`); `/metrics` serves
//! [`Metrics::render`]. There is no global registry: each `Metrics` is independent, so tests can
//! make their own and read exactly what they caused.
//!
//! Names follow the Prometheus conventions: the `tocsin_` prefix, `_total` on counters, base
//! units (`_seconds`). Label values are bounded by construction: the source, channel and route
//! labels take `&'static str` (names compiled into Tocsin, never request data), the others are
//! enums, HTTP statuses, or subscription names (set by the configuration). Event ids, resource
//! names and URLs never become label values. Known label values are created at zero, so a series
//! exists before its first event and `rate()` sees the first one.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A counter handed out for a hot path: incrementing it is one atomic add.
pub use prometheus::IntCounter as Counter;

/// What a storage commit observer is (the `storage::CommitObserver` type): the writes in the
/// commit and how long it took.
pub type CommitObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// Why a source refused a request (`tocsin_events_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// 400: the body is not a valid event.
    Invalid,
    /// 401: no or wrong credentials.
    Unauthenticated,
    /// 403: credentials without the producer scope.
    Forbidden,
    /// 413: body over the limit.
    TooLarge,
    /// 415: not JSON.
    UnsupportedMediaType,
    /// 429: the client is over its rate limit.
    RateLimited,
    /// 503: the bus could not take the events.
    Unavailable,
    /// Any other error status.
    Other,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Invalid,
        RejectReason::Unauthenticated,
        RejectReason::Forbidden,
        RejectReason::TooLarge,
        RejectReason::UnsupportedMediaType,
        RejectReason::RateLimited,
        RejectReason::Unavailable,
        RejectReason::Other,
    ];

    /// The reason an error status stands for; `None` for a success (below 400).
    pub fn from_status(status: u16) -> Option<RejectReason> {
        Some(match status {
            0..=399 => return None,
            400 | 422 => RejectReason::Invalid,
            401 => RejectReason::Unauthenticated,
            403 => RejectReason::Forbidden,
            413 => RejectReason::TooLarge,
            415 => RejectReason::UnsupportedMediaType,
            429 => RejectReason::RateLimited,
            503 => RejectReason::Unavailable,
            _ => RejectReason::Other,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Invalid => "invalid",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::Forbidden => "forbidden",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnsupportedMediaType => "unsupported_media_type",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::Unavailable => "unavailable",
            RejectReason::Other => "other",
        }
    }
}

/// How the router disposed of an event (`tocsin_events_routed_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// At least one action: delivery jobs were queued.
    Matched,
    /// No subscription fired.
    Unmatched,
    /// Not an event: dead-lettered.
    Undecodable,
}

impl RouteOutcome {
    pub const ALL: [RouteOutcome; 3] = [
        RouteOutcome::Matched,
        RouteOutcome::Unmatched,
        RouteOutcome::Undecodable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteOutcome::Matched => "matched",
            RouteOutcome::Unmatched => "unmatched",
            RouteOutcome::Undecodable => "undecodable",
        }
    }
}

/// What kind of failure a delivery attempt met (`tocsin_delivery_attempts_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The destination refused the request (4xx other than the ones below).
    ClientError,
    /// The destination failed (5xx).
    ServerError,
    /// The destination refused the credentials (401, 403, 407; SMTP 530, 534, 535).
    AuthError,
    /// The destination asked to slow down (429).
    RateLimited,
    /// No answer in time.
    Timeout,
    /// The destination could not be reached, or the connection broke.
    Connection,
    /// Not attempted: the destination's circuit breaker is open.
    CircuitOpen,
    /// The action is missing, of an unsupported type, or configured wrongly.
    Configuration,
    /// The destination said yes but its answer reports an error or cannot be used.
    BadAnswer,
    /// Tocsin could not write locally.
    Local,
}

impl FailureKind {
    pub const ALL: [FailureKind; 10] = [
        FailureKind::ClientError,
        FailureKind::ServerError,
        FailureKind::AuthError,
        FailureKind::RateLimited,
        FailureKind::Timeout,
        FailureKind::Connection,
        FailureKind::CircuitOpen,
        FailureKind::Configuration,
        FailureKind::BadAnswer,
        FailureKind::Local,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::ClientError => "client_error",
            FailureKind::ServerError => "server_error",
            FailureKind::AuthError => "auth_error",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Timeout => "timeout",
            FailureKind::Connection => "connection",
            FailureKind::CircuitOpen => "circuit_open",
            FailureKind::Configuration => "configuration",
            FailureKind::BadAnswer => "bad_answer",
            FailureKind::Local => "local",
        }
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Success,
    Failure {
        kind: FailureKind,
        /// Whether it will be tried again.
        retryable: bool,
    },
}

impl Attempt {
    /// The `result` and `reason` label values.
    fn labels(self) -> [&'static str; 2] {
        match self {
            Attempt::Success => ["success", "none"],
            Attempt::Failure {
                kind,
                retryable: true,
            } => ["retryable_failure", kind.as_str()],
            Attempt::Failure {
                kind,
                retryable: false,
            } => ["permanent_failure", kind.as_str()],
        }
    }
}

/// How a delivery job ended for good (`tocsin_deliveries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Recorded as an undelivered event.
    Undelivered,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Undelivered => "undelivered",
        }
    }
}

/// Through what a person acted on an alert (`tocsin_alert_acts_total{channel}`): the act's
/// `via`, bounded here — chat and console join when they can act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActChannel {
    /// The alerts API (the CLI acts through it).
    Api,
    /// The web console.
    Console,
    /// Slack's buttons and slash command (the `chat` crate).
    Slack,
    /// A `via` this Tocsin does not know (an act queued by a newer process sharing the bus).
    Other,
}

impl ActChannel {
    pub const ALL: [ActChannel; 4] = [
        ActChannel::Api,
        ActChannel::Console,
        ActChannel::Slack,
        ActChannel::Other,
    ];

    /// The channel an act's `via` names.
    pub fn from_via(via: &str) -> ActChannel {
        match via {
            "api" => ActChannel::Api,
            "console" => ActChannel::Console,
            "slack" => ActChannel::Slack,
            _ => ActChannel::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ActChannel::Api => "api",
            ActChannel::Console => "console",
            ActChannel::Slack => "slack",
            ActChannel::Other => "other",
        }
    }
}

/// The registry and a handle on every metric.
pub struct Metrics {
    registry: Registry,
    events_accepted: IntCounterVec,
    events_rejected: IntCounterVec,
    events_deduplicated: IntCounterVec,
    events_routed: IntCounterVec,
    delivery_jobs_queued: IntCounter,
    events_silenced: IntCounter,
    events_muted: IntCounter,
    subscription_matches: IntCounterVec,
    /// Subscriptions with a `subscription_matches` series.
    subscriptions: Mutex<HashSet<String>>,
    deliveries: IntCounterVec,
    delivery_attempts: IntCounterVec,
    delivery_duration: HistogramVec,
    delivery_latency: HistogramVec,
    retry_backlog: IntGauge,
    circuits: IntGaugeVec,
    undelivered_records: IntGauge,
    queue_depth: IntGaugeVec,
    dead_letters: IntGauge,
    bus_connected: IntGauge,
    bus_reconnects: IntCounter,
    store_available: IntGauge,
    commit_duration: HistogramVec,
    commit_writes: HistogramVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    alerts: IntGaugeVec,
    time_to_acknowledge: Histogram,
    time_to_resolve: Histogram,
    alert_acts: IntCounterVec,
    events_held: IntCounterVec,
    held: IntGauge,
    digests: IntCounterVec,
    digest_events: HistogramVec,
    digest_repeats: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Ingest to delivery includes waiting in queues and, with retries, minutes to hours.
const END_TO_END_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Events per digest: one (a storm's first straggler) to a digest's limit.
const DIGEST_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
const WRITES_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// People take from seconds (a quick acknowledgement) to a day (a weekend's resolution).
const RESPONSE_BUCKETS: &[f64] = &[
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered, and `tocsin_build_info` set.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            register(&registry, vec)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(&registry, HistogramVec::new(opts, labels).expect("valid"))
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("valid gauge"))
        };
        let response_time = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(RESPONSE_BUCKETS.to_vec());
            register(&registry, Histogram::with_opts(opts).expect("valid"))
        };
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "tocsin_build_info",
                    "Always 1; the labels say which Tocsin this is.",
                ),
                &["version"],
            )
            .expect("valid gauge"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let metrics = Metrics {
            events_accepted: counter(
                "tocsin_events_accepted_total",
                "Events accepted (durably queued), by source.",
                &["source"],
            ),
            events_deduplicated: counter(
                "tocsin_events_deduplicated_total",
                "Events not published again, by source: a repeated Idempotency-Key request \
                 answered with its first answer, an Alertmanager alert re-sent unchanged.",
                &["source"],
            ),
            events_rejected: counter(
                "tocsin_events_rejected_total",
                "Requests to a source refused, by source and reason (a refused batch counts once).",
                &["source", "reason"],
            ),
            events_routed: counter(
                "tocsin_events_routed_total",
                "Events the router has taken off the events queue, by outcome.",
                &["outcome"],
            ),
            delivery_jobs_queued: register(
                &registry,
                IntCounter::new(
                    "tocsin_delivery_jobs_queued_total",
                    "Delivery jobs (one per event and action) the router queued.",
                )
                .expect("valid counter"),
            ),
            events_silenced: register(
                &registry,
                IntCounter::new(
                    "tocsin_events_silenced_total",
                    "Matched events a silence held back from their destinations.",
                )
                .expect("valid counter"),
            ),
            events_muted: register(
                &registry,
                IntCounter::new(
                    "tocsin_events_muted_total",
                    "Events a time interval kept from at least one subscription whose conditions they met.",
                )
                .expect("valid counter"),
            ),
            subscription_matches: counter(
                "tocsin_subscription_matches_total",
                "Events a subscription fired for, by subscription name.",
                &["subscription"],
            ),
            subscriptions: Mutex::new(HashSet::new()),
            deliveries: counter(
                "tocsin_deliveries_total",
                "Delivery jobs finished, by channel (action type) and outcome.",
                &["channel", "outcome"],
            ),
            delivery_attempts: counter(
                "tocsin_delivery_attempts_total",
                "Delivery attempts, by channel, result and failure reason.",
                &["channel", "result", "reason"],
            ),
            delivery_duration: histogram(
                "tocsin_delivery_duration_seconds",
                "Duration of one delivery attempt, by channel.",
                &["channel"],
                LATENCY_BUCKETS,
            ),
            delivery_latency: histogram(
                "tocsin_delivery_latency_seconds",
                "From an event's acceptance (its 202) to its delivery, by channel.",
                &["channel"],
                END_TO_END_BUCKETS,
            ),
            events_held: counter(
                "tocsin_delivery_events_held_total",
                "Delivery jobs held back to go out in a digest, by reason: `group` (the action \
                 groups) or `storm` (storm control found no token for its destination).",
                &["reason"],
            ),
            held: gauge(
                "tocsin_delivery_held",
                "Delivery jobs waiting in their groups for a digest.",
            ),
            digests: counter(
                "tocsin_digests_total",
                "Digests (groups flushed into one message) that ended, by channel and outcome.",
                &["channel", "outcome"],
            ),
            digest_events: histogram(
                "tocsin_digest_events",
                "Events named in one digest, by channel.",
                &["channel"],
                DIGEST_BUCKETS,
            ),
            digest_repeats: counter(
                "tocsin_digest_repeats_total",
                "Repeats of a group's firing alerts (an action's repeatIntervalSeconds), by \
                 channel and outcome.",
                &["channel", "outcome"],
            ),
            retry_backlog: gauge(
                "tocsin_delivery_retry_backlog",
                "Delivery jobs waiting for a retry.",
            ),
            circuits: {
                let circuits = register(
                    &registry,
                    IntGaugeVec::new(
                        Opts::new(
                            "tocsin_delivery_circuits",
                            "Destinations whose circuit is not closed, by state (open, half_open).",
                        ),
                        &["state"],
                    )
                    .expect("valid gauge"),
                );
                for state in ["open", "half_open"] {
                    circuits.with_label_values(&[state]).set(0);
                }
                circuits
            },
            undelivered_records: gauge(
                "tocsin_undelivered_records",
                "Undelivered events on record (the undelivered-events API).",
            ),
            queue_depth: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tocsin_queue_depth",
                        "Messages in a bus queue, in flight included, by queue (a message holds one payload or a batch of up to 128).",
                    ),
                    &["queue"],
                )
                .expect("valid gauge"),
            ),
            dead_letters: gauge(
                "tocsin_dead_letters",
                "Messages in the bus's dead letters, waiting to be read and replayed (the dead-letters API).",
            ),
            bus_connected: gauge(
                "tocsin_bus_connected",
                "1 when the bus can take messages (connected, topology declared), else 0.",
            ),
            bus_reconnects: register(
                &registry,
                IntCounter::new(
                    "tocsin_bus_reconnects_total",
                    "Broker connections lost and re-established.",
                )
                .expect("valid counter"),
            ),
            store_available: gauge(
                "tocsin_store_available",
                "1 when the store answers (always, for SQLite files), else 0: delivery pauses.",
            ),
            commit_duration: histogram(
                "tocsin_sqlite_commit_duration_seconds",
                "Duration of one SQLite commit (group of writes), by database file.",
                &["database"],
                COMMIT_BUCKETS,
            ),
            commit_writes: histogram(
                "tocsin_sqlite_commit_writes",
                "Writes sharing one SQLite commit, by database file.",
                &["database"],
                WRITES_BUCKETS,
            ),
            http_requests: counter(
                "tocsin_http_requests_total",
                "HTTP requests answered, by route pattern, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "tocsin_http_request_duration_seconds",
                "Time to answer an HTTP request, by route pattern.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            alerts: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tocsin_alerts",
                        "Alerts in the store, by state and severity (the same in every process sharing it).",
                    ),
                    &["state", "severity"],
                )
                .expect("valid gauge"),
            ),
            time_to_acknowledge: response_time(
                "tocsin_alert_time_to_acknowledge_seconds",
                "From an alert starting to fire to a person acknowledging it.",
            ),
            time_to_resolve: response_time(
                "tocsin_alert_time_to_resolve_seconds",
                "From an alert starting to fire to its resolution (by a person or a closing event).",
            ),
            alert_acts: counter(
                "tocsin_alert_acts_total",
                "People's acts on alerts that took effect, by kind and channel.",
                &["kind", "channel"],
            ),
            registry,
        };
        for outcome in RouteOutcome::ALL {
            metrics.events_routed.with_label_values(&[outcome.as_str()]);
        }
        metrics
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        Ok(TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }

    // --- ingest ---------------------------------------------------------------------------

    /// Creates the series of a source at zero.
    pub fn register_source(&self, source: &'static str) {
        self.events_accepted.with_label_values(&[source]);
        self.events_deduplicated.with_label_values(&[source]);
        for reason in RejectReason::ALL {
            self.events_rejected
                .with_label_values(&[source, reason.as_str()]);
        }
    }

    /// `count` events from `source` are durably queued.
    pub fn events_accepted(&self, source: &'static str, count: u64) {
        self.events_accepted
            .with_label_values(&[source])
            .inc_by(count);
    }

    /// `count` events sent to `source` again were not published again.
    pub fn events_deduplicated(&self, source: &'static str, count: u64) {
        self.events_deduplicated
            .with_label_values(&[source])
            .inc_by(count);
    }

    /// `source` refused a request.
    pub fn event_rejected(&self, source: &'static str, reason: RejectReason) {
        self.events_rejected
            .with_label_values(&[source, reason.as_str()])
            .inc();
    }

    // --- router ---------------------------------------------------------------------------

    /// The router is done with `count` events.
    pub fn events_routed(&self, outcome: RouteOutcome, count: u64) {
        self.events_routed
            .with_label_values(&[outcome.as_str()])
            .inc_by(count);
    }

    /// The router queued `count` delivery jobs.
    pub fn delivery_jobs_queued(&self, count: u64) {
        self.delivery_jobs_queued.inc_by(count);
    }

    /// A silence held `count` matched events back from their destinations.
    pub fn events_silenced(&self, count: u64) {
        self.events_silenced.inc_by(count);
    }

    /// A time interval kept `count` events from at least one subscription each.
    pub fn events_muted(&self, count: u64) {
        self.events_muted.inc_by(count);
    }

    /// The match counters of the subscriptions named `names`, in that order. The series of
    /// subscriptions not named (deleted, disabled) are dropped, so that the label set follows
    /// the configuration.
    pub fn subscription_counters(&self, names: &[&str]) -> Vec<Counter> {
        let mut current = self.subscriptions.lock().expect("metrics lock poisoned");
        let wanted: HashSet<&str> = names.iter().copied().collect();
        current.retain(|name| {
            let keep = wanted.contains(name.as_str());
            if !keep {
                // It exists: it is in `current`.
                let _ = self
                    .subscription_matches
                    .remove_label_values(&[name.as_str()]);
            }
            keep
        });
        names
            .iter()
            .map(|name| {
                current.insert((*name).to_owned());
                self.subscription_matches.with_label_values(&[*name])
            })
            .collect()
    }

    // --- delivery -------------------------------------------------------------------------

    /// Creates the series of a channel (an action type) at zero.
    pub fn register_channel(&self, channel: &'static str) {
        for outcome in [DeliveryOutcome::Delivered, DeliveryOutcome::Undelivered] {
            self.deliveries
                .with_label_values(&[channel, outcome.as_str()]);
        }
        self.delivery_attempts
            .with_label_values(&[channel, "success", "none"]);
        self.delivery_duration.with_label_values(&[channel]);
        self.delivery_latency.with_label_values(&[channel]);
    }

    /// One attempt through `channel` ended as `attempt` after `duration`.
    pub fn delivery_attempt(&self, channel: &'static str, attempt: Attempt, duration: Duration) {
        let [result, reason] = attempt.labels();
        self.delivery_attempts
            .with_label_values(&[channel, result, reason])
            .inc();
        self.delivery_duration
            .with_label_values(&[channel])
            .observe(duration.as_secs_f64());
    }

    /// A job through `channel` for an event accepted at `accepted_at_ms` (epoch milliseconds)
    /// ended for good as `outcome`; a delivery also records the time since acceptance.
    pub fn delivery_finished(
        &self,
        channel: &'static str,
        outcome: DeliveryOutcome,
        accepted_at_ms: i64,
        now_ms: i64,
    ) {
        self.deliveries
            .with_label_values(&[channel, outcome.as_str()])
            .inc();
        if outcome == DeliveryOutcome::Delivered {
            // Clocks of different processes may disagree a little: never below zero.
            let latency = now_ms.saturating_sub(accepted_at_ms).max(0) as f64 / 1000.0;
            self.delivery_latency
                .with_label_values(&[channel])
                .observe(latency);
        }
    }

    /// Jobs that ended for good as `outcome` in this process since it started, over every
    /// channel (the console's delivery success ratio).
    pub fn deliveries_finished(&self, outcome: DeliveryOutcome) -> u64 {
        use prometheus::core::Collector;
        self.deliveries
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "outcome" && l.value() == outcome.as_str())
            })
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }

    /// A delivery job was held back for a digest; `storm`: by storm control, else by grouping.
    pub fn event_held(&self, storm: bool) {
        let reason = if storm { "storm" } else { "group" };
        self.events_held.with_label_values(&[reason]).inc();
    }

    /// Jobs now waiting in their groups for a digest.
    pub fn set_held(&self, jobs: u64) {
        self.held.set(gauge_value(jobs));
    }

    /// A digest of `events` events through `channel` ended as `outcome`.
    pub fn digest_finished(&self, channel: &'static str, outcome: DeliveryOutcome, events: usize) {
        self.digests
            .with_label_values(&[channel, outcome.as_str()])
            .inc();
        self.digest_events
            .with_label_values(&[channel])
            .observe(events as f64);
    }

    /// A repeat of a group's firing alerts through `channel` ended as `outcome`.
    pub fn digest_repeated(&self, channel: &'static str, outcome: DeliveryOutcome) {
        self.digest_repeats
            .with_label_values(&[channel, outcome.as_str()])
            .inc();
    }

    /// Jobs now waiting for a retry.
    pub fn set_retry_backlog(&self, jobs: u64) {
        self.retry_backlog.set(gauge_value(jobs));
    }

    /// Destinations whose circuit is open, and those whose next request is a probe.
    pub fn set_circuits(&self, open: u64, half_open: u64) {
        self.circuits
            .with_label_values(&["open"])
            .set(gauge_value(open));
        self.circuits
            .with_label_values(&["half_open"])
            .set(gauge_value(half_open));
    }

    /// Undelivered events now on record.
    pub fn set_undelivered_records(&self, records: u64) {
        self.undelivered_records.set(gauge_value(records));
    }

    // --- alerts ---------------------------------------------------------------------------

    /// Creates the series of an act `kind` (acknowledge, resolve…) at zero, on every channel.
    pub fn register_alert_act(&self, kind: &'static str) {
        for channel in ActChannel::ALL {
            self.alert_acts.with_label_values(&[kind, channel.as_str()]);
        }
    }

    /// A person's act of `kind` through `channel` took effect.
    pub fn alert_act(&self, kind: &'static str, channel: ActChannel) {
        self.alert_acts
            .with_label_values(&[kind, channel.as_str()])
            .inc();
    }

    /// An alert became acknowledged `after` it started firing.
    pub fn alert_acknowledged(&self, after: Duration) {
        self.time_to_acknowledge.observe(after.as_secs_f64());
    }

    /// An alert became resolved `after` it started firing.
    pub fn alert_resolved(&self, after: Duration) {
        self.time_to_resolve.observe(after.as_secs_f64());
    }

    /// `alerts` are now in `state` with `severity`.
    pub fn set_alerts(&self, state: &'static str, severity: &'static str, alerts: u64) {
        self.alerts
            .with_label_values(&[state, severity])
            .set(gauge_value(alerts));
    }

    // --- bus ------------------------------------------------------------------------------

    /// Messages now in `queue`.
    pub fn set_queue_depth(&self, queue: &'static str, messages: u64) {
        self.queue_depth
            .with_label_values(&[queue])
            .set(gauge_value(messages));
    }

    /// Dead letters now waiting.
    pub fn set_dead_letters(&self, messages: u64) {
        self.dead_letters.set(gauge_value(messages));
    }

    /// Whether the bus is connected now, and how many reconnects it has made since start.
    pub fn set_bus_state(&self, connected: bool, reconnects_since_start: u64) {
        self.bus_connected.set(i64::from(connected));
        let seen = self.bus_reconnects.get();
        self.bus_reconnects
            .inc_by(reconnects_since_start.saturating_sub(seen));
    }

    /// Whether the store answers (delivery pauses while it does not).
    pub fn set_store_available(&self, available: bool) {
        self.store_available.set(i64::from(available));
    }

    // --- storage --------------------------------------------------------------------------

    /// A commit observer for the SQLite file `database` (`queue`, `records`…).
    pub fn commit_observer(self: &Arc<Self>, database: &'static str) -> CommitObserver {
        let duration: Histogram = self.commit_duration.with_label_values(&[database]);
        let writes: Histogram = self.commit_writes.with_label_values(&[database]);
        Arc::new(move |count, took| {
            duration.observe(took.as_secs_f64());
            writes.observe(count as f64);
        })
    }

    // --- HTTP -----------------------------------------------------------------------------

    /// A request to `route` (a pattern such as `/{platform}/consumer/v1/matched-events`) was
    /// answered with `status` after `elapsed`. `method` is kept only if it is a standard one.
    pub fn http_request(&self, route: &'static str, method: &str, status: u16, elapsed: Duration) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "other",
        };
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series` (name and labels, as rendered), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    #[test]
    fn every_metric_follows_the_naming_conventions() {
        let metrics = Arc::new(Metrics::new());
        metrics.register_source("ans");
        metrics.register_channel("STORE");
        metrics.set_queue_depth("events", 0);
        metrics.commit_observer("queue")(1, Duration::from_millis(1));
        let text = metrics.render().unwrap();
        let families: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split_once(' ').unwrap())
            .collect();
        assert!(families.len() >= 15, "{text}");
        for (name, kind) in families {
            assert!(name.starts_with("tocsin_"), "{name}");
            assert_eq!(name.ends_with("_total"), kind == "counter", "{name} {kind}");
            if kind == "histogram" {
                assert!(
                    name.ends_with("_seconds") || name.ends_with("_writes"),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn circuit_states_are_two_bounded_series() {
        let metrics = Metrics::new();
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(&text, "tocsin_delivery_circuits{state=\"open\"}"),
            Some(0.0)
        );
        metrics.set_circuits(2, 1);
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(&text, "tocsin_delivery_circuits{state=\"open\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "tocsin_delivery_circuits{state=\"half_open\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn registries_are_independent() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.events_accepted("ans", 3);
        let series = "tocsin_events_accepted_total{source=\"ans\"}";
        assert_eq!(sample(&a.render().unwrap(), series), Some(3.0));
        assert_eq!(sample(&b.render().unwrap(), series), None);
    }

    #[test]
    fn known_series_start_at_zero() {
        let metrics = Metrics::new();
        metrics.register_source("oci");
        metrics.register_channel("WEB_HOOK");
        let text = metrics.render().unwrap();
        for series in [
            "tocsin_events_accepted_total{source=\"oci\"}",
            "tocsin_events_rejected_total{reason=\"invalid\",source=\"oci\"}",
            "tocsin_deliveries_total{channel=\"WEB_HOOK\",outcome=\"undelivered\"}",
            "tocsin_delivery_attempts_total{channel=\"WEB_HOOK\",reason=\"none\",result=\"success\"}",
            "tocsin_delivery_latency_seconds_count{channel=\"WEB_HOOK\"}",
            "tocsin_events_routed_total{outcome=\"unmatched\"}",
            "tocsin_build_info{version=\"0.1.0\"}",
        ] {
            let expected = if series.starts_with("tocsin_build_info") { 1.0 } else { 0.0 };
            assert_eq!(sample(&text, series), Some(expected), "{series}\n{text}");
        }
    }

    #[test]
    fn deliveries_count_attempts_outcomes_and_latency() {
        let metrics = Metrics::new();
        let failure = Attempt::Failure {
            kind: FailureKind::ServerError,
            retryable: true,
        };
        metrics.delivery_attempt("WEB_HOOK", failure, Duration::from_millis(20));
        metrics.delivery_attempt("WEB_HOOK", Attempt::Success, Duration::from_millis(40));
        metrics.delivery_finished("WEB_HOOK", DeliveryOutcome::Delivered, 1_000, 3_500);
        metrics.delivery_finished("WEB_HOOK", DeliveryOutcome::Undelivered, 1_000, 9_000);
        let text = metrics.render().unwrap();
        let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(
            value("tocsin_delivery_attempts_total{channel=\"WEB_HOOK\",reason=\"server_error\",result=\"retryable_failure\"}"),
            1.0
        );
        assert_eq!(
            value("tocsin_delivery_duration_seconds_count{channel=\"WEB_HOOK\"}"),
            2.0
        );
        assert!(
            (value("tocsin_delivery_duration_seconds_sum{channel=\"WEB_HOOK\"}") - 0.06).abs()
                < 1e-9
        );
        // Only the delivery has a latency: 2.5 s.
        assert_eq!(
            value("tocsin_delivery_latency_seconds_count{channel=\"WEB_HOOK\"}"),
            1.0
        );
        assert_eq!(
            value("tocsin_delivery_latency_seconds_sum{channel=\"WEB_HOOK\"}"),
            2.5
        );
        assert_eq!(
            value("tocsin_delivery_latency_seconds_bucket{channel=\"WEB_HOOK\",le=\"1\"}"),
            0.0
        );
        assert_eq!(
            value("tocsin_delivery_latency_seconds_bucket{channel=\"WEB_HOOK\",le=\"5\"}"),
            1.0
        );
        assert_eq!(
            value("tocsin_deliveries_total{channel=\"WEB_HOOK\",outcome=\"undelivered\"}"),
            1.0
        );
    }

    #[test]
    fn rejections_are_counted_by_reason() {
        assert_eq!(RejectReason::from_status(202), None);
        assert_eq!(RejectReason::from_status(413), Some(RejectReason::TooLarge));
        assert_eq!(RejectReason::from_status(500), Some(RejectReason::Other));
    }

    #[test]
    fn subscription_series_follow_the_configuration() {
        let metrics = Metrics::new();
        let counters = metrics.subscription_counters(&["a", "b"]);
        counters[1].inc();
        counters[1].inc();
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(
                &text,
                "tocsin_subscription_matches_total{subscription=\"b\"}"
            ),
            Some(2.0)
        );
        // `a` deleted, `c` created; `b` keeps counting where it was.
        let counters = metrics.subscription_counters(&["b", "c"]);
        counters[0].inc();
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(
                &text,
                "tocsin_subscription_matches_total{subscription=\"a\"}"
            ),
            None
        );
        assert_eq!(
            sample(
                &text,
                "tocsin_subscription_matches_total{subscription=\"b\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "tocsin_subscription_matches_total{subscription=\"c\"}"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn bus_and_storage_state() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_bus_state(true, 2);
        metrics.set_bus_state(false, 3);
        metrics.set_queue_depth("deliveries", 7);
        metrics.set_dead_letters(2);
        let observe = metrics.commit_observer("records");
        observe(4, Duration::from_millis(3));
        let text = metrics.render().unwrap();
        let value = |series: &str| sample(&text, series);
        assert_eq!(value("tocsin_bus_reconnects_total"), Some(3.0));
        assert_eq!(value("tocsin_bus_connected"), Some(0.0));
        assert_eq!(value("tocsin_queue_depth{queue=\"deliveries\"}"), Some(7.0));
        assert_eq!(value("tocsin_dead_letters"), Some(2.0));
        assert_eq!(
            value("tocsin_sqlite_commit_writes_sum{database=\"records\"}"),
            Some(4.0)
        );
        assert_eq!(
            value("tocsin_sqlite_commit_duration_seconds_count{database=\"records\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn alert_acts_and_response_times() {
        let metrics = Metrics::new();
        metrics.register_alert_act("acknowledge");
        metrics.register_alert_act("resolve");
        metrics.alert_act("resolve", ActChannel::from_via("api"));
        metrics.alert_act("resolve", ActChannel::from_via("carrier-pigeon"));
        metrics.alert_acknowledged(Duration::from_secs(90));
        metrics.set_alerts("firing", "FATAL", 3);
        let text = metrics.render().unwrap();
        let value = |series: &str| sample(&text, series);
        assert_eq!(
            value("tocsin_alert_acts_total{channel=\"api\",kind=\"acknowledge\"}"),
            Some(0.0)
        );
        assert_eq!(
            value("tocsin_alert_acts_total{channel=\"api\",kind=\"resolve\"}"),
            Some(1.0)
        );
        assert_eq!(
            value("tocsin_alert_acts_total{channel=\"other\",kind=\"resolve\"}"),
            Some(1.0)
        );
        assert_eq!(
            value("tocsin_alert_time_to_acknowledge_seconds_bucket{le=\"60\"}"),
            Some(0.0)
        );
        assert_eq!(
            value("tocsin_alert_time_to_acknowledge_seconds_bucket{le=\"120\"}"),
            Some(1.0)
        );
        assert_eq!(
            value("tocsin_alert_time_to_resolve_seconds_count"),
            Some(0.0)
        );
        assert_eq!(
            value("tocsin_alerts{severity=\"FATAL\",state=\"firing\"}"),
            Some(3.0)
        );
    }

    #[test]
    fn http_methods_are_bounded() {
        let metrics = Metrics::new();
        metrics.http_request("/healthz", "BREW", 405, Duration::from_millis(1));
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(
                &text,
                "tocsin_http_requests_total{method=\"other\",route=\"/healthz\",status=\"405\"}"
            ),
            Some(1.0)
        );
    }
}
