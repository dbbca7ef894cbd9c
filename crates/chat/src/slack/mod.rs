//! The Slack app's endpoints: `POST /slack/v1/interactions` (the Interactivity Request URL:
//! button clicks, [`interactions`]) and `POST /slack/v1/commands` (the `/tocsin` slash
//! command, [`commands`]). Both take Slack's form body raw, verify its signature over exactly
//! those bytes ([`verify`]) before reading anything in it, and answer 401 with the reason if it
//! does not verify. Follow-ups go to the request's `response_url` — only on the hosts the
//! settings allow (`chat.slack.response_hosts`), so a request cannot make Tocsin post
//! elsewhere.

pub mod commands;
pub mod interactions;
pub mod verify;

use crate::Chat;
use bytes::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Slack's form bodies are small; anything near this is not Slack's.
const BODY_LIMIT: u64 = 256 * 1024;

/// The two endpoints, or nothing (404) when chat control is off.
pub fn routes(chat: Option<Arc<Chat>>) -> BoxedFilter<(Response,)> {
    let Some(chat) = chat else {
        return warp::any()
            .and_then(|| async { Err::<Response, _>(warp::reject::not_found()) })
            .boxed();
    };
    let chat = warp::any().map(move || Arc::clone(&chat));
    let signed = warp::post()
        .and(warp::header::optional::<String>("x-slack-request-timestamp"))
        .and(warp::header::optional::<String>("x-slack-signature"))
        .and(warp::body::content_length_limit(BODY_LIMIT))
        .and(warp::body::bytes())
        .and(chat)
        .and_then(|ts: Option<String>, sig: Option<String>, body: Bytes, chat: Arc<Chat>| async move {
            let now = clock::now_epoch_millis() / 1000;
            match chat.verifier.verify(ts.as_deref(), sig.as_deref(), &body, now) {
                Ok(()) => Ok((chat, form(&body))),
                Err(refused) => {
                    tracing::warn!(reason = %refused, "a request to the Slack endpoints did not verify");
                    Err(warp::reject::custom(web::ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        refused.to_string(),
                    )))
                }
            }
        })
        .untuple_one();
    let base = warp::path("slack").and(warp::path("v1"));
    let interactions = base
        .and(warp::path("interactions"))
        .and(warp::path::end())
        .and(signed.clone())
        .then(interactions::handle);
    let commands = base
        .and(warp::path("commands"))
        .and(warp::path::end())
        .and(signed)
        .then(commands::handle);
    interactions.or(commands).unify().boxed()
}

/// A form body's fields (the last of each name).
fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// An empty 200: Slack's acknowledgement.
fn acknowledged() -> Response {
    StatusCode::OK.into_response()
}

impl Chat {
    /// Posts `message` to `response_url` off the answer's path, if the URL is on an allowed
    /// host; failures are logged.
    fn respond(&self, response_url: Option<&str>, message: Value) {
        let Some(url) = response_url.and_then(|u| reqwest::Url::parse(u).ok()) else {
            return;
        };
        let allowed = url
            .host_str()
            .is_some_and(|host| self.slack.response_hosts.iter().any(|h| h == host));
        if !allowed {
            tracing::warn!(
                host = url.host_str().unwrap_or(""),
                "a response_url on a host not in chat.slack.response_hosts was ignored"
            );
            return;
        }
        let http = self.http.clone();
        tokio::spawn(async move {
            match http.post(url).json(&message).send().await {
                Ok(reply) if reply.status().is_success() => {}
                Ok(reply) => tracing::warn!(
                    status = reply.status().as_u16(),
                    "Slack refused a response_url message"
                ),
                Err(e) => tracing::warn!(error = %e.without_url(), "cannot post to a response_url"),
            }
        });
    }
}
