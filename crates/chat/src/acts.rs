//! What a chat user may ask for, carried out through Tocsin's own paths: an alert act through
//! [`alerts::perform`] (audited, once-only by the request's key), a silence through the
//! silences' own check and [`router::silences::Silences::create`] (audited there, as from the
//! API, the console and the action links), a redelivery through the operator API's
//! ([`delivery::operator_api::redeliver`]) — audited here with its once-only key first. The
//! answer is a line for the chat user, and whether the alert's message should show it.

use crate::{Caller, Chat};
use model::alert::{HumanAct, HumanAction};
use router::silences::{By, NewSilence, SilenceActError};
use store::audit::{AuditEntry, Recorded};
use store::silences::SilenceMatcher;

/// Something a chat user asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    /// An act on the alert with this key.
    Act(HumanAction, String),
    /// A silence of what `matchers` select, for `for_ms` from now.
    Silence {
        matchers: Vec<SilenceMatcher>,
        for_ms: i64,
        comment: Option<String>,
    },
    /// Send again the undelivered events of `action` from `since` on.
    Redeliver { action: String, since: Since },
}

/// From when a redelivery takes an action's undelivered events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Stored in the last this many ms (the command's `since 2h`).
    Last(i64),
    /// Reported by delivery-status events from this time on, in epoch seconds (a Redeliver
    /// button's `since`).
    Reported(i64),
}

impl Since {
    /// The earliest time the selected undelivered events were stored, in epoch seconds.
    fn stored_from(self, now_ms: i64) -> i64 {
        match self {
            Since::Last(ms) => (now_ms - ms) / 1000,
            // A button's value is Tocsin's, but it travels through Slack: never overflow on it.
            Since::Reported(s) => s.saturating_sub(delivery::delivery_status::RECORDED_BEFORE_S),
        }
    }

    /// How the audit log says it.
    fn describe(self) -> String {
        match self {
            Since::Last(ms) => format!("stored in the last {} min", ms / 60_000),
            Since::Reported(s) => format!("reported since {}", delivery::templates::datetime(s)),
        }
    }
}

impl Ask {
    /// The scope a chat user needs for it.
    pub fn needs(&self) -> web::Scope {
        match self {
            Ask::Act(..) | Ask::Silence { .. } => web::Scope::Responder,
            Ask::Redeliver { .. } => web::Scope::Configuration,
        }
    }
}

/// How an ask ended, as the chat user reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It changed something: the alert's message should say so, to everyone.
    Changed(String),
    /// Nothing changed (already so, done before, refused, failed): tell the user alone.
    Told(String),
}

impl Outcome {
    pub fn text(&self) -> &str {
        match self {
            Outcome::Changed(text) | Outcome::Told(text) => text,
        }
    }
}

impl Chat {
    /// Carries `ask` out as `who` (the caller's identity), once for `once`.
    pub async fn carry_out(&self, caller: &Caller, who: &str, ask: Ask, once: String) -> Outcome {
        match ask {
            Ask::Act(action, key) => self.act(caller, who, action, &key, once).await,
            Ask::Silence {
                matchers,
                for_ms,
                comment,
            } => {
                self.silence(caller, who, matchers, for_ms, comment, once)
                    .await
            }
            Ask::Redeliver { action, since } => {
                self.redeliver(caller, who, &action, since, once).await
            }
        }
    }

    /// Claims `entry`'s once-only key in the audit log: `Err` with what to tell the user if it
    /// was taken or cannot be recorded.
    async fn claim(&self, entry: &AuditEntry, what: &str) -> Result<(), Outcome> {
        match self.alerts.audit.record(entry).await {
            Ok(Recorded::New) => Ok(()),
            Ok(Recorded::Duplicate) => Err(Outcome::Told(format!("This {what} was done already."))),
            Err(e) => {
                tracing::error!(error = %e, "cannot record an act from chat");
                Err(Outcome::Told(format!(
                    "Not done ({what}): the store cannot be reached; retry later."
                )))
            }
        }
    }

    /// Gives back the claim of an act that failed, so that its retry can act.
    async fn give_back(&self, entry: &AuditEntry) {
        if let Err(e) = self.alerts.audit.forget(&entry.id).await {
            tracing::warn!(error = %e, "cannot give back an act's audit entry");
        }
    }

    async fn redeliver(
        &self,
        caller: &Caller,
        who: &str,
        action: &str,
        since: Since,
        once: String,
    ) -> Outcome {
        let now = clock::now_epoch_millis();
        let entry = AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: now,
            who: who.to_owned(),
            via: "slack".into(),
            action: "redeliver".into(),
            target: action.to_owned(),
            outcome: "done".into(),
            detail: Some(since.describe()),
            dedupe_key: Some(once),
        };
        if let Err(told) = self.claim(&entry, "redelivery").await {
            return told;
        }
        let selection = store::records::Selection {
            event_id: None,
            action: Some(action.to_owned()),
            since: Some(since.stored_from(now)),
            limit: REDELIVER_AT_MOST,
        };
        let records = &self.alerts.records;
        match delivery::operator_api::redeliver(records, self.alerts.bus.as_ref(), selection).await
        {
            Ok(count) => {
                tracing::info!(action, count, by = %who, via = "slack", "undelivered events sent again");
                Outcome::Changed(format!(
                    "Sent {count} undelivered event(s) of `{action}` again, by <@{}> (as `{who}`).",
                    caller.user
                ))
            }
            Err(e) => {
                self.give_back(&entry).await;
                Outcome::Told(format!("Not redelivered: {}.", e.message))
            }
        }
    }

    async fn act(
        &self,
        caller: &Caller,
        who: &str,
        action: HumanAction,
        key: &str,
        once: String,
    ) -> Outcome {
        let by = HumanAct {
            action,
            who: who.to_owned(),
            via: "slack".into(),
            comment: None,
        };
        let done = action.done();
        match alerts::perform(&self.alerts, key, by, Some(once)).await {
            Ok(alerts::Performed::Done { .. }) => {
                Outcome::Changed(format!("{done} by <@{}> (as `{who}`).", caller.user))
            }
            Ok(alerts::Performed::Unchanged(alert)) => Outcome::Told(format!(
                "Alert `{key}` is {} already.",
                alert.state.as_str()
            )),
            Ok(alerts::Performed::Repeated(_)) => {
                Outcome::Told(format!("This was done already: alert `{key}`."))
            }
            Err(e) => Outcome::Told(format!("Not done: {e}.")),
        }
    }

    async fn silence(
        &self,
        caller: &Caller,
        who: &str,
        matchers: Vec<SilenceMatcher>,
        for_ms: i64,
        comment: Option<String>,
        once: String,
    ) -> Outcome {
        let now = clock::now_epoch_millis();
        let new = NewSilence {
            matchers,
            starts_at_ms: None,
            ends_at_ms: now.saturating_add(for_ms),
            comment,
        };
        let silence = match router::silences::check(new, who.to_owned(), now) {
            Ok(silence) => silence,
            Err(problem) => return Outcome::Told(format!("Not silenced: {problem}.")),
        };
        let by = By {
            via: "slack",
            once: Some(once),
        };
        match self
            .silences
            .create(&silence, &self.alerts.audit, &by)
            .await
        {
            Ok(()) => {}
            Err(SilenceActError::Repeated) => {
                return Outcome::Told("This silence was done already.".into())
            }
            Err(SilenceActError::Unavailable(e)) => {
                tracing::error!(error = %e, "cannot keep a silence from chat");
                return Outcome::Told(
                    "Not silenced: the store cannot be reached; retry later.".into(),
                );
            }
        }
        let minutes = for_ms / 60_000;
        Outcome::Changed(format!(
            "Silenced for {minutes} min by <@{}> (as `{who}`): silence `{}`.",
            caller.user, silence.id
        ))
    }
}

/// Undelivered events one redelivery sends at most; the command can be given again.
const REDELIVER_AT_MOST: u32 = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivery_reaches_back_to_the_records_of_what_was_reported() {
        let now_ms = 1_800_000_000_000;
        assert_eq!(Since::Last(3_600_000).stored_from(now_ms), 1_799_996_400);
        assert_eq!(
            Since::Reported(1_800_000_000).stored_from(now_ms),
            1_800_000_000 - delivery::delivery_status::RECORDED_BEFORE_S,
            "a record is stored just before its status event"
        );
        assert_eq!(Since::Reported(i64::MIN).stored_from(now_ms), i64::MIN);
        assert_eq!(
            Since::Reported(1_800_000_000).describe(),
            "reported since 2027-01-15 08:00:00 UTC"
        );
        assert_eq!(
            Since::Last(7_200_000).describe(),
            "stored in the last 120 min"
        );
    }
}
