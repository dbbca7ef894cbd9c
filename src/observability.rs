//! Operating Tocsin: `/metrics`, `/healthz`, `/readyz` and `/openapi.json`, the request
//! metrics every route reports, and the table of the server's routes that they are keyed by.
//!
//! Counters and histograms are updated by the components as they work; what is a state rather
//! than an event — queue depths, delayed messages, dead letters, undelivered records, alerts by
//! state and severity, the bus connection — is sampled when `/metrics` is scraped ([`Probe::sample`]), through the `Bus`
//! trait whichever backend runs. `/metrics` needs a client with the consumer scope unless
//! `metrics.public` is set. `/healthz`, `/readyz` and `/openapi.json` need
//! nothing and reveal nothing about the installation beyond what is up.

use bus::{Bus, Queue};
use delivery::records::{RecordQuery, RecordStore};
use metrics::{Metrics, RejectReason};
use model::{DeliveryStatus, Severity};
use router::store::ConfigStore;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use store::alerts::AlertState;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The OpenAPI document of every route below, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../schemas/openapi.json");

/// One route the server answers: its pattern as the OpenAPI document writes it, its methods,
/// and the alarm source it feeds, if it is one.
pub struct Route {
    pub pattern: &'static str,
    pub methods: &'static [&'static str],
    pub source: Option<&'static str>,
}

const fn route(pattern: &'static str, methods: &'static [&'static str]) -> Route {
    Route {
        pattern,
        methods,
        source: None,
    }
}

/// The routes besides the sources' (which describe their own).
const OTHER_ROUTES: &[Route] = &[
    route("/oauth/token", &["GET", "POST"]),
    route("/{platform}/consumer/v1/matched-events", &["GET"]),
    route("/{platform}/consumer/v1/matched-events/{eventId}", &["GET"]),
    route("/{platform}/consumer/v1/undelivered-events", &["GET"]),
    route(
        "/{platform}/consumer/v1/undelivered-events/{eventId}",
        &["GET"],
    ),
    route("/{platform}/configuration/v1/action", &["GET", "POST"]),
    route(
        "/{platform}/configuration/v1/action/{name}",
        &["GET", "PUT", "DELETE"],
    ),
    route("/{platform}/configuration/v1/condition", &["GET", "POST"]),
    route(
        "/{platform}/configuration/v1/condition/{name}",
        &["GET", "PUT", "DELETE"],
    ),
    route(
        "/{platform}/configuration/v1/subscription",
        &["GET", "POST"],
    ),
    route(
        "/{platform}/configuration/v1/subscription/{name}",
        &["GET", "PUT", "DELETE"],
    ),
    route(
        "/{platform}/configuration/v1/configuration",
        &["GET", "POST"],
    ),
    route("/tocsin/v1/events/{eventId}/attempts", &["GET"]),
    route(
        "/tocsin/v1/undelivered-events/{eventId}/redeliver",
        &["POST"],
    ),
    route("/tocsin/v1/undelivered-events/redeliver", &["POST"]),
    route("/tocsin/v1/actions/{name}/test", &["POST"]),
    route("/tocsin/v1/alerts", &["GET"]),
    route("/tocsin/v1/alerts/{key}", &["GET"]),
    route("/tocsin/v1/alerts/{key}/{act}", &["POST"]),
    route("/tocsin/v1/silences", &["GET", "POST"]),
    route("/tocsin/v1/silences/{id}", &["GET", "DELETE"]),
    route("/tocsin/v1/audit", &["GET"]),
    route("/tocsin/v1/dead-letters", &["GET"]),
    route("/tocsin/v1/dead-letters/{id}/replay", &["POST"]),
    route("/tocsin/v1/dead-letters/replay", &["POST"]),
    route("/healthz", &["GET"]),
    route("/readyz", &["GET"]),
    route("/metrics", &["GET"]),
    route("/openapi.json", &["GET"]),
];

/// Every route the server answers: the sources' own ([`ingest::sources::ALL`]), then the rest.
/// `{platform}` is `cf` or `neo`; another `{…}` is any one path segment. A test checks this
/// table, the OpenAPI document and the live server agree.
pub static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let sources = ingest::sources::ALL.iter().flat_map(|source| {
        source.routes.iter().map(|r| Route {
            pattern: r.pattern,
            methods: r.methods,
            source: r.takes_events.then_some(source.label),
        })
    });
    sources
        .chain(OTHER_ROUTES.iter().map(|r| route(r.pattern, r.methods)))
        .collect()
});

/// The route a request path belongs to.
pub fn route_of(path: &str) -> Option<&'static Route> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    ROUTES.iter().find(|route| {
        let pattern = route.pattern.trim_start_matches('/').split('/');
        pattern.clone().count() == segments.len()
            && pattern
                .zip(&segments)
                .all(|(expected, actual)| match expected {
                    "{platform}" => matches!(*actual, "cf" | "neo"),
                    param if param.starts_with('{') => !actual.is_empty(),
                    literal => literal == *actual,
                })
    })
}

/// Counts every answered request by route pattern, method and status, and the refusals of the
/// alarm sources by reason. Wraps the whole route tree, after `recover`.
pub fn instrument(
    metrics: Arc<Metrics>,
) -> warp::log::Log<impl Fn(warp::log::Info<'_>) + Clone + Send + Sync> {
    warp::log::custom(move |info: warp::log::Info<'_>| {
        let route = route_of(info.path());
        let method = info.method().as_str();
        let status = info.status().as_u16();
        let pattern = route.map_or("unknown", |route| route.pattern);
        metrics.http_request(pattern, method, status, info.elapsed());
        if let Some(route) = route.filter(|route| route.methods.contains(&method)) {
            if let (Some(source), Some(reason)) = (route.source, RejectReason::from_status(status))
            {
                metrics.event_rejected(source, reason);
            }
        }
    })
}

/// Longest a scrape or a readiness check waits for one of its reads.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the state of the parts that hold state, for `/metrics` and `/readyz`.
#[derive(Clone)]
pub struct Probe {
    pub bus: Arc<dyn Bus>,
    pub records: RecordStore,
    pub alerts: store::alerts::AlertStore,
    pub config: Arc<ConfigStore>,
    pub channels: delivery::channels::Channels,
    pub groups: store::groups::GroupStore,
    pub metrics: Arc<Metrics>,
}

impl Probe {
    /// Updates the sampled gauges. A read that fails or times out leaves its gauge as it was
    /// (and `tocsin_bus_connected` says why).
    async fn sample(&self) {
        let metrics = &self.metrics;
        metrics.set_bus_state(self.bus.is_ready(), self.bus.reconnects());
        metrics.set_store_available(self.records.availability().is_available());
        for queue in Queue::ALL {
            if let Some(depth) = within(self.bus.depth(queue)).await {
                metrics.set_queue_depth(queue.as_str(), depth);
            }
        }
        if let Some(delayed) = within(self.bus.delayed_count()).await {
            metrics.set_retry_backlog(delayed);
        }
        if let Some(held) = within(self.groups.held()).await {
            metrics.set_held(held.max(0) as u64);
        }
        if let Some(dead) = within(self.bus.dead_letter_count()).await {
            metrics.set_dead_letters(dead);
        }
        let (open, half_open) = self.channels.circuit_counts();
        metrics.set_circuits(open, half_open);
        let undelivered = RecordQuery {
            page_size: 0,
            ..Default::default()
        };
        if let Some(page) =
            within(self.records.query(DeliveryStatus::Undelivered, undelivered)).await
        {
            metrics.set_undelivered_records(page.total);
        }
        if let Some(counts) = within(self.alerts.count_by_state_and_severity()).await {
            // Every pair, so that a state or severity with no alert left reads 0.
            for state in AlertState::ALL {
                for severity in Severity::ALL {
                    let alerts = counts
                        .iter()
                        .filter(|(s, name, _)| *s == state && name == severity.as_str())
                        .map(|(_, _, count)| count)
                        .sum();
                    metrics.set_alerts(state.as_str(), severity.as_str(), alerts);
                }
            }
        }
    }

    /// Whether each part answers: the bus is connected with its topology declared (and, on
    /// the embedded backend, its file reads), the records and configuration files read.
    async fn readiness(&self) -> (bool, serde_json::Value) {
        let bus = self.bus.is_ready() && within(self.bus.depth(Queue::Events)).await.is_some();
        // An id lookup: touches the file through an index, whatever the number of records.
        let lookup = RecordQuery {
            event_id: Some(String::new()),
            page_size: 0,
            ..Default::default()
        };
        let records = within(self.records.query(DeliveryStatus::Matched, lookup))
            .await
            .is_some();
        let configuration = within(self.config.check()).await.is_some();
        let state = |ok: bool| if ok { "ok" } else { "unavailable" };
        let ready = bus && records && configuration;
        let body = serde_json::json!({
            "status": if ready { "ready" } else { "not ready" },
            "backend": self.bus.backend(),
            "checks": {
                "bus": state(bus),
                "records": state(records),
                "configuration": state(configuration),
            }
        });
        (ready, body)
    }
}

/// The value of `read`, or `None` if it failed (logged) or took longer than [`PROBE_TIMEOUT`].
async fn within<T, E: std::fmt::Display>(
    read: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(PROBE_TIMEOUT, read).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a health read failed");
            None
        }
        Err(_) => {
            tracing::warn!("a health read timed out");
            None
        }
    }
}

/// `/healthz`, `/readyz`, `/openapi.json`, and `/metrics` behind `metrics_guard`.
pub fn routes(probe: Probe, metrics_guard: BoxedFilter<()>) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let readyz = {
        let probe = probe.clone();
        warp::path!("readyz").and(warp::get()).then(move || {
            let probe = probe.clone();
            async move {
                let (ready, body) = probe.readiness().await;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                warp::reply::with_status(warp::reply::json(&body), status).into_response()
            }
        })
    };
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        warp::reply::with_header(OPENAPI, header::CONTENT_TYPE, "application/json").into_response()
    });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(metrics_guard)
        .then(move || {
            let probe = probe.clone();
            async move {
                probe.sample().await;
                match probe.metrics.render() {
                    Ok(text) => warp::reply::with_header(
                        text,
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .into_response(),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot render the metrics");
                        web::ApiError::internal("cannot render the metrics").into_response()
                    }
                }
            }
        });
    healthz
        .or(readyz)
        .unify()
        .or(openapi)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn paths_map_to_their_route_pattern() {
        let pattern = |path| route_of(path).map(|route| route.pattern);
        assert_eq!(
            pattern("/neo/consumer/v1/matched-events/0196-ab"),
            Some("/{platform}/consumer/v1/matched-events/{eventId}")
        );
        assert_eq!(
            pattern("/cf/configuration/v1/configuration"),
            Some("/{platform}/configuration/v1/configuration")
        );
        assert_eq!(
            pattern("/cf/configuration/v1/action/a%20b"),
            Some("/{platform}/configuration/v1/action/{name}")
        );
        assert_eq!(pattern("/xx/consumer/v1/matched-events"), None);
        assert_eq!(pattern("/cf/consumer/v1/matched-events/"), None);
        assert_eq!(pattern("/metrics/x"), None);
        assert_eq!(
            route_of("/cf/producer/v1/resource-events-batch").and_then(|r| r.source),
            Some(ingest::sources::ans::DESCRIPTION.label)
        );
    }

    /// The other half of the agreement test (`tests/openapi.rs` checks the document against
    /// the live server): every route of this table is documented with exactly its methods.
    #[test]
    fn the_route_table_and_the_openapi_document_agree() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|key| ["get", "put", "post", "delete", "patch"].contains(&key.as_str()))
                    .map(|method| (path.clone(), method.to_uppercase()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|route| {
                route
                    .methods
                    .iter()
                    .map(|method| (route.pattern.to_owned(), (*method).to_owned()))
            })
            .collect();
        assert_eq!(
            served.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "served but not documented"
        );
        assert_eq!(
            documented.difference(&served).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented but not served"
        );
    }
}
