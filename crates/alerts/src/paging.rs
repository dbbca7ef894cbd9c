//! The list APIs' query parameters and pages (the alerts and the audit log), read and written
//! one way: page and `pageSize` like the consumer API, times in epoch seconds, a bad value
//! answered 400 naming the parameter.

use model::consumer::ResponseMetadata;
use std::collections::HashMap;
use warp::reply::Response;
use warp::Reply;
use web::ApiError;

const DEFAULT_PAGE_SIZE: u64 = 100;
const MAX_PAGE_SIZE: u64 = 1000;

/// A list's query parameters; unknown ones are ignored.
pub(crate) struct Params<'a>(pub &'a HashMap<String, String>);

impl Params<'_> {
    /// The parameter's text, if given and not empty.
    pub fn text(&self, key: &str) -> Option<String> {
        self.0.get(key).filter(|v| !v.is_empty()).cloned()
    }

    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.text(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "`{key}` must be a non-negative integer, got `{v}`"
                    ))
                })
            })
            .transpose()
    }

    /// A time given in epoch seconds, in epoch ms.
    pub fn millis(&self, key: &str) -> Result<Option<i64>, ApiError> {
        Ok(self
            .number(key)?
            .map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64))
    }

    /// `page` and `pageSize`.
    pub fn page(&self) -> Result<(u64, u64), ApiError> {
        let page_size = self.number("pageSize")?.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(ApiError::bad_request(format!(
                "`pageSize` must be between 1 and {MAX_PAGE_SIZE}, got {page_size}"
            )));
        }
        Ok((self.number("page")?.unwrap_or(0), page_size))
    }
}

/// Page `page` of `page_size` of `total` results, answered.
pub(crate) fn page_of(
    page: u64,
    page_size: u64,
    total: u64,
    results: &impl serde::Serialize,
) -> Response {
    warp::reply::json(&page_json(page, page_size, total, results)).into_response()
}

/// Page `page` of `page_size` of `total` results, in the consumer API's paged shape.
pub(crate) fn page_json(
    page: u64,
    page_size: u64,
    total: u64,
    results: &impl serde::Serialize,
) -> serde_json::Value {
    serde_json::json!({
        "responseMetadata": ResponseMetadata {
            page,
            page_size,
            total_pages: total.div_ceil(page_size),
            total_results_count: total,
        },
        "results": results,
    })
}
