//! Silences and time intervals: the silences (newest first) with a form to create one —
//! prefilled with the matchers of an alert ("silence alerts like this one") — and to expire
//! one, through the silences' own checks (`responder` scope), audited (via `console`, the
//! signed-in client named) before they are done; the time intervals of the configuration,
//! read-only (they are configured in the configuration import).

use super::Pages;
use crate::render::{form_page, see_other};
use crate::session::{Form, Viewer};
use router::silences::{check, By, NewSilence};
use std::collections::HashMap;
use store::silences::SilenceMatcher;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;
use web::Scope;

/// Matcher rows the form offers.
const MATCHER_ROWS: usize = 4;
/// The silence's length the form proposes, in hours.
const DEFAULT_HOURS: u32 = 2;
/// The console's acts: no once-only key (a form sent twice is two acts, as in the API).
const CONSOLE: By = By {
    via: "console",
    once: None,
};

pub(super) fn routes(pages: &Pages) -> BoxedFilter<(Response,)> {
    let responder = Some(Scope::Responder);
    let list = warp::path("silences")
        .and(warp::path::end())
        .and(pages.view(responder))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |viewer: Viewer, pages: Pages, query: HashMap<String, String>| async move {
                let rows = match query.get("alert") {
                    Some(key) => matchers_of_alert(&pages, key).await,
                    None => Vec::new(),
                };
                let draft = Draft {
                    rows,
                    hours: DEFAULT_HOURS.to_string(),
                    comment: String::new(),
                };
                list(
                    &viewer,
                    &pages,
                    draft,
                    query.get("notice").map(String::as_str),
                    None,
                )
                .await
            },
        );
    let create = warp::path("silences")
        .and(warp::path::end())
        .and(pages.act(responder))
        .then(create);
    let expire = warp::path("silences")
        .and(web::segment())
        .and(warp::path("expire"))
        .and(warp::path::end())
        .and(pages.act(responder))
        .then(expire);
    list.or(create).unify().or(expire).unify().boxed()
}

/// The form as filled in: matcher rows (key, predicate, value), hours, comment.
#[derive(serde::Serialize)]
struct Draft {
    rows: Vec<(String, String, String)>,
    hours: String,
    comment: String,
}

async fn list(
    viewer: &Viewer,
    pages: &Pages,
    mut draft: Draft,
    notice: Option<&str>,
    error: Option<String>,
) -> Response {
    let now = clock::now_epoch_millis();
    let silences = match pages.console.silences.store().list(None, now).await {
        Ok(found) => found
            .into_iter()
            .map(|s| {
                let state = s.state(now);
                serde_json::json!({"silence": s, "state": state})
            })
            .collect::<Vec<_>>(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the silences");
            Vec::new()
        }
    };
    draft
        .rows
        .resize(MATCHER_ROWS.max(draft.rows.len()), Default::default());
    let intervals = pages
        .console
        .config
        .current()
        .configuration()
        .time_intervals
        .clone();
    form_page(
        "silences.html",
        viewer,
        serde_json::json!({"title": "Silences", "silences": silences, "draft": draft, "intervals": intervals, "notice": notice}),
        error,
    )
}

/// Matchers for events like alert `key`'s: same event type and resource.
async fn matchers_of_alert(pages: &Pages, key: &str) -> Vec<(String, String, String)> {
    match pages.console.alerts.alerts.get(key).await {
        Ok(Some((alert, _))) => vec![
            ("eventType".into(), "EQUALS".into(), alert.event_type),
            (
                "resource.resourceName".into(),
                "EQUALS".into(),
                alert.resource_name,
            ),
        ],
        _ => Vec::new(),
    }
}

async fn create(viewer: Viewer, form: Form, pages: Pages) -> Response {
    let field = |name: String| form.get(&name).unwrap_or_default().to_owned();
    let rows: Vec<(String, String, String)> = (0..MATCHER_ROWS)
        .map(|n| {
            (
                field(format!("key{n}")),
                field(format!("predicate{n}")),
                field(format!("value{n}")),
            )
        })
        .collect();
    let draft = Draft {
        rows: rows.clone(),
        hours: field("hours".into()),
        comment: field("comment".into()),
    };
    let matchers: Result<Vec<SilenceMatcher>, String> = rows
        .iter()
        .enumerate()
        .filter(|(_, (key, _, _))| !key.is_empty())
        .map(|(n, (key, predicate, value))| {
            serde_json::from_value(serde_json::json!({
                "propertyKey": key,
                "predicate": predicate,
                "propertyValue": (!value.is_empty()).then_some(value),
            }))
            .map_err(|e| format!("`matchers[{n}]`: {e}"))
        })
        .collect();
    let hours = draft
        .hours
        .parse::<f64>()
        .ok()
        .filter(|h| *h > 0.0 && h.is_finite());
    let now = clock::now_epoch_millis();
    let checked = match (matchers, hours) {
        (Err(e), _) => Err(e),
        (_, None) => Err(format!(
            "`hours` must be a positive number, got `{}`",
            draft.hours
        )),
        (Ok(matchers), Some(hours)) => check(
            NewSilence {
                matchers,
                starts_at_ms: None,
                ends_at_ms: now + (hours * 3_600_000.0) as i64,
                comment: Some(draft.comment.clone()),
            },
            viewer.client.clone(),
            now,
        ),
    };
    let silence = match checked {
        Ok(silence) => silence,
        Err(e) => return list(&viewer, &pages, draft, None, Some(e)).await,
    };
    let audit = &pages.console.alerts.audit;
    if let Err(e) = pages
        .console
        .silences
        .create(&silence, audit, &CONSOLE)
        .await
    {
        tracing::error!(error = %e, "cannot keep a silence");
        let error = "The silences cannot be reached now; retry later.".to_owned();
        return list(&viewer, &pages, draft, None, Some(error)).await;
    }
    see_other("/ui/silences?notice=created")
}

async fn expire(id: String, viewer: Viewer, _: Form, pages: Pages) -> Response {
    let (now, audit) = (clock::now_epoch_millis(), &pages.console.alerts.audit);
    let expired = pages
        .console
        .silences
        .expire(&id, now, audit, &viewer.client, &CONSOLE)
        .await;
    match expired {
        Ok(Some(_)) => see_other("/ui/silences?notice=expired"),
        Ok(None) => crate::render::refused(
            Some(&viewer),
            StatusCode::NOT_FOUND,
            &format!("silence `{id}` does not exist"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot expire a silence");
            crate::render::refused(
                Some(&viewer),
                StatusCode::SERVICE_UNAVAILABLE,
                "The silences cannot be reached now; retry later.",
            )
        }
    }
}
