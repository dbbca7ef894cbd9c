//! Configuration (`configuration` scope): the subscriptions, conditions and actions; one
//! form per entity to create, edit or delete it; import and export; and "send a test event"
//! through an action.
//!
//! A form becomes the JSON the configuration API takes — the stored entity (secrets masked, as
//! the API shows it) with the form's fields laid over it, so fields the form does not show
//! survive — and goes through the API's own create/update/delete. Its error message is shown
//! above the form and next to every field it names (`` `predicate` ``).

use super::Pages;
use crate::render::{encoded, form_page, page, see_other};
use crate::session::{Form, Viewer};
use model::{Action, Condition, Subscription};
use router::api::{self as config_api, Entity};
use router::store::ChangeError;
use serde_json::{Map, Value};
use std::collections::HashMap;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};
use web::Scope;

/// New property rows an action's form offers.
const NEW_PROPERTY_ROWS: usize = 2;
const STATES: &[&str] = &["ENABLED", "DISABLED"];
const PREDICATES: &[&str] = &[
    "EQUALS",
    "NOT_EQUALS",
    "CONTAINS",
    "DOES_NOT_CONTAIN",
    "STARTS_WITH",
    "DOES_NOT_START_WITH",
    "ENDS_WITH",
    "DOES_NOT_END_WITH",
    "ANY",
    "NO_VALUE",
    "LESS_THAN",
    "GREATER_THAN",
    "NUMBER_EQUALS",
];

/// How a field is entered.
#[derive(Clone, Copy, PartialEq)]
enum Input {
    Text,
    /// A comma-separated list, a JSON array.
    List,
    /// Free text with suggestions (the API names a wrong value).
    Suggest(&'static [&'static str]),
    Choice(&'static [&'static str]),
    Flag,
}

struct Field {
    key: &'static str,
    label: &'static str,
    input: Input,
}

const fn field(key: &'static str, label: &'static str, input: Input) -> Field {
    Field { key, label, input }
}

/// The three kinds of entity, each with its form.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Action,
    Condition,
    Subscription,
}

impl Kind {
    fn parse(segment: &str) -> Option<Kind> {
        match segment {
            "action" => Some(Kind::Action),
            "condition" => Some(Kind::Condition),
            "subscription" => Some(Kind::Subscription),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Action => Action::KIND,
            Kind::Condition => Condition::KIND,
            Kind::Subscription => Subscription::KIND,
        }
    }

    fn fields(self) -> &'static [Field] {
        const ACTION: &[Field] = &[
            field("name", "Name", Input::Text),
            field("type", "Type", Input::Text),
            field("state", "State", Input::Choice(STATES)),
            field("description", "Description", Input::Text),
            field("fallbackAction", "Fallback action", Input::Text),
        ];
        const CONDITION: &[Field] = &[
            field("name", "Name", Input::Text),
            field("propertyKey", "Property key", Input::Text),
            field("predicate", "Predicate", Input::Suggest(PREDICATES)),
            field("propertyValue", "Property value", Input::Text),
            field("description", "Description", Input::Text),
            field("mandatory", "Mandatory", Input::Flag),
        ];
        const SUBSCRIPTION: &[Field] = &[
            field("name", "Name", Input::Text),
            field("state", "State", Input::Choice(STATES)),
            field("conditions", "Conditions (comma-separated)", Input::List),
            field("actions", "Actions (comma-separated)", Input::List),
            field("description", "Description", Input::Text),
            field(
                "muteTimeIntervals",
                "Mute time intervals (comma-separated)",
                Input::List,
            ),
            field(
                "activeTimeIntervals",
                "Active time intervals (comma-separated)",
                Input::List,
            ),
        ];
        match self {
            Kind::Action => ACTION,
            Kind::Condition => CONDITION,
            Kind::Subscription => SUBSCRIPTION,
        }
    }

    /// The entity `name` as the API shows it.
    fn find(self, pages: &Pages, name: &str) -> Option<Value> {
        let store = &pages.console.config;
        let current = store.current();
        let configuration = current.configuration();
        fn shown<E: Entity>(all: &[E], name: &str, pages: &Pages) -> Option<Value> {
            all.iter()
                .find(|e| e.name() == name)
                .map(|e| serde_json::to_value(e.shown(pages.console.config.action_types())))
                .and_then(Result::ok)
        }
        match self {
            Kind::Action => shown(&configuration.actions, name, pages),
            Kind::Condition => shown(&configuration.conditions, name, pages),
            Kind::Subscription => shown(&configuration.subscriptions, name, pages),
        }
    }

    /// Creates (`name` none) or updates the entity `body` through the configuration API.
    async fn save(
        self,
        pages: &Pages,
        name: Option<String>,
        body: &[u8],
    ) -> Result<(), ChangeError> {
        async fn save<E: Entity>(
            pages: &Pages,
            name: Option<String>,
            body: &[u8],
        ) -> Result<(), ChangeError> {
            let store = &pages.console.config;
            match name {
                None => config_api::create::<E>(store, body).await.map(drop),
                Some(name) => config_api::update::<E>(store, name, body).await.map(drop),
            }
        }
        match self {
            Kind::Action => save::<Action>(pages, name, body).await,
            Kind::Condition => save::<Condition>(pages, name, body).await,
            Kind::Subscription => save::<Subscription>(pages, name, body).await,
        }
    }

    async fn delete(self, pages: &Pages, name: String) -> Result<(), ChangeError> {
        let store = &pages.console.config;
        match self {
            Kind::Action => config_api::delete::<Action>(store, name).await,
            Kind::Condition => config_api::delete::<Condition>(store, name).await,
            Kind::Subscription => config_api::delete::<Subscription>(store, name).await,
        }
    }
}

fn kind() -> impl Filter<Extract = (Kind,), Error = warp::Rejection> + Clone {
    warp::path::param::<String>().and_then(|segment: String| async move {
        Kind::parse(&segment).ok_or_else(warp::reject::not_found)
    })
}

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

/// `stored` with the form's fields laid over it.
fn from_form(kind: Kind, stored: &Value, form: &Form) -> Value {
    let mut entity = stored.as_object().cloned().unwrap_or_default();
    for field in kind.fields() {
        let text = form.get(field.key).unwrap_or_default();
        let value = match field.input {
            Input::Flag => Some(Value::Bool(text == "on")),
            Input::List => Some(Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_owned()))
                    .collect(),
            )),
            Input::Text | Input::Suggest(_) | Input::Choice(_) => {
                (!text.is_empty() || field.key == "name").then(|| Value::String(text.to_owned()))
            }
        };
        match value {
            Some(value) => entity.insert(field.key.to_owned(), value),
            None => entity.remove(field.key),
        };
    }
    if kind == Kind::Action {
        let before = stored["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut properties = Map::new();
        for (key, text) in form.fields() {
            if let Some(property) = key.strip_prefix("property.") {
                if !text.trim().is_empty() {
                    properties.insert(
                        property.to_owned(),
                        typed(before.get(property), text.trim()),
                    );
                }
            }
        }
        for n in 0..NEW_PROPERTY_ROWS {
            if let (Some(key), Some(value)) = (
                form.get(&format!("newKey{n}")),
                form.get(&format!("newValue{n}")),
            ) {
                properties.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        entity.insert("properties".into(), Value::Object(properties));
    }
    Value::Object(entity)
}

/// A property's text as the type it had (a flag stays a flag, a number a number).
fn typed(before: Option<&Value>, text: &str) -> Value {
    match (before, serde_json::from_str::<Value>(text)) {
        (Some(Value::Bool(_)), Ok(flag @ Value::Bool(_))) => flag,
        (Some(Value::Number(_)), Ok(number @ Value::Number(_))) => number,
        _ => Value::String(text.to_owned()),
    }
}

/// Whether `message` names `key` (`` `key` ``, or a path into it).
fn names(message: &str, key: &str) -> bool {
    message.contains(&format!("`{key}`")) || message.contains(&format!("`{key}."))
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

/// What the entity form shows: each field with its value and the error that names it.
fn entity_context(
    kind: Kind,
    name: Option<&str>,
    entity: &Value,
    notice: Option<&str>,
    error: Option<&ChangeError>,
) -> Map<String, Value> {
    let message = error.map(ToString::to_string);
    let error_of = |key: &str| {
        message
            .as_deref()
            .filter(|m| names(m, key))
            .map(str::to_owned)
    };
    let fields: Vec<Value> = kind
        .fields()
        .iter()
        .map(|f| {
            let value = match &entity[f.key] {
                Value::String(text) => text.clone(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                Value::Bool(flag) => flag.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let (input, options): (&str, &[&str]) = match f.input {
                Input::Text => ("text", &[]),
                Input::List => ("text", &[]),
                Input::Suggest(options) => ("suggest", options),
                Input::Choice(options) => ("choice", options),
                Input::Flag => ("flag", &[]),
            };
            serde_json::json!({
                "key": f.key, "label": f.label, "input": input, "options": options,
                "value": value, "error": error_of(f.key),
                // A name is the entity's address: fixed once it exists.
                "readonly": f.key == "name" && name.is_some(),
            })
        })
        .collect();
    let properties: Vec<Value> = entity["properties"]
        .as_object()
        .map(|properties| {
            properties
                .iter()
                .map(|(key, value)| {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    serde_json::json!({"key": key, "value": text, "error": error_of(key)})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut context = Map::new();
    context.insert(
        "title".into(),
        match name {
            Some(name) => format!("{} {name}", kind.as_str()),
            None => format!("New {}", kind.as_str()),
        }
        .into(),
    );
    context.insert("kind".into(), kind.as_str().into());
    context.insert("name".into(), name.into());
    context.insert(
        "path".into(),
        match name {
            Some(name) => format!("/ui/configuration/{}/{}", kind.as_str(), encoded(name)),
            None => format!("/ui/configuration/{}", kind.as_str()),
        }
        .into(),
    );
    context.insert("fields".into(), fields.into());
    context.insert("action".into(), (kind == Kind::Action).into());
    context.insert("properties".into(), properties.into());
    context.insert(
        "newRows".into(),
        (0..NEW_PROPERTY_ROWS).collect::<Vec<_>>().into(),
    );
    context.insert("notice".into(), notice.into());
    context.insert("error".into(), message.into());
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_lays_its_fields_over_the_stored_entity() {
        let stored = serde_json::json!({
            "name": "hook", "type": "WEB_HOOK", "state": "ENABLED", "labels": ["keep"],
            "properties": {"destination": "http://old", "sslTrustAll": false, "token": "****"}
        });
        let form = Form::from_pairs(&[
            ("name", "hook"),
            ("type", "WEB_HOOK"),
            ("state", "DISABLED"),
            ("description", ""),
            ("property.destination", "http://new"),
            ("property.sslTrustAll", "true"),
            ("property.token", "****"),
            ("newKey0", "extra"),
            ("newValue0", "x"),
        ]);
        let entity = from_form(Kind::Action, &stored, &form);
        assert_eq!(entity["state"], "DISABLED");
        assert_eq!(
            entity["labels"],
            serde_json::json!(["keep"]),
            "fields the form lacks stay"
        );
        assert!(
            entity.get("description").is_none(),
            "a blank field is left out"
        );
        assert_eq!(
            entity["properties"],
            serde_json::json!({"destination": "http://new", "sslTrustAll": true, "token": "****", "extra": "x"})
        );
    }

    #[test]
    fn an_error_belongs_to_the_fields_it_names() {
        let message = "invalid condition: `predicate`: unknown variant `SOMETIMES`";
        assert!(names(message, "predicate"));
        assert!(!names(message, "propertyKey"));
        assert!(names("`properties.destination` is required", "properties"));
    }
}
