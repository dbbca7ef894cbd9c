//! HTTP plumbing shared by every Tocsin API: credentials and scopes ([`auth`]), signed action
//! links ([`act_link`]), per-client
//! rate limits ([`rate_limit`]), JSON error answers that never lose their `{"message": …}`
//! shape ([`errors`]), and bounded JSON bodies ([`body`]). Component crates build their `warp` filters on these; the binary composes them
//! and installs [`errors::recover`] once at the top.

pub mod act_link;
pub mod auth;
pub mod body;
pub mod errors;
pub mod rate_limit;

pub use auth::{Authenticator, Client, Scope};
pub use errors::{json_error, recover, ApiError};
pub use rate_limit::{RateLimit, RateLimiter};

use warp::{Filter, Rejection};

/// Matches the ANS platform path segment, `cf` or `neo`: both serve the same API.
pub fn platform() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path("cf").or(warp::path("neo")).unify()
}

/// The root of one of Tocsin's own APIs: `/tocsin/v1/{resource}`.
pub fn tocsin_api(resource: &'static str) -> impl Filter<Extract = (), Error = Rejection> + Copy {
    warp::path("tocsin")
        .and(warp::path("v1"))
        .and(warp::path(resource))
}

/// A path segment, percent-decoded: clients put names and ids in paths unencoded, and HTTP
/// stacks encode spaces and non-ASCII on the way (`a b` arrives as `a%20b`).
pub fn segment() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path::param::<String>().map(|raw: String| percent_decode(&raw))
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(super::percent_decode("a%20b%2Fc%C3%BC"), "a b/cü");
        assert_eq!(super::percent_decode("100%"), "100%");
    }
}
