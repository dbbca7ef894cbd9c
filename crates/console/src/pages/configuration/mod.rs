//! Configuration (`configuration` scope): the subscriptions, conditions and actions; one
//! form per entity to create, edit or delete it; import and export; and "send a test event"
//! through an action.
//!
//! A form becomes the JSON the configuration API takes — the stored entity (secrets masked, as
//! the API shows it) with the form's fields laid over it, so fields the form does not show
//! survive — and goes through the API's own create/update/delete. Its error message is shown
//! above the form and next to every field it names (`` `predicate` ``).
//!
//! [`kind`] holds what differs per entity kind; [`form`] turns a form into the API's JSON and
//! back.

mod form;
mod kind;

use super::Pages;
use crate::render::{encoded, form_page, page, see_other};
use crate::session::{Form, Viewer};
use form::{entity_context, from_form};
use kind::{kind, Kind};
use router::api as config_api;
use router::store::ChangeError;
use serde_json::{Map, Value};
use std::collections::HashMap;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};
use web::Scope;

pub(super) fn routes(pages: &Pages) -> BoxedFilter<(Response,)> {
    let scope = Some(Scope::Configuration);
    let base = warp::path("configuration");
    let overview = base
        .and(warp::path::end())
        .and(pages.view(scope))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |viewer: Viewer, pages: Pages, query: HashMap<String, String>| async move {
                overview(
                    &viewer,
                    &pages,
                    query.get("notice").map(String::as_str),
                    None,
                )
                .await
            },
        );
    let export = base
        .and(warp::path("export"))
        .and(warp::path::end())
        .and(pages.view(scope))
        .then(|_: Viewer, pages: Pages| async move { export(&pages).await });
    let import = base
        .and(warp::path("import"))
        .and(warp::path::end())
        .and(pages.act(scope))
        .then(import);
    let new = base
        .and(kind())
        .and(warp::path::end())
        .and(pages.view(scope))
        .map(|kind: Kind, viewer: Viewer, _: Pages| {
            entity_page(&viewer, kind, None, &Value::Object(Map::new()), None, None)
        });
    let create = base
        .and(kind())
        .and(warp::path::end())
        .and(pages.act(scope))
        .then(
            |kind: Kind, viewer: Viewer, form: Form, pages: Pages| async move {
                save(kind, None, &viewer, &form, &pages).await
            },
        );
    let edit = base
        .and(kind())
        .and(web::segment())
        .and(warp::path::end())
        .and(pages.view(scope))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |kind: Kind,
             name: String,
             viewer: Viewer,
             pages: Pages,
             query: HashMap<String, String>| async move {
                pages.console.config.refresh().await;
                match kind.find(&pages, &name) {
                    Some(entity) => entity_page(
                        &viewer,
                        kind,
                        Some(&name),
                        &entity,
                        query.get("notice").map(String::as_str),
                        None,
                    ),
                    None => not_found(&viewer, kind, &name),
                }
            },
        );
    let update = base
        .and(kind())
        .and(web::segment())
        .and(warp::path::end())
        .and(pages.act(scope))
        .then(
            |kind: Kind, name: String, viewer: Viewer, form: Form, pages: Pages| async move {
                save(kind, Some(name), &viewer, &form, &pages).await
            },
        );
    let delete = base
        .and(kind())
        .and(web::segment())
        .and(warp::path("delete"))
        .and(warp::path::end())
        .and(pages.act(scope))
        .then(
            |kind: Kind, name: String, viewer: Viewer, _: Form, pages: Pages| async move {
                match kind.delete(&pages, name.clone()).await {
                    Ok(()) => see_other("/ui/configuration?notice=deleted"),
                    Err(e) => match kind.find(&pages, &name) {
                        Some(entity) => {
                            entity_page(&viewer, kind, Some(&name), &entity, None, Some(&e))
                        }
                        None => not_found(&viewer, kind, &name),
                    },
                }
            },
        );
    let test = base
        .and(warp::path("action"))
        .and(web::segment())
        .and(warp::path("test"))
        .and(warp::path::end())
        .and(pages.act(scope))
        .then(test);
    overview
        .or(export)
        .unify()
        .or(import)
        .unify()
        .or(new)
        .unify()
        .or(create)
        .unify()
        .or(edit)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .or(test)
        .unify()
        .boxed()
}

async fn overview(
    viewer: &Viewer,
    pages: &Pages,
    notice: Option<&str>,
    error: Option<String>,
) -> Response {
    let store = &pages.console.config;
    store.refresh().await;
    let exported = config_api::exported(store);
    form_page(
        "configuration.html",
        viewer,
        serde_json::json!({"title": "Configuration", "configuration": exported, "notice": notice}),
        error,
    )
}

async fn export(pages: &Pages) -> Response {
    let store = &pages.console.config;
    store.refresh().await;
    let mut response = warp::reply::json(&config_api::exported(store)).into_response();
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"tocsin-configuration.json\""),
    );
    response
}

async fn import(viewer: Viewer, form: Form, pages: Pages) -> Response {
    let document = form.get("document").unwrap_or_default();
    match config_api::import(&pages.console.config, document.as_bytes()).await {
        Ok(_) => {
            tracing::info!(client = %viewer.client, "configuration imported from the console");
            see_other("/ui/configuration?notice=imported")
        }
        Err(e) => overview(&viewer, &pages, None, Some(e.to_string())).await,
    }
}

async fn test(name: String, viewer: Viewer, _: Form, pages: Pages) -> Response {
    let console = &pages.console;
    let catalog = console.config.catalog();
    let outcome = delivery::action_test::test(&catalog, &console.channels, &name, b"").await;
    let Some(entity) = Kind::Action.find(&pages, &name) else {
        return not_found(&viewer, Kind::Action, &name);
    };
    let outcome = match outcome {
        Ok(outcome) => serde_json::to_value(outcome).unwrap_or_default(),
        Err(e) => serde_json::json!({"delivered": false, "reason": e.message}),
    };
    tracing::info!(client = %viewer.client, action = %name, "test event sent from the console");
    let mut context = entity_context(Kind::Action, Some(&name), &entity, None, None);
    context.insert("test".into(), outcome);
    page("entity.html", Some(&viewer), context, StatusCode::OK)
}

/// Saves the form as entity `name` of `kind` (a new one for `None`).
async fn save(
    kind: Kind,
    name: Option<String>,
    viewer: &Viewer,
    form: &Form,
    pages: &Pages,
) -> Response {
    let stored = match &name {
        Some(name) => match kind.find(pages, name) {
            Some(stored) => stored,
            None => return not_found(viewer, kind, name),
        },
        None => Value::Object(Map::new()),
    };
    let entity = from_form(kind, &stored, form);
    let body = serde_json::to_vec(&entity).expect("JSON values serialize");
    match kind.save(pages, name.clone(), &body).await {
        Ok(()) => {
            let saved = entity["name"].as_str().unwrap_or_default();
            tracing::info!(client = %viewer.client, kind = kind.as_str(), name = saved, "saved from the console");
            see_other(&format!(
                "/ui/configuration/{}/{}?notice=saved",
                kind.as_str(),
                encoded(saved)
            ))
        }
        Err(e) => entity_page(viewer, kind, name.as_deref(), &entity, None, Some(&e)),
    }
}

fn not_found(viewer: &Viewer, kind: Kind, name: &str) -> Response {
    crate::render::refused(
        Some(viewer),
        StatusCode::NOT_FOUND,
        &format!("{} `{name}` does not exist", kind.as_str()),
    )
}

fn entity_page(
    viewer: &Viewer,
    kind: Kind,
    name: Option<&str>,
    entity: &Value,
    notice: Option<&str>,
    error: Option<&ChangeError>,
) -> Response {
    let status = match error {
        None => StatusCode::OK,
        Some(ChangeError::NotFound { .. }) => StatusCode::NOT_FOUND,
        Some(ChangeError::Conflict(_)) => StatusCode::CONFLICT,
        Some(ChangeError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        Some(ChangeError::Storage(_) | ChangeError::Sealed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        Some(_) => StatusCode::BAD_REQUEST,
    };
    let context = entity_context(kind, name, entity, notice, error);
    page("entity.html", Some(viewer), context, status)
}
