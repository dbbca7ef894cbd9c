//! What a chat user may ask for, carried out through Tocsin's own paths: an alert act through
//! [`alerts::perform`] (audited, once-only by the request's key), a silence through the
//! silences' own check and store (audited here with its once-only key first). The answer is
//! a line for the chat user, and whether the alert's message should show it.

use crate::{Caller, Chat};
use model::alert::{HumanAct, HumanAction};
use router::silences::NewSilence;
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
        let done = done_word(action);
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
        let entry = AuditEntry {
            id: uuid::Uuid::now_v7().to_string(),
            at_ms: now,
            who: who.to_owned(),
            via: "slack".into(),
            action: "silence".into(),
            target: silence.id.clone(),
            outcome: "done".into(),
            detail: Some(serde_json::to_string(&silence.matchers).expect("matchers serialize")),
            dedupe_key: Some(once),
        };
        match self.alerts.audit.record(&entry).await {
            Ok(Recorded::New) => {}
            Ok(Recorded::Duplicate) => {
                return Outcome::Told("This silence was made already.".into())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a silence from chat");
                return Outcome::Told(
                    "Not silenced: the store cannot be reached; retry later.".into(),
                );
            }
        }
        if let Err(e) = self.silences.create(&silence).await {
            tracing::error!(error = %e, "cannot keep a silence from chat");
            if let Err(e) = self.alerts.audit.forget(&entry.id).await {
                tracing::warn!(error = %e, "cannot give back a silence's audit entry");
            }
            return Outcome::Told("Not silenced: the store cannot be reached; retry later.".into());
        }
        tracing::info!(silence = %silence.id, by = %who, via = "slack", "silence created");
        let minutes = for_ms / 60_000;
        Outcome::Changed(format!(
            "Silenced for {minutes} min by <@{}> (as `{who}`): silence `{}`.",
            caller.user, silence.id
        ))
    }
}

fn done_word(action: HumanAction) -> &'static str {
    match action {
        HumanAction::Acknowledge => "Acknowledged",
        HumanAction::Unacknowledge => "Unacknowledged",
        HumanAction::Resolve => "Resolved",
        HumanAction::Comment => "Commented",
    }
}
