//! `ORACLE_B2C_INCIDENT`: an Oracle B2C Service (RightNow) incident that follows the alert,
//! through the Connect REST API — Oracle's "Use Oracle CX Service to Manage OCI Alarm Events"
//! integration, with its mappings, done idempotently.
//!
//! Properties: the site (`hostname`, e.g. `mysite.custhelp.com`, or `baseUrl`, e.g.
//! `https://mysite.custhelp.com`), `username` + `password` (an agent account, HTTP Basic),
//! `apiVersion` (default `v1.4`), `applicationContext` (the `OSvC-CREST-Application-Context`
//! header, at most 40 characters; default `Tocsin`), `primaryContactId` (required),
//! `queueId`, `severity_<SEVERITY>` (the incident severity's lookup name, by the OCI severity
//! of the `oci:severity` tag — `severity_CRITICAL = "1 - Most Severe"` — or the event's own:
//! `severity_FATAL`, `severity_ERROR`, …), `status_FIRING` (default `Unresolved`), `status_OK`
//! (default `Solved`), `keyField` (the incident custom field holding the alert key, default
//! `oci_dedupe_key`), `reopen` (default true), `threadEntryType` (default `Note`),
//! `subjectTemplate`, `bodyTemplate` (the thread text), `sslTrustAll`.
//!
//! The alert key is the event's `ans:sourceEventId` (its own id when it has none). Under the
//! key's lock, with the link map ([`crate::links`]) saying what the site holds for it:
//! - no incident yet, an opening or commenting event: **create** one (`POST incidents`: subject,
//!   primary contact, severity, status `status_FIRING`, queue, the event as a thread, the key in
//!   the custom field). The link is written `Pending` before the request and `Open` with the
//!   new id (and the incident's `lookupName`, which the alerts API shows) after it;
//! - a `Pending` link (a create whose answer never came): **look it up** by the custom field
//!   (`GET queryResults` with ROQL) before anything else; found, it is the incident (and if it
//!   was created for this very event, nothing more is sent); not found, create again;
//! - an open incident: a repeat **adds a thread** (`PATCH incidents/{id}`); a close (`ans:status`
//!   `CLOSE`) adds a thread and sets `status_OK`; a comment adds a thread;
//! - a closed incident: a new firing **reopens** it (thread + `status_FIRING`) or, with
//!   `reopen=false`, opens a new one;
//! - a close for an unknown key looks the incident up (the map may have been lost) and closes
//!   it if found; if there is none, there is nothing to close.
//!
//! A job redelivered after its effect was recorded sends nothing. Every request carries the
//! application context and echoes `osvc-crest-api-access-token`. Errors keep the HTTP status
//! and the site's `o:errorCode`/`title`/`detail`; 5xx (throttling is 503 `OSC-CREST-00035`)
//! and timeouts are retryable, after `osvc-crest-next-request-after` (ms) when given; 4xx are
//! not, except 409 on create (the next attempt looks up first).

mod config;

use super::{Channel, Tools};
use crate::failure::{Code, Failure, Retry};
use crate::http::Reply;
use crate::lifecycle::Transition;
use crate::links::{self, KeyGuard, Link, LinkState};
use crate::properties::{Properties, PropertyError};
use crate::templates::{Scope, EVENT_AS_TEXT};
pub use config::B2cConfig;
use config::{rules, site, IncidentRules, Site};
use model::{Action, DeliveryJob, ResourceEvent, Severity};
use reqwest::header::ACCEPT;
use reqwest::{Method, Url};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const SUBJECT: &str = "{{ event.subject | limit(240) }}";
/// The header B2C requires from CCOM v1.4 on.
const APPLICATION_CONTEXT: &str = "OSvC-CREST-Application-Context";
/// Echoed from each answer to the next request, as Oracle recommends.
const ACCESS_TOKEN: &str = "osvc-crest-api-access-token";
/// Milliseconds to wait before the next request (on throttling).
const NEXT_REQUEST_AFTER: &str = "osvc-crest-next-request-after";

pub struct B2cIncidentChannel {
    tools: Tools,
    /// The last `osvc-crest-api-access-token` per site.
    access_tokens: Mutex<HashMap<String, String>>,
}

/// What an incident looks like on that site for one event.
struct Incident {
    primary_contact: i64,
    queue: Option<i64>,
    severity: Option<String>,
    status_firing: String,
    status_ok: String,
    key_field: String,
    reopen: bool,
    subject: String,
    thread: Value,
}

impl B2cIncidentChannel {
    pub fn new(tools: Tools) -> Self {
        B2cIncidentChannel {
            tools,
            access_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Creates the incident, announcing it as `Pending` first. `previous` is the incident
    /// this one replaces (closed, not to be mistaken for the new one by a later look-up).
    async fn create(
        &self,
        site: &Site,
        incident: &Incident,
        locked: &KeyGuard,
        key: &str,
        event: &ResourceEvent,
        previous: Option<i64>,
    ) -> Result<(), Failure> {
        let pending = Link::new(
            LinkState::Pending,
            previous.map(|id| id.to_string()).unwrap_or_default(),
            event,
        );
        self.record(locked, &pending).await?;
        let mut body = json!({
            "subject": incident.subject,
            "primaryContact": {"id": incident.primary_contact},
            "statusWithType": {"status": {"lookupName": incident.status_firing}},
            "threads": [incident.thread],
            "customFields": {"c": {incident.key_field.as_str(): key}}
        });
        if let Some(severity) = &incident.severity {
            body["severity"] = json!({"lookupName": severity});
        }
        if let Some(queue) = incident.queue {
            body["queue"] = json!({"id": queue});
        }
        let reply = self
            .call(site, Method::POST, "incidents", Some(&body))
            .await
            .map_err(|mut failure| {
                if failure.code == Code::Http(409) {
                    failure.retry = Retry::OnSchedule; // the next attempt looks it up first
                }
                failure
            })?;
        let created = serde_json::from_slice::<Value>(&reply.body).unwrap_or(Value::Null);
        let id = created["id"].as_i64().ok_or_else(|| {
            // It may exist all the same: the link stays pending, so a retry looks first.
            Failure::transient(
                Code::BadAnswer,
                format!(
                    "{} created an incident without saying its id: {}",
                    reply.destination,
                    reply.quote()
                ),
            )
        })?;
        // The reference number people quote (`240101-000042`), for the alerts API to show.
        let lookup_name = created["lookupName"].as_str().unwrap_or_default();
        tracing::info!(event = %event.id, incident = id, lookup_name, "B2C incident created");
        let link = Link::new(LinkState::Open, id, event).named(lookup_name);
        self.record(locked, &link).await
    }

    /// Adds the thread to incident `id`, and sets its status if `status` is given.
    async fn update(
        &self,
        site: &Site,
        id: i64,
        incident: &Incident,
        status: Option<&str>,
    ) -> Result<(), Failure> {
        let mut body = json!({"threads": [incident.thread]});
        if let Some(status) = status {
            body["statusWithType"] = json!({"status": {"lookupName": status}});
        }
        self.call(site, Method::PATCH, &format!("incidents/{id}"), Some(&body))
            .await
            .map(drop)
    }

    /// The newest incident whose custom field `field` holds `key`.
    async fn find(&self, site: &Site, field: &str, key: &str) -> Result<Option<i64>, Failure> {
        let key = key.replace('\\', "\\\\").replace('\'', "\\'");
        let query = format!("SELECT id FROM incidents WHERE customFields.c.{field} = '{key}'");
        let mut url = site
            .base
            .join("queryResults")
            .expect("a relative path joins");
        url.query_pairs_mut().append_pair("query", &query);
        let reply = self.call_url(site, Method::GET, url, None).await?;
        let answer: Value = serde_json::from_slice(&reply.body).map_err(|_| {
            Failure::transient(
                Code::BadAnswer,
                format!("{} answered the look-up with no JSON", reply.destination),
            )
        })?;
        let ids = answer["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|item| item["rows"].as_array().into_iter().flatten())
            .filter_map(|row| row.get(0)?.as_str()?.trim().parse::<i64>().ok());
        Ok(ids.max())
    }

    async fn call(
        &self,
        site: &Site,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let url = site.base.join(path).expect("a relative path joins");
        self.call_url(site, method, url, body).await
    }

    /// One request with the site's headers; a non-2xx answer is the failure it describes.
    async fn call_url(
        &self,
        site: &Site,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let site_key = site.base.to_string();
        let mut request = self
            .tools
            .http
            .request(method, url, site.trust_all)
            .basic_auth(&site.username, Some(&site.password))
            .header(ACCEPT, "application/json")
            .header(APPLICATION_CONTEXT, &site.context);
        let token = self
            .access_tokens
            .lock()
            .expect("not poisoned")
            .get(&site_key)
            .cloned();
        if let Some(token) = token {
            request = request.header(ACCESS_TOKEN, token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let reply = self.tools.http.send(request).await?;
        if let Some(token) = reply
            .headers
            .get(ACCESS_TOKEN)
            .and_then(|t| t.to_str().ok())
        {
            self.access_tokens
                .lock()
                .expect("not poisoned")
                .insert(site_key, token.to_owned());
        }
        if reply.is_success() {
            return Ok(reply);
        }
        let mut failure = reply.failure(&error_detail(&reply));
        let next_after = reply
            .headers
            .get(NEXT_REQUEST_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if let (Some(ms), true) = (next_after, failure.is_retryable()) {
            failure.retry = Retry::After(Duration::from_millis(ms));
        }
        Err(failure)
    }

    fn incident(
        &self,
        job: &DeliveryJob,
        action: &Action,
        rules: &IncidentRules,
    ) -> Result<Incident, Failure> {
        let scope = Scope::new(job, action);
        let (subject, text) =
            self.tools
                .templates
                .subject_and_body(&rules.texts, &scope, SUBJECT, EVENT_AS_TEXT)?;
        Ok(Incident {
            primary_contact: rules.primary_contact,
            queue: rules.queue,
            severity: severity(&rules.severities, &job.event),
            status_firing: rules.status_firing.clone(),
            status_ok: rules.status_ok.clone(),
            key_field: rules.key_field.clone(),
            reopen: rules.reopen,
            subject,
            thread: json!({"text": text, "entryType": {"lookupName": rules.entry_type}}),
        })
    }

    async fn record(&self, locked: &KeyGuard, link: &Link) -> Result<(), Failure> {
        locked
            .put(link)
            .await
            .map_err(|e| links::unavailable("the incident link map", e))
    }
}

impl Channel for B2cIncidentChannel {
    const TYPE: &'static str = "ORACLE_B2C_INCIDENT";
    const PROPERTIES: &'static [&'static str] = &[
        "hostname",
        "baseUrl",
        "username",
        "password",
        "apiVersion",
        "applicationContext",
        "primaryContactId",
        "queueId",
        "severity_*",
        "status_FIRING",
        "status_OK",
        "keyField",
        "reopen",
        "threadEntryType",
        "subjectTemplate",
        "bodyTemplate",
        "sslTrustAll",
    ];
    type Config = B2cConfig;

    fn configure(&self, p: &Properties) -> Result<B2cConfig, PropertyError> {
        Ok(B2cConfig {
            site: site(p)?,
            rules: rules(p)?,
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &B2cConfig,
    ) -> Result<(), Failure> {
        let site = &config.site;
        let incident = self.incident(job, action, &config.rules)?;
        let event = &job.event;
        let key = event.source_event_id().unwrap_or(&event.id);
        let scope = store::links::scope(&action.name, &site.base);
        let (locked, mut link) =
            links::lock_and_get(&self.tools.links, &scope, key, "the incident link map").await?;
        if let Some(known) = &link {
            if known.state != LinkState::Pending && known.last_event == event.id {
                return Ok(()); // a redelivered job: its effect is on record
            }
        }
        if let Some(pending) = link.clone().filter(|l| l.state == LinkState::Pending) {
            let previous = pending.target.parse::<i64>().ok();
            let found = self
                .find(site, &incident.key_field, key)
                .await?
                .filter(|id| previous.is_none_or(|previous| *id > previous));
            match found {
                Some(id) => {
                    let open = Link {
                        state: LinkState::Open,
                        target: id.to_string(),
                        last_event: pending.last_event.clone(),
                        name: String::new(),
                    };
                    self.record(&locked, &open).await?;
                    if pending.last_event == event.id {
                        return Ok(()); // the create that went unanswered carried this event
                    }
                    link = Some(open);
                }
                None => {
                    link = previous.map(|id| Link {
                        state: LinkState::Closed,
                        target: id.to_string(),
                        last_event: pending.last_event,
                        name: pending.name,
                    })
                }
            }
        }

        let transition = Transition::of(event);
        let Some(link) = link else {
            if transition != Transition::Close {
                return self
                    .create(site, &incident, &locked, key, event, None)
                    .await;
            }
            // Nothing on record: the map may have been lost, so ask the site.
            return match self.find(site, &incident.key_field, key).await? {
                Some(id) => {
                    self.update(site, id, &incident, Some(&incident.status_ok))
                        .await?;
                    self.record(&locked, &Link::new(LinkState::Closed, id, event))
                        .await
                }
                None => {
                    tracing::info!(event = %event.id, action = %action.name, "no incident to close");
                    Ok(())
                }
            };
        };
        let id: i64 = link.target.parse().map_err(|_| {
            links::unavailable(
                "the incident link map",
                format!("the link map holds `{}` as an incident id", link.target),
            )
        })?;
        let open = link.state == LinkState::Open;
        let (status, state) = match (transition, open) {
            (Transition::Close, true) => (Some(&incident.status_ok), LinkState::Closed),
            (Transition::Open, false) if !incident.reopen => {
                return self
                    .create(site, &incident, &locked, key, event, Some(id))
                    .await
            }
            (Transition::Open, false) => (Some(&incident.status_firing), LinkState::Open),
            (_, _) => (None, link.state),
        };
        match self
            .update(site, id, &incident, status.map(String::as_str))
            .await
        {
            // The incident was deleted on the site: a firing starts a new one.
            Err(gone) if gone.code == Code::Http(404) && transition == Transition::Open => {
                self.create(site, &incident, &locked, key, event, None)
                    .await
            }
            Err(failure) => Err(failure),
            Ok(()) => self.record(&locked, &Link::new(state, id, event)).await,
        }
    }
}

/// The severity lookup name: by the OCI severity (`oci:severity` tag), then by the event's
/// severity (FATAL also as CRITICAL, its OCI name).
fn severity(severities: &HashMap<String, String>, event: &ResourceEvent) -> Option<String> {
    let oci = event.tag("oci:severity").map(str::to_ascii_uppercase);
    let critical = (event.severity == Severity::Fatal).then(|| "CRITICAL".to_owned());
    [oci, Some(event.severity.as_str().to_owned()), critical]
        .into_iter()
        .flatten()
        .find_map(|name| {
            severities
                .get(&name)
                .filter(|l| !l.trim().is_empty())
                .cloned()
        })
}

/// What the site said went wrong: `o:errorCode title: detail` from its JSON error body.
fn error_detail(reply: &Reply) -> String {
    let Ok(error) = serde_json::from_slice::<Value>(&reply.body) else {
        return reply.quote();
    };
    let part = |name: &str| error.get(name).and_then(Value::as_str).unwrap_or_default();
    let text = [part("o:errorCode"), part("title"), part("detail")]
        .into_iter()
        .filter(|p| !p.is_empty())
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
