//! The OCI Notifications source: Tocsin as the HTTPS (custom URL) subscription of an OCI
//! Notifications topic, `POST /oci/v1/notifications`.
//!
//! Flow of one delivery: the credentials are checked (the endpoint's own Basic credentials when
//! `sources.oci` sets them — OCI can send nothing else — or else any API client with the
//! producer scope), the body is read as bounded JSON, then by its `X-OCI-NS-*` headers and
//! shape it is
//! - a **subscription confirmation** → [`confirm`]: the URL is checked against the SSRF policy,
//!   fetched (unless auto-confirmation is off), and the outcome recorded for
//!   `GET /oci/v1/subscriptions`;
//! - an **alarm message** → [`alarm`], or an **OCI event** (CloudEvents 0.1) → [`event`]:
//!   normalized into one resource event; its keys (`X-OCI-NS-MessageId`, and
//!   `dedupeKey`+`timestampEpochMillis` or `eventID`) are claimed in the dedupe window
//!   ([`store::dedupe`], shared by every process on PostgreSQL); a redelivery is answered 200
//!   and not published again, a new message is published durably and answered 202 — in
//!   milliseconds, well inside OCI's 5 s timeout — and a copy that arrives while another
//!   process is still publishing the message is answered 503, so that OCI sends it again.
//!
//! Anything else is a 4xx naming the field, and nothing is published.

pub mod alarm;
pub mod confirm;
pub mod event;

use super::{invalid, new_event_id, parse_json, publish, published, queue_unavailable};
use crate::EventPublisher;
use alarm::Alarm;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use confirm::{ConfirmPolicy, Confirmer};
use event::OciEvent;
use model::{ResourceEvent, ValidationError};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use storage::{Database, Durability, StorageError};
use store::dedupe::{self, Claim, DedupeWindow, PendingClaims};
use store::subscriptions::{self, State, SubscriptionRecord, SubscriptionStore};
use store::{Location, StoreError};
use subtle::ConstantTimeEq;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};
use web::ApiError;

/// The source's own SQLite file in the data directory (with the `sqlite` store): the dedupe
/// window and the subscriptions' confirmation outcomes.
pub const DATABASE_FILE: &str = "oci.db";
/// A confirmation fetch must end before OCI (5 s) gives up on the confirmation message.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(4);

/// Settings of the OCI Notifications source.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// Largest request body accepted, in bytes (OCI messages are at most 64 KB).
    pub body_limit: u64,
    /// Which confirmation URLs are fetched, and whether at all.
    pub confirm: ConfirmPolicy,
    /// How long a delivered message is remembered, to recognise OCI's redeliveries.
    pub dedupe_window: Duration,
    /// The endpoint's own Basic credentials; `None` to accept producer-scope API clients.
    pub credentials: Option<BasicCredentials>,
}

/// HTTP Basic credentials, the only kind OCI can send (in the subscription URL).
#[derive(Clone)]
pub struct BasicCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot open the OCI source's database: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot open the OCI source's store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the confirmation HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// What the OCI Notifications headers say about a delivery.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub message_type: Option<String>,
    pub message_id: Option<String>,
    pub topic_id: Option<String>,
    pub topic_name: Option<String>,
    pub subscription_id: Option<String>,
    pub confirmation_url: Option<String>,
}

impl Delivery {
    fn from_headers(headers: &HeaderMap) -> Delivery {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Delivery {
            message_type: get("x-oci-ns-messagetype"),
            message_id: get("x-oci-ns-messageid"),
            topic_id: get("x-oci-ns-topicocid"),
            topic_name: get("x-oci-ns-topicname"),
            subscription_id: get("x-oci-ns-subscriptionid"),
            confirmation_url: get("x-oci-ns-confirmationurl"),
        }
    }

    fn is_confirmation(&self) -> bool {
        self.confirmation_url.is_some()
            || self
                .message_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("SubscriptionConfirmation"))
    }
}

/// The source: its state, and the routes that serve it.
pub struct OciSource {
    config: OciConfig,
    confirmer: Confirmer,
    subscriptions: SubscriptionStore,
    dedupe: DedupeWindow,
}

/// A message that carries events.
enum Message {
    Alarm(Alarm),
    Event(OciEvent),
}

pub const DESCRIPTION: super::Description = super::Description {
    label: "oci",
    routes: &[
        super::intake("/oci/v1/notifications"),
        super::SourceRoute {
            pattern: "/oci/v1/subscriptions",
            methods: &["GET"],
            takes_events: false,
        },
    ],
};

impl OciSource {
    /// Opens (creating) the source's state where `location` says: its own file in the data
    /// directory, or the shared database.
    pub async fn open(config: OciConfig, location: &Location) -> Result<OciSource, OciError> {
        let (dedupe, subscriptions) = match location {
            Location::Sqlite(data_dir) => {
                // Normal durability: a key lost to a power cut only lets one redelivery
                // through twice.
                let path = data_dir.join(DATABASE_FILE);
                let db = Database::open(
                    &path,
                    &[
                        dedupe::SQLITE_SCHEMA,
                        subscriptions::SQLITE_SCHEMA,
                        dedupe::SQLITE_ANSWERS,
                    ],
                    Durability::Normal,
                    None,
                )?;
                (
                    DedupeWindow::open(db.clone(), &path, config.dedupe_window)?,
                    SubscriptionStore::open(db),
                )
            }
            Location::Postgres(database) => (
                DedupeWindow::on_postgres(
                    database,
                    dedupe::OCI_TABLE,
                    config.dedupe_window,
                    PendingClaims::default(),
                )
                .await?,
                SubscriptionStore::on_postgres(database).await?,
            ),
        };
        Ok(OciSource {
            confirmer: Confirmer::new(CONFIRM_TIMEOUT)?,
            subscriptions,
            dedupe,
            config,
        })
    }

    /// `POST /oci/v1/notifications` behind the endpoint's credentials (the producer scope
    /// unless the config has its own), and `GET /oci/v1/subscriptions` behind the reader's.
    pub fn mount(self, mount: &super::Mount) -> BoxedFilter<(Response,)> {
        let publisher = mount.publisher(&DESCRIPTION);
        let reader_guard = mount.reader.clone();
        let guard = match &self.config.credentials {
            Some(credentials) => basic_guard(credentials),
            None => mount.producer_guard(),
        };
        let body_limit = self.config.body_limit;
        let source = Arc::new(self);
        let source = warp::any().map(move || Arc::clone(&source));
        let publisher = warp::any().map(move || publisher.clone());
        let base = warp::path("oci").and(warp::path("v1"));
        let notifications = base
            .and(warp::path("notifications"))
            .and(warp::path::end())
            .and(warp::post())
            .and(guard)
            .and(warp::header::headers_cloned())
            .and(web::body::json(body_limit))
            .and(source.clone())
            .and(publisher)
            .then(receive);
        let subscriptions = base
            .and(warp::path("subscriptions"))
            .and(warp::path::end())
            .and(warp::get())
            .and(reader_guard)
            .and(source)
            .then(list_subscriptions);
        notifications.or(subscriptions).unify().boxed()
    }

    /// Handles a `SubscriptionConfirmation`.
    async fn confirm(&self, delivery: &Delivery, body: &[u8]) -> Response {
        let Some(url) = delivery
            .confirmation_url
            .clone()
            .or_else(|| body_confirmation_url(body))
        else {
            return bad_request(invalid(
                "ConfirmationURL",
                "is required (the X-OCI-NS-ConfirmationURL header or the body's ConfirmationURL)",
            ));
        };
        let parsed = reqwest::Url::parse(&url).ok();
        let host = parsed
            .as_ref()
            .and_then(|u| u.host_str())
            .unwrap_or_default()
            .to_owned();
        let subscription_id = delivery
            .subscription_id
            .clone()
            .or_else(|| parsed.as_ref().and_then(subscription_in_path))
            .unwrap_or_else(|| "unknown".into());
        let policy = &self.config.confirm;
        let (state, detail) = match policy.check(&url) {
            Err(why) => (State::Refused, format!("`ConfirmationURL` {why}")),
            Ok(_) if !policy.auto_confirm => (
                State::Pending,
                "auto-confirmation is off (sources.oci.auto_confirm): open the confirmation URL \
                 to confirm the subscription"
                    .to_owned(),
            ),
            Ok(checked) => match self.confirmer.fetch(checked).await {
                Ok(status) => (
                    State::Confirmed,
                    format!("the confirmation URL answered {status}"),
                ),
                Err(why) => (State::Failed, why),
            },
        };
        match state {
            State::Confirmed => {
                tracing::info!(subscription = %subscription_id, topic = ?delivery.topic_name, %host, "OCI subscription confirmed")
            }
            State::Pending => {
                tracing::warn!(subscription = %subscription_id, topic = ?delivery.topic_name, %host, "OCI subscription awaits manual confirmation (GET /oci/v1/subscriptions has the URL)")
            }
            State::Refused => {
                tracing::warn!(subscription = %subscription_id, topic = ?delivery.topic_name, %host, reason = %detail, "OCI subscription confirmation refused")
            }
            State::Failed => {
                tracing::warn!(subscription = %subscription_id, topic = ?delivery.topic_name, %host, reason = %detail, "OCI subscription confirmation failed")
            }
        }
        let record = SubscriptionRecord {
            subscription_id,
            topic_id: delivery.topic_id.clone(),
            topic_name: delivery.topic_name.clone(),
            host,
            state,
            detail,
            confirmation_url: matches!(state, State::Pending | State::Failed).then_some(url),
            attempts: 1,
            updated_at: clock::now_epoch_seconds(),
        };
        let record = match self.subscriptions.record(record.clone()).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the OCI subscription's confirmation");
                record
            }
        };
        let status = match state {
            State::Confirmed => StatusCode::OK,
            State::Pending => StatusCode::ACCEPTED,
            State::Refused => return ApiError::bad_request(record.detail).into_response(),
            // A gateway error: OCI may send the confirmation again.
            State::Failed => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the subscription could not be confirmed: {}", record.detail),
                )
                .into_response()
            }
        };
        warp::reply::with_status(warp::reply::json(&record), status).into_response()
    }
}

fn bad_request(error: ValidationError) -> Response {
    ApiError::bad_request(error.message).into_response()
}

/// The body's `ConfirmationURL`, if the body is JSON that has one.
fn body_confirmation_url(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(value.get("ConfirmationURL")?.as_str()?.to_owned())
}

/// `…/subscriptions/<id>/confirmation` → `<id>`.
fn subscription_in_path(url: &reqwest::Url) -> Option<String> {
    let mut segments = url.path_segments()?;
    segments.find(|s| *s == "subscriptions")?;
    segments.next().filter(|s| !s.is_empty()).map(str::to_owned)
}

async fn receive(
    headers: HeaderMap,
    body: Bytes,
    source: Arc<OciSource>,
    publisher: EventPublisher,
) -> Response {
    let delivery = Delivery::from_headers(&headers);
    if delivery.is_confirmation() {
        return source.confirm(&delivery, &body).await;
    }
    let value = match parse_json(&body) {
        Ok(value) => value,
        Err(e) => return bad_request(e),
    };
    let Some(object) = value.as_object() else {
        return ApiError::bad_request(
            "the body must be a JSON object: an OCI alarm message or an OCI event",
        )
        .into_response();
    };
    let parsed = if object.contains_key("ConfirmationURL") && !alarm::looks_like(object) {
        return source.confirm(&delivery, &body).await;
    } else if alarm::looks_like(object) {
        Alarm::parse(&value).map(Message::Alarm)
    } else if event::looks_like(object) {
        OciEvent::parse(&value).map(Message::Event)
    } else {
        return ApiError::bad_request(
            "the body is neither an OCI alarm message (it has no `dedupeKey`) nor an OCI event \
             (it has no `cloudEventsVersion`)",
        )
        .into_response();
    };
    let message = match parsed {
        Ok(message) => message,
        Err(e) => return bad_request(e),
    };
    let now = clock::now_epoch_seconds();
    let (event, mut keys) = match &message {
        Message::Alarm(alarm) => (
            alarm.normalize(&delivery, new_event_id(), now),
            alarm.occurrence_key().into_iter().collect::<Vec<_>>(),
        ),
        Message::Event(oci_event) => (
            oci_event.normalize(&delivery, new_event_id(), now),
            vec![oci_event.occurrence_key()],
        ),
    };
    if let Some(id) = &delivery.message_id {
        keys.push(format!("message:{id}"));
    }
    publish_once(&source.dedupe, &publisher, event, keys).await
}

/// Publishes `event` unless one of `keys` was published within the dedupe window.
async fn publish_once(
    dedupe: &DedupeWindow,
    publisher: &EventPublisher,
    event: ResourceEvent,
    keys: Vec<String>,
) -> Response {
    if keys.is_empty() {
        return publish(publisher, std::slice::from_ref(&event)).await;
    }
    let ticket = match dedupe.claim(keys).await {
        // The OCI window keeps no answer: a redelivery's answer is always the same.
        Ok(Claim::Duplicate(_)) => {
            tracing::debug!(source_event_id = ?event.source_event_id(), "OCI redelivery acknowledged, not published again");
            return duplicate();
        }
        Ok(Claim::New(ticket)) => ticket,
        Ok(Claim::InFlight) => {
            return ApiError::unavailable(
                "another copy of this message is being published; send it again",
            )
            .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot look an OCI message up in the dedupe window");
            return ApiError::unavailable(
                "the dedupe window is unavailable; the message was not accepted, send it again",
            )
            .into_response();
        }
    };
    if let Err(e) = publisher.publish(std::slice::from_ref(&event)).await {
        return queue_unavailable(e);
    }
    let persist = ticket.commit();
    tokio::spawn(async move {
        if let Err(e) = persist.await {
            tracing::error!(error = %e, "cannot record an OCI message as published; a later redelivery may publish it again");
        }
    });
    published(std::slice::from_ref(&event))
}

/// A redelivery: acknowledged (so OCI stops retrying), nothing published.
fn duplicate() -> Response {
    warp::reply::json(&serde_json::json!({"published": [], "duplicate": true})).into_response()
}

async fn list_subscriptions(source: Arc<OciSource>) -> Response {
    match source.subscriptions.list().await {
        Ok(subscriptions) => {
            warp::reply::json(&serde_json::json!({ "subscriptions": subscriptions }))
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the OCI subscriptions");
            ApiError::internal("cannot read the OCI subscriptions").into_response()
        }
    }
}

/// Accepts exactly `credentials` as HTTP Basic; anything else is a 401 with a Basic challenge.
fn basic_guard(credentials: &BasicCredentials) -> BoxedFilter<()> {
    let expected: Arc<[u8; 32]> = Arc::new(
        Sha256::digest(format!("{}:{}", credentials.username, credentials.password)).into(),
    );
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let expected = Arc::clone(&expected);
            async move {
                let given = header
                    .as_deref()
                    .and_then(|h| h.split_once(' '))
                    .filter(|(kind, _)| kind.eq_ignore_ascii_case("basic"))
                    .and_then(|(_, value)| STANDARD.decode(value.trim()).ok());
                match given {
                    Some(pair)
                        if bool::from(Sha256::digest(&pair).as_slice().ct_eq(&expected[..])) =>
                    {
                        Ok(())
                    }
                    _ => Err(warp::reject::custom(web::auth::Unauthorized {
                        message: "this endpoint takes the HTTP Basic credentials set in \
                                  sources.oci (in the subscription URL: \
                                  https://user:password@host/oci/v1/notifications)"
                            .into(),
                    })),
                }
            }
        })
        .untuple_one()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    #[test]
    fn delivery_headers_are_read_case_insensitively() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/oci/subscription-confirmation.headers"),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (name, value) = line.split_once(": ").unwrap();
            headers.insert(
                warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let delivery = Delivery::from_headers(&headers);
        assert!(delivery.is_confirmation());
        assert_eq!(delivery.topic_name.as_deref(), Some("alarms"));
        assert_eq!(
            delivery.subscription_id.as_deref(),
            Some("ocid1.onssubscription.oc1.phx.exampleid")
        );
        let url = reqwest::Url::parse(delivery.confirmation_url.as_deref().unwrap()).unwrap();
        assert_eq!(
            subscription_in_path(&url).as_deref(),
            Some("ocid1.onssubscription.oc1.phx.exampleid")
        );
        assert!(!Delivery::default().is_confirmation());
    }

    #[test]
    fn the_fixture_body_carries_the_confirmation_url() {
        let body = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/oci/subscription-confirmation.json"),
        )
        .unwrap();
        let url = body_confirmation_url(&body).unwrap();
        assert!(url.starts_with("https://cell1.notification.us-phoenix-1.oci.oraclecloud.com/"));
        assert!(body_confirmation_url(b"not json").is_none());
    }

    #[test]
    fn credentials_are_not_debug_printed() {
        let credentials = BasicCredentials {
            username: "oci".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}
