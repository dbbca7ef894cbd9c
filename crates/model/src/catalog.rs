//! An immutable, indexed snapshot of the configuration, shared by the router (matching) and the
//! delivery workers (action lookup). A change replaces the whole snapshot atomically, so a
//! reader sees either the old configuration or the new one, never a mix.

use crate::config::{Action, Configuration, ConfigurationError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Catalog {
    configuration: Configuration,
    action_index: HashMap<String, usize>,
}

/// The current catalog, swappable while readers hold the old one.
pub type SharedCatalog = Arc<ArcSwap<Catalog>>;

impl Catalog {
    /// Checks `configuration` and indexes it.
    pub fn new(configuration: Configuration) -> Result<Self, ConfigurationError> {
        configuration.check()?;
        let action_index = configuration
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        Ok(Catalog {
            configuration,
            action_index,
        })
    }

    pub fn configuration(&self) -> &Configuration {
        &self.configuration
    }

    pub fn action(&self, name: &str) -> Option<&Action> {
        self.action_index
            .get(name)
            .map(|&i| &self.configuration.actions[i])
    }

    pub fn shared(self) -> SharedCatalog {
        Arc::new(ArcSwap::from_pointee(self))
    }
}
