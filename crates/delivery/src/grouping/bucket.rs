//! Storm control: a token bucket per action's destination, in this process's memory.
//!
//! A bucket holds up to [`Rate::burst`] tokens and refills at the action's
//! `messagesPerMinute`; each message (one event, or one digest) takes a token. A job that finds
//! none is not queued for minutes behind the others: it is held in the action's group and
//! goes out in the next digest, when a token is back. A 429 with `Retry-After` empties the
//! bucket until then. While an action has a backlog held back, new jobs join it instead of
//! overtaking it with a fresh token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many messages a destination takes: `per_minute` on average, in bursts of
/// [`Rate::burst`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
}

impl Rate {
    /// Four seconds' worth of messages, one to four: Slack takes short bursts, Teams four a
    /// second at most.
    pub fn burst(self) -> f64 {
        (f64::from(self.per_minute) / 15.0).clamp(1.0, 4.0)
    }

    fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// A `Retry-After` asked for silence until then.
    blocked_until: Option<Instant>,
    /// Jobs wait in the action's group: new ones join them.
    backlog: bool,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Bucket {
            tokens: rate.burst(),
            at: now,
            blocked_until: None,
            backlog: false,
        }
    }

    /// Takes a token at `now`, or says how long until one is back.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Err(until - now);
            }
            self.blocked_until = None;
            self.at = until;
        }
        let refilled = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second();
        self.tokens = (self.tokens + refilled).min(rate.burst());
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / rate.per_second(),
        ))
    }
}

/// The buckets, by key (the action's name).
#[derive(Default)]
pub struct StormControl {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl StormControl {
    /// Whether a job for `key` may go out now: a token is there and no backlog waits. When
    /// not, the caller holds it back, and later jobs join it until [`Self::caught_up`].
    pub fn admit(&self, key: &str, rate: Rate) -> bool {
        self.admit_at(key, rate, Instant::now())
    }

    fn admit_at(&self, key: &str, rate: Rate, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let bucket = bucket(&mut buckets, key, rate, now);
        if !bucket.backlog && bucket.take(rate, now).is_ok() {
            return true;
        }
        bucket.backlog = true;
        false
    }

    /// A token for a digest to `key`, or how long until one is back.
    pub fn take(&self, key: &str, rate: Rate) -> Result<(), Duration> {
        self.take_at(key, rate, Instant::now())
    }

    fn take_at(&self, key: &str, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        bucket(&mut buckets, key, rate, now).take(rate, now)
    }

    /// The destination of `key` asked for nothing more for `wait` (a 429's `Retry-After`).
    pub fn throttled(&self, key: &str, wait: Duration) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("not poisoned");
        if let Some(bucket) = buckets.get_mut(key) {
            bucket.tokens = 0.0;
            bucket.blocked_until = Some(now + wait);
        }
    }

    /// The backlog of `key` went out: new jobs may take tokens again.
    pub fn caught_up(&self, key: &str) {
        if let Some(bucket) = self.buckets.lock().expect("not poisoned").get_mut(key) {
            bucket.backlog = false;
        }
    }
}

/// The bucket of `key`, a full one if it has none yet (the key is copied only then: this is
/// on the hot path of every job of an action with storm control).
fn bucket<'b>(
    buckets: &'b mut HashMap<String, Bucket>,
    key: &str,
    rate: Rate,
    now: Instant,
) -> &'b mut Bucket {
    if !buckets.contains_key(key) {
        buckets.insert(key.to_owned(), Bucket::full(rate, now));
    }
    buckets.get_mut(key).expect("inserted")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: Rate = Rate { per_minute: 60 };

    #[test]
    fn a_burst_then_one_a_second_and_a_backlog_is_not_overtaken() {
        let storm = StormControl::default();
        let start = Instant::now();
        let admitted = (0..20)
            .filter(|_| storm.admit_at("slack", SLACK, start))
            .count();
        assert_eq!(admitted, 4, "four seconds' worth at once");
        // A token is back after a second, but the backlog goes first: a digest takes it.
        let later = start + Duration::from_millis(1_000);
        assert!(!storm.admit_at("slack", SLACK, later));
        assert_eq!(storm.take_at("slack", SLACK, later), Ok(()));
        assert_eq!(
            storm.take_at("slack", SLACK, later + Duration::from_millis(250)),
            Err(Duration::from_millis(750)),
            "the next token in three quarters of a second"
        );
        storm.caught_up("slack");
        assert!(storm.admit_at("slack", SLACK, later + Duration::from_secs(1)));
        assert!(
            storm.admit_at("other", SLACK, later),
            "each action has its own bucket"
        );
    }

    #[test]
    fn over_any_window_no_more_than_the_burst_plus_the_rate() {
        let storm = StormControl::default();
        let start = Instant::now();
        let mut sent = Vec::new();
        for step in 0..1_000u64 {
            let now = start + Duration::from_millis(step * 37);
            if storm.take_at("slack", SLACK, now).is_ok() {
                sent.push(step * 37);
            }
        }
        for (i, first) in sent.iter().enumerate() {
            let within_ten_seconds = sent[i..].iter().filter(|t| **t < first + 10_000).count();
            assert!(within_ten_seconds <= 4 + 10, "{within_ten_seconds} in 10 s");
        }
        assert!(
            sent.len() >= 37,
            "about one a second over 37 s: {}",
            sent.len()
        );
    }

    #[test]
    fn retry_after_empties_the_bucket_until_then() {
        let storm = StormControl::default();
        assert_eq!(storm.take("slack", SLACK), Ok(()));
        storm.throttled("slack", Duration::from_secs(30));
        let wait = storm.take("slack", SLACK).unwrap_err();
        assert!(wait > Duration::from_secs(29), "{wait:?}");
        let after = Instant::now() + Duration::from_secs(31);
        assert_eq!(
            storm.take_at("slack", SLACK, after),
            Ok(()),
            "a second after the wait, one token is back"
        );
    }
}
