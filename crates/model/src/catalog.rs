//! An immutable, indexed snapshot of the configuration, shared by the router (matching) and the
//! delivery workers (action lookup). A change replaces the whole snapshot atomically, so a
//! reader sees either the old configuration or the new one, never a mix.
//!
//! Beside each action the catalog keeps what its channel made of it ([`Prepared`]): built once
//! here, when the configuration changes, and read by every delivery attempt.

use crate::action_types::{ActionTypeError, ActionTypes, Prepared};
use crate::config::{Action, Configuration, ConfigurationError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct Catalog {
    configuration: Configuration,
    /// By action name: its index in `configuration.actions` and its channel's configuration.
    actions: HashMap<String, (usize, Result<Prepared, ActionTypeError>)>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("configuration", &self.configuration)
            .finish_non_exhaustive()
    }
}

/// The current catalog, swappable while readers hold the old one.
pub type SharedCatalog = Arc<ArcSwap<Catalog>>;

impl Catalog {
    /// Checks `configuration` — every action by its channel — and indexes it: what a change
    /// must pass.
    pub fn new(
        configuration: Configuration,
        types: &dyn ActionTypes,
    ) -> Result<Self, ConfigurationError> {
        let catalog = Self::index(configuration, types)?;
        let refused = catalog
            .refused()
            .next()
            .map(|(action, error)| ConfigurationError::Action {
                name: action.name.clone(),
                error: error.clone(),
            });
        match refused {
            Some(refused) => Err(refused),
            None => Ok(catalog),
        }
    }

    /// Indexes a configuration that was accepted once (stored, or shared by another process).
    /// An action its channel now refuses stays: its deliveries fail with the reason, which an
    /// operator can read and fix, where refusing the whole configuration would stop Tocsin.
    pub fn load(
        configuration: Configuration,
        types: &dyn ActionTypes,
    ) -> Result<Self, ConfigurationError> {
        let catalog = Self::index(configuration, types)?;
        for (action, error) in catalog.refused() {
            tracing::warn!(action = %action.name, %error, "an action of the stored configuration is refused by its channel; its deliveries will fail until it is fixed");
        }
        Ok(catalog)
    }

    /// Checks the configuration's structure and has each action prepared by its channel.
    fn index(
        configuration: Configuration,
        types: &dyn ActionTypes,
    ) -> Result<Self, ConfigurationError> {
        configuration.check_structure()?;
        let actions = configuration
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), (i, types.prepare(a))))
            .collect();
        Ok(Catalog {
            configuration,
            actions,
        })
    }

    /// The actions their channels refuse, in configuration order.
    fn refused(&self) -> impl Iterator<Item = (&Action, &ActionTypeError)> {
        self.configuration
            .actions
            .iter()
            .filter_map(|a| Some((a, self.actions[&a.name].1.as_ref().err()?)))
    }

    pub fn configuration(&self) -> &Configuration {
        &self.configuration
    }

    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions
            .get(name)
            .map(|(i, _)| &self.configuration.actions[*i])
    }

    /// The action and what its channel made of it (or why the channel refuses it).
    pub fn prepared(&self, name: &str) -> Option<(&Action, &Result<Prepared, ActionTypeError>)> {
        self.actions
            .get(name)
            .map(|(i, prepared)| (&self.configuration.actions[*i], prepared))
    }

    pub fn shared(self) -> SharedCatalog {
        Arc::new(ArcSwap::from_pointee(self))
    }
}
