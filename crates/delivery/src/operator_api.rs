//! Tocsin's own delivery API, beyond ANS (additive, under `/tocsin/v1/`, so the SAP clients
//! never see it):
//! - `GET /tocsin/v1/events/{eventId}/attempts` — every delivery attempt of an event;
//! - `POST /tocsin/v1/undelivered-events/{eventId}/redeliver[?action=NAME]` — send one
//!   undelivered event again, after its destination is fixed;
//! - `POST /tocsin/v1/undelivered-events/redeliver?action=NAME[&since=EPOCH_SECONDS]` — send
//!   again every undelivered event of an action (since a time).
//!
//! A redelivered event starts afresh (new attempts, full retry schedule); its undelivered record
//! is removed once the new job is queued, and a new record appears if it fails again.

use crate::records::{RecordStore, Selection};
use bus::{Bus, Queue};
use model::DeliveryJob;
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

/// Redeliveries in one call at most; call again for more.
pub const MAX_REDELIVERIES: u32 = 10_000;

pub fn routes(
    records: RecordStore,
    bus: Arc<dyn Bus>,
    reader: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    operator: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let base = warp::path("tocsin").and(warp::path("v1"));
    let with_records = {
        let records = records.clone();
        warp::any().map(move || records.clone())
    };
    let attempts = base
        .and(warp::path("events"))
        .and(web::segment())
        .and(warp::path("attempts"))
        .and(warp::path::end())
        .and(warp::get())
        .and(reader)
        .and(with_records.clone())
        .then(|event_id: String, records: RecordStore| async move {
            match records.attempts(&event_id).await {
                Ok(attempts) => warp::reply::json(
                    &serde_json::json!({"eventId": event_id, "attempts": attempts}),
                )
                .into_response(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read attempts");
                    ApiError::internal("cannot read the attempts").into_response()
                }
            }
        });
    let redeliver_state = {
        let bus = Arc::clone(&bus);
        with_records.map(move |records: RecordStore| (records, Arc::clone(&bus)))
    };
    let one = base
        .and(warp::path("undelivered-events"))
        .and(web::segment())
        .and(warp::path("redeliver"))
        .and(warp::path::end())
        .and(warp::post())
        .and(operator.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(redeliver_state.clone())
        .then(
            |event_id: String,
             query: HashMap<String, String>,
             (records, bus): (RecordStore, Arc<dyn Bus>)| async move {
                let selection = Selection {
                    event_id: Some(event_id.clone()),
                    action: query.get("action").cloned(),
                    since: None,
                    limit: MAX_REDELIVERIES,
                };
                match redeliver(&records, bus.as_ref(), selection).await {
                    Ok(0) => {
                        ApiError::not_found(format!("no undelivered record of event `{event_id}`"))
                            .into_response()
                    }
                    Ok(n) => accepted(n),
                    Err(e) => e.into_response(),
                }
            },
        );
    let many = base
        .and(warp::path("undelivered-events"))
        .and(warp::path("redeliver"))
        .and(warp::path::end())
        .and(warp::post())
        .and(operator)
        .and(warp::query::<HashMap<String, String>>())
        .and(redeliver_state)
        .then(|query: HashMap<String, String>, (records, bus): (RecordStore, Arc<dyn Bus>)| async move {
            let Some(action) = query.get("action").filter(|a| !a.is_empty()) else {
                return ApiError::bad_request("`action` is required: the action whose undelivered events to send again").into_response();
            };
            let since = match query.get("since").map(|s| s.parse::<i64>()) {
                None => None,
                Some(Ok(since)) => Some(since),
                Some(Err(_)) => return ApiError::bad_request("`since` must be epoch seconds").into_response(),
            };
            let selection = Selection { event_id: None, action: Some(action.clone()), since, limit: MAX_REDELIVERIES };
            match redeliver(&records, bus.as_ref(), selection).await {
                Ok(n) => accepted(n),
                Err(e) => e.into_response(),
            }
        });
    attempts.or(one).unify().or(many).unify().boxed()
}

fn accepted(count: usize) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({"redelivered": count})),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

/// Queues a fresh job for every selected undelivered record, then removes the records; how
/// many went. The one way of redelivering: the API's, the console's and the chat command's.
pub async fn redeliver(
    records: &RecordStore,
    bus: &dyn Bus,
    selection: Selection,
) -> Result<usize, ApiError> {
    let found = records.undelivered(selection).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read undelivered records");
        ApiError::internal("cannot read the undelivered records")
    })?;
    if found.is_empty() {
        return Ok(0);
    }
    let now = clock::now_epoch_millis();
    let jobs = found
        .iter()
        .map(|u| {
            let job = DeliveryJob::new(u.event.clone(), now, u.action.clone());
            bytes::Bytes::from(serde_json::to_vec(&job).expect("jobs serialize"))
        })
        .collect();
    bus.publish(Queue::Deliveries, jobs).await.map_err(|e| {
        ApiError::unavailable(format!("cannot queue the redeliveries, retry later: {e}"))
    })?;
    let ids = found.iter().map(|u| u.record_id).collect();
    if let Err(e) = records.forget(ids).await {
        tracing::warn!(error = %e, "redelivered, but cannot remove the undelivered records");
    }
    tracing::info!(count = found.len(), "undelivered events queued again");
    Ok(found.len())
}
