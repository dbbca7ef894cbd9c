//! The link map as the stateful channels (B2C, ServiceNow, SLACK_THREADED) use it: what Tocsin
//! created at a destination for each alert, kept by [`store::links`] — `links.db` in the data
//! directory, or the shared PostgreSQL database, where the per-key lock holds across
//! processes so that two events of one alert never both create, whichever processes deliver
//! them. A channel locks the key, reads and writes the link through the guard, and maps the
//! store's failures with [`unavailable`].

pub use store::links::{KeyGuard, Link, LinkState, LinkStore};

/// A failure of the link map (`what` names it in the reason): Tocsin's own storage, worth
/// retrying.
pub fn unavailable(what: &str, error: impl std::fmt::Display) -> crate::failure::Failure {
    crate::failure::Failure::transient(
        crate::failure::Code::LocalStorage,
        format!("{what}: {error}"),
    )
}
