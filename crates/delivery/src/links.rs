//! The link map as the stateful channels (B2C, ServiceNow, SLACK_THREADED) use it: what Tocsin
//! created at a destination for each alert, kept by [`store::links`] — `links.db` in the data
//! directory, or the shared PostgreSQL database, where the per-key lock holds across
//! processes so that two events of one alert never both create, whichever processes deliver
//! them. A channel locks the key and reads its link ([`lock_and_get`]), writes the link through
//! the guard, and maps the store's failures with [`unavailable`].

pub use store::links::{KeyGuard, Link, LinkState, LinkStore};

/// A failure of the link map (`what` names it in the reason): Tocsin's own storage, worth
/// retrying.
pub fn unavailable(what: &str, error: impl std::fmt::Display) -> crate::failure::Failure {
    crate::failure::Failure::transient(
        crate::failure::Code::LocalStorage,
        format!("{what}: {error}"),
    )
}

/// Waits for the lock on (`scope`, `key`) and reads the key's link: what a stateful channel
/// does first. `what` names the map in a failure's reason.
pub async fn lock_and_get(
    links: &LinkStore,
    scope: &str,
    key: &str,
    what: &str,
) -> Result<(KeyGuard, Option<Link>), crate::failure::Failure> {
    let locked = links
        .lock(scope, key)
        .await
        .map_err(|e| unavailable(what, e))?;
    let link = locked.get().await.map_err(|e| unavailable(what, e))?;
    Ok((locked, link))
}
