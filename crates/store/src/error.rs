//! The one error of every store, whatever its backend.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] storage::StorageError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(String),
    /// The database cannot be reached (as [`StoreError::is_unavailable`] judged another error,
    /// passed on to several callers as text).
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    /// Someone else changed what this write was based on; nothing was written.
    #[error("{0}")]
    Conflict(String),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

impl StoreError {
    /// Whether the error says the database cannot be reached (connection refused, broken or
    /// terminated, no connection in time), as opposed to one statement's failure: such an
    /// error passes once the database is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Unavailable(_) => true,
            StoreError::Postgres(e) => match e.code() {
                // No SQLSTATE: the connection itself failed or closed.
                None => true,
                // 08: connection exception; 57P01–57P03: the server shuts down, was shut down
                // or cannot take connections yet.
                Some(code) => {
                    let code = code.code();
                    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
                }
            },
            StoreError::Sqlite(_) | StoreError::Invalid(_) | StoreError::Conflict(_) => false,
        }
    }
}
