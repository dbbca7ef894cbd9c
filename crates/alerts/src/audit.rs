//! `GET /tocsin/v1/audit`: who did what to which alert or silence, through what, and how it
//! ended — every act of the common act path ([`crate::perform`]) and the chat endpoints'
//! silences and refusals — newest first, filtered by `who`, `target` and `since` (epoch
//! seconds), paged like the consumer API. It needs the `configuration` scope: reading who did
//! what is an administrator's concern, not a responder's.

use crate::paging::{page_of, Params};
use std::collections::HashMap;
use store::audit::{AuditLog, AuditQuery};
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

/// The audit API over `audit`; `administrator` admits the `configuration` scope.
pub fn routes(
    audit: AuditLog,
    administrator: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    web::tocsin_api("audit")
        .and(warp::path::end())
        .and(warp::get())
        .and(administrator)
        .and(warp::query::<HashMap<String, String>>())
        .then(move |params: HashMap<String, String>| {
            let audit = audit.clone();
            async move { list(params, audit).await }
        })
        .boxed()
}

async fn list(params: HashMap<String, String>, audit: AuditLog) -> Response {
    let query = match parse_query(&Params(&params)) {
        Ok(query) => query,
        Err(e) => return e.into_response(),
    };
    let (page, page_size) = (query.page, query.page_size);
    match audit.list(query).await {
        Ok((total, results)) => page_of(page, page_size, total, &results),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the audit log");
            ApiError::unavailable("cannot read the audit log now, retry later").into_response()
        }
    }
}

fn parse_query(params: &Params) -> Result<AuditQuery, ApiError> {
    let (page, page_size) = params.page()?;
    Ok(AuditQuery {
        who: params.text("who"),
        target: params.text("target"),
        since_ms: params.millis("since")?,
        page,
        page_size,
    })
}
