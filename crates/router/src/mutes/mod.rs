//! Time intervals in routing: which subscriptions a mute window kept from hearing an alert,
//! the `CLOSE` that gets through anyway, and (in [`release`]) the delivery when the window
//! ends.
//!
//! Flow: the matcher reports, per event, the subscriptions with time intervals that fired and
//! those a window muted ([`Muting::of`]; nothing is allocated unless such a subscription is
//! concerned). The router folds both into the event's alert: the alert keeps the
//! subscriptions still lacking its latest state ([`store::alerts::Alert::muted_for`]), the
//! timeline line names the muted ones. Two rules follow from that record:
//! - a `CLOSE` that a window mutes for a subscription still reaches it when the subscription
//!   heard the alert's latest state — what was told the alert opened is told it closed
//!   ([`Muting::pass_close`]); a subscription that never heard of the alert is not told;
//! - when the window ends, the alert — if still not resolved — is delivered to that
//!   subscription once, in its latest state ([`release`]): a copy of its latest event goes
//!   through routing again, to that subscription's actions only ([`Muting::released_to`]).

pub mod release;

use crate::matcher::Matcher;
use store::alerts::{AlertStore, Observed};

/// What time intervals did to one event's routing, by subscription name.
#[derive(Debug, Default)]
pub(crate) struct Muting {
    /// Subscriptions whose conditions held but that a window muted.
    pub muted_for: Vec<String>,
    /// Subscriptions with time intervals that the event went to.
    pub heard_by: Vec<String>,
}

impl Muting {
    /// From the matcher's report, by subscription number: those with time intervals that
    /// fired, and those muted.
    pub fn of(matcher: &Matcher, fired: &[usize], muted: &[usize]) -> Self {
        let names = |numbers: &[usize]| -> Vec<String> {
            numbers
                .iter()
                .map(|&n| matcher.subscription_name(n).to_owned())
                .collect()
        };
        Muting {
            muted_for: names(muted),
            heard_by: names(fired),
        }
    }

    /// For a copy the end of `subscription`'s mute window released: the actions it goes to —
    /// the subscription's, if it fires for the copy — and nothing else, the other
    /// subscriptions having heard the alert already. Unless a window mutes it again, the
    /// subscription counts as having heard it, fired or not: its release is settled.
    pub fn released_to<'m>(&mut self, matcher: &'m Matcher, subscription: &str) -> Vec<&'m str> {
        if self.muted_for.iter().any(|s| s == subscription) {
            return Vec::new();
        }
        let fired = self.heard_by.iter().any(|s| s == subscription);
        self.heard_by = vec![subscription.to_owned()];
        match matcher.subscription_number(subscription) {
            Some(number) if fired => matcher.actions_of(number).collect(),
            _ => Vec::new(),
        }
    }

    /// For a `CLOSE` of alert `key` (the events before it in this batch in `batch`): the
    /// muted subscriptions that heard the alert's latest state get it anyway — they move to
    /// `heard_by`, and their actions are returned. A store that cannot be read lets every one
    /// through: telling a destination twice that an alert closed beats never telling it.
    pub async fn pass_close<'m>(
        &mut self,
        matcher: &'m Matcher,
        alerts: &AlertStore,
        key: &str,
        batch: &[Observed],
    ) -> Vec<&'m str> {
        if self.muted_for.is_empty() {
            return Vec::new();
        }
        let earlier: Vec<&Observed> = batch
            .iter()
            .filter(|o| o.event.alert_key() == key)
            .collect();
        let lacking = match alerts.alert(key).await {
            Ok(None) if earlier.is_empty() => return Vec::new(),
            Ok(stored) => {
                let mut lacking = stored.map(|a| a.muted_for).unwrap_or_default();
                for observed in earlier {
                    lacking.extend(observed.muted_for.iter().cloned());
                    lacking.retain(|s| !observed.heard_by.contains(s));
                }
                lacking
            }
            Err(e) => {
                tracing::warn!(error = %e, alert = %key, "cannot tell which muted subscriptions heard of an alert; its CLOSE goes to all");
                Vec::new()
            }
        };
        let (passing, held): (Vec<String>, Vec<String>) = std::mem::take(&mut self.muted_for)
            .into_iter()
            .partition(|s| !lacking.contains(s));
        self.muted_for = held;
        let actions = passing
            .iter()
            .filter_map(|s| matcher.subscription_number(s))
            .flat_map(|number| matcher.actions_of(number))
            .collect();
        self.heard_by.extend(passing);
        actions
    }

    /// Nothing was delivered after all (a silence held the event back): no one heard it.
    pub fn heard_nothing(&mut self) {
        self.heard_by.clear();
    }
}

#[cfg(test)]
mod tests;
