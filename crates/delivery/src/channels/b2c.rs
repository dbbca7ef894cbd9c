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
//!   new id after it;
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

use super::{Channel, Tools};
use crate::failure::{Code, Failure, Retry};
use crate::http::Reply;
use crate::lifecycle::Transition;
use crate::links::{Link, LinkState};
use crate::properties::{Properties, PropertyError};
use crate::templates::{Scope, Texts, EVENT_AS_TEXT};
use model::{Action, DeliveryJob, ResourceEvent, Severity};
use reqwest::header::{HeaderValue, ACCEPT};
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

/// Where and how to reach one site.
struct Site {
    /// `…/services/rest/connect/{version}/`
    base: Url,
    username: String,
    password: String,
    context: String,
    trust_all: bool,
}

/// How incidents are kept on that site: the action's incident properties, parsed.
struct IncidentRules {
    primary_contact: i64,
    queue: Option<i64>,
    /// Lookup names by severity name (`severity_CRITICAL` → `CRITICAL`).
    severities: HashMap<String, String>,
    status_firing: String,
    status_ok: String,
    key_field: String,
    reopen: bool,
    entry_type: String,
    texts: Texts,
}

/// An `ORACLE_B2C_INCIDENT` action's properties, parsed.
pub struct B2cConfig {
    site: Site,
    rules: IncidentRules,
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

    async fn attempt(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &B2cConfig,
    ) -> Result<(), Failure> {
        let site = &config.site;
        let incident = self.incident(job, action, &config.rules)?;
        let event = &job.event;
        let key = event.source_event_id().unwrap_or(&event.id);
        let scope = format!("{}|{}", action.name, site.base);
        let links = &self.tools.links;
        let _working_on_key = links.lock(&scope, key).await;

        let mut link = links.get(&scope, key).await.map_err(local)?;
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
                    };
                    self.record(&scope, key, &open).await?;
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
                    })
                }
            }
        }

        let transition = Transition::of(event);
        let Some(link) = link else {
            if transition != Transition::Close {
                return self.create(site, &incident, &scope, key, event, None).await;
            }
            // Nothing on record: the map may have been lost, so ask the site.
            return match self.find(site, &incident.key_field, key).await? {
                Some(id) => {
                    self.update(site, id, &incident, Some(&incident.status_ok))
                        .await?;
                    self.record(&scope, key, &link_to(LinkState::Closed, id, event))
                        .await
                }
                None => {
                    tracing::info!(event = %event.id, action = %action.name, "no incident to close");
                    Ok(())
                }
            };
        };
        let id: i64 = link.target.parse().map_err(|_| {
            local(format!(
                "the link map holds `{}` as an incident id",
                link.target
            ))
        })?;
        let open = link.state == LinkState::Open;
        let (status, state) = match (transition, open) {
            (Transition::Close, true) => (Some(&incident.status_ok), LinkState::Closed),
            (Transition::Open, false) if !incident.reopen => {
                return self
                    .create(site, &incident, &scope, key, event, Some(id))
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
                self.create(site, &incident, &scope, key, event, None).await
            }
            Err(failure) => Err(failure),
            Ok(()) => self.record(&scope, key, &link_to(state, id, event)).await,
        }
    }

    /// Creates the incident, announcing it as `Pending` first. `previous` is the incident
    /// this one replaces (closed, not to be mistaken for the new one by a later look-up).
    async fn create(
        &self,
        site: &Site,
        incident: &Incident,
        scope: &str,
        key: &str,
        event: &ResourceEvent,
        previous: Option<i64>,
    ) -> Result<(), Failure> {
        let pending = Link {
            state: LinkState::Pending,
            target: previous.map(|id| id.to_string()).unwrap_or_default(),
            last_event: event.id.clone(),
        };
        self.record(scope, key, &pending).await?;
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
        let id = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|created| created.get("id")?.as_i64())
            .ok_or_else(|| {
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
        tracing::info!(event = %event.id, incident = id, "B2C incident created");
        self.record(scope, key, &link_to(LinkState::Open, id, event))
            .await
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

    async fn record(&self, scope: &str, key: &str, link: &Link) -> Result<(), Failure> {
        self.tools.links.put(scope, key, link).await.map_err(local)
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

    fn configure(p: &Properties) -> Result<B2cConfig, PropertyError> {
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
        self.attempt(job, action, config).await
    }
}

fn rules(p: &Properties) -> Result<IncidentRules, PropertyError> {
    let key_field = p
        .text("keyField")
        .unwrap_or_else(|| "oci_dedupe_key".into());
    if !key_field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(PropertyError::property(
            "keyField",
            "must be a custom field name (letters, digits, `_`)",
        ));
    }
    let primary_contact = p
        .required("primaryContactId")?
        .trim()
        .parse()
        .map_err(|_| {
            PropertyError::property("primaryContactId", "must be a contact id (a number)")
        })?;
    Ok(IncidentRules {
        primary_contact,
        queue: p.parsed("queueId")?,
        severities: p
            .prefixed("severity_")
            .map(|(name, lookup)| (name.to_owned(), lookup))
            .collect(),
        status_firing: p
            .text("status_FIRING")
            .unwrap_or_else(|| "Unresolved".into()),
        status_ok: p.text("status_OK").unwrap_or_else(|| "Solved".into()),
        key_field,
        reopen: p.flag("reopen", true)?,
        entry_type: p.text("threadEntryType").unwrap_or_else(|| "Note".into()),
        texts: Texts::read(p)?,
    })
}

fn site(p: &Properties) -> Result<Site, PropertyError> {
    let mut root = match (p.url("baseUrl")?, p.text("hostname")) {
        (Some(url), _) => url,
        (None, Some(host)) => {
            crate::properties::parse_url("hostname", &format!("https://{}", host.trim()))?
        }
        (None, None) => {
            return Err(PropertyError::property(
                "hostname",
                "or `baseUrl` is required for ORACLE_B2C_INCIDENT actions",
            ))
        }
    };
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let version = p.text("apiVersion").unwrap_or_else(|| "v1.4".into());
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return Err(PropertyError::property(
            "apiVersion",
            format!("`{version}` is not a version like v1.4"),
        ));
    }
    let base = root
        .join(&format!("services/rest/connect/{version}/"))
        .expect("a relative path joins");
    let context = p
        .text("applicationContext")
        .unwrap_or_else(|| "Tocsin".into());
    if context.chars().count() > 40 || HeaderValue::from_str(&context).is_err() {
        return Err(PropertyError::property(
            "applicationContext",
            "must be at most 40 plain characters",
        ));
    }
    Ok(Site {
        base,
        username: p.required("username")?,
        password: p.required("password")?,
        context,
        trust_all: p.flag("sslTrustAll", false)?,
    })
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

fn link_to(state: LinkState, id: i64, event: &ResourceEvent) -> Link {
    Link {
        state,
        target: id.to_string(),
        last_event: event.id.clone(),
    }
}

/// The link map failed: Tocsin's own storage, worth retrying.
fn local(error: impl ToString) -> Failure {
    Failure::transient(
        Code::LocalStorage,
        format!("the incident link map: {}", error.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{action, attempt, job_with_id, tools};
    use crate::channels::ChannelSettings;
    use crate::failure::{Code, Retry};
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine;
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const API: &str = "/services/rest/connect/v1.4";

    fn b2c_action(server: &MockServer, extra: Value) -> Action {
        let mut properties = json!({
            "baseUrl": server.uri(), "username": "agent", "password": "pw",
            "primaryContactId": "635",
            "severity_CRITICAL": "1 - Most Severe", "severity_INFO": "4 - Low",
            "status_FIRING": "Unresolved", "status_OK": "Solved"
        });
        properties
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        action("b2c", "ORACLE_B2C_INCIDENT", properties)
    }

    /// An OCI alarm event for dedupe key `key`.
    fn alarm(id: &str, key: &str, status: &str, subject: &str) -> DeliveryJob {
        let mut job = job_with_id(
            id,
            json!({"ans:sourceEventId": key, "ans:status": status, "oci:severity": "CRITICAL"}),
        );
        job.event.subject = subject.into();
        job
    }

    async fn requests(server: &MockServer) -> Vec<(String, String, Value)> {
        server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                (r.method.to_string(), r.url.path().to_owned(), body)
            })
            .collect()
    }

    fn thread(text_start: &str, thread: &Value) {
        let text = thread["threads"][0]["text"].as_str().unwrap();
        assert!(text.starts_with(text_start), "{text}");
        assert_eq!(
            thread["threads"][0]["entryType"],
            json!({"lookupName": "Note"})
        );
    }

    #[tokio::test]
    async fn the_incident_follows_the_alert() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("{API}/incidents")))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": 42, "lookupName": "200101-000001"}))
                    .insert_header(ACCESS_TOKEN, "tok-1"),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("PATCH"))
            .and(path(format!("{API}/incidents/42")))
            .respond_with(ResponseTemplate::new(200))
            .expect(3)
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = B2cIncidentChannel::new(tools);
        let action = b2c_action(&server, json!({}));
        let firing = alarm("e1", "dk-1", "CREATE_OR_UPDATE", "[FIRING] Test Alert");
        let repeat = alarm(
            "e2",
            "dk-1",
            "CREATE_OR_UPDATE",
            "[FIRING (repeat)] Test Alert",
        );
        let ok = alarm("e3", "dk-1", "CLOSE", "[OK] Test Alert");
        let again = alarm("e4", "dk-1", "CREATE_OR_UPDATE", "[FIRING] Test Alert");
        for job in [&firing, &repeat, &repeat, &ok, &again] {
            assert_eq!(attempt(&channel, job, &action).await, Ok(()));
        }

        let sent = requests(&server).await;
        let summary: Vec<(&str, &str)> = sent
            .iter()
            .map(|(m, p, _)| (m.as_str(), p.as_str()))
            .collect();
        let incident = format!("{API}/incidents/42");
        assert_eq!(
            summary,
            [
                ("POST", format!("{API}/incidents").as_str()),
                ("PATCH", incident.as_str()),
                ("PATCH", incident.as_str()),
                ("PATCH", incident.as_str())
            ],
            "one create, then threads on the same incident; the redelivered repeat sent nothing"
        );
        let created = &sent[0].2;
        assert_eq!(created["subject"], "[FIRING] Test Alert");
        assert_eq!(created["primaryContact"], json!({"id": 635}));
        assert_eq!(
            created["severity"],
            json!({"lookupName": "1 - Most Severe"})
        );
        assert_eq!(
            created["statusWithType"],
            json!({"status": {"lookupName": "Unresolved"}})
        );
        assert_eq!(
            created["customFields"],
            json!({"c": {"oci_dedupe_key": "dk-1"}})
        );
        thread("[FIRING] Test Alert\n\nCPU has been above 90%", created);
        assert_eq!(
            sent[1].2.as_object().unwrap().len(),
            1,
            "a repeat only adds a thread"
        );
        thread("[FIRING (repeat)] Test Alert", &sent[1].2);
        assert_eq!(
            sent[2].2["statusWithType"],
            json!({"status": {"lookupName": "Solved"}})
        );
        thread("Resolved: [OK] Test Alert", &sent[2].2);
        assert_eq!(
            sent[3].2["statusWithType"],
            json!({"status": {"lookupName": "Unresolved"}}),
            "a firing after the close reopens"
        );

        let raw = server.received_requests().await.unwrap();
        let header = |i: usize, name: &str| {
            raw[i]
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header(0, "authorization"),
            Some(format!("Basic {}", BASE64.encode("agent:pw")))
        );
        assert_eq!(
            header(0, "osvc-crest-application-context").as_deref(),
            Some("Tocsin")
        );
        assert_eq!(header(0, "accept").as_deref(), Some("application/json"));
        assert_eq!(header(0, ACCESS_TOKEN), None);
        assert_eq!(header(1, ACCESS_TOKEN).as_deref(), Some("tok-1"), "echoed");
    }

    #[tokio::test]
    async fn without_reopen_a_new_firing_opens_a_new_incident() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 42})))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 43})))
            .mount(&server)
            .await;
        Mock::given(method("PATCH"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = B2cIncidentChannel::new(tools);
        let action = b2c_action(&server, json!({"reopen": false}));
        for job in [
            alarm("e1", "dk", "CREATE_OR_UPDATE", "a"),
            alarm("e2", "dk", "CLOSE", "b"),
            alarm("e3", "dk", "CREATE_OR_UPDATE", "c"),
            alarm("e4", "dk", "COMMENT", "d"),
        ] {
            assert_eq!(attempt(&channel, &job, &action).await, Ok(()));
        }
        let sent = requests(&server).await;
        let summary: Vec<(&str, &str)> = sent
            .iter()
            .map(|(m, p, _)| (m.as_str(), p.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("POST", format!("{API}/incidents").as_str()),
                ("PATCH", format!("{API}/incidents/42").as_str()),
                ("POST", format!("{API}/incidents").as_str()),
                ("PATCH", format!("{API}/incidents/43").as_str())
            ]
        );
        assert_eq!(
            sent[3].2.get("statusWithType"),
            None,
            "a comment changes no status"
        );
    }

    #[tokio::test]
    async fn a_create_that_timed_out_is_looked_up_not_repeated() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": 7}))
                    .set_delay(Duration::from_millis(1500)),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("{API}/queryResults")))
            .and(query_param(
                "query",
                "SELECT id FROM incidents WHERE customFields.c.oci_dedupe_key = 'dk-\\'q'",
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [
                {"tableName": "incidents", "count": 1, "columnNames": ["id"], "rows": [["7"]]}
            ]})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("PATCH"))
            .and(path(format!("{API}/incidents/7")))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let dir = tempfile::tempdir().unwrap();
        let settings = ChannelSettings {
            max_in_flight_per_destination: 4,
            request_timeout_ms: 500,
            ..ChannelSettings::default()
        };
        let channel = B2cIncidentChannel::new(Tools::open(dir.path(), &settings).unwrap());
        let action = b2c_action(&server, json!({}));
        let firing = alarm("e1", "dk-'q", "CREATE_OR_UPDATE", "a");
        let Err(timeout) = attempt(&channel, &firing, &action).await else {
            panic!("the create was answered in time");
        };
        assert_eq!(
            (timeout.code, timeout.retry),
            (Code::Timeout, Retry::OnSchedule)
        );
        // The retry of the same event finds the incident its create made: nothing more to send.
        assert_eq!(attempt(&channel, &firing, &action).await, Ok(()));
        // The repeat goes to that incident.
        let repeat = alarm("e2", "dk-'q", "CREATE_OR_UPDATE", "b");
        assert_eq!(attempt(&channel, &repeat, &action).await, Ok(()));
    }

    #[tokio::test]
    async fn site_errors_keep_status_and_code_and_throttling_says_when() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/throttled/services/rest/connect/v1.4/incidents"))
            .respond_with(
                ResponseTemplate::new(503)
                    .insert_header(NEXT_REQUEST_AFTER, "2500")
                    .set_body_json(json!({"type": "https://x/services/rest/connect/exceptions/OSC-CREST-00035", "title": "Too many requests", "status": 503, "o:errorCode": "OSC-CREST-00035"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/refused/services/rest/connect/v1.4/incidents"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "type": "https://x/services/rest/connect/exceptions/OSC-CREST-00006",
                "title": "An attempt to write a resource failed", "status": 400,
                "detail": "Invalid ID: No such Contact with ID = 209",
                "o:errorCode": "OSC-CREST-00006"})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/locked/services/rest/connect/v1.4/incidents"))
            .respond_with(ResponseTemplate::new(401).set_body_string("Access Denied"))
            .mount(&server)
            .await;
        let (tools, _dir) = tools();
        let channel = B2cIncidentChannel::new(tools);
        let fail = |site: &'static str, extra: Value| {
            let mut action = b2c_action(&server, extra);
            if !site.is_empty() {
                action.properties.insert(
                    "baseUrl".into(),
                    model::config::PropertyValue::Text(format!("{}/{site}", server.uri())),
                );
            }
            let channel = &channel;
            async move {
                match attempt(
                    channel,
                    &alarm("e1", site, "CREATE_OR_UPDATE", "s"),
                    &action,
                )
                .await
                {
                    Err(f) => f,
                    Ok(()) => panic!("{site} delivered"),
                }
            }
        };
        let throttled = fail("throttled", json!({})).await;
        assert_eq!(
            (throttled.code, throttled.retry),
            (Code::Http(503), Retry::After(Duration::from_millis(2500)))
        );
        assert!(
            throttled
                .reason
                .contains("OSC-CREST-00035: Too many requests"),
            "{}",
            throttled.reason
        );
        let refused = fail("refused", json!({})).await;
        assert_eq!(
            (refused.code, refused.retry),
            (Code::Http(400), Retry::Never)
        );
        assert!(
            refused.reason.ends_with("OSC-CREST-00006: An attempt to write a resource failed: Invalid ID: No such Contact with ID = 209"),
            "{}",
            refused.reason
        );
        let locked = fail("locked", json!({})).await;
        assert_eq!((locked.code, locked.retry), (Code::Http(401), Retry::Never));
        assert!(!locked.reason.contains("pw"));
        for (extra, complaint) in [
            (
                json!({"primaryContactId": "someone"}),
                "`properties.primaryContactId`",
            ),
            (
                json!({"applicationContext": "x".repeat(41)}),
                "`properties.applicationContext`",
            ),
            (json!({"keyField": "a = 1 OR 1"}), "`properties.keyField`"),
            (json!({"apiVersion": "../v1"}), "`properties.apiVersion`"),
        ] {
            let failure = fail("", extra).await;
            assert_eq!(
                (failure.code, failure.retry),
                (Code::BadAction, Retry::Never)
            );
            assert!(failure.reason.contains(complaint), "{}", failure.reason);
        }
    }
}
