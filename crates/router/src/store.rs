//! The configuration's home: one document (actions, conditions, subscriptions) persisted in its
//! own SQLite file and published as the shared [`Catalog`] that routing and delivery read.
//!
//! Every change — an entity created, updated or deleted, or a whole import — runs under one
//! lock: copy the current document, apply the change, check the result as a whole, broadcast
//! it, persist it, and only then swap the catalog. A change that fails any step changes nothing
//! here, and a change that returned is what the next routed event sees.
//!
//! Processes that share a RabbitMQ share their configuration: a change is broadcast as a
//! snapshot before it returns, so it already waits in every other process's update queue; each
//! router drains that queue ([`ConfigStore::refresh`]) before routing a batch, which is what
//! makes the change apply to every event accepted after it, whichever process routes it.
//! Snapshots carry a version that is later than anything their sender had seen (a Lamport
//! clock on milliseconds); a process adopts a snapshot only if it is newer than its own.
//!
//! On disk the document is sealed ([`crate::sealing`]): at start the store opens it with the
//! current or a previous key, and seals it again with the current key if it was not already,
//! overwriting what it replaces (`secure_delete`, then a WAL checkpoint) so that neither an old
//! key's ciphertext nor an older Tocsin's plain JSON lingers in the file.

use crate::sealing::{Keys, Opened, SealError};
use bus::Bus;
use model::config::ConfigurationError;
use model::secrets::MaskedSecret;
use model::{ActionTypes, Catalog, Configuration, SharedCatalog};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use storage::{Database, Durability, StorageError};
use tokio::sync::Mutex;

const MIGRATIONS: &[&str] = &["
    CREATE TABLE configuration (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        document TEXT NOT NULL,
        -- The configuration's version: a Lamport clock on epoch milliseconds.
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
    #[error(transparent)]
    Sealed(#[from] SealError),
    #[error("cannot share the change with the other processes, nothing changed: {0}")]
    Unavailable(String),
}

/// What goes on the bus for the other processes.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    version: i64,
    configuration: Configuration,
}

pub struct ConfigStore {
    db: Database,
    catalog: SharedCatalog,
    change_lock: Mutex<()>,
    /// The version of the current configuration.
    version: AtomicI64,
    /// The bus shared with other processes.
    bus: Arc<dyn Bus>,
    /// The channels, which check every action and prepare it for delivery.
    types: Arc<dyn ActionTypes>,
    keys: Keys,
}

impl ConfigStore {
    /// Opens the store (sealing with `keys`), publishes the stored configuration (empty the
    /// first time), and catches up with any newer one the other processes on `bus` have.
    /// Every change is checked by `types`, the channels.
    pub async fn open(
        path: &Path,
        bus: Arc<dyn Bus>,
        types: Arc<dyn ActionTypes>,
        keys: Keys,
    ) -> Result<Self, ChangeError> {
        let db = Database::open(path, MIGRATIONS, Durability::Full, None)?;
        let stored: Option<(Vec<u8>, i64)> = db
            .read(|c| {
                use rusqlite::OptionalExtension;
                c.query_row(
                    "SELECT document, changed_at FROM configuration WHERE id = 1",
                    [],
                    |r| Ok((r.get_ref(0)?.as_bytes()?.to_vec(), r.get(1)?)),
                )
                .optional()
            })
            .await?;
        let (configuration, version, opened) = match stored {
            Some((stored, version)) => {
                let (document, opened) = keys.open(&stored)?;
                let configuration = serde_json::from_slice(&document).map_err(|e| {
                    ChangeError::BadRequest(format!("the stored configuration does not parse: {e}"))
                })?;
                (configuration, version, opened)
            }
            None => (Configuration::default(), 0, Opened::Current),
        };
        let store = ConfigStore {
            db,
            catalog: Catalog::load(configuration, &*types)?.shared(),
            change_lock: Mutex::new(()),
            version: AtomicI64::new(version),
            bus,
            types,
            keys,
        };
        if opened == Opened::Outdated {
            let current = Catalog::load(store.current().configuration().clone(), &*store.types)?;
            store.persist(current, version).await?;
            checkpoint(path)?;
            tracing::info!("the stored configuration is sealed with the current key now");
        }
        store.refresh().await;
        Ok(store)
    }

    /// The catalog that routing and delivery read; it follows every change.
    pub fn catalog(&self) -> SharedCatalog {
        Arc::clone(&self.catalog)
    }

    /// The action types this installation delivers (to mask and restore action secrets).
    pub fn action_types(&self) -> &dyn ActionTypes {
        &*self.types
    }

    /// The configuration as it is now.
    pub fn current(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// Reads the file: succeeds when the stored configuration is reachable (for `/readyz`).
    pub async fn check(&self) -> Result<(), StorageError> {
        self.db
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM configuration", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .await
            .map(drop)
    }

    /// Applies `change` to a copy of the configuration; if the result is consistent, shares it
    /// with the other processes, persists it and makes it current. Returns what `change`
    /// returned.
    pub async fn change<T>(
        &self,
        change: impl FnOnce(&mut Configuration, &dyn ActionTypes) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        // Build on the newest configuration, wherever it was changed. Two processes changing
        // at the same instant both succeed, and the later version wins everywhere.
        self.refresh().await;
        let _serialized = self.change_lock.lock().await;
        let mut configuration = self.current().configuration().clone();
        let outcome = change(&mut configuration, &*self.types)?;
        let catalog = Catalog::new(configuration, &*self.types).map_err(|e| match e {
            ConfigurationError::Duplicate { .. } => ChangeError::Conflict(e.to_string()),
            other => ChangeError::Invalid(other),
        })?;
        let version = clock::now_epoch_millis().max(self.version.load(Ordering::SeqCst) + 1);
        let snapshot = Snapshot {
            version,
            configuration: catalog.configuration().clone(),
        };
        let snapshot = serde_json::to_vec(&snapshot).expect("snapshots serialize");
        self.bus
            .broadcast_config(snapshot.into())
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        self.persist(catalog, version).await?;
        Ok(outcome)
    }

    /// Adopts the newest configuration other processes broadcast, if it is newer than ours.
    /// Failures are logged: the current configuration stays in force.
    pub async fn refresh(&self) {
        // Reading and adopting go together, one refresh at a time: the router's refresh that
        // finds the update queue empty must not go on while the background refresher is still
        // adopting the update it took off that queue (the router would route with the old
        // configuration an event accepted after the change returned).
        let _serialized = self.change_lock.lock().await;
        let updates = match self.bus.config_updates().await {
            Ok(updates) if updates.is_empty() => return,
            Ok(updates) => updates,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read configuration updates");
                return;
            }
        };
        let newest = updates
            .iter()
            .filter_map(|update| {
                serde_json::from_slice::<Snapshot>(update)
                    .map_err(
                        |e| tracing::error!(error = %e, "a configuration update does not parse"),
                    )
                    .ok()
            })
            .max_by_key(|snapshot| snapshot.version)
            .filter(|snapshot| snapshot.version > self.version.load(Ordering::SeqCst));
        let Some(snapshot) = newest else { return };
        let version = snapshot.version;
        let adopted = async {
            let catalog = Catalog::load(snapshot.configuration, &*self.types)?;
            self.persist(catalog, version).await
        };
        match adopted.await {
            Ok(()) => tracing::info!(
                version,
                "adopted a configuration change from another process"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot adopt a configuration change from another process")
            }
        }
    }

    async fn persist(&self, catalog: Catalog, version: i64) -> Result<(), ChangeError> {
        let document =
            serde_json::to_vec(catalog.configuration()).expect("configurations serialize");
        let sealed = self.keys.seal(&document);
        self.db
            .write(move |c| {
                // What the new document replaces is overwritten, not just freed.
                c.pragma_update(None, "secure_delete", true)?;
                c.execute(
                    "INSERT INTO configuration (id, document, changed_at) VALUES (1, ?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET document = ?1, changed_at = ?2",
                    (sealed, version),
                )
            })
            .await?;
        self.catalog.store(Arc::new(catalog));
        self.version.store(version, Ordering::SeqCst);
        Ok(())
    }
}

/// Moves the WAL into the file and empties it, so that no frame of what was overwritten is left.
fn checkpoint(path: &Path) -> Result<(), StorageError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
