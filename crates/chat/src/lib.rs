//! Control from chat: people acknowledge, resolve and silence alerts from Slack — buttons on
//! the `SLACK_THREADED` messages and the `/tocsin` slash command — through the same act path as
//! the alerts API ([`alerts::perform`]), so every act is audited, once-only, and reaches the
//! alert's destinations; and administrators send undelivered events again — the Redeliver
//! buttons of Slack messages of undelivered events, or the command — through the operator
//! API's redelivery.
//!
//! Flow of a Slack request ([`slack`]): its signature is verified ([`slack::verify`]; anything
//! else is 401 and changes nothing); the workspace and channel must be allow-listed and the
//! user mapped to a Tocsin identity with the scope the act needs, within its rate limit
//! ([`Chat::admit`]; else an ephemeral refusal saying why); then [`acts`] carries the act out
//! and Slack is answered within its three seconds. A click's message is then updated through
//! its `response_url` to say who did what.
//!
//! The settings are [`settings::ChatSettings`] (`[chat]`); Slack's contract as used here is in
//! `CONTRACT.md` beside this crate.

pub mod acts;
pub mod settings;
pub mod slack;

use router::silences::Silences;
use settings::{ChatSettings, Directory, Identity, SlackSettings};
use std::sync::Arc;
use std::time::Instant;
use store::audit::AuditEntry;
use web::{RateLimit, RateLimiter, Scope};

/// Everything the chat endpoints need; shared.
pub struct Chat {
    slack: SlackSettings,
    verifier: slack::verify::Verifier,
    directory: Arc<Directory>,
    limiter: RateLimiter,
    alerts: alerts::State,
    silences: Arc<Silences>,
    http: reqwest::Client,
}

/// Who asked, from where in Slack.
#[derive(Debug, Clone)]
pub struct Caller {
    pub team: String,
    pub channel: String,
    pub user: String,
}

impl Caller {
    /// How the audit log and the refusals name a chat user who may not be mapped.
    fn slack_name(&self) -> String {
        format!("slack:{}/{}", self.team, self.user)
    }
}

impl Chat {
    /// The chat control `settings` describe, for the users `directory` maps (read from
    /// `settings.identities` once, shared with the action links), acting through `alerts` and
    /// `silences`; `None` when no Slack signing secret is set (the endpoints are then not
    /// served).
    pub fn new(
        settings: &ChatSettings,
        directory: Arc<Directory>,
        alerts: alerts::State,
        silences: Arc<Silences>,
    ) -> Option<Arc<Chat>> {
        if settings.slack.signing_secret.is_empty() {
            return None;
        }
        let limit = (settings.acts_per_minute > 0).then(|| RateLimit {
            per_second: f64::from(settings.acts_per_minute) / 60.0,
            burst: settings.acts_per_minute,
        });
        let limiter = RateLimiter::new(limit, directory.names());
        Some(Arc::new(Chat {
            verifier: slack::verify::Verifier::new(&settings.slack.signing_secret),
            slack: settings.slack.clone(),
            directory,
            limiter,
            alerts,
            silences,
            http: reqwest::Client::new(),
        }))
    }

    /// The identity `caller` acts as, if the workspace and channel are served, the user is
    /// mapped with `needs`, and within its rate limit; else why not, for the user to read.
    /// A refusal is logged and audited.
    pub async fn admit(
        &self,
        caller: &Caller,
        needs: Scope,
        what: &str,
    ) -> Result<Identity, String> {
        let refusal = match self.served(caller) {
            Err(refusal) => refusal,
            Ok(()) => match self.directory.slack_user(&caller.team, &caller.user) {
                None => format!(
                    "Your Slack user ({}) is not mapped to a Tocsin identity; ask a Tocsin administrator to add it to `chat.identities`.",
                    caller.user
                ),
                Some(identity) if !identity.scopes.contains(&needs) => format!(
                    "`{}` lacks the `{}` scope that this needs.",
                    identity.name,
                    needs.as_str()
                ),
                Some(identity) => match self.limiter.take(&identity.name, Instant::now()) {
                    Ok(()) => return Ok(identity.clone()),
                    Err(wait) => format!(
                        "`{}` is acting too fast; retry in {} s.",
                        identity.name,
                        web::rate_limit::retry_after_seconds(wait)
                    ),
                },
            },
        };
        Err(self.refused(caller, what, refusal).await)
    }

    /// Whether Tocsin serves `caller`'s workspace and channel at all; else why not.
    pub(crate) fn served(&self, caller: &Caller) -> Result<(), String> {
        if !self.slack.allowed_teams.contains(&caller.team) {
            return Err(format!(
                "This Slack workspace ({}) may not control Tocsin.",
                caller.team
            ));
        }
        if !self.slack.allowed_channels.contains(&caller.channel) {
            return Err(format!(
                "Tocsin takes no commands in this channel ({}); use an allowed private channel.",
                caller.channel
            ));
        }
        Ok(())
    }

    /// Logs and audits the refusal of `caller`'s `what`, and gives the reason back for the user.
    pub(crate) async fn refused(&self, caller: &Caller, what: &str, reason: String) -> String {
        tracing::warn!(who = %caller.slack_name(), channel = %caller.channel, what, %reason, "a chat request was refused");
        self.audit(AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: clock::now_epoch_millis(),
            who: caller.slack_name(),
            via: "slack".into(),
            action: what.to_owned(),
            target: caller.channel.clone(),
            outcome: "refused".into(),
            detail: Some(reason.clone()),
            dedupe_key: None,
        })
        .await;
        reason
    }

    /// Records `entry`; a failure is logged (the refusal stands either way).
    async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.alerts.audit.record(&entry).await {
            tracing::warn!(error = %e, "cannot record a refusal in the audit log");
        }
    }
}
