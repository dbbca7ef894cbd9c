//! The ANS configuration API: `/{cf|neo}/configuration/v1/{action|condition|subscription}`
//! (list, get, create, update, delete — entities are addressed by name) and
//! `/{cf|neo}/configuration/v1/configuration` (export, and import that replaces everything).
//!
//! One generic set of handlers serves the three entity kinds through [`Entity`]; every change
//! goes through [`ConfigStore::change`], so it is checked as a whole, persisted, and live for
//! the next routed event before the answer leaves. Action secrets are masked in every answer.

use crate::store::{ChangeError, ConfigStore};
use model::config::EntityMeta;
use model::{secrets, Action, ActionTypes, Condition, Configuration, Subscription};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::ApiError;

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// What the generic handlers need to know about an entity kind.
pub trait Entity: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The path segment and the noun in messages.
    const KIND: &'static str;
    fn name(&self) -> &str;
    fn meta_mut(&mut self) -> &mut EntityMeta;
    fn all(configuration: &Configuration) -> &Vec<Self>;
    fn all_mut(configuration: &mut Configuration) -> &mut Vec<Self>;
    /// The entity as answers show it.
    fn shown(&self, _types: &dyn ActionTypes) -> Self {
        self.clone()
    }
    /// Readies an incoming entity, given the stored one of the same name.
    fn prepare(
        &mut self,
        _stored: Option<&Self>,
        _types: &dyn ActionTypes,
    ) -> Result<(), ChangeError> {
        Ok(())
    }
    /// The entities that refer to the one named `name` and so keep it from being deleted.
    fn used_by(configuration: &Configuration, name: &str) -> Vec<String>;
}

fn subscriptions_using(
    configuration: &Configuration,
    uses: impl Fn(&Subscription) -> bool,
) -> Vec<String> {
    configuration
        .subscriptions
        .iter()
        .filter(|s| uses(s))
        .map(|s| format!("subscription `{}`", s.name))
        .collect()
}

impl Entity for Action {
    const KIND: &'static str = "action";
    fn name(&self) -> &str {
        &self.name
    }
    fn meta_mut(&mut self) -> &mut EntityMeta {
        &mut self.meta
    }
    fn all(configuration: &Configuration) -> &Vec<Self> {
        &configuration.actions
    }
    fn all_mut(configuration: &mut Configuration) -> &mut Vec<Self> {
        &mut configuration.actions
    }
    fn shown(&self, types: &dyn ActionTypes) -> Self {
        secrets::masked(self, types)
    }
    fn prepare(
        &mut self,
        stored: Option<&Self>,
        types: &dyn ActionTypes,
    ) -> Result<(), ChangeError> {
        Ok(secrets::restore(self, stored, types)?)
    }
    fn used_by(configuration: &Configuration, name: &str) -> Vec<String> {
        let mut users = subscriptions_using(configuration, |s| s.actions.iter().any(|a| a == name));
        users.extend(
            configuration
                .actions
                .iter()
                .filter(|a| a.fallback_action.as_deref() == Some(name))
                .map(|a| format!("action `{}` (as its fallback)", a.name)),
        );
        users
    }
}

impl Entity for Condition {
    const KIND: &'static str = "condition";
    fn name(&self) -> &str {
        &self.name
    }
    fn meta_mut(&mut self) -> &mut EntityMeta {
        &mut self.meta
    }
    fn all(configuration: &Configuration) -> &Vec<Self> {
        &configuration.conditions
    }
    fn all_mut(configuration: &mut Configuration) -> &mut Vec<Self> {
        &mut configuration.conditions
    }
    fn used_by(configuration: &Configuration, name: &str) -> Vec<String> {
        subscriptions_using(configuration, |s| s.conditions.iter().any(|c| c == name))
    }
}

impl Entity for Subscription {
    const KIND: &'static str = "subscription";
    fn name(&self) -> &str {
        &self.name
    }
    fn meta_mut(&mut self) -> &mut EntityMeta {
        &mut self.meta
    }
    fn all(configuration: &Configuration) -> &Vec<Self> {
        &configuration.subscriptions
    }
    fn all_mut(configuration: &mut Configuration) -> &mut Vec<Self> {
        &mut configuration.subscriptions
    }
    fn used_by(_: &Configuration, _: &str) -> Vec<String> {
        Vec::new()
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn error_reply(error: ChangeError) -> Response {
    let status = match &error {
        ChangeError::NotFound { .. } => StatusCode::NOT_FOUND,
        ChangeError::Conflict(_) => StatusCode::CONFLICT,
        ChangeError::Invalid(_) | ChangeError::Masked(_) | ChangeError::BadRequest(_) => {
            StatusCode::BAD_REQUEST
        }
        ChangeError::Storage(_) | ChangeError::Sealed(_) => {
            tracing::error!(error = %error, "cannot save the configuration");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        ChangeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, error.to_string()).into_response()
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// Parses a request body, naming the field at fault.
fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, ChangeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ChangeError::BadRequest(format!("malformed JSON: {inner}"))
        } else if path == "." {
            ChangeError::BadRequest(format!("invalid {what}: {inner}"))
        } else {
            ChangeError::BadRequest(format!("invalid {what}: `{path}`: {inner}"))
        }
    })
}

/// The configuration API, behind `guard` (the configuration-scope credential check).
pub fn routes(
    store: Arc<ConfigStore>,
    body_limit: u64,
    guard: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    entity_routes::<Action>(&store, body_limit, guard.clone())
        .or(entity_routes::<Condition>(
            &store,
            body_limit,
            guard.clone(),
        ))
        .unify()
        .or(entity_routes::<Subscription>(
            &store,
            body_limit,
            guard.clone(),
        ))
        .unify()
        .or(configuration_routes(&store, body_limit, guard))
        .unify()
        .boxed()
}

fn base() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    web::platform()
        .and(warp::path("configuration"))
        .and(warp::path("v1"))
}

fn entity_routes<E: Entity>(
    store: &Arc<ConfigStore>,
    body_limit: u64,
    guard: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let store = {
        let store = Arc::clone(store);
        warp::any().map(move || Arc::clone(&store))
    };
    let collection = base().and(warp::path(E::KIND)).and(warp::path::end());
    let member = base()
        .and(warp::path(E::KIND))
        .and(web::segment())
        .and(warp::path::end());
    let list = collection
        .clone()
        .and(warp::get())
        .and(guard.clone())
        .and(warp::query::<HashMap<String, String>>())
        .and(store.clone())
        .then(
            |query: HashMap<String, String>, store: Arc<ConfigStore>| async move {
                store.refresh().await;
                list::<E>(&query, &store)
            },
        );
    let get = member
        .clone()
        .and(warp::get())
        .and(guard.clone())
        .and(store.clone())
        .then(|name: String, store: Arc<ConfigStore>| async move {
            store.refresh().await;
            let current = store.current();
            match E::all(current.configuration())
                .iter()
                .find(|e| e.name() == name)
            {
                Some(entity) => json_reply(StatusCode::OK, &entity.shown(store.action_types())),
                None => error_reply(ChangeError::NotFound {
                    kind: E::KIND,
                    name,
                }),
            }
        });
    let create = collection
        .and(warp::post())
        .and(guard.clone())
        .and(web::body::json(body_limit))
        .and(store.clone())
        .then(|body: bytes::Bytes, store: Arc<ConfigStore>| async move {
            match create::<E>(&store, &body).await {
                Ok(entity) => json_reply(StatusCode::CREATED, &entity),
                Err(e) => error_reply(e),
            }
        });
    let update = member
        .clone()
        .and(warp::put())
        .and(guard.clone())
        .and(web::body::json(body_limit))
        .and(store.clone())
        .then(
            |name: String, body: bytes::Bytes, store: Arc<ConfigStore>| async move {
                match update::<E>(&store, name, &body).await {
                    Ok(entity) => json_reply(StatusCode::OK, &entity),
                    Err(e) => error_reply(e),
                }
            },
        );
    let delete = member.and(warp::delete()).and(guard).and(store).then(
        |name: String, store: Arc<ConfigStore>| async move {
            match delete::<E>(&store, name).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_reply(e),
            }
        },
    );
    list.or(get)
        .unify()
        .or(create)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

/// Creates the entity in `body` (JSON as the API takes it), checked with the whole
/// configuration; the entity as answers show it. The API and the console create through here,
/// so both say the same about what is wrong.
pub async fn create<E: Entity>(store: &ConfigStore, body: &[u8]) -> Result<E, ChangeError> {
    let mut entity: E = parse(E::KIND, body)?;
    let created = store
        .change(move |configuration, types| {
            if E::all(configuration)
                .iter()
                .any(|e| e.name() == entity.name())
            {
                return Err(ChangeError::Conflict(format!(
                    "{} `{}` already exists",
                    E::KIND,
                    entity.name()
                )));
            }
            entity.prepare(None, types)?;
            *entity.meta_mut() = EntityMeta::stamped(None, clock::now_epoch_seconds(), new_id);
            E::all_mut(configuration).push(entity.clone());
            Ok(entity)
        })
        .await?;
    Ok(created.shown(store.action_types()))
}

/// Replaces the entity `name` with the one in `body` (masked secrets keep their stored
/// values); the entity as answers show it.
pub async fn update<E: Entity>(
    store: &ConfigStore,
    name: String,
    body: &[u8],
) -> Result<E, ChangeError> {
    let mut entity: E = parse(E::KIND, body)?;
    if entity.name() != name {
        return Err(ChangeError::BadRequest(format!(
            "`name` in the body (`{}`) must be the name in the path (`{name}`)",
            entity.name()
        )));
    }
    let updated = store
        .change(move |configuration, types| {
            let all = E::all_mut(configuration);
            let Some(stored) = all.iter_mut().find(|e| e.name() == name) else {
                return Err(ChangeError::NotFound {
                    kind: E::KIND,
                    name,
                });
            };
            entity.prepare(Some(stored), types)?;
            let previous = stored.meta_mut().clone();
            *entity.meta_mut() =
                EntityMeta::stamped(Some(&previous), clock::now_epoch_seconds(), new_id);
            *stored = entity.clone();
            Ok(entity)
        })
        .await?;
    Ok(updated.shown(store.action_types()))
}

/// Deletes the entity `name`, unless another one uses it.
pub async fn delete<E: Entity>(store: &ConfigStore, name: String) -> Result<(), ChangeError> {
    store
        .change(|configuration, _| {
            let users = E::used_by(configuration, &name);
            if !users.is_empty() {
                return Err(ChangeError::Conflict(format!(
                    "{} `{name}` is used by {}",
                    E::KIND,
                    users.join(", ")
                )));
            }
            let all = E::all_mut(configuration);
            let before = all.len();
            all.retain(|e| e.name() != name);
            if all.len() == before {
                return Err(ChangeError::NotFound {
                    kind: E::KIND,
                    name: name.clone(),
                });
            }
            Ok(())
        })
        .await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    results: Vec<T>,
    metadata: PageMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageMetadata {
    page: usize,
    page_size: usize,
    total_pages: usize,
    total_count: usize,
}

fn list<E: Entity>(query: &HashMap<String, String>, store: &ConfigStore) -> Response {
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            ChangeError::BadRequest(format!("`{key}` must be a non-negative integer, got `{v}`"))
        }),
    };
    let (page, page_size) = match (number("page", 0), number("pageSize", DEFAULT_PAGE_SIZE)) {
        (Ok(page), Ok(size)) if (1..=MAX_PAGE_SIZE).contains(&size) => (page, size),
        (Ok(_), Ok(size)) => {
            return error_reply(ChangeError::BadRequest(format!(
                "`pageSize` must be between 1 and {MAX_PAGE_SIZE}, got {size}"
            )))
        }
        (Err(e), _) | (_, Err(e)) => return error_reply(e),
    };
    let current = store.current();
    let all = E::all(current.configuration());
    let results = all
        .iter()
        .skip(page.saturating_mul(page_size))
        .take(page_size)
        .map(|e| e.shown(store.action_types()))
        .collect();
    json_reply(
        StatusCode::OK,
        &Page {
            results,
            metadata: PageMetadata {
                page,
                page_size,
                total_pages: all.len().div_ceil(page_size),
                total_count: all.len(),
            },
        },
    )
}

/// The configuration as export shows it: secrets masked.
pub fn exported(store: &ConfigStore) -> Configuration {
    let current = store.current();
    let configuration = current.configuration();
    Configuration {
        actions: configuration
            .actions
            .iter()
            .map(|a| a.shown(store.action_types()))
            .collect(),
        ..configuration.clone()
    }
}

/// Import: `incoming` replaces everything. Entities keep the metadata they arrive with (an
/// export re-imported keeps its ids), or that of the stored entity of the same name.
pub fn replace(
    configuration: &mut Configuration,
    mut incoming: Configuration,
    types: &dyn ActionTypes,
) -> Result<(), ChangeError> {
    fn stamp<E: Entity>(
        incoming: &mut [E],
        stored: &[E],
        now: i64,
        types: &dyn ActionTypes,
    ) -> Result<(), ChangeError> {
        for entity in incoming {
            let previous = stored.iter().find(|s| s.name() == entity.name());
            entity.prepare(previous, types)?;
            let own = entity.meta_mut().clone();
            let basis = if own.id.is_some() {
                Some(own)
            } else {
                previous.cloned().map(|mut p| p.meta_mut().clone())
            };
            *entity.meta_mut() = EntityMeta::stamped(basis.as_ref(), now, new_id);
        }
        Ok(())
    }
    let now = clock::now_epoch_seconds();
    stamp(&mut incoming.actions, &configuration.actions, now, types)?;
    stamp(
        &mut incoming.conditions,
        &configuration.conditions,
        now,
        types,
    )?;
    stamp(
        &mut incoming.subscriptions,
        &configuration.subscriptions,
        now,
        types,
    )?;
    *configuration = incoming;
    Ok(())
}

/// Imports the configuration in `body`, replacing everything (see [`replace`]); the
/// configuration as export shows it.
pub async fn import(store: &ConfigStore, body: &[u8]) -> Result<Configuration, ChangeError> {
    let incoming: Configuration = parse("configuration", body)?;
    store
        .change(|configuration, types| replace(configuration, incoming, types))
        .await?;
    Ok(exported(store))
}

fn configuration_routes(
    store: &Arc<ConfigStore>,
    body_limit: u64,
    guard: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let path = base()
        .and(warp::path("configuration"))
        .and(warp::path::end());
    let export_store = Arc::clone(store);
    let export = path
        .clone()
        .and(warp::get())
        .and(guard.clone())
        .then(move || {
            let store = Arc::clone(&export_store);
            async move {
                store.refresh().await;
                json_reply(StatusCode::OK, &exported(&store))
            }
        });
    let import_store = Arc::clone(store);
    let import = path
        .and(warp::post())
        .and(guard)
        .and(web::body::json(body_limit))
        .then(move |body: bytes::Bytes| {
            let store = Arc::clone(&import_store);
            async move {
                match import(&store, &body).await {
                    Ok(configuration) => json_reply(StatusCode::CREATED, &configuration),
                    Err(e) => error_reply(e),
                }
            }
        });
    export.or(import).unify().boxed()
}
