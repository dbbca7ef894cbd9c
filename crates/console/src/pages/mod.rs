//! The console's pages, one module per area; each offers its routes and renders through
//! [`crate::render`]. [`Pages`] is what every module's handlers get: the components and the
//! session checks.

mod alerts;
mod configuration;
mod overview;
mod sign_in;
mod silences;
mod undelivered;

use crate::session::{self, Form, Sessions, Viewer};
use crate::Console;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::header;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};
use web::{RateLimiter, Scope};

/// The console's state and its session checks, shared by the page modules.
#[derive(Clone)]
pub(crate) struct Pages {
    pub console: Arc<Console>,
    pub sessions: Arc<Sessions>,
    /// Sign-in attempts per client.
    pub sign_ins: Arc<RateLimiter>,
}

impl Pages {
    /// A GET by a signed-in viewer holding `scope` (any signed-in viewer for `None`).
    fn view(
        &self,
        scope: Option<Scope>,
    ) -> impl Filter<Extract = (Viewer, Pages), Error = Rejection> + Clone {
        let pages = self.clone();
        warp::get()
            .and(session::viewer(Arc::clone(&self.sessions), scope))
            .map(move |viewer| (viewer, pages.clone()))
            .untuple_one()
    }

    /// A POSTed form of a signed-in viewer holding `scope`, with its anti-forgery token.
    fn act(
        &self,
        scope: Option<Scope>,
    ) -> impl Filter<Extract = (Viewer, Form, Pages), Error = Rejection> + Clone {
        let pages = self.clone();
        session::signed_form(Arc::clone(&self.sessions), scope, self.console.body_limit)
            .map(move |viewer, form| (viewer, form, pages.clone()))
            .untuple_one()
    }
}

pub(crate) fn routes(
    console: Arc<Console>,
    sessions: Arc<Sessions>,
    sign_ins: Arc<RateLimiter>,
) -> BoxedFilter<(Response,)> {
    let pages = Pages {
        console,
        sessions,
        sign_ins,
    };
    assets()
        .or(sign_in::routes(&pages))
        .unify()
        .or(overview::routes(&pages))
        .unify()
        .or(alerts::routes(&pages))
        .unify()
        .or(undelivered::routes(&pages))
        .unify()
        .or(silences::routes(&pages))
        .unify()
        .or(configuration::routes(&pages))
        .unify()
        .boxed()
}

/// The stylesheet and htmx, embedded (no CDN, no build step).
fn assets() -> BoxedFilter<(Response,)> {
    const ASSETS: &[(&str, &str, &str)] = &[
        (
            "console.css",
            "text/css; charset=utf-8",
            include_str!("../../assets/console.css"),
        ),
        (
            "htmx.min.js",
            "text/javascript; charset=utf-8",
            include_str!("../../assets/htmx.min.js"),
        ),
    ];
    warp::path("assets")
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and_then(|name: String| async move {
            let (_, content_type, body) = ASSETS
                .iter()
                .find(|(asset, _, _)| *asset == name)
                .ok_or_else(warp::reject::not_found)?;
            let mut response = Response::new((*body).into());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("public, max-age=3600"),
            );
            Ok::<_, Rejection>(response.into_response())
        })
        .boxed()
}
