//! HTTP plumbing shared by every Tocsin API: credentials and scopes ([`auth`]), JSON error
//! answers that never lose their `{"message": …}` shape ([`errors`]), and bounded JSON bodies
//! ([`body`]). Component crates build their `warp` filters on these; the binary composes them
//! and installs [`errors::recover`] once at the top.

pub mod auth;
pub mod body;
pub mod errors;

pub use auth::{Authenticator, Client, Scope};
pub use errors::{json_error, recover, ApiError};

use warp::{Filter, Rejection};

/// Matches the ANS platform path segment, `cf` or `neo`: both serve the same API.
pub fn platform() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path("cf").or(warp::path("neo")).unify()
}
