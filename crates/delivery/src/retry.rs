//! What happens after a failed attempt: the retry schedule (data, overridable per action) and
//! the ANS delivery rules on top of it.
//!
//! - A permanent failure (most 4xx, a bad action) gives up at once.
//! - `discardAfter` (seconds since the first attempt) gives up without a fallback.
//! - `fallbackTime` (seconds since the first attempt) gives up and hands the event to the
//!   action's `fallbackAction`.
//! - Otherwise the job retries after the schedule's delay for its attempt number — or exactly
//!   what the destination asked for (`Retry-After`) — until `max_attempts` have been made
//!   ("the maximum times"), then gives up with the fallback.
//!
//! A delay never reaches past the next deadline, so `fallbackTime` and `discardAfter` are met
//! on time even when the schedule's step is longer.

use crate::failure::{Failure, Retry};
use crate::properties::{Properties, PropertyError};
use model::{Action, DeliveryJob};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` waits `initial × multiplier^(n-1)`, at most
/// `max_delay`, scaled by a random factor in `1 ± jitter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySchedule {
    pub initial_delay_ms: u64,
    pub multiplier: f64,
    pub max_delay_ms: u64,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// 0.2: each delay lands anywhere within ±20 % of its step, so that failed deliveries to
    /// one destination do not all come back at the same instant.
    pub jitter: f64,
}

impl Default for RetrySchedule {
    /// 1 s, 2 s, 4 s … up to 10 min between attempts, 10 attempts (about 17 minutes in all).
    fn default() -> Self {
        RetrySchedule {
            initial_delay_ms: 1_000,
            multiplier: 2.0,
            max_delay_ms: 600_000,
            max_attempts: 10,
            jitter: 0.2,
        }
    }
}

impl RetrySchedule {
    /// This schedule with the action's overrides: properties `retryMaxAttempts`,
    /// `retryInitialDelayMs`, `retryMaxDelayMs`.
    pub fn for_action(&self, action: &Action) -> RetrySchedule {
        let number = |key: &str| {
            action
                .properties
                .get(key)
                .and_then(|v| v.to_text().trim().parse::<u64>().ok())
        };
        RetrySchedule {
            max_attempts: number("retryMaxAttempts").map_or(self.max_attempts, |n| n.max(1) as u32),
            initial_delay_ms: number("retryInitialDelayMs").unwrap_or(self.initial_delay_ms),
            max_delay_ms: number("retryMaxDelayMs").unwrap_or(self.max_delay_ms),
            ..self.clone()
        }
    }

    /// Refuses action properties that would override the schedule with something that is not a
    /// whole number (they are read again by [`RetrySchedule::for_action`]).
    pub fn check_overrides(properties: &Properties) -> Result<(), PropertyError> {
        for key in crate::properties::COMMON {
            properties.parsed::<u64>(key)?;
        }
        Ok(())
    }

    /// The wait after `attempts_made` failed attempts; `random` in [0, 1) picks the jitter.
    pub fn delay(&self, attempts_made: u32, random: f64) -> Duration {
        let step = self.initial_delay_ms as f64
            * self
                .multiplier
                .powi(attempts_made.saturating_sub(1).min(64) as i32);
        let step = step.min(self.max_delay_ms as f64);
        let factor = 1.0 + self.jitter * (2.0 * random - 1.0);
        Duration::from_millis((step * factor).max(0.0) as u64)
    }
}

/// What to do with a job whose attempt just failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Retry {
        after: Duration,
    },
    /// Record the job undelivered; run the action's fallback if `fallback`.
    GiveUp {
        fallback: bool,
        why: &'static str,
    },
}

/// Decides after a failed attempt. `job` already counts that attempt and its failure.
pub fn decide(
    schedule: &RetrySchedule,
    action: &Action,
    job: &DeliveryJob,
    failure: &Failure,
    now_ms: i64,
    random: f64,
) -> Next {
    let asked = match failure.retry {
        Retry::Never => {
            return Next::GiveUp {
                fallback: true,
                why: "permanent failure",
            }
        }
        Retry::OnSchedule => None,
        Retry::After(wait) => Some(wait),
    };
    let elapsed_ms = now_ms - job.first_attempt_at_ms.unwrap_or(now_ms);
    let deadline = |seconds: Option<u64>| {
        seconds
            .filter(|s| *s > 0)
            .map(|s| s as i64 * 1000 - elapsed_ms)
    };
    let discard_in = deadline(action.discard_after);
    let fallback_in = deadline(action.fallback_time).filter(|_| action.fallback_action.is_some());
    if discard_in.is_some_and(|left| left <= 0) {
        return Next::GiveUp {
            fallback: false,
            why: "discardAfter reached",
        };
    }
    if fallback_in.is_some_and(|left| left <= 0) {
        return Next::GiveUp {
            fallback: true,
            why: "fallbackTime reached",
        };
    }
    let schedule = schedule.for_action(action);
    if job.attempt >= schedule.max_attempts {
        return Next::GiveUp {
            fallback: true,
            why: "retries exhausted",
        };
    }
    let wanted = asked.unwrap_or_else(|| schedule.delay(job.attempt, random));
    let until_deadline = [discard_in, fallback_in]
        .into_iter()
        .flatten()
        .map(|left| Duration::from_millis(left as u64))
        .min();
    Next::Retry {
        after: until_deadline.map_or(wanted, |left| wanted.min(left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{action, job};
    use crate::failure::Code;

    fn failed_job(attempts: u32, first_at: i64) -> DeliveryJob {
        let mut job = job(serde_json::json!({}));
        job.attempt = attempts;
        job.first_attempt_at_ms = Some(first_at);
        job
    }

    #[test]
    fn the_schedule_grows_caps_and_jitters() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(schedule.delay(2, 0.5), Duration::from_secs(2));
        assert_eq!(schedule.delay(5, 0.5), Duration::from_secs(16));
        assert_eq!(schedule.delay(40, 0.5), Duration::from_secs(600), "capped");
        assert_eq!(schedule.delay(1, 0.0), Duration::from_millis(800));
        assert_eq!(schedule.delay(1, 0.999_999), Duration::from_millis(1199));
    }

    #[test]
    fn actions_override_the_schedule() {
        let a = action(
            "a",
            "WEB_HOOK",
            serde_json::json!({"retryMaxAttempts": "3", "retryInitialDelayMs": 50, "retryMaxDelayMs": "100"}),
        );
        let schedule = RetrySchedule::default().for_action(&a);
        assert_eq!(
            (
                schedule.max_attempts,
                schedule.initial_delay_ms,
                schedule.max_delay_ms
            ),
            (3, 50, 100)
        );
    }

    #[test]
    fn ans_rules_decide_retry_fallback_or_discard() {
        let schedule = RetrySchedule {
            jitter: 0.0,
            ..Default::default()
        };
        let transient = Failure::transient(Code::Http(503), "unavailable");
        let plain = action("a", "WEB_HOOK", serde_json::json!({}));
        assert_eq!(
            decide(&schedule, &plain, &failed_job(1, 0), &transient, 0, 0.5),
            Next::Retry {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(
            decide(&schedule, &plain, &failed_job(3, 0), &transient, 0, 0.5),
            Next::Retry {
                after: Duration::from_secs(4)
            }
        );
        let asked =
            Failure::transient_after(Code::Http(429), "slow down", Some(Duration::from_secs(42)));
        assert_eq!(
            decide(&schedule, &plain, &failed_job(1, 0), &asked, 0, 0.5),
            Next::Retry {
                after: Duration::from_secs(42)
            },
            "Retry-After wins"
        );
        assert!(
            matches!(
                decide(&schedule, &plain, &failed_job(10, 0), &transient, 0, 0.5),
                Next::GiveUp { fallback: true, .. }
            ),
            "the maximum times"
        );
        assert!(matches!(
            decide(
                &schedule,
                &plain,
                &failed_job(1, 0),
                &Failure::permanent(Code::Http(400), "bad"),
                0,
                0.5
            ),
            Next::GiveUp { fallback: true, .. }
        ));

        let mut with_fallback = plain.clone();
        with_fallback.fallback_action = Some("b".into());
        with_fallback.fallback_time = Some(10);
        assert_eq!(
            decide(
                &schedule,
                &with_fallback,
                &failed_job(5, 0),
                &transient,
                3_000,
                0.5
            ),
            Next::Retry {
                after: Duration::from_secs(7)
            },
            "never past fallbackTime"
        );
        assert!(matches!(
            decide(
                &schedule,
                &with_fallback,
                &failed_job(5, 0),
                &transient,
                10_000,
                0.5
            ),
            Next::GiveUp {
                fallback: true,
                why: "fallbackTime reached"
            }
        ));
        let mut discarding = plain.clone();
        discarding.discard_after = Some(5);
        assert!(matches!(
            decide(
                &schedule,
                &discarding,
                &failed_job(2, 0),
                &transient,
                5_000,
                0.5
            ),
            Next::GiveUp {
                fallback: false,
                ..
            }
        ));
        assert_eq!(
            decide(
                &schedule,
                &discarding,
                &failed_job(5, 0),
                &transient,
                1_000,
                0.5
            ),
            Next::Retry {
                after: Duration::from_secs(4)
            }
        );
    }
}
