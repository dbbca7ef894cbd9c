//! `WEB_HOOK`: sends the event (or the action's `payloadTemplate`, rendered) as JSON to any
//! HTTP endpoint.
//!
//! Properties: `destination` (URL, required), `method` (`POST`, `PUT` or `PATCH`; default
//! `POST`), `header.<Name>` (extra headers), `payloadTemplate` (JSON template; default: the
//! event as accepted), `sslTrustAll`, `timeoutSeconds`; authentication by `username` +
//! `password` (Basic), `bearerToken`, or `oauthTokenUrl` + `clientId` + `clientSecret` (+
//! `oauthScope`) for an OAuth 2 client-credentials token, fetched once and reused until it
//! expires; `signingSecret` (`whsec_…`) to sign per Standard Webhooks v1.
//!
//! Grouped events (`groupBy`…, or `messagesPerMinute` when storm control holds them back; no
//! rate limit unless set) go out as one digest: a JSON object whose `events` array holds each
//! event as accepted, beside `groupLabels`, the `firing` and `resolved` counts and the action
//! (`schemas/webhook-digest.json`; `payloadTemplate` shapes single events only). A
//! signed digest's `webhook-id` is `msg_digest_` and its first event's id.
//!
//! Signed requests carry `webhook-id` (the same for every attempt of one event on one action:
//! receivers de-duplicate on it), `webhook-timestamp` (the attempt, epoch seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
//! Any 2xx is delivered; otherwise the status decides (see [`crate::http`]). A 401 while using
//! a cached OAuth token drops the token and is worth retrying.

use super::{Channel, Tools};
use crate::failure::{Code, Failure, Retry};
use crate::grouping::Digest as EventDigest;
use crate::http::redact;
use crate::properties::{Properties, PropertyError};
use crate::templates::Scope;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use model::{Action, DeliveryJob};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Url};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token is renewed this long before the expiry its endpoint announced.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);

/// Identifies an OAuth client: (token URL, client id, scope).
type ClientKey = (String, String, String);

pub struct WebhookChannel {
    tools: Tools,
    /// OAuth tokens and when to stop using them.
    tokens: Mutex<HashMap<ClientKey, (String, Instant)>>,
}

enum Auth {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
    ClientCredentials(OAuthClient),
}

struct OAuthClient {
    token_url: Url,
    client_id: String,
    client_secret: String,
    scope: String,
}

impl OAuthClient {
    fn cache_key(&self) -> ClientKey {
        (
            self.token_url.to_string(),
            self.client_id.clone(),
            self.scope.clone(),
        )
    }
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl WebhookChannel {
    pub fn new(tools: Tools) -> Self {
        WebhookChannel {
            tools,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A valid token for `client`: the cached one, or a new one from its token endpoint.
    async fn token(&self, client: &OAuthClient) -> Result<String, Failure> {
        let key = client.cache_key();
        if let Some((token, expires)) = self.tokens.lock().expect("not poisoned").get(&key) {
            if Instant::now() < *expires {
                return Ok(token.clone());
            }
        }
        let mut form = vec![("grant_type", "client_credentials")];
        if !client.scope.is_empty() {
            form.push(("scope", client.scope.as_str()));
        }
        let request: RequestBuilder = self
            .tools
            .http
            .request(Method::POST, client.token_url.clone(), false)
            .basic_auth(&client.client_id, Some(&client.client_secret))
            .form(&form);
        let reply = self.tools.http.send(request).await?;
        if !reply.is_success() {
            let mut failure = reply.failure(&reply.quote());
            failure.reason = format!("OAuth token endpoint: {}", failure.reason);
            return Err(failure);
        }
        let answer: TokenAnswer = serde_json::from_slice(&reply.body).map_err(|_| {
            Failure::permanent(
                Code::BadAnswer,
                format!(
                    "OAuth token endpoint {} answered without an access_token",
                    redact(&client.token_url)
                ),
            )
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        let expires = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        self.tokens
            .lock()
            .expect("not poisoned")
            .insert(key, (answer.access_token.clone(), expires));
        Ok(answer.access_token)
    }
}

/// A `WEB_HOOK` action's properties, parsed.
pub struct WebhookConfig {
    destination: Url,
    method: Method,
    headers: HeaderMap,
    trust_all: bool,
    timeout: Option<Duration>,
    auth: Auth,
    signing_key: Option<Vec<u8>>,
    payload_template: Option<String>,
}

impl Channel for WebhookChannel {
    const TYPE: &'static str = "WEB_HOOK";
    const PROPERTIES: &'static [&'static str] = &[
        "destination",
        "method",
        "header.*",
        "payloadTemplate",
        "sslTrustAll",
        "timeoutSeconds",
        "username",
        "password",
        "bearerToken",
        "oauthTokenUrl",
        "clientId",
        "clientSecret",
        "oauthScope",
        "signingSecret",
    ];
    const DIGESTS: Option<u32> = Some(0);
    const DIGEST_OF_ONE: bool = true;
    type Config = WebhookConfig;

    fn configure(&self, p: &Properties) -> Result<WebhookConfig, PropertyError> {
        let method = match p.one_of("method", &["POST", "PUT", "PATCH"])? {
            None | Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some(_) => Method::PATCH,
        };
        let mut headers = HeaderMap::new();
        for (name, value) in p.prefixed("header.") {
            let property = format!("header.{name}");
            let name = HeaderName::try_from(name)
                .map_err(|_| PropertyError::property(&property, "is not a header name"))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| PropertyError::property(&property, "is not a valid header value"))?;
            headers.insert(name, value);
        }
        Ok(WebhookConfig {
            destination: p.required_url("destination")?,
            method,
            headers,
            trust_all: p.flag("sslTrustAll", false)?,
            timeout: p.parsed::<u64>("timeoutSeconds")?.map(Duration::from_secs),
            auth: auth(p)?,
            signing_key: p
                .text("signingSecret")
                .map(|s| signing_key(&s))
                .transpose()?,
            payload_template: p.template("payloadTemplate")?,
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &WebhookConfig,
    ) -> Result<(), Failure> {
        let body = match &config.payload_template {
            Some(template) => {
                let scope = Scope::new(job, action);
                let payload =
                    self.tools
                        .templates
                        .render_json("payloadTemplate", template, &scope)?;
                serde_json::to_vec(&payload).expect("JSON values serialize")
            }
            None => serde_json::to_vec(&job.event).expect("events serialize"),
        };
        self.send(body, &message_id(&job.event.id, action), config)
            .await
    }

    async fn deliver_digest(
        &self,
        digest: &EventDigest,
        action: &Action,
        config: &WebhookConfig,
    ) -> Result<(), Failure> {
        let first = digest.jobs.first().map_or("", |job| job.event.id.as_str());
        let id = message_id(&format!("digest_{first}"), action);
        self.send(digest_payload(digest, action), &id, config).await
    }
}

impl WebhookChannel {
    /// Sends `body` as the action says, signed as message `id` if it is to be signed.
    async fn send(&self, body: Vec<u8>, id: &str, config: &WebhookConfig) -> Result<(), Failure> {
        let mut request = self
            .tools
            .http
            .request(
                config.method.clone(),
                config.destination.clone(),
                config.trust_all,
            )
            .header(CONTENT_TYPE, "application/json")
            .headers(config.headers.clone());
        if let Some(timeout) = config.timeout {
            request = request.timeout(timeout);
        }
        if let Some(key) = &config.signing_key {
            let timestamp = clock::now_epoch_seconds();
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", sign(key, id, timestamp, &body));
        }
        let (request, oauth) = match &config.auth {
            Auth::Anonymous => (request, None),
            Auth::Basic { username, password } => {
                (request.basic_auth(username, Some(password)), None)
            }
            Auth::Bearer(token) => (request.bearer_auth(token), None),
            Auth::ClientCredentials(client) => {
                (request.bearer_auth(self.token(client).await?), Some(client))
            }
        };
        let reply = self.tools.http.send(request.body(body)).await?;
        if reply.is_success() {
            return Ok(());
        }
        let mut failure = reply.failure(&reply.quote());
        if let (Some(client), 401) = (oauth, reply.status.as_u16()) {
            self.tokens
                .lock()
                .expect("not poisoned")
                .remove(&client.cache_key());
            failure.retry = Retry::OnSchedule;
            failure
                .reason
                .push_str(" (the OAuth token was dropped; a retry fetches a new one)");
        }
        Err(failure)
    }
}

/// The digest as a webhook receives it (`schemas/webhook-digest.json`).
fn digest_payload(digest: &EventDigest, action: &Action) -> Vec<u8> {
    let events: Vec<&model::ResourceEvent> = digest.jobs.iter().map(|job| &job.event).collect();
    let payload = serde_json::json!({
        "type": "tocsin.digest",
        "action": action.name,
        "groupLabels": digest.labels,
        "firing": digest.firing().count(),
        "resolved": digest.resolved().count(),
        "events": events,
    });
    serde_json::to_vec(&payload).expect("JSON values serialize")
}

fn auth(p: &Properties) -> Result<Auth, PropertyError> {
    if let Some(token_url) = p.url("oauthTokenUrl")? {
        return Ok(Auth::ClientCredentials(OAuthClient {
            token_url,
            client_id: p.required("clientId")?,
            client_secret: p.required("clientSecret")?,
            scope: p.text("oauthScope").unwrap_or_default(),
        }));
    }
    if let Some(token) = p.text("bearerToken") {
        return Ok(Auth::Bearer(token));
    }
    if let Some(username) = p.text("username") {
        return Ok(Auth::Basic {
            username,
            password: p.required("password")?,
        });
    }
    Ok(Auth::Anonymous)
}

/// The key in a Standard Webhooks secret: base64 after an optional `whsec_`.
fn signing_key(secret: &str) -> Result<Vec<u8>, PropertyError> {
    let encoded = secret.trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    BASE64
        .decode(encoded)
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or_else(|| {
            PropertyError::property("signingSecret", "must be `whsec_` followed by base64")
        })
}

/// Stable across attempts of one event on one action; distinct between actions, so that a
/// receiver behind two actions does not drop one of them as a duplicate.
fn message_id(message: &str, action: &Action) -> String {
    let digest = Sha256::digest(action.name.as_bytes());
    let action_part: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{message}_{action_part}")
}

fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{action, attempt, digest, job, job_with_id, tools};
    use crate::failure::{Code, Retry};
    use serde_json::json;
    use wiremock::matchers::{body_json, body_string, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    #[test]
    fn a_digest_payload_follows_its_schema() {
        use jsonschema::Resource;
        let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/");
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(format!("{schemas}{name}")).unwrap())
                .unwrap()
        };
        let mut options = jsonschema::options();
        for name in ["resource-event.json", "affected-resource.json"] {
            let schema = read(name);
            let id = schema["$id"].as_str().unwrap().to_owned();
            options = options.with_resource(id, Resource::from_contents(schema));
        }
        let validator = options.build(&read("webhook-digest.json")).unwrap();
        let jobs = vec![
            job_with_id("0196a1b2-0000-7000-8000-000000000001", json!({})),
            job_with_id(
                "0196a1b2-0000-7000-8000-000000000002",
                json!({"ans:status": "CLOSE"}),
            ),
        ];
        let action = action(
            "hook",
            "WEB_HOOK",
            json!({"destination": "https://x.example"}),
        );
        let body = digest_payload(&digest(json!({"eventType": "HighCPU"}), jobs), &action);
        let payload: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&payload)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{payload}");
        assert_eq!(payload["groupLabels"], json!({"eventType": "HighCPU"}));
        assert_eq!(
            (payload["firing"].as_u64(), payload["resolved"].as_u64()),
            (Some(1), Some(1))
        );
    }

    #[tokio::test]
    async fn sends_the_event_signed_with_headers_and_basic_auth() {
        let server = MockServer::start().await;
        Mock::given(method("PUT"))
            .and(path("/hooks/in"))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = WebhookChannel::new(tools);
        let secret = format!(
            "whsec_{}",
            BASE64.encode(b"0123456789abcdef0123456789abcdef")
        );
        let action = action(
            "hook",
            "WEB_HOOK",
            serde_json::json!({
                "destination": format!("{}/hooks/in", server.uri()),
                "method": "put", "header.X-Team": "ops",
                "username": "alice", "password": "s3cret", "signingSecret": secret
            }),
        );
        let job = job(serde_json::json!({"ans:sourceEventId": "k1"}));
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));

        let sent = &server.received_requests().await.unwrap()[0];
        let h = |name: &str| sent.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            sent.body,
            serde_json::to_vec(&job.event).unwrap(),
            "the event as accepted"
        );
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(h("x-team"), "ops");
        assert_eq!(
            h("authorization"),
            format!("Basic {}", BASE64.encode("alice:s3cret"))
        );
        // Verify as a Standard Webhooks receiver would.
        let (id, timestamp) = (h("webhook-id"), h("webhook-timestamp"));
        assert_eq!(id, message_id(&job.event.id, &action));
        assert!(id.starts_with(&format!("msg_{}_", job.event.id)));
        let now = clock::now_epoch_seconds();
        assert!((now - timestamp.parse::<i64>().unwrap()).abs() < 5);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&sent.body);
        let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        assert_eq!(h("webhook-signature"), expected);
    }

    #[tokio::test]
    async fn payload_template_and_bearer_token() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(header("authorization", "Bearer tok-1"))
            .and(body_json(
                serde_json::json!({"alert": "CPU above 90%", "resolved": false, "sev": "FATAL"}),
            ))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = WebhookChannel::new(tools);
        let action = action(
            "hook",
            "WEB_HOOK",
            serde_json::json!({
                "destination": server.uri(), "bearerToken": "tok-1",
                "payloadTemplate": r#"{"sev": {{ event.severity }}, "alert": {{ event.subject }}, "resolved": {{ resolved }}}"#
            }),
        );
        let outcome = attempt(&channel, &job(serde_json::json!({})), &action).await;
        assert_eq!(outcome, Ok(()));
    }

    #[tokio::test]
    async fn oauth_token_is_fetched_once_and_dropped_on_401() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .and(header(
                "authorization",
                format!("Basic {}", BASE64.encode("client-1:shh")).as_str(),
            ))
            .and(body_string("grant_type=client_credentials&scope=alerts"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 3600})),
            )
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(path("/in"))
            .and(header("authorization", "Bearer at-1"))
            .respond_with(ResponseTemplate::new(200))
            .up_to_n_times(2)
            .mount(&server)
            .await;
        Mock::given(path("/in"))
            .respond_with(ResponseTemplate::new(401).set_body_string("token expired"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = WebhookChannel::new(tools);
        let action = action(
            "hook",
            "WEB_HOOK",
            serde_json::json!({
                "destination": format!("{}/in", server.uri()),
                "oauthTokenUrl": format!("{}/oauth/token", server.uri()),
                "clientId": "client-1", "clientSecret": "shh", "oauthScope": "alerts"
            }),
        );
        let job = job(serde_json::json!({}));
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
        let Err(failure) = attempt(&channel, &job, &action).await else {
            panic!("the third call is refused");
        };
        assert_eq!(
            (failure.code, failure.retry),
            (Code::Http(401), Retry::OnSchedule)
        );
        assert!(
            failure.reason.contains("token expired"),
            "{}",
            failure.reason
        );
        // The next attempt fetches a new token (the mock expects two fetches in all).
        let _ = attempt(&channel, &job, &action).await;
    }

    #[tokio::test]
    async fn refusals_timeouts_and_bad_actions() {
        let server = MockServer::start().await;
        Mock::given(path("/gone"))
            .respond_with(ResponseTemplate::new(410).set_body_string("endpoint disabled"))
            .mount(&server)
            .await;
        Mock::given(path("/slow"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
            .mount(&server)
            .await;
        Mock::given(path("/busy"))
            .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "120"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = WebhookChannel::new(tools);
        let deliver = |properties: serde_json::Value| {
            let action = action("hook", "WEB_HOOK", properties);
            let channel = &channel;
            async move {
                match attempt(channel, &job(serde_json::json!({})), &action).await {
                    Err(failure) => failure,
                    Ok(()) => panic!("delivered"),
                }
            }
        };
        let gone =
            deliver(serde_json::json!({"destination": format!("{}/gone?key=abc", server.uri())}))
                .await;
        assert_eq!((gone.code, gone.is_retryable()), (Code::Http(410), false));
        assert!(
            gone.reason.contains("endpoint disabled") && !gone.reason.contains("abc"),
            "{}",
            gone.reason
        );
        let slow = deliver(serde_json::json!({"destination": format!("{}/slow", server.uri()), "timeoutSeconds": 1})).await;
        assert_eq!((slow.code, slow.retry), (Code::Timeout, Retry::OnSchedule));
        let busy =
            deliver(serde_json::json!({"destination": format!("{}/busy", server.uri())})).await;
        assert_eq!(
            (busy.code, busy.retry),
            (Code::Http(503), Retry::After(Duration::from_secs(120)))
        );
        for (properties, complaint) in [
            (
                serde_json::json!({}),
                "`properties.destination` is required",
            ),
            (
                serde_json::json!({"destination": "ftp://x/y"}),
                "http or https",
            ),
            (
                serde_json::json!({"destination": server.uri(), "method": "GET"}),
                "`properties.method`",
            ),
            (
                serde_json::json!({"destination": server.uri(), "username": "u"}),
                "`properties.password`",
            ),
            (
                serde_json::json!({"destination": server.uri(), "signingSecret": "whsec_!!"}),
                "`properties.signingSecret`",
            ),
            (
                serde_json::json!({"destination": server.uri(), "payloadTemplate": "{{"}),
                "`properties.payloadTemplate`",
            ),
        ] {
            let failure = deliver(properties).await;
            assert_eq!(
                (failure.code, failure.retry),
                (Code::BadAction, Retry::Never)
            );
            assert!(
                failure.reason.contains(complaint),
                "{complaint}: {}",
                failure.reason
            );
        }
    }
}
