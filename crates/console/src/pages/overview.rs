//! The overview: alerts firing by severity; delivery (success ratio of the jobs this process
//! finished since it started, undelivered records now); the queues (depth, jobs waiting for a
//! retry); and the last 24 hours as a chart of alerts seen and events left undelivered per
//! hour, an inline SVG drawn here. Each part is shown only to a viewer whose scopes may read it.

use super::Pages;
use crate::render::page;
use crate::session::Viewer;
use crate::Console;
use bus::Queue;
use metrics::DeliveryOutcome;
use model::DeliveryStatus;
use store::alerts::{AlertQuery, AlertState};
use store::records::RecordQuery;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;
use web::Scope;

const SEVERITIES: [&str; 5] = ["FATAL", "ERROR", "WARNING", "NOTICE", "INFO"];
const HOURS: i64 = 24;
/// The chart's size in SVG units.
const CHART_WIDTH: i64 = 720;
const CHART_HEIGHT: i64 = 160;

pub(super) fn routes(pages: &Pages) -> BoxedFilter<(Response,)> {
    warp::path::end()
        .and(pages.view(None))
        .then(overview)
        .boxed()
}

/// One hour of the chart: alerts last seen in it, records left undelivered in it.
#[derive(serde::Serialize)]
struct Hour {
    label: String,
    alerts: u64,
    undelivered: u64,
    x: i64,
    alerts_height: i64,
    undelivered_height: i64,
}

async fn overview(viewer: Viewer, pages: Pages) -> Response {
    let console = &pages.console;
    let mut context = serde_json::Map::new();
    context.insert("title".into(), "Overview".into());
    if viewer.may(Scope::Responder) {
        let mut firing = Vec::new();
        for severity in SEVERITIES {
            let query = AlertQuery {
                state: Some(AlertState::Firing),
                severity: Some(severity.to_owned()),
                page_size: 1,
                ..AlertQuery::default()
            };
            let count = console.alerts.alerts.list(query).await.map(|(n, _)| n).ok();
            firing.push(serde_json::json!({"severity": severity, "count": count}));
        }
        context.insert("firing".into(), firing.into());
    }
    if viewer.may(Scope::Consumer) {
        let delivered = console
            .metrics
            .deliveries_finished(DeliveryOutcome::Delivered);
        let undelivered = console
            .metrics
            .deliveries_finished(DeliveryOutcome::Undelivered);
        let total = delivered + undelivered;
        let undelivered_now = RecordQuery {
            page_size: 1,
            ..RecordQuery::default()
        };
        context.insert(
            "delivery".into(),
            serde_json::json!({
                "delivered": delivered,
                "undelivered": undelivered,
                "ratio": (total > 0).then(|| format!("{:.1} %", delivered as f64 * 100.0 / total as f64)),
                "undeliveredNow": console.records.query(DeliveryStatus::Undelivered, undelivered_now).await.map(|p| p.total).ok(),
            }),
        );
        context.insert(
            "queues".into(),
            serde_json::json!({
                "events": console.bus.depth(Queue::Events).await.ok(),
                "deliveries": console.bus.depth(Queue::Deliveries).await.ok(),
                "retrying": console.bus.delayed_count().await.ok(),
            }),
        );
        context.insert("chart".into(), chart(console).await);
    }
    page("overview.html", Some(&viewer), context, StatusCode::OK)
}

/// The last 24 hours, hour by hour, with the bars' geometry.
async fn chart(console: &Console) -> serde_json::Value {
    let now = clock::now_epoch_seconds();
    let hour_start = now - now.rem_euclid(3600);
    let mut hours = Vec::new();
    for n in 0..HOURS {
        let start = hour_start - (HOURS - 1 - n) * 3600;
        let alerts = AlertQuery {
            since_ms: Some(start * 1000),
            until_ms: Some((start + 3600) * 1000 - 1),
            page_size: 1,
            ..AlertQuery::default()
        };
        let alerts = console
            .alerts
            .alerts
            .list(alerts)
            .await
            .map(|(n, _)| n)
            .unwrap_or(0);
        let undelivered = RecordQuery {
            cache_time: Some((start - 1, start + 3600)),
            page_size: 1,
            ..RecordQuery::default()
        };
        let undelivered = console
            .records
            .query(DeliveryStatus::Undelivered, undelivered)
            .await
            .map(|p| p.total)
            .unwrap_or(0);
        hours.push((start, alerts, undelivered));
    }
    let tallest = hours
        .iter()
        .map(|(_, a, u)| (*a).max(*u))
        .max()
        .unwrap_or(0)
        .max(1) as i64;
    let slot = CHART_WIDTH / HOURS;
    let scale = |n: u64| n as i64 * (CHART_HEIGHT - 20) / tallest;
    let bars: Vec<Hour> = hours
        .into_iter()
        .enumerate()
        .map(|(i, (start, alerts, undelivered))| Hour {
            label: jiff::Timestamp::from_second(start)
                .map(|t| t.strftime("%H:00").to_string())
                .unwrap_or_default(),
            alerts,
            undelivered,
            x: i as i64 * slot,
            alerts_height: scale(alerts),
            undelivered_height: scale(undelivered),
        })
        .collect();
    serde_json::json!({
        "hours": bars,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "bar": slot / 2 - 2,
        "baseline": CHART_HEIGHT - 16,
    })
}
