//! Duplicates at the door, for the producer APIs (ANS in both schemas, Alertmanager): a request
//! sent again with the same `Idempotency-Key` is answered with the first answer and publishes
//! nothing, and an Alertmanager alert re-sent unchanged is not published again. Both go through
//! one dedupe window ([`store::dedupe`], `idempotency_window_seconds` long; its own SQLite file
//! or PostgreSQL table, shared by every process there).
//!
//! `Idempotency-Key` ([`Idempotency::once`]), after the IETF draft "The Idempotency-Key HTTP
//! Header Field" (draft-ietf-httpapi-idempotency-key-header, §"Idempotency Enforcement
//! Scenarios" and §"Error Scenarios"):
//! 1. The key is checked (1–255 visible ASCII characters, else 400) and namespaced as
//!    `idempotency:{client}:{route}:{key}`, so that two API clients may use the same key.
//! 2. It is claimed. New: the request is handled; if it published (or answered without
//!    refusing), the answer — status, body, and a SHA-256 fingerprint of the request — is
//!    committed with the key, off the answer's path. If it published nothing (a 400, or 503
//!    when the bus refused), the claim is dropped and the key is free again.
//! 3. Already committed: the same request gets the kept answer again, with
//!    `Idempotent-Replayed: true`, and nothing is published; another request under the key is
//!    422. A repeat that arrives while the first is still being handled waits for it (in this
//!    process until it is done; across processes at most [`PendingClaims::wait`]) and gets its
//!    answer; if the first is still not done, 409, as the draft asks of a concurrent request.
//!
//! A request without the header costs nothing here: the handler runs as it did before, its
//! answer is neither hashed nor copied.
//!
//! Alertmanager re-sends ([`Idempotency::claim_each`]): each alert's occurrence (fingerprint,
//! status, `startsAt`, `endsAt`, under the client) is claimed on its own; an alert already
//! published within the window is left out of the publish.

use crate::EventPublisher;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::Duration;
use storage::{Database, Durability};
use store::dedupe::{self, Answer, Claim, DedupeWindow, PendingClaims, Ticket};
use store::{Location, StoreError};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;
use web::ApiError;

/// The window's own SQLite file in the data directory (with the `sqlite` store).
pub const DATABASE_FILE: &str = "idempotency.db";
/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer header that marks a replayed answer.
const REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// The producer APIs' dedupe window; cheap to clone.
#[derive(Clone)]
pub struct Idempotency {
    window: DedupeWindow,
}

/// What a handler did with a request.
pub(crate) enum Outcome {
    /// An answer to keep for the request's key: the request took effect (its events are
    /// queued), so the same request must get it again rather than publish again.
    Keep { status: StatusCode, body: Vec<u8> },
    /// An answer not to keep — nothing was published (refused, or the bus failed) — so that
    /// the request can be sent again under the same key.
    Forget(Response),
}

impl Outcome {
    /// A JSON answer to keep.
    pub(crate) fn keep(status: StatusCode, body: &impl serde::Serialize) -> Outcome {
        match serde_json::to_vec(body) {
            Ok(body) => Outcome::Keep { status, body },
            Err(e) => Outcome::Forget(ApiError::internal(e.to_string()).into_response()),
        }
    }

    pub(crate) fn into_response(self) -> Response {
        match self {
            Outcome::Keep { status, body } => json_response(status, body),
            Outcome::Forget(response) => response,
        }
    }
}

impl From<Response> for Outcome {
    fn from(response: Response) -> Outcome {
        Outcome::Forget(response)
    }
}

/// What identifies one request under a key: the route's own part (the ANS schema), the
/// client's key, and the body.
pub(crate) struct Request<'a> {
    /// The `Idempotency-Key` header, if the request had one.
    pub key: Option<String>,
    pub client: &'a str,
    /// The route, as the key's namespace (`ans/resource-events`).
    pub route: &'a str,
    /// What else makes the request what it is, besides its body (`cloud_events`).
    pub variant: &'a str,
    pub body: &'a Bytes,
}

impl Idempotency {
    /// The window where `location` says: its own file in the data directory, or its table in
    /// the shared database.
    pub async fn open(location: &Location, window: Duration) -> Result<Idempotency, StoreError> {
        let window = match location {
            Location::Sqlite(data_dir) => {
                // Normal durability: a key lost to a power cut only lets one repeat through.
                let path = data_dir.join(DATABASE_FILE);
                let db = Database::open(
                    &path,
                    &[dedupe::SQLITE_SCHEMA, dedupe::SQLITE_ANSWERS],
                    Durability::Normal,
                    None,
                )?;
                DedupeWindow::open(db, &path, window)?
            }
            Location::Postgres(database) => {
                DedupeWindow::on_postgres(
                    database,
                    dedupe::IDEMPOTENCY_TABLE,
                    window,
                    PendingClaims::default(),
                )
                .await?
            }
        };
        Ok(Idempotency { window })
    }

    /// Answers `request` with `handle`'s answer, once per `Idempotency-Key` (see the module
    /// docs); without the header, just `handle`'s answer.
    pub(crate) async fn once(
        &self,
        request: Request<'_>,
        publisher: &EventPublisher,
        handle: impl Future<Output = Outcome>,
    ) -> Response {
        let Some(key) = request.key.as_deref() else {
            return handle.await.into_response();
        };
        if !valid_key(key) {
            return ApiError::bad_request(format!(
                "`Idempotency-Key` must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
            .into_response();
        }
        let namespaced = format!("idempotency:{}:{}:{key}", request.client, request.route);
        let fingerprint = fingerprint(request.variant, request.body);
        let ticket = match self.window.claim(vec![namespaced]).await {
            Ok(Claim::New(ticket)) => ticket,
            Ok(Claim::Duplicate(Some(first))) if first.fingerprint == fingerprint => {
                publisher.deduplicated(events_in(&first.body));
                let mut response = json_response(
                    StatusCode::from_u16(first.status).unwrap_or(StatusCode::ACCEPTED),
                    first.body,
                );
                response
                    .headers_mut()
                    .insert(REPLAYED, HeaderValue::from_static("true"));
                return response;
            }
            Ok(Claim::Duplicate(_)) => {
                return ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "the `Idempotency-Key` `{key}` was used for another request within the \
                         idempotency window; use a new key for a new request"
                    ),
                )
                .into_response()
            }
            Ok(Claim::InFlight) => {
                return ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "a request with the `Idempotency-Key` `{key}` is still being handled; \
                         send it again to get its answer"
                    ),
                )
                .into_response()
            }
            Err(e) => return window_unavailable(e),
        };
        match handle.await {
            Outcome::Keep { status, body } => {
                commit(ticket.commit_answer(Answer {
                    fingerprint,
                    status: status.as_u16(),
                    body: body.clone(),
                }));
                json_response(status, body)
            }
            // Dropped, the ticket gives the key back.
            Outcome::Forget(response) => response,
        }
    }

    /// Claims each of `keys` (one per alert): for each, its ticket if it is new, `None` if it
    /// was published within the window or is being published by another request right now
    /// (which carries it). The tickets are held until committed or dropped.
    pub(crate) async fn claim_each(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Ticket>>, StoreError> {
        // Claimed in key order, so that two requests with the same alerts never wait on each
        // other's claims; a key twice in one request is claimed once.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
        let mut tickets: Vec<Option<Ticket>> = keys.iter().map(|_| None).collect();
        let mut previous: Option<&String> = None;
        for index in order {
            let key = &keys[index];
            if previous == Some(key) {
                continue;
            }
            previous = Some(key);
            if let Claim::New(ticket) = self.window.claim(vec![key.clone()]).await? {
                tickets[index] = Some(ticket);
            }
        }
        Ok(tickets)
    }
}

/// Makes `commit` durable off the answer's path.
pub(crate) fn commit(commit: impl Future<Output = Result<(), StoreError>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = commit.await {
            tracing::error!(error = %e, "cannot record a request as published; a repeat may publish it again");
        }
    });
}

/// 503: the window cannot be read, so whether the request is a repeat is unknown.
pub(crate) fn window_unavailable(e: StoreError) -> Response {
    tracing::warn!(error = %e, "cannot look a request up in the idempotency window");
    ApiError::unavailable(
        "the idempotency window is unavailable; the request was not accepted, send it again",
    )
    .into_response()
}

/// 1–255 visible ASCII characters.
fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn fingerprint(variant: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(variant.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The events a kept answer reports published: the ANS echo of one event, the array of a
/// batch, a batch's `accepted`, or the other sources' `published`.
fn events_in(body: &[u8]) -> u64 {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let listed = |name: &str| value.get(name).and_then(|v| v.as_array()).map(Vec::len);
    let count = match &value {
        serde_json::Value::Array(events) => events.len(),
        _ => listed("published")
            .or_else(|| listed("accepted"))
            .unwrap_or(1),
    };
    count as u64
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn body_of(response: Response) -> (u16, bool, String) {
        let status = response.status().as_u16();
        let replayed = response.headers().get(REPLAYED).is_some();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, replayed, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_answer_that_published_nothing_gives_the_key_back_and_one_that_did_is_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().to_owned());
        let window = Idempotency::open(&location, Duration::from_secs(3600))
            .await
            .unwrap();
        let bus = Arc::new(bus::EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap());
        let publisher = EventPublisher::new(bus, Arc::new(metrics::Metrics::new()), "ans");
        let body = Bytes::from_static(b"{}");
        let request = |body| Request {
            key: Some("k".into()),
            client: "c",
            route: "resource-events",
            variant: "ans",
            body,
        };
        // The bus refused the event: 503, and nothing kept.
        let unavailable = async { ApiError::unavailable("bus down").into_response().into() };
        let answer = window.once(request(&body), &publisher, unavailable).await;
        assert_eq!(body_of(answer).await.0, 503);
        // The retry under the same key is handled, and its answer kept…
        let published = async {
            Outcome::Keep {
                status: StatusCode::ACCEPTED,
                body: br#"{"id":"e1"}"#.to_vec(),
            }
        };
        let answer = window.once(request(&body), &publisher, published).await;
        assert_eq!(
            body_of(answer).await,
            (202, false, r#"{"id":"e1"}"#.to_owned())
        );
        // …and given to the next repeat, which is not handled.
        let answer = window
            .once(request(&body), &publisher, async { unreachable!() })
            .await;
        assert_eq!(
            body_of(answer).await,
            (202, true, r#"{"id":"e1"}"#.to_owned())
        );
        let other = Bytes::from_static(b"{\"other\": 1}");
        let answer = window
            .once(request(&other), &publisher, async { unreachable!() })
            .await;
        assert_eq!(body_of(answer).await.0, 422);
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert!(valid_key("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(valid_key("\"quoted\""));
        assert!(valid_key(&"k".repeat(255)));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("with space"));
        assert!(!valid_key("tab\there"));
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let a = fingerprint("ans", b"{}");
        assert_eq!(a, fingerprint("ans", b"{}"));
        assert_ne!(a, fingerprint("ans", b"{ }"));
        assert_ne!(a, fingerprint("cloud_events", b"{}"));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn kept_answers_count_their_events() {
        assert_eq!(events_in(br#"{"id": "a"}"#), 1);
        assert_eq!(events_in(br#"[{"id": "a"}, {"id": "b"}]"#), 2);
        assert_eq!(
            events_in(br#"{"message": "m", "accepted": [{}], "rejected": [{}]}"#),
            1
        );
        assert_eq!(events_in(br#"{"published": []}"#), 0);
    }
}
