//! `SERVICE_NOW`: a ServiceNow incident (or, on a CSM instance, a case) that follows the alert,
//! through the Table API (`/api/now/table/{table}`; the contract, with sources, is in
//! `CONTRACT.md` beside this file), done idempotently like the B2C channel.
//!
//! Properties: `instanceUrl` (required, e.g. `https://acme.service-now.com`), `table` (default
//! `incident`; `sn_customerservice_case` for CSM cases), `username` + `password` (required: HTTP
//! Basic, or the resource owner of the OAuth password grant), `oauthClientId` +
//! `oauthClientSecret` (OAuth: a bearer token from `/oauth_token.do`, kept until it expires),
//! `subjectTemplate` (`short_description`, default the subject cut to 160 characters),
//! `bodyTemplate` (`description`, and the work notes; default the event as text),
//! `urgency_<SEVERITY>` and `impact_<SEVERITY>` (`1`–`3`; defaults FATAL 1/1, ERROR 2/2,
//! WARNING 2/3, NOTICE and INFO 3/3), `assignmentGroup`, `callerId` (sys_ids),
//! `resolveState` (default `6`), `closeCodeField` (default `close_code`; on a case table
//! likely `resolution_code`, unverified), `closeCode` (default `Solved (Permanently)`),
//! `closeNotesTemplate` (default: the body), `reopenState` (default `2`), `sslTrustAll`. `password` and
//! `oauthClientSecret` are secrets by their names (masked).
//!
//! The alert key is the event's `ans:sourceEventId` (its own id when it has none); the record
//! carries it as `correlation_id` = `tocsin:<key>` (a long or unusual key as its SHA-256).
//! Under the key's lock, with the link map ([`crate::links`]) saying what the table holds:
//! - nothing yet, an opening or commenting event: **create** (`POST`: short description,
//!   description, urgency, impact, assignment group, caller, correlation id). The link is
//!   written `Pending` before the request and `Open` with the new `sys_id` (and its `number`,
//!   which the alerts API shows) after it;
//! - a `Pending` link (a create whose answer never came): **look it up** by `correlation_id`
//!   (`GET ?sysparm_query=correlation_id=…^active=true`) before anything else; found, it is the
//!   record (and if it was created for this very event, nothing more is sent); not found,
//!   create again;
//! - an open record: a repeat or a comment adds a **work note** (`PATCH work_notes`); a close
//!   (`ans:status` `CLOSE`) **resolves** it (`state` `resolveState`, the close code, close notes);
//! - a resolved record: a new firing **reopens** it (`state` `reopenState` + a work note) or,
//!   when the instance refuses (403: a closed incident is read-only) or the record is gone
//!   (404), **creates** a new one — which a later look-up does not mistake for the old one;
//! - a close for an unknown key looks the record up (the map may have been lost) and resolves
//!   it if found; if there is none, there is nothing to resolve.
//!
//! A job redelivered after its effect was recorded sends nothing. Errors keep the HTTP status
//! and ServiceNow's `error.message` and `error.detail`; 429 (after `Retry-After`), 5xx and
//! timeouts are retried, other 4xx are not. A 401 with a kept OAuth token drops the token and
//! tries once more with a new one.

mod config;

use super::{Channel, Tools};
use crate::failure::{Code, Failure};
use crate::http::Reply;
use crate::lifecycle::Transition;
use crate::links::{self, KeyGuard, Link, LinkState};
use crate::properties::{Properties, PropertyError};
use crate::templates::{Format, Scope, EVENT_AS_TEXT};
pub use config::ServiceNowConfig;
use config::{instance, rules, Instance, Rules};
use model::{Action, DeliveryJob, ResourceEvent};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{Method, Url};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `short_description` is a 160-character field on `incident` (and on `task`).
const SUBJECT: &str = "{{ event.subject | limit(160) }}";
/// What `correlation_id` starts with, so that Tocsin's records are told apart from others'.
const CORRELATION_PREFIX: &str = "tocsin:";
/// `correlation_id` holds 100 characters; longer keys are hashed.
const MAX_CORRELATION_ID: usize = 100;
/// A kept token is renewed this long before ServiceNow says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

pub struct ServiceNowChannel {
    tools: Tools,
    /// OAuth access tokens by token URL, client and user; each behind its own lock, so that
    /// one token is fetched at a time per credentials.
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Token>>>>>,
}

struct Token {
    bearer: String,
    until: tokio::time::Instant,
}

/// What one event writes to the record.
struct Entry {
    short_description: String,
    /// The rendered body: the description on create, the work note after.
    text: String,
    close_notes: String,
    urgency: String,
    impact: String,
}

impl ServiceNowChannel {
    pub fn new(tools: Tools) -> Self {
        ServiceNowChannel {
            tools,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Creates the record, announcing it as `Pending` first. `previous` is the record this one
    /// replaces (closed for good, not to be mistaken for the new one by a later look-up).
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        instance: &Instance,
        rules: &Rules,
        entry: &Entry,
        locked: &KeyGuard,
        key: &str,
        event: &ResourceEvent,
        previous: Option<&str>,
    ) -> Result<(), Failure> {
        let pending = Link::new(LinkState::Pending, previous.unwrap_or_default(), event);
        self.record(locked, &pending).await?;
        let mut body = json!({
            "short_description": entry.short_description,
            "description": entry.text,
            "urgency": entry.urgency,
            "impact": entry.impact,
            "correlation_id": correlation_id(key),
            "correlation_display": "Tocsin",
        });
        for (field, value) in [
            ("assignment_group", &rules.assignment_group),
            ("caller_id", &rules.caller_id),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        let reply = self
            .call(
                instance,
                Method::POST,
                instance.table_url.clone(),
                Some(&body),
            )
            .await?;
        let created = result(&reply);
        let Some(sys_id) = created["sys_id"].as_str().filter(|id| valid_sys_id(id)) else {
            // It may exist all the same: the link stays pending, so a retry looks first.
            return Err(Failure::transient(
                Code::BadAnswer,
                format!(
                    "{} created a record without saying its sys_id: {}",
                    reply.destination,
                    reply.quote()
                ),
            ));
        };
        // The number people quote (`INC0010042`), for the alerts API to show.
        let number = created["number"].as_str().unwrap_or_default();
        tracing::info!(event = %event.id, number, sys_id, "ServiceNow record created");
        let link = Link::new(LinkState::Open, sys_id, event).named(number);
        self.record(locked, &link).await
    }

    /// Writes `fields` to record `sys_id`.
    async fn update(
        &self,
        instance: &Instance,
        sys_id: &str,
        fields: &Value,
    ) -> Result<(), Failure> {
        let url = record_url(instance, sys_id);
        self.call(instance, Method::PATCH, url, Some(fields))
            .await
            .map(drop)
    }

    /// The newest active record whose `correlation_id` is the key's, other than `previous`.
    async fn find(
        &self,
        instance: &Instance,
        key: &str,
        previous: Option<&str>,
    ) -> Result<Option<String>, Failure> {
        let wanted = correlation_id(key);
        let mut url = instance.table_url.clone();
        url.query_pairs_mut()
            .append_pair(
                "sysparm_query",
                &format!("correlation_id={wanted}^active=true^ORDERBYDESCsys_created_on"),
            )
            .append_pair("sysparm_fields", "sys_id,number,state,correlation_id")
            .append_pair("sysparm_limit", "2");
        let reply = self.call(instance, Method::GET, url, None).await?;
        let answer: Value = serde_json::from_slice(&reply.body).map_err(|_| {
            Failure::transient(
                Code::BadAnswer,
                format!("{} answered the look-up with no JSON", reply.destination),
            )
        })?;
        // ServiceNow drops a query part it cannot read (a table without `correlation_id`)
        // and answers with other records: only one that carries the key is ours.
        Ok(answer["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|record| record["correlation_id"] == wanted.as_str())
            .filter_map(|record| record["sys_id"].as_str())
            .find(|id| valid_sys_id(id) && Some(*id) != previous)
            .map(str::to_owned))
    }

    /// One request with the instance's credentials; a non-2xx answer is the failure it
    /// describes. With OAuth, a 401 drops the kept token and the request goes once more.
    async fn call(
        &self,
        instance: &Instance,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let mut fresh = false;
        loop {
            let mut request = self
                .tools
                .http
                .request(method.clone(), url.clone(), instance.trust_all)
                .header(ACCEPT, "application/json");
            request = match &instance.oauth {
                None => request.basic_auth(&instance.username, Some(&instance.password)),
                Some(_) => {
                    let (bearer, new) = self.token(instance).await?;
                    fresh |= new;
                    request.header(AUTHORIZATION, format!("Bearer {bearer}"))
                }
            };
            if let Some(body) = body {
                request = request.json(body);
            }
            let reply = self.tools.http.send(request).await?;
            if reply.is_success() {
                return Ok(reply);
            }
            if reply.status == reqwest::StatusCode::UNAUTHORIZED
                && instance.oauth.is_some()
                && !fresh
            {
                // The kept token was revoked or expired early: get a new one and try again.
                *self.token_slot(instance).lock().await = None;
                fresh = true;
                continue;
            }
            return Err(reply.failure(&error_detail(&reply)));
        }
    }

    fn token_slot(&self, instance: &Instance) -> Arc<tokio::sync::Mutex<Option<Token>>> {
        let client = instance
            .oauth
            .as_ref()
            .map(|c| c.id.as_str())
            .unwrap_or_default();
        let id = format!("{} {client} {}", instance.token_url, instance.username);
        Arc::clone(
            self.tokens
                .lock()
                .expect("not poisoned")
                .entry(id)
                .or_default(),
        )
    }

    /// The bearer token for `instance`: the kept one while it lasts, else a new one from the
    /// password grant (and whether it is new).
    async fn token(&self, instance: &Instance) -> Result<(String, bool), Failure> {
        let Some(client) = &instance.oauth else {
            return Err(Failure::bad_action("no OAuth client configured"));
        };
        let slot = self.token_slot(instance);
        let mut kept = slot.lock().await;
        if let Some(token) = kept.as_ref() {
            if tokio::time::Instant::now() < token.until {
                return Ok((token.bearer.clone(), false));
            }
        }
        let form = [
            ("grant_type", "password"),
            ("client_id", client.id.as_str()),
            ("client_secret", client.secret.as_str()),
            ("username", instance.username.as_str()),
            ("password", instance.password.as_str()),
        ];
        let request = self
            .tools
            .http
            .request(Method::POST, instance.token_url.clone(), instance.trust_all)
            .header(ACCEPT, "application/json")
            .form(&form);
        let reply = self.tools.http.send(request).await?;
        let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if !reply.is_success() {
            let mut failure = reply.failure(&oauth_error(&answer, &reply));
            failure.reason = format!("OAuth token: {}", failure.reason);
            return Err(failure);
        }
        let Some(bearer) = answer["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(Failure::permanent(
                Code::BadAnswer,
                format!(
                    "OAuth token: {} answered {} without an `access_token`",
                    reply.destination, reply.status
                ),
            ));
        };
        let lifetime = answer["expires_in"]
            .as_u64()
            .or_else(|| answer["expires_in"].as_str()?.trim().parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        // Renew a minute early, or halfway for short-lived tokens.
        let usable = if lifetime > 2 * TOKEN_MARGIN {
            lifetime - TOKEN_MARGIN
        } else {
            lifetime / 2
        };
        *kept = Some(Token {
            bearer: bearer.to_owned(),
            until: tokio::time::Instant::now() + usable,
        });
        Ok((bearer.to_owned(), true))
    }

    fn entry(&self, job: &DeliveryJob, action: &Action, rules: &Rules) -> Result<Entry, Failure> {
        let scope = Scope::new(job, action);
        let templates = &self.tools.templates;
        let (short_description, text) =
            templates.subject_and_body(&rules.texts, &scope, SUBJECT, EVENT_AS_TEXT)?;
        let close_notes = match &rules.close_notes {
            Some(source) => templates.render("closeNotesTemplate", Format::Text, source, &scope)?,
            None => text.clone(),
        };
        let severity = job.event.severity;
        Ok(Entry {
            short_description,
            text,
            close_notes,
            urgency: rules.urgency[&severity].clone(),
            impact: rules.impact[&severity].clone(),
        })
    }

    /// The fields that resolve a record.
    fn resolution(rules: &Rules, entry: &Entry) -> Value {
        let mut fields = Map::new();
        fields.insert("state".into(), json!(rules.resolve_state));
        fields.insert(rules.close_code_field.clone(), json!(rules.close_code));
        fields.insert("close_notes".into(), json!(entry.close_notes));
        Value::Object(fields)
    }

    async fn record(&self, locked: &KeyGuard, link: &Link) -> Result<(), Failure> {
        locked
            .put(link)
            .await
            .map_err(|e| links::unavailable("the ServiceNow link map", e))
    }
}

impl Channel for ServiceNowChannel {
    const TYPE: &'static str = "SERVICE_NOW";
    const PROPERTIES: &'static [&'static str] = &[
        "instanceUrl",
        "table",
        "username",
        "password",
        "oauthClientId",
        "oauthClientSecret",
        "subjectTemplate",
        "bodyTemplate",
        "urgency_*",
        "impact_*",
        "assignmentGroup",
        "callerId",
        "resolveState",
        "reopenState",
        "closeCodeField",
        "closeCode",
        "closeNotesTemplate",
        "sslTrustAll",
    ];
    const SECRETS: &'static [&'static str] = &["password", "oauthClientSecret"];
    type Config = ServiceNowConfig;

    fn configure(&self, p: &Properties) -> Result<ServiceNowConfig, PropertyError> {
        Ok(ServiceNowConfig {
            instance: instance(p)?,
            rules: rules(p)?,
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &ServiceNowConfig,
    ) -> Result<(), Failure> {
        let (instance, rules) = (&config.instance, &config.rules);
        let entry = self.entry(job, action, rules)?;
        let event = &job.event;
        let key = event.source_event_id().unwrap_or(&event.id);
        let scope = store::links::scope(&action.name, &instance.table_url);
        let (locked, mut link) =
            links::lock_and_get(&self.tools.links, &scope, key, "the ServiceNow link map").await?;
        if let Some(known) = &link {
            if known.state != LinkState::Pending && known.last_event == event.id {
                return Ok(()); // a redelivered job: its effect is on record
            }
        }
        let mut looked_up = false;
        if let Some(pending) = link.clone().filter(|l| l.state == LinkState::Pending) {
            looked_up = true;
            let previous = Some(pending.target.as_str()).filter(|p| !p.is_empty());
            link = match self.find(instance, key, previous).await? {
                Some(sys_id) => {
                    let open = Link {
                        state: LinkState::Open,
                        target: sys_id,
                        last_event: pending.last_event.clone(),
                        name: String::new(),
                    };
                    self.record(&locked, &open).await?;
                    if pending.last_event == event.id {
                        return Ok(()); // the create that went unanswered carried this event
                    }
                    Some(open)
                }
                None => None,
            };
        }

        let transition = Transition::of(event);
        let Some(link) = link else {
            if transition != Transition::Close {
                return self
                    .create(instance, rules, &entry, &locked, key, event, None)
                    .await;
            }
            // Nothing on record: the map may have been lost, so ask the instance (unless
            // that was just done).
            let found = match looked_up {
                true => None,
                false => self.find(instance, key, None).await?,
            };
            return match found {
                Some(sys_id) => {
                    self.update(instance, &sys_id, &Self::resolution(rules, &entry))
                        .await?;
                    self.record(&locked, &Link::new(LinkState::Closed, &sys_id, event))
                        .await
                }
                None => {
                    tracing::info!(event = %event.id, action = %action.name, "no ServiceNow record to resolve");
                    Ok(())
                }
            };
        };
        let sys_id = link.target.as_str();
        let open = link.state == LinkState::Open;
        let (fields, state) = match (transition, open) {
            (Transition::Close, true) => (Self::resolution(rules, &entry), LinkState::Closed),
            (Transition::Open, false) => (
                json!({"state": rules.reopen_state, "work_notes": entry.text}),
                LinkState::Open,
            ),
            (_, _) => (json!({"work_notes": entry.text}), link.state),
        };
        match self.update(instance, sys_id, &fields).await {
            // The record was deleted on the instance, or it is closed for good (a closed
            // incident is read-only: 403): a firing starts a new one.
            Err(gone)
                if transition == Transition::Open
                    && (gone.code == Code::Http(404)
                        || (gone.code == Code::Http(403) && !open)) =>
            {
                tracing::info!(event = %event.id, sys_id, reason = %gone.reason, "ServiceNow record cannot be updated; creating a new one");
                self.create(instance, rules, &entry, &locked, key, event, Some(sys_id))
                    .await
            }
            Err(failure) => Err(failure),
            Ok(()) => self.record(&locked, &Link::new(state, sys_id, event)).await,
        }
    }
}

/// `tocsin:<key>`, or `tocsin:<SHA-256 of the key>` when the key is too long for the field or
/// holds characters an encoded query would read (`^`, `=`, spaces…).
fn correlation_id(key: &str) -> String {
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/@#".contains(c));
    if plain && !key.is_empty() && CORRELATION_PREFIX.len() + key.len() <= MAX_CORRELATION_ID {
        return format!("{CORRELATION_PREFIX}{key}");
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{CORRELATION_PREFIX}{hash}")
}

/// Whether `id` can be a `sys_id` (ServiceNow's are 32 hexadecimal digits): letters and digits
/// only, so that nothing else an answer says ends up in a URL path.
fn valid_sys_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

fn record_url(instance: &Instance, sys_id: &str) -> Url {
    let mut url = instance.table_url.clone();
    url.path_segments_mut()
        .expect("an http URL has a path")
        .push(sys_id);
    url
}

/// The `result` of a Table API answer (`Null` when there is none).
fn result(reply: &Reply) -> Value {
    serde_json::from_slice::<Value>(&reply.body)
        .map(|mut answer| answer["result"].take())
        .unwrap_or(Value::Null)
}

/// What the instance said went wrong: `error.message: error.detail` from its JSON error
/// envelope, else the start of the body.
fn error_detail(reply: &Reply) -> String {
    match serde_json::from_slice::<Value>(&reply.body) {
        Ok(answer) => joined(&answer["error"], ["message", "detail"], reply),
        Err(_) => reply.quote(),
    }
}

/// What the token endpoint said: OAuth's `error` and `error_description`.
fn oauth_error(answer: &Value, reply: &Reply) -> String {
    joined(answer, ["error", "error_description"], reply)
}

/// The non-empty text `fields` of `object`, joined by `: ` (cut to 300 characters), or the start
/// of the body when there is none.
fn joined(object: &Value, fields: [&str; 2], reply: &Reply) -> String {
    let text = fields
        .iter()
        .map(|name| object[*name].as_str().unwrap_or_default().trim())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if text.is_empty() {
        reply.quote()
    } else {
        crate::templates::limit(&text, 300)
    }
}

#[cfg(test)]
mod tests;
