//! Channels: one per action `type`, each in its own module, each implementing [`Channel`].
//! Adding one means writing its module and adding one line to the registry in
//! [`Channels::open`]; nothing else lists action types.
//!
//! A channel owns everything about its type: its name, the properties it knows, a pure check
//! that parses an action's properties into its typed configuration (run when the action is
//! saved: a wrong property is a 400 then, not a failed alarm later), which of its URL
//! properties are credentials, and one attempt, which ends delivered or with a [`Failure`].
//! A channel that takes digests ([`Channel::DIGESTS`]) also accepts the grouping and storm
//! control properties ([`crate::grouping`]) and renders a group of events as one message;
//! the others keep one incident per alert and refuse them.
//! Channels share their plumbing through [`Tools`]: the HTTP client with its per-destination
//! limits ([`crate::http`]), the template engine ([`crate::templates`]) and the map from alert
//! keys to what a destination created for them ([`crate::links`]).

mod b2c;
pub mod email;
mod pagerduty;
mod servicenow;
mod slack;
mod slack_threaded;
mod store;
mod teams;
mod victorops;
mod webhook;

use crate::failure::Failure;
use crate::grouping::{Digest, Plan};
use crate::http::Http;
use crate::links::LinkStore;
use crate::outbound::OutboundPolicy;
use crate::properties::{Properties, PropertyError};
use crate::templates::Templates;
use async_trait::async_trait;
use model::{Action, ActionTypeError, ActionTypes, DeliveryJob, Prepared};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// Delivers jobs for the actions of one type.
pub trait Channel: Send + Sync + 'static {
    /// The action `type` this channel serves, e.g. `STORE`.
    const TYPE: &'static str;
    /// The properties it reads (`name.*`: every name with that prefix); any other property is
    /// refused, except the retry overrides every type accepts.
    const PROPERTIES: &'static [&'static str];
    /// Properties whose URL is itself a credential, so that its whole path is masked.
    const CREDENTIAL_URLS: &'static [&'static str] = &[];
    /// Properties that are secrets although their names do not say so (names with `password`,
    /// `secret`, `token`, `apiKey`… are masked anyway): masked whole.
    const SECRETS: &'static [&'static str] = &[];
    /// Whether this channel sends digests, and then how many messages a minute its
    /// destinations take when an action says nothing (`messagesPerMinute`; 0: no limit).
    /// `None`: it keeps one incident per alert, and refuses grouping.
    const DIGESTS: Option<u32> = None;
    /// Whether a digest of one event goes out as a digest too (a webhook's receiver then sees
    /// one shape); otherwise it is that event's own message.
    const DIGEST_OF_ONE: bool = false;
    /// An action's properties, checked and parsed.
    type Config: Send + Sync + 'static;

    /// Checks an action's properties and parses them, with the channel's own settings (an
    /// SMTP relay) in view; pure otherwise, run when the action is saved.
    fn configure(&self, properties: &Properties) -> Result<Self::Config, PropertyError>;

    /// Makes one attempt.
    fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &Self::Config,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Sends the events of `digest` as one message (channels with [`Self::DIGESTS`]); a digest
    /// of one event comes here only with [`Self::DIGEST_OF_ONE`].
    fn deliver_digest(
        &self,
        _digest: &Digest,
        _action: &Action,
        _config: &Self::Config,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        let refused = Failure::bad_action(format!("{} actions do not send digests", Self::TYPE));
        async move { Err(refused) }
    }
}

/// What [`Registered::prepare`] keeps for an action: its grouping plan and its channel's
/// configuration.
struct Configured {
    plan: Plan,
    config: Box<dyn Any + Send + Sync>,
}

impl Configured {
    /// The configuration of channel `C`, as prepared for `action`.
    fn of<'p, C: Channel>(
        prepared: &'p Prepared,
        action: &Action,
    ) -> Result<&'p C::Config, Failure> {
        prepared
            .downcast_ref::<Configured>()
            .and_then(|c| c.config.downcast_ref::<C::Config>())
            .ok_or_else(|| {
                Failure::bad_action(format!(
                    "action `{}` was prepared for another type than {}",
                    action.name,
                    C::TYPE
                ))
            })
    }
}

/// A [`Channel`] behind the registry: its configuration travels as a [`Prepared`].
#[async_trait]
pub(crate) trait Registered: Send + Sync {
    fn action_type(&self) -> &'static str;
    fn credential_urls(&self) -> &'static [&'static str];
    fn secrets(&self) -> &'static [&'static str];
    fn prepare(
        &self,
        action: &Action,
        outbound: &OutboundPolicy,
    ) -> Result<Prepared, PropertyError>;
    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        prepared: &Prepared,
    ) -> Result<(), Failure>;
    async fn deliver_digest(
        &self,
        digest: &Digest,
        action: &Action,
        prepared: &Prepared,
    ) -> Result<(), Failure>;
}

#[async_trait]
impl<C: Channel> Registered for C {
    fn action_type(&self) -> &'static str {
        C::TYPE
    }

    fn credential_urls(&self) -> &'static [&'static str] {
        C::CREDENTIAL_URLS
    }

    fn secrets(&self) -> &'static [&'static str] {
        C::SECRETS
    }

    fn prepare(
        &self,
        action: &Action,
        outbound: &OutboundPolicy,
    ) -> Result<Prepared, PropertyError> {
        let properties = Properties::of(action, outbound);
        let plan = match C::DIGESTS {
            Some(per_minute) => {
                properties.only(&[C::PROPERTIES, crate::grouping::PROPERTIES].concat())?;
                Plan::read(&properties, per_minute)?
            }
            None => {
                Plan::refuse(&properties, C::TYPE)?;
                properties.only(C::PROPERTIES)?;
                Plan::NONE
            }
        };
        crate::retry::RetrySchedule::check_overrides(&properties)?;
        let config = Box::new(self.configure(&properties)?);
        Ok(Arc::new(Configured { plan, config }))
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        prepared: &Prepared,
    ) -> Result<(), Failure> {
        let config = Configured::of::<C>(prepared, action)?;
        Channel::deliver(self, job, action, config).await
    }

    async fn deliver_digest(
        &self,
        digest: &Digest,
        action: &Action,
        prepared: &Prepared,
    ) -> Result<(), Failure> {
        let config = Configured::of::<C>(prepared, action)?;
        match digest.jobs.as_slice() {
            [one] if !C::DIGEST_OF_ONE => Channel::deliver(self, one, action, config).await,
            _ => Channel::deliver_digest(self, digest, action, config).await,
        }
    }
}

/// The configuration of a chat channel that posts to an incoming webhook (Slack, Teams): the
/// webhook URL, itself a credential, the message templates, and whether its messages carry
/// Tocsin's controls (Slack's Redeliver buttons, Teams' action links).
pub struct ChatWebhook {
    webhook: reqwest::Url,
    templates: crate::templates::MessageTemplates,
    /// `controls` (default `true`).
    pub controls: bool,
}

impl ChatWebhook {
    pub const PROPERTIES: &'static [&'static str] = &[
        "webhookUrl",
        "subjectTemplate",
        "bodyTemplate",
        "payloadTemplate",
        "controls",
    ];
    pub const CREDENTIAL_URLS: &'static [&'static str] = &["webhookUrl"];

    pub fn read(p: &Properties) -> Result<Self, PropertyError> {
        Ok(ChatWebhook {
            webhook: p.required_url("webhookUrl")?,
            templates: crate::templates::MessageTemplates::read(p)?,
            controls: p.flag("controls", true)?,
        })
    }

    /// Posts `payload` to the webhook: its answer when it is a success, else its failure.
    pub async fn post(
        &self,
        http: &Http,
        payload: &serde_json::Value,
    ) -> Result<crate::http::Reply, Failure> {
        http.post_json(self.webhook.clone(), payload).await
    }

    pub fn templates(&self) -> &crate::templates::MessageTemplates {
        &self.templates
    }
}

/// The `[channels]` settings: how Tocsin treats the destinations it talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// Requests in flight to one destination (scheme, host and port) at most; further jobs for
    /// it wait, so that one slow endpoint cannot take every worker.
    pub max_in_flight_per_destination: usize,
    /// Longest wait for an answer (and for a free slot at the destination), unless an action
    /// sets its own.
    pub request_timeout_ms: u64,
    /// Consecutive failures (no answer, 5xx, 429) after which a destination's circuit opens:
    /// attempts to it fail at once, without a request, until the cooldown has passed.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit stays open before one probe request may test the destination.
    pub circuit_cooldown_ms: u64,
    /// What actions may reach although it is loopback, private, link-local or metadata
    /// ([`crate::outbound`]): networks (`10.20.0.0/16`), addresses, host names, `*.domain`.
    pub outbound_allow: Vec<crate::outbound::Allowed>,
    /// The SMTP relay of `EMAIL` actions that name no server of their own.
    pub email: email::RelaySettings,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            max_in_flight_per_destination: 8,
            request_timeout_ms: 15_000,
            circuit_failure_threshold: 5,
            circuit_cooldown_ms: 30_000,
            outbound_allow: Vec::new(),
            email: email::RelaySettings::default(),
        }
    }
}

/// What channels share: one HTTP client, one template engine, one link map, and the minter
/// of the action links Teams cards and emails carry (none without `[links] public_url`).
#[derive(Clone)]
pub struct Tools {
    pub http: Arc<Http>,
    pub templates: Arc<Templates>,
    pub links: LinkStore,
    pub act_links: Option<Arc<web::act_link::ActLinks>>,
}

impl Tools {
    /// The tools over the link map `links`, with HTTP set up per `settings`.
    pub fn new(links: LinkStore, settings: &ChannelSettings) -> Self {
        Tools {
            http: Arc::new(Http::new(settings)),
            templates: Arc::new(Templates::new()),
            links,
            act_links: None,
        }
    }
}

/// The channels by action type: the registry.
#[derive(Clone)]
pub struct Channels {
    by_type: HashMap<&'static str, Arc<dyn Registered>>,
    http: Arc<Http>,
    links: LinkStore,
}

impl Channels {
    /// Every channel, sharing the tools set up with `settings`, the link map where
    /// `location` keeps the state, and `act_links` for the links in Teams cards and emails.
    pub async fn open(
        records: crate::records::RecordStore,
        location: &::store::Location,
        settings: &ChannelSettings,
        act_links: Option<Arc<web::act_link::ActLinks>>,
    ) -> Result<Self, ::store::StoreError> {
        let tools = Tools {
            act_links,
            ..Tools::new(LinkStore::at(location).await?, settings)
        };
        let http = Arc::clone(&tools.http);
        let links = tools.links.clone();
        let all: Vec<Arc<dyn Registered>> = vec![
            Arc::new(store::StoreChannel::new(records)),
            Arc::new(webhook::WebhookChannel::new(tools.clone())),
            Arc::new(slack::SlackChannel::new(tools.clone())),
            Arc::new(slack_threaded::SlackThreadedChannel::new(tools.clone())),
            Arc::new(teams::TeamsChannel::new(tools.clone())),
            Arc::new(email::EmailChannel::new(tools.clone(), &settings.email)),
            Arc::new(pagerduty::PagerDutyChannel::new(tools.clone())),
            Arc::new(victorops::VictorOpsChannel::new(tools.clone())),
            Arc::new(servicenow::ServiceNowChannel::new(tools.clone())),
            Arc::new(b2c::B2cIncidentChannel::new(tools)),
        ];
        Ok(Channels {
            by_type: all.into_iter().map(|c| (c.action_type(), c)).collect(),
            http,
            links,
        })
    }

    /// The link map the stateful channels keep (for the alerts API to show what they created).
    pub fn links(&self) -> LinkStore {
        self.links.clone()
    }

    /// The action types served, sorted.
    pub fn types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.by_type.keys().copied().collect();
        types.sort_unstable();
        types
    }

    /// The registry's own (static) name of `action_type`, if a channel serves it.
    pub fn type_name(&self, action_type: &str) -> Option<&'static str> {
        self.by_type.get(action_type).map(|c| c.action_type())
    }

    /// How many destinations have an open circuit, and how many a half-open one (for metrics:
    /// the destinations themselves are URLs, never a label).
    pub fn circuit_counts(&self) -> (u64, u64) {
        use crate::http::CircuitState;
        let states = self.http.circuit_states();
        let count = |wanted| states.iter().filter(|(_, s)| *s == wanted).count() as u64;
        (count(CircuitState::Open), count(CircuitState::HalfOpen))
    }

    /// The grouping plan of an action as prepared (`None` if it was not prepared here).
    pub fn plan(prepared: &Prepared) -> Option<&Plan> {
        prepared.downcast_ref::<Configured>().map(|c| &c.plan)
    }

    /// Makes one attempt of `job` through its action as the catalog holds it (`None`: the
    /// action is gone), with the configuration prepared when it was saved; an action that
    /// could not be prepared fails as it was refused.
    pub async fn attempt(
        &self,
        job: &DeliveryJob,
        prepared: Option<(&Action, &Result<Prepared, ActionTypeError>)>,
    ) -> Result<(), Failure> {
        let (channel, action, prepared) = self.ready(&job.action, prepared)?;
        channel.deliver(job, action, prepared).await
    }

    /// Sends `digest` as one message through its action, as [`Self::attempt`] does one job.
    pub async fn attempt_digest(
        &self,
        digest: &Digest,
        action_name: &str,
        prepared: Option<(&Action, &Result<Prepared, ActionTypeError>)>,
    ) -> Result<(), Failure> {
        let (channel, action, prepared) = self.ready(action_name, prepared)?;
        channel.deliver_digest(digest, action, prepared).await
    }

    /// The channel, action and configuration an attempt for action `name` goes through, or
    /// why there is none: the action is gone, its type is not served, or it was refused.
    fn ready<'a>(
        &'a self,
        name: &str,
        prepared: Option<(&'a Action, &'a Result<Prepared, ActionTypeError>)>,
    ) -> Result<(&'a dyn Registered, &'a Action, &'a Prepared), Failure> {
        let unsupported = |action: &Action| {
            Failure::permanent(
                crate::failure::Code::UnsupportedType,
                format!(
                    "action type `{}` is not supported by this Tocsin version",
                    action.action_type
                ),
            )
        };
        match prepared {
            None => Err(Failure::permanent(
                crate::failure::Code::ActionMissing,
                format!("action `{name}` no longer exists"),
            )),
            Some((action, Ok(prepared))) => match self.by_type.get(action.action_type.as_str()) {
                Some(channel) => Ok((channel.as_ref(), action, prepared)),
                None => Err(unsupported(action)),
            },
            Some((action, Err(ActionTypeError::Unknown { .. }))) => Err(unsupported(action)),
            Some((action, Err(refused))) => Err(Failure::bad_action(format!(
                "action `{}`: {refused}",
                action.name
            ))),
        }
    }
}

impl ActionTypes for Channels {
    fn prepare(&self, action: &Action) -> Result<Prepared, ActionTypeError> {
        match self.by_type.get(action.action_type.as_str()) {
            Some(channel) => channel.prepare(action, self.http.outbound()),
            None => Err(ActionTypeError::Unknown {
                action_type: action.action_type.clone(),
                supported: self.types().join(", "),
            }),
        }
    }

    fn url_is_credential(&self, action_type: &str, property: &str) -> bool {
        self.by_type
            .get(action_type)
            .is_some_and(|c| c.credential_urls().contains(&property))
    }

    fn property_is_secret(&self, action_type: &str, property: &str) -> bool {
        self.by_type
            .get(action_type)
            .is_some_and(|c| c.secrets().contains(&property))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Block Kit's documented limits (CONTRACT.md of the `chat` crate, §4.2): every message
    /// Tocsin sends must stay within them, or Slack refuses it (`invalid_blocks`).
    pub fn assert_within_block_kit_limits(message: &serde_json::Value) {
        let text_len = |v: &serde_json::Value| v.as_str().map_or(0, |t| t.chars().count());
        assert!(text_len(&message["text"]) <= 4000, "message text");
        let mut all_blocks: Vec<&serde_json::Value> = Vec::new();
        if let Some(blocks) = message["blocks"].as_array() {
            all_blocks.extend(blocks);
        }
        for attachment in message["attachments"].as_array().into_iter().flatten() {
            all_blocks.extend(attachment["blocks"].as_array().into_iter().flatten());
        }
        assert!(all_blocks.len() <= 50, "at most 50 blocks");
        for block in all_blocks {
            match block["type"].as_str() {
                Some("section") => {
                    let len = text_len(&block["text"]["text"]);
                    assert!((1..=3000).contains(&len), "section text of {len}");
                }
                Some("context") => assert!(block["elements"].as_array().unwrap().len() <= 10),
                Some("actions") => {
                    let elements = block["elements"].as_array().unwrap();
                    assert!(elements.len() <= 25, "actions elements");
                    assert!(text_len(&block["block_id"]) <= 255);
                    let ids: Vec<&str> = elements
                        .iter()
                        .filter_map(|b| b["action_id"].as_str())
                        .collect();
                    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
                    assert_eq!(unique.len(), ids.len(), "action ids unique in their block");
                    for button in elements {
                        assert_eq!(button["type"], "button");
                        assert!(text_len(&button["text"]["text"]) <= 75, "button text");
                        assert!(text_len(&button["action_id"]) <= 255, "action_id");
                        assert!(text_len(&button["value"]) <= 2000, "button value");
                        assert!(text_len(&button["url"]) <= 3000, "button url");
                    }
                }
                other => panic!("unexpected block {other:?}"),
            }
        }
    }

    /// One attempt as the worker makes it: the action prepared as when it is saved (a refused
    /// property fails as a 906), then delivered.
    pub async fn attempt<C: Channel>(
        channel: &C,
        job: &DeliveryJob,
        action: &Action,
    ) -> Result<(), Failure> {
        let prepared = Registered::prepare(channel, action, &OutboundPolicy::new(loopback()))
            .map_err(|e| Failure::bad_action(e.to_string()))?;
        Registered::deliver(channel, job, action, &prepared).await
    }

    /// What tests allow besides the default policy: their stand-ins listen on loopback.
    pub fn loopback() -> Vec<crate::outbound::Allowed> {
        vec!["127.0.0.0/8".to_owned().try_into().unwrap()]
    }

    /// Tools on a fresh data directory (kept alive by the returned guard), 5 s timeout.
    pub fn tools() -> (Tools, tempfile::TempDir) {
        tools_with(ChannelSettings {
            max_in_flight_per_destination: 4,
            request_timeout_ms: 5000,
            outbound_allow: loopback(),
            ..ChannelSettings::default()
        })
    }

    /// Action links under `https://tocsin.example`, signed with a fixed key, whose emails may
    /// go to `alice@example.com`.
    pub fn act_links() -> Arc<web::act_link::ActLinks> {
        let settings = web::act_link::LinkSettings {
            public_url: "https://tocsin.example".into(),
            lifetime_minutes: 60,
        };
        let mailboxes = ["alice@example.com".to_owned()];
        Arc::new(web::act_link::ActLinks::new(&settings, b"k".to_vec(), mailboxes).unwrap())
    }

    /// Tools with `settings`, on a fresh data directory (kept alive by the returned guard).
    pub fn tools_with(settings: ChannelSettings) -> (Tools, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let links = LinkStore::open(&dir.path().join(::store::links::SQLITE_FILE)).unwrap();
        (Tools::new(links, &settings), dir)
    }

    pub fn action(name: &str, action_type: &str, properties: serde_json::Value) -> Action {
        serde_json::from_value(serde_json::json!({
            "name": name, "type": action_type, "state": "ENABLED", "properties": properties
        }))
        .unwrap()
    }

    /// A FATAL alert about `web-1` with `tags`.
    pub fn job(tags: serde_json::Value) -> DeliveryJob {
        job_with_id("0196a1b2-0000-7000-8000-000000000001", tags)
    }

    /// `count` jobs as [`job`] makes them, with ids `e0`, `e1`…, each then changed by `change`
    /// (given its number).
    pub fn numbered_jobs(
        count: usize,
        change: impl Fn(usize, &mut DeliveryJob),
    ) -> Vec<DeliveryJob> {
        (0..count)
            .map(|n| {
                let mut job = job_with_id(&format!("e{n}"), serde_json::json!({}));
                change(n, &mut job);
                job
            })
            .collect()
    }

    /// Sets tag `name` of `job`'s event.
    pub fn tag(job: &mut DeliveryJob, name: &str, value: &str) {
        job.event
            .tags
            .get_or_insert_with(Default::default)
            .insert(name.into(), value.into());
    }

    /// A digest of `jobs` in the group with `labels` (`{}`: an action's one group).
    pub fn digest(labels: serde_json::Value, jobs: Vec<DeliveryJob>) -> Digest {
        Digest {
            labels: serde_json::from_value(labels).unwrap(),
            jobs,
        }
    }

    pub fn job_with_id(id: &str, tags: serde_json::Value) -> DeliveryJob {
        serde_json::from_value(serde_json::json!({
            "event": {
                "id": id, "eventType": "HighCPU", "severity": "FATAL", "category": "ALERT",
                "subject": "CPU above 90%", "body": "CPU has been above 90% for 5 minutes",
                "eventTimestamp": 1_700_000_000,
                "resource": {"resourceName": "web-1", "resourceType": "vm"},
                "tags": tags
            },
            "acceptedAtMs": 0,
            "action": "a"
        }))
        .unwrap()
    }
}
