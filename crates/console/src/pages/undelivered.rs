//! Undelivered events: each with its failure reasons and delivery attempts (`consumer`
//! scope), and redelivery — one event, or every event of an action since a time — through the
//! operator API's redelivery (`configuration` scope: fix the destination, then send again).

use super::Pages;
use crate::render::{form_page, see_other};
use crate::session::{Form, Viewer};
use delivery::operator_api::{redeliver, MAX_REDELIVERIES};
use model::DeliveryStatus;
use std::collections::HashMap;
use store::records::{RecordQuery, Selection};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;
use web::Scope;

const PAGE_SIZE: u64 = 50;

pub(super) fn routes(pages: &Pages) -> BoxedFilter<(Response,)> {
    let list = warp::path("undelivered")
        .and(warp::path::end())
        .and(pages.view(Some(Scope::Consumer)))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |viewer: Viewer, pages: Pages, query: HashMap<String, String>| async move {
                list(&viewer, &pages, &query, None).await
            },
        );
    let redeliver = warp::path("undelivered")
        .and(warp::path("redeliver"))
        .and(warp::path::end())
        .and(pages.act(Some(Scope::Configuration)))
        .then(send_again);
    list.or(redeliver).unify().boxed()
}

async fn list(
    viewer: &Viewer,
    pages: &Pages,
    query: &HashMap<String, String>,
    error: Option<String>,
) -> Response {
    let records = &pages.console.records;
    let page_number = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let found = records
        .query(
            DeliveryStatus::Undelivered,
            RecordQuery {
                include_failure_reasons: true,
                page: page_number,
                page_size: PAGE_SIZE,
                ..RecordQuery::default()
            },
        )
        .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the undelivered records");
            return crate::render::refused(
                Some(viewer),
                StatusCode::SERVICE_UNAVAILABLE,
                "The undelivered events cannot be read now; retry later.",
            );
        }
    };
    let mut events = Vec::with_capacity(found.events.len());
    for event in found.events {
        let attempts = records
            .attempts(&event.id)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.action == event.metadata.affected_action_id)
            .collect::<Vec<_>>();
        events.push(serde_json::json!({"event": event, "attempts": attempts}));
    }
    let actions: Vec<String> = pages
        .console
        .config
        .current()
        .configuration()
        .actions
        .iter()
        .map(|a| a.name.clone())
        .collect();
    form_page(
        "undelivered.html",
        viewer,
        serde_json::json!({"title": "Undelivered events", "events": events, "total": found.total, "page": page_number, "next": ((page_number + 1) * PAGE_SIZE < found.total).then_some(page_number + 1), "actions": actions, "redelivered": query.get("redelivered")}),
        error,
    )
}

/// Redelivers one event (`event`, and its `action`) or every event of `action` stored since
/// `since` (a UTC date and time, optional).
async fn send_again(viewer: Viewer, form: Form, pages: Pages) -> Response {
    let Some(action) = form.get("action") else {
        let error = "`action` is required: the action whose undelivered events to send again";
        return list(&viewer, &pages, &HashMap::new(), Some(error.into())).await;
    };
    let since = match form.get("since").map(utc_seconds).transpose() {
        Ok(since) => since,
        Err(e) => return list(&viewer, &pages, &HashMap::new(), Some(e)).await,
    };
    let selection = Selection {
        event_id: form.get("event").map(str::to_owned),
        action: Some(action.to_owned()),
        since,
        limit: MAX_REDELIVERIES,
    };
    match redeliver(
        &pages.console.records,
        pages.console.bus.as_ref(),
        selection,
    )
    .await
    {
        Ok(count) => {
            tracing::info!(client = %viewer.client, action, count, "redelivered from the console");
            see_other(&format!("/ui/undelivered?redelivered={count}"))
        }
        Err(e) => list(&viewer, &pages, &HashMap::new(), Some(e.message)).await,
    }
}

/// `2026-12-05T06:00` (as a browser's `datetime-local` sends it), in UTC, as epoch seconds.
fn utc_seconds(text: &str) -> Result<i64, String> {
    text.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|t| t.timestamp().as_second())
        .ok_or_else(|| {
            format!("`since` must be a date and time like 2026-12-05T06:00, got `{text}`")
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_is_read_as_utc() {
        assert_eq!(super::utc_seconds("1970-01-01T01:00"), Ok(3600));
        assert!(super::utc_seconds("yesterday")
            .unwrap_err()
            .contains("`since`"));
    }
}
