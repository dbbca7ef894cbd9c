//! Signing in with a client's name and secret (checked by the API's authenticator, a few
//! attempts per client and minute — see `SIGN_IN_LIMIT`), and signing out. A sign-in asked
//! for by an action link's page (`?next=/tocsin/v1/act/…`) goes back there; `next` may only
//! name a page of this Tocsin (no open redirect).

use super::Pages;
use crate::render::{page, see_other};
use crate::session::{self, Form, Viewer};
use std::time::Instant;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

/// The sign-in form's body at most.
const FORM_LIMIT: u64 = 8 * 1024;

pub(super) fn routes(pages: &Pages) -> BoxedFilter<(Response,)> {
    let path = warp::path("sign-in").and(warp::path::end());
    let form = path
        .and(warp::get())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .map(|query: std::collections::HashMap<String, String>| {
            let next = query.get("next").map(String::as_str).and_then(local_page);
            page(
                "sign_in.html",
                None,
                serde_json::json!({"title": "Sign in", "next": next}),
                StatusCode::OK,
            )
        });
    let with_pages = {
        let pages = pages.clone();
        warp::any().map(move || pages.clone())
    };
    let sign_in = path
        .and(session::form(FORM_LIMIT))
        .and(with_pages)
        .then(sign_in);
    let sign_out = warp::path("sign-out")
        .and(warp::path::end())
        .and(pages.act(None))
        .then(|viewer: Viewer, _: Form, pages: Pages| async move {
            pages.sessions.end(&viewer).await;
            tracing::info!(client = %viewer.client, "signed out of the console");
            with_cookie(see_other("/ui/sign-in"), &pages.sessions.cleared())
        });
    form.or(sign_in).unify().or(sign_out).unify().boxed()
}

/// `next` if it names a page of the console or an action link's page of this Tocsin.
fn local_page(next: &str) -> Option<&str> {
    let local = ["/ui/", "/tocsin/v1/act/"]
        .iter()
        .any(|prefix| next.starts_with(prefix));
    (local && !next.contains(['\\', '\r', '\n'])).then_some(next)
}

async fn sign_in(form: Form, pages: Pages) -> Response {
    let client = form.get("client").unwrap_or_default().to_owned();
    let next = form.get("next").and_then(local_page).map(str::to_owned);
    let refuse = |status: StatusCode, error: &str| {
        let client = &client;
        page(
            "sign_in.html",
            None,
            serde_json::json!({"title": "Sign in", "client": client, "error": error, "next": next}),
            status,
        )
    };
    if pages.sign_ins.take(&client, Instant::now()).is_err() {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts for this client: wait a little and try again.",
        );
    }
    let secret = form
        .fields()
        .iter()
        .find(|(name, _)| name == "secret")
        .map(|(_, secret)| secret.as_str())
        .unwrap_or_default();
    let authenticator = pages.sessions.authenticator();
    match authenticator.sign_in(&client, secret).await {
        Some(_) => {
            tracing::info!(client = %client, "signed in to the console");
            pages.sessions.signed_in(&client).await;
            let cookie = pages.sessions.start(&client, clock::now_epoch_seconds());
            with_cookie(see_other(next.as_deref().unwrap_or("/ui/")), &cookie)
        }
        None => refuse(StatusCode::UNAUTHORIZED, "Unknown client or wrong secret."),
    }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::local_page;

    #[test]
    fn next_names_only_this_tocsins_pages() {
        assert_eq!(
            local_page("/tocsin/v1/act/abc.def"),
            Some("/tocsin/v1/act/abc.def")
        );
        assert_eq!(local_page("/ui/alerts"), Some("/ui/alerts"));
        for outside in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui\\x",
            "/healthz",
            "",
        ] {
            assert_eq!(local_page(outside), None, "{outside}");
        }
    }
}
