//! The ANS consumer API over the records: `GET /{cf|neo}/consumer/v1/matched-events` and
//! `…/undelivered-events`, each also as `/{eventId}` (still a paged list: one event can have
//! several records, one per action). Every answer is the exact ANS paged shape.

use crate::records::{RecordQuery, RecordStore};
use model::{Category, ConsumerPagedResponse, DeliveryStatus, ResponseMetadata, Severity};
use std::collections::HashMap;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 1000;

/// The consumer routes, behind `guard` (the consumer-scope credential check).
pub fn routes(
    records: RecordStore,
    guard: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let status = warp::path("matched-events")
        .map(|| DeliveryStatus::Matched)
        .or(warp::path("undelivered-events").map(|| DeliveryStatus::Undelivered))
        .unify();
    let event_id = web::segment()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    web::platform()
        .and(warp::path("consumer"))
        .and(warp::path("v1"))
        .and(status)
        .and(event_id)
        .and(warp::path::end())
        .and(warp::get())
        .and(guard)
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::any().map(move || records.clone()))
        .then(list)
        .boxed()
}

async fn list(
    status: DeliveryStatus,
    event_id: Option<String>,
    params: HashMap<String, String>,
    records: RecordStore,
) -> Response {
    let mut query = match parse_query(&params) {
        Ok(query) => query,
        Err(e) => return e.into_response(),
    };
    query.event_id = event_id;
    let (page, page_size) = (query.page, query.page_size);
    match records.query(status, query).await {
        Ok(found) => warp::reply::json(&ConsumerPagedResponse {
            response_metadata: ResponseMetadata {
                page,
                page_size,
                total_pages: found.total.div_ceil(page_size),
                total_results_count: found.total,
            },
            results: found.events,
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot query records");
            ApiError::internal("cannot read the records").into_response()
        }
    }
}

/// Reads the ANS query parameters, naming the one at fault. Unknown parameters are ignored.
pub fn parse_query(params: &HashMap<String, String>) -> Result<RecordQuery, ApiError> {
    let text = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
    let number = |key: &str, default: u64| -> Result<u64, ApiError> {
        match params.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad_request(format!("`{key}` must be a non-negative integer, got `{v}`"))
            }),
        }
    };
    let page_size = number("pageSize", DEFAULT_PAGE_SIZE)?;
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::bad_request(format!(
            "`pageSize` must be between 1 and {MAX_PAGE_SIZE}, got {page_size}"
        )));
    }
    let severity = text("severity");
    if let Some(s) = &severity {
        s.parse::<Severity>().map_err(|()| {
            ApiError::bad_request(format!(
                "`severity` must be one of INFO, NOTICE, WARNING, ERROR, FATAL, got `{s}`"
            ))
        })?;
    }
    let category = text("category");
    if let Some(c) = &category {
        c.parse::<Category>().map_err(|()| {
            ApiError::bad_request(format!(
                "`category` must be one of ALERT, EXCEPTION, NOTIFICATION, got `{c}`"
            ))
        })?;
    }
    let include_failure_reasons = match params.get("include").map(String::as_str) {
        None | Some("") => false,
        Some("FAILURE_REASON") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`include` accepts only FAILURE_REASON, got `{other}`"
            )))
        }
    };
    Ok(RecordQuery {
        event_id: None,
        severity,
        category,
        event_type: text("eventType"),
        resource_name: text("resourceName"),
        correlation_id: text("correlationId"),
        source_event_id: text("sourceEventId"),
        cache_time: interval(params, "cacheTimeInterval")?,
        creation_time: interval(params, "creationTimeInterval")?,
        include_failure_reasons,
        page: number("page", 0)?,
        page_size,
    })
}

/// `(start;end)`: epoch seconds, both bounds exclusive.
fn interval(params: &HashMap<String, String>, key: &str) -> Result<Option<(i64, i64)>, ApiError> {
    let Some(raw) = params.get(key).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let parsed = raw
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.split_once(';'))
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
    parsed.map(Some).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`{key}` must be `(start;end)` in epoch seconds, bounds exclusive, got `{raw}`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_filters() {
        let q = parse_query(&params(&[])).unwrap();
        assert_eq!(
            (q.page, q.page_size, q.include_failure_reasons),
            (0, 100, false)
        );
        let q = parse_query(&params(&[
            ("cacheTimeInterval", "(1517216384;1517216388)"),
            ("include", "FAILURE_REASON"),
            ("severity", "FATAL"),
            ("page", "2"),
            ("pageSize", "5"),
        ]))
        .unwrap();
        assert_eq!(q.cache_time, Some((1517216384, 1517216388)));
        assert!(q.include_failure_reasons);
        assert_eq!((q.page, q.page_size), (2, 5));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (key, value) in [
            ("cacheTimeInterval", "1;2"),
            ("creationTimeInterval", "(a;2)"),
            ("pageSize", "0"),
            ("pageSize", "5000"),
            ("page", "-1"),
            ("severity", "CRITICAL"),
            ("category", "x"),
            ("include", "EVERYTHING"),
        ] {
            let err = parse_query(&params(&[(key, value)])).unwrap_err();
            assert!(
                err.message.contains(&format!("`{key}`")),
                "{key}: {}",
                err.message
            );
        }
    }
}
