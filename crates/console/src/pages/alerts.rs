//! Alerts: the list (filtered and searched with the alerts API's own query), one alert with its
//! timeline, and the acts — acknowledge, unacknowledge, resolve, comment — through the alerts
//! API's act path, as the signed-in client `via` "console". All need the `responder` scope.

use super::Pages;
use crate::render::{encoded, page, see_other};
use crate::session::{Form, Viewer};
use model::alert::{HumanAct, HumanAction};
use std::collections::HashMap;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;
use web::{ApiError, Scope};

const PAGE_SIZE: &str = "50";

pub(super) fn routes(pages: &Pages) -> BoxedFilter<(Response,)> {
    let responder = Some(Scope::Responder);
    let list = warp::path("alerts")
        .and(warp::path::end())
        .and(pages.view(responder))
        .and(warp::query::<HashMap<String, String>>())
        .then(list);
    let one = warp::path("alerts")
        .and(web::segment())
        .and(warp::path::end())
        .and(pages.view(responder))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |key: String, viewer: Viewer, pages: Pages, query: HashMap<String, String>| async move {
                one(
                    &key,
                    &viewer,
                    &pages,
                    query.get("notice").map(String::as_str),
                    None,
                )
                .await
            },
        );
    let act = warp::path("alerts")
        .and(web::segment())
        .and(warp::path::end())
        .and(pages.act(responder))
        .then(act);
    list.or(one).unify().or(act).unify().boxed()
}

async fn list(viewer: Viewer, pages: Pages, mut query: HashMap<String, String>) -> Response {
    query
        .entry("pageSize".into())
        .or_insert_with(|| PAGE_SIZE.into());
    let (found, error, status) = match alerts::list_page(&query, &pages.console.alerts).await {
        Ok(found) => (found, None, StatusCode::OK),
        Err(e) => (serde_json::Value::Null, Some(e.message), e.status),
    };
    let page_number: u64 = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let total_pages = found["responseMetadata"]["totalPages"]
        .as_u64()
        .unwrap_or(0);
    let link = |n: u64| {
        let mut params: Vec<String> = query
            .iter()
            .filter(|(k, v)| !v.is_empty() && *k != "page" && *k != "pageSize")
            .map(|(k, v)| format!("{}={}", encoded(k), encoded(v)))
            .collect();
        params.sort();
        params.push(format!("page={n}"));
        format!("/ui/alerts?{}", params.join("&"))
    };
    page(
        "alerts.html",
        Some(&viewer),
        serde_json::json!({"title": "Alerts", "found": found, "error": error, "query": query, "previous": (page_number > 0).then(|| link(page_number - 1)), "next": (page_number + 1 < total_pages).then(|| link(page_number + 1))}),
        status,
    )
}

/// The alert page, with the outcome of an act (`notice`) or what was wrong with it (`error`).
async fn one(
    key: &str,
    viewer: &Viewer,
    pages: &Pages,
    notice: Option<&str>,
    error: Option<ApiError>,
) -> Response {
    match alerts::alert_with_timeline(key, &pages.console.alerts).await {
        Ok(found) => {
            let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
            page(
                "alert.html",
                Some(viewer),
                serde_json::json!({"title": format!("Alert {key}"), "key": key, "path": format!("/ui/alerts/{}", encoded(key)), "silence": format!("/ui/silences?alert={}", encoded(key)), "found": found, "notice": notice, "error": error.map(|e| e.message)}),
                status,
            )
        }
        Err(e) => crate::render::refused(Some(viewer), e.status, &e.message),
    }
}

async fn act(key: String, viewer: Viewer, form: Form, pages: Pages) -> Response {
    let Some(action) = form.get("act").and_then(HumanAction::parse) else {
        let error =
            ApiError::bad_request("`act` must be acknowledge, unacknowledge, resolve or comment");
        return one(&key, &viewer, &pages, None, Some(error)).await;
    };
    let comment = match alerts::check_comment(form.get("comment").map(str::to_owned), action) {
        Ok(comment) => comment,
        Err(e) => return one(&key, &viewer, &pages, None, Some(e)).await,
    };
    let by = HumanAct {
        action,
        who: viewer.client.clone(),
        via: "console".into(),
        comment,
    };
    match alerts::perform(&pages.console.alerts, &key, by, None).await {
        Ok(performed) => {
            let notice = match performed {
                alerts::Performed::Done { .. } => action.as_str(),
                alerts::Performed::Unchanged(_) | alerts::Performed::Repeated(_) => "unchanged",
            };
            see_other(&format!("/ui/alerts/{}?notice={notice}", encoded(&key)))
        }
        Err(e) => one(&key, &viewer, &pages, None, Some(e.into())).await,
    }
}
