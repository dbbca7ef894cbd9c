//! The configuration's home: one document (actions, conditions, subscriptions) persisted
//! through [`store::config`] — `config.db` in the data directory, or the database every
//! process shares — and published as the shared [`Catalog`] that routing and delivery read.
//!
//! Every change — an entity created, updated or deleted, or a whole import — is one change of
//! the stored document: read the current document, apply the change to it, check the result
//! as a whole, write it with a new version, and only then swap the catalog. A change that fails
//! any step changes nothing, and a change that returned is what the next routed event sees,
//! whichever process routes it:
//! - With the PostgreSQL store, every process reads the one document. A change locks it, so
//!   that changes from every process apply one after the other, each on the last; its commit
//!   is announced (`NOTIFY`) and every process adopts it at once ([`ConfigStore::follow`]). The
//!   announcement may come late, so before routing a batch each router also reads the stored
//!   version ([`ConfigStore::refresh`]: one single-row read) and adopts a newer one first.
//!   Nothing about the configuration crosses the bus.
//! - With the SQLite store, each process keeps its own file. Processes that share a RabbitMQ
//!   share their configuration as a snapshot, sealed with the store's key, broadcast before
//!   the change returns, so it already waits in every other process's update queue; each
//!   router drains that queue before routing a batch. A process adopts a snapshot only if its
//!   version (a Lamport clock on milliseconds) is newer than its own.
//!
//! The configuration API refreshes before it answers a read too, so a change that returned is
//! what every process's API shows, not only what its router routes by (one router may route
//! for all: the events queue has a single active consumer).
//!
//! The document is sealed ([`crate::sealing`]) wherever it is stored: at start the store opens
//! it with the current or a previous key, and seals it again with the current key if it was
//! not already, overwriting what it replaces.

use crate::sealing::{Keys, Opened, Purpose, SealError};
use bus::Bus;
use model::config::ConfigurationError;
use model::secrets::MaskedSecret;
use model::{ActionTypes, Catalog, Configuration, SharedCatalog};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::config::{ConfigDocument, Stored};
use store::{Location, StoreError};
use tokio::sync::Mutex;

/// How often a process looks for changes when nothing announces them (and when an
/// announcement may have been missed).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Why a configuration change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{kind} `{name}` does not exist")]
    NotFound { kind: &'static str, name: String },
    /// The change conflicts with what exists (a duplicate name, an entity still in use, a
    /// change made meanwhile).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] ConfigurationError),
    #[error(transparent)]
    Masked(#[from] MaskedSecret),
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot save the configuration: {0}")]
    Storage(StoreError),
    #[error(transparent)]
    Sealed(#[from] SealError),
    #[error("cannot share the change with the other processes, nothing changed: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ChangeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => ChangeError::Conflict(message),
            other => ChangeError::Storage(other),
        }
    }
}

/// What goes on the bus for the other processes (sealed).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    version: i64,
    configuration: Configuration,
}

pub struct ConfigStore {
    documents: ConfigDocument,
    catalog: SharedCatalog,
    /// One change or refresh at a time in this process.
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
    /// Opens the store at `location` (sealing with `keys`), publishes the stored configuration
    /// (empty the first time), and catches up with any newer one the other processes on `bus`
    /// have. Every change is checked by `types`, the channels.
    pub async fn open(
        location: &Location,
        bus: Arc<dyn Bus>,
        types: Arc<dyn ActionTypes>,
        keys: Keys,
    ) -> Result<Self, ChangeError> {
        let documents = ConfigDocument::open(location).await?;
        let stored = documents.read().await?;
        let (configuration, version, opened) = match &stored {
            Some(stored) => {
                let (configuration, opened) = unseal(&keys, stored)?;
                (configuration, stored.version, opened)
            }
            None => (Configuration::default(), 0, Opened::Current),
        };
        let catalog = Catalog::load(configuration, &*types)?;
        if opened == Opened::Outdated {
            let document = keys.seal(Purpose::AtRest, &serialized(&catalog));
            documents.keep(Stored { document, version }).await?;
            tracing::info!("the stored configuration is sealed with the current key now");
        }
        let store = ConfigStore {
            documents,
            catalog: catalog.shared(),
            change_lock: Mutex::new(()),
            version: AtomicI64::new(version),
            bus,
            types,
            keys,
        };
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

    /// Reads the store: succeeds when the stored configuration is reachable (for `/readyz`).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.documents.version().await.map(drop)
    }

    /// Applies `change` to a copy of the newest configuration; if the result is consistent,
    /// persists it (sharing it with the other processes) and makes it current. Returns what
    /// `change` returned.
    pub async fn change<T>(
        &self,
        change: impl FnOnce(&mut Configuration, &dyn ActionTypes) -> Result<T, ChangeError>,
    ) -> Result<T, ChangeError> {
        let shared = self.documents.is_shared();
        if !shared {
            // Build on the newest configuration, wherever it was changed: two processes
            // changing at the same instant both succeed, and the later version wins everywhere.
            self.refresh().await;
        }
        let _serialized = self.change_lock.lock().await;
        let (outcome, catalog, version) = self
            .documents
            .change(|stored, version| async move {
                // The shared document may be newer than ours: the change builds on it.
                let mut configuration = match &stored {
                    Some(stored) if stored.version != self.version() => {
                        unseal(&self.keys, stored)?.0
                    }
                    _ => self.current().configuration().clone(),
                };
                let outcome = change(&mut configuration, &*self.types)?;
                let catalog = Catalog::new(configuration, &*self.types).map_err(|e| match e {
                    ConfigurationError::Duplicate { .. } => ChangeError::Conflict(e.to_string()),
                    other => ChangeError::Invalid(other),
                })?;
                if !shared {
                    self.broadcast(&catalog, version).await?;
                }
                let document = self.keys.seal(Purpose::AtRest, &serialized(&catalog));
                Ok::<_, ChangeError>((document, (outcome, catalog, version)))
            })
            .await?;
        self.adopt(catalog, version);
        Ok(outcome)
    }

    /// Adopts the newest configuration, if it is newer than ours: the stored one with the
    /// PostgreSQL store, otherwise the newest the other processes broadcast. Failures are
    /// logged: the current configuration stays in force.
    pub async fn refresh(&self) {
        // Reading and adopting go together, one refresh at a time: the router's refresh that
        // finds nothing new must not go on while the background refresher is still adopting
        // what it found (the router would route with the old configuration an event accepted
        // after the change returned).
        let _serialized = self.change_lock.lock().await;
        let adopted = if self.documents.is_shared() {
            self.take_stored().await
        } else {
            self.take_broadcast().await
        };
        match adopted {
            Ok(Some(version)) => tracing::info!(
                version,
                "adopted a configuration change from another process"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(
                error = %e,
                "cannot take configuration changes from other processes; the current configuration stays in force"
            ),
        }
    }

    /// Keeps this process current when no event makes its router [`refresh`](Self::refresh):
    /// for the delivery side and the API. With the PostgreSQL store a change is adopted as
    /// soon as it is announced; every second in any case (the bus's snapshots, or an
    /// announcement missed while the listener reconnected). Runs until dropped.
    pub async fn follow(self: Arc<Self>) {
        let mut announcements = self.documents.announcements();
        let mut every = tokio::time::interval(FOLLOW_EVERY);
        loop {
            match &mut announcements {
                Some(announced) => tokio::select! {
                    _ = announced.recv() => {}
                    _ = every.tick() => {}
                },
                None => {
                    every.tick().await;
                }
            }
            self.refresh().await;
        }
    }

    fn version(&self) -> i64 {
        self.version.load(Ordering::SeqCst)
    }

    fn adopt(&self, catalog: Catalog, version: i64) {
        self.catalog.store(Arc::new(catalog));
        self.version.store(version, Ordering::SeqCst);
    }

    /// The stored configuration, if it is newer than ours (one version read when it is not).
    async fn take_stored(&self) -> Result<Option<i64>, ChangeError> {
        if self.documents.version().await? <= self.version() {
            return Ok(None);
        }
        let Some(stored) = self.documents.read().await? else {
            return Ok(None);
        };
        let (configuration, _) = unseal(&self.keys, &stored)?;
        self.adopt(Catalog::load(configuration, &*self.types)?, stored.version);
        Ok(Some(stored.version))
    }

    /// The newest snapshot broadcast since the last call, if it is newer than ours; stored.
    async fn take_broadcast(&self) -> Result<Option<i64>, ChangeError> {
        let updates = self
            .bus
            .config_updates()
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let newest = updates
            .iter()
            .filter_map(|update| {
                let snapshot = self.keys.open_snapshot(update).map_err(|e| e.to_string());
                snapshot
                    .and_then(|s| serde_json::from_slice::<Snapshot>(&s).map_err(|e| e.to_string()))
                    .map_err(|e| tracing::error!(error = %e, "a configuration update is refused"))
                    .ok()
            })
            .max_by_key(|snapshot| snapshot.version)
            .filter(|snapshot| snapshot.version > self.version());
        let Some(Snapshot {
            version,
            configuration,
        }) = newest
        else {
            return Ok(None);
        };
        let catalog = Catalog::load(configuration, &*self.types)?;
        let document = self.keys.seal(Purpose::AtRest, &serialized(&catalog));
        self.documents.keep(Stored { document, version }).await?;
        self.adopt(catalog, version);
        Ok(Some(version))
    }

    /// Sends `catalog` at `version`, sealed, to the processes sharing the bus; returns once it
    /// waits in their update queues.
    async fn broadcast(&self, catalog: &Catalog, version: i64) -> Result<(), ChangeError> {
        let snapshot = Snapshot {
            version,
            configuration: catalog.configuration().clone(),
        };
        let snapshot = serde_json::to_vec(&snapshot).expect("snapshots serialize");
        let sealed = self.keys.seal(Purpose::Broadcast, &snapshot);
        self.bus
            .broadcast_config(sealed.into())
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))
    }
}

/// The configuration in a stored document, and whether it must be sealed again.
fn unseal(keys: &Keys, stored: &Stored) -> Result<(Configuration, Opened), ChangeError> {
    let (document, opened) = keys.open(&stored.document)?;
    let configuration = serde_json::from_slice(&document).map_err(|e| {
        ChangeError::BadRequest(format!("the stored configuration does not parse: {e}"))
    })?;
    Ok((configuration, opened))
}

fn serialized(catalog: &Catalog) -> Vec<u8> {
    serde_json::to_vec(catalog.configuration()).expect("configurations serialize")
}
