//! PostgreSQL: the connection pool every module shares, and their versioned migrations.
//!
//! Each module keeps its schema as a list of migrations (append only: a released migration is
//! never edited). At start every module applies what the database lacks, recorded per module in
//! `tocsin_migrations`, while holding a PostgreSQL advisory lock — processes that start at the
//! same moment wait for each other, and each migration runs once, in its own transaction.

use crate::availability::{Availability, Tracker};
use crate::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

/// Connections per process at most: deliveries write concurrently, the APIs read.
const POOL_SIZE: usize = 16;
/// The advisory lock held while migrations run (`tocsin` in ASCII).
const MIGRATION_LOCK: i64 = 0x746f_6373_696e;
/// Longest wait for a new connection, and for a free one from the pool: a database that does
/// not answer must turn into an error (and a paused pipeline), not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on idle connections, so that a database gone without a word is noticed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// A pool of connections to the one database, and whether it answers; cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    tracker: Arc<Tracker>,
    /// Where the pool connects, for connections of their own (a `LISTEN` outlives any query);
    /// shared, as it is large and every clone of the pool has it.
    config: std::sync::Arc<tokio_postgres::Config>,
}

impl Postgres {
    /// A pool on `url` (`postgres://user:password@host:port/database`; `?options=-c
    /// search_path=NAME` picks a schema). Connects once, so that a wrong URL or password stops
    /// the start with its reason.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                StoreError::Invalid(format!("[store] url is not a PostgreSQL URL: {e}"))
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(KEEPALIVE_IDLE);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        drop(pool.get().await?);
        Ok(Postgres {
            pool,
            tracker: Arc::new(Tracker::new()),
            config: config.into(),
        })
    }

    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Whether the database answers, as the last operations found.
    pub fn availability(&self) -> Availability {
        self.tracker.view()
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// `result`, noted: an error that says the database is unreachable makes the store
    /// unavailable until it answers again.
    pub fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            self.tracker.note(e, self);
        }
        result
    }

    /// One round trip.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// A connection outside the pool, for a session that must stay open (a `LISTEN`); the
    /// caller drives the connection half, which also yields the server's notifications.
    pub(crate) async fn dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        StoreError,
    > {
        Ok(self.config.connect(NoTls).await?)
    }

    /// Applies the migrations of `component` that the database lacks, in order.
    pub async fn migrate(&self, component: &str, migrations: &[&str]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let applied = apply(&mut client, component, migrations).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        applied
    }
}

async fn apply(
    client: &mut Object,
    component: &str,
    migrations: &[&str],
) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS tocsin_migrations (
                component TEXT NOT NULL,
                version INTEGER NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (component, version)
            )",
        )
        .await?;
    let applied: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM tocsin_migrations WHERE component = $1",
            &[&component],
        )
        .await?
        .get(0);
    if applied as usize > migrations.len() {
        return Err(StoreError::Invalid(format!(
            "the database's `{component}` schema is version {applied}, newer than this Tocsin \
             knows ({}): upgrade Tocsin",
            migrations.len()
        )));
    }
    for (index, sql) in migrations.iter().enumerate().skip(applied as usize) {
        let version = index as i32 + 1;
        let transaction = client.transaction().await?;
        transaction.batch_execute(sql).await?;
        transaction
            .execute(
                "INSERT INTO tocsin_migrations (component, version) VALUES ($1, $2)",
                &[&component, &version],
            )
            .await?;
        transaction.commit().await?;
        tracing::info!(component, version, "migration applied");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Postgres;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The tests' database: the role and database `.ci/run` creates, unless
    /// `TOCSIN_TEST_POSTGRES_URL` names another.
    pub fn url() -> String {
        std::env::var("TOCSIN_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            "postgres://tocsin_test:tocsin_test@127.0.0.1:5432/tocsin_test".to_owned()
        })
    }

    /// A pool on a fresh schema of the tests' database, so that tests never see each other.
    pub async fn scratch() -> Postgres {
        Postgres::connect(&scratch_url().await).await.unwrap()
    }

    /// The URL of a fresh schema of the tests' database.
    pub async fn scratch_url() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = url();
        let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {base}: {e} (`.ci/run` starts it and creates the role)")
            });
        tokio::spawn(connection);
        let schema = format!(
            "test_{}_{}_{}",
            std::process::id(),
            clock::now_epoch_millis(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}options=-c%20search_path%3D{schema}")
    }
}
