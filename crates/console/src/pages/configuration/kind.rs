//! The three kinds of entity and their forms' fields; each kind finds, saves and deletes
//! through the configuration API's own functions.

use super::super::Pages;
use model::{Action, Condition, Subscription};
use router::api::{self as config_api, Entity};
use router::store::ChangeError;
use serde_json::Value;
use warp::Filter;

/// New property rows an action's form offers.
pub(super) const NEW_PROPERTY_ROWS: usize = 2;
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
pub(super) enum Input {
    Text,
    /// A comma-separated list, a JSON array.
    List,
    /// Free text with suggestions (the API names a wrong value).
    Suggest(&'static [&'static str]),
    Choice(&'static [&'static str]),
    Flag,
}

pub(super) struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub input: Input,
}

const fn field(key: &'static str, label: &'static str, input: Input) -> Field {
    Field { key, label, input }
}

/// The three kinds of entity, each with its form.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
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

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Kind::Action => Action::KIND,
            Kind::Condition => Condition::KIND,
            Kind::Subscription => Subscription::KIND,
        }
    }

    pub(super) fn fields(self) -> &'static [Field] {
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
    pub(super) fn find(self, pages: &Pages, name: &str) -> Option<Value> {
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
    pub(super) async fn save(
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

    pub(super) async fn delete(self, pages: &Pages, name: String) -> Result<(), ChangeError> {
        let store = &pages.console.config;
        match self {
            Kind::Action => config_api::delete::<Action>(store, name).await,
            Kind::Condition => config_api::delete::<Condition>(store, name).await,
            Kind::Subscription => config_api::delete::<Subscription>(store, name).await,
        }
    }
}

pub(super) fn kind() -> impl Filter<Extract = (Kind,), Error = warp::Rejection> + Clone {
    warp::path::param::<String>().and_then(|segment: String| async move {
        Kind::parse(&segment).ok_or_else(warp::reject::not_found)
    })
}
