//! The configuration's home: one document (actions, conditions, subscriptions) persisted in its
//! own SQLite file and published as the shared [`Catalog`] that routing and delivery read.
//!
//! Every change — an entity created, updated or deleted, or a whole import — runs under one
//! lock: copy the current document, apply the change, check the result as a whole, persist it,
//! and only then swap the catalog. A change that fails any step changes nothing, and a change
//! that returned is what the next routed event sees.

use model::config::ConfigurationError;
use model::secrets::MaskedSecret;
use model::{Catalog, Configuration, SharedCatalog};
use std::path::Path;
use std::sync::Arc;
use storage::{Database, Durability, StorageError};
use tokio::sync::Mutex;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE configuration (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        document TEXT NOT NULL,
        changed_at INTEGER NOT NULL
    );
"];

/// Why a configuration change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{kind} `{name}` does not exist")]
    NotFound { kind: &'static str, name: String },
    /// The change conflicts with what exists (a duplicate name, an entity still in use).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] ConfigurationError),
    #[error(transparent)]
    Masked(#[from] MaskedSecret),
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot save the configuration: {0}")]
    Storage(#[from] StorageError),
}

pub struct ConfigStore {
    db: Database,
    catalog: SharedCatalog,
    change_lock: Mutex<()>,
}

impl ConfigStore {
    /// Opens the store and publishes the stored configuration (empty the first time).
    pub async fn open(path: &Path) -> Result<Self, ChangeError> {
        let db = Database::open(path, MIGRATIONS, Durability::Full, None)?;
        let stored: Option<String> = db
            .read(|c| {
                use rusqlite::OptionalExtension;
                c.query_row("SELECT document FROM configuration WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await?;
        let configuration = match stored {
            Some(document) => serde_json::from_str(&document).map_err(|e| {
                ChangeError::BadRequest(format!("the stored configuration does not parse: {e}"))
            })?,
            None => Configuration::default(),
        };
        Ok(ConfigStore {
            db,
            catalog: Catalog::new(configuration)?.shared(),
            change_lock: Mutex::new(()),
        })
    }

    /// The catalog that routing and delivery read; it follows every change.
    pub fn catalog(&self) -> SharedCatalog {
        Arc::clone(&self.catalog)
    }

    /// The configuration as it is now.
    pub fn current(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Applies `change` to a copy of the configuration; if the result is consistent, persists
    /// it and makes it current. Returns what `change` returned.
    pub async fn change<T>(
        &self,
        change: impl FnOnce(&mut Configuration) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let _serialized = self.change_lock.lock().await;
        let mut configuration = self.current().configuration().clone();
        let outcome = change(&mut configuration)?;
        let catalog = Catalog::new(configuration).map_err(|e| match e {
            ConfigurationError::Duplicate { .. } => ChangeError::Conflict(e.to_string()),
            other => ChangeError::Invalid(other),
        })?;
        let document =
            serde_json::to_string(catalog.configuration()).expect("configurations serialize");
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO configuration (id, document, changed_at) VALUES (1, ?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET document = ?1, changed_at = ?2",
                    (document, model::now_epoch_seconds()),
                )
            })
            .await?;
        self.catalog.store(Arc::new(catalog));
        Ok(outcome)
    }
}
