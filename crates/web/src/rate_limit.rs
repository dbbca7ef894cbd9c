//! Per-client rate limits: a token bucket per API client, so that one runaway producer cannot
//! starve the others. A request takes a token from its client's bucket; the bucket refills at
//! `per_second` tokens a second up to `burst`. An empty bucket answers 429 with `Retry-After`
//! (when the next token is due) and a message naming the client and its limit.
//!
//! The buckets are made once for the configured clients, so the map is read-only and a request
//! locks only its own client's bucket: clients never wait on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warp::{Filter, Rejection};

/// Requests per second on average, and at once after a quiet time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// The buckets of every client; without a limit it lets everything through.
pub struct RateLimiter {
    limit: Option<RateLimit>,
    buckets: HashMap<String, Mutex<Bucket>>,
}

/// Rejection: the client's bucket is empty (429).
#[derive(Debug)]
pub struct RateLimited {
    pub message: String,
    pub retry_after: Duration,
}
impl warp::reject::Reject for RateLimited {}

impl RateLimiter {
    pub fn new<'a>(limit: Option<RateLimit>, clients: impl IntoIterator<Item = &'a str>) -> Self {
        let now = Instant::now();
        let buckets = match limit {
            Some(limit) => clients
                .into_iter()
                .map(|name| {
                    let full = Bucket {
                        tokens: f64::from(limit.burst),
                        refilled: now,
                    };
                    (name.to_owned(), Mutex::new(full))
                })
                .collect(),
            None => HashMap::new(),
        };
        RateLimiter { limit, buckets }
    }

    /// Takes a token from `client`'s bucket at `now`, or says how long until one is due.
    pub fn take(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let (Some(limit), Some(bucket)) = (self.limit, self.buckets.get(client)) else {
            return Ok(());
        };
        let mut bucket = bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / limit.per_second,
            ))
        }
    }

    /// `identify` (a filter that yields the authenticated client's name), then a token from
    /// that client's bucket; yields the client's name.
    pub fn guard(
        self: &Arc<Self>,
        identify: impl Filter<Extract = (String,), Error = Rejection> + Clone,
    ) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
        let limiter = Arc::clone(self);
        identify.and_then(move |client: String| {
            let admitted = limiter.admit(&client).map(|()| client);
            async move { admitted }
        })
    }

    fn admit(&self, client: &str) -> Result<(), Rejection> {
        self.take(client, Instant::now()).map_err(|retry_after| {
            let limit = self.limit.expect("only a limit refuses");
            warp::reject::custom(RateLimited {
                message: format!(
                    "client `{client}` is over its rate limit of {} requests per second \
                     (burst {}); retry after {} s",
                    limit.per_second,
                    limit.burst,
                    retry_after_seconds(retry_after)
                ),
                retry_after,
            })
        })
    }
}

/// `Retry-After` in whole seconds, rounded up: a client that waits that long finds a token.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate_and_each_client_has_its_own() {
        let limiter = RateLimiter::new(
            Some(RateLimit {
                per_second: 2.0,
                burst: 3,
            }),
            ["a", "b"],
        );
        let start = Instant::now();
        for _ in 0..3 {
            limiter.take("a", start).unwrap();
        }
        let wait = limiter.take("a", start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_seconds(wait), 1);
        limiter.take("b", start).expect("b has its own bucket");
        limiter
            .take("a", start + Duration::from_millis(500))
            .expect("one token after 1/rate");
        assert!(limiter
            .take("a", start + Duration::from_millis(500))
            .is_err());
        for _ in 0..3 {
            limiter.take("a", start + Duration::from_secs(60)).unwrap();
        }
        assert!(
            limiter.take("a", start + Duration::from_secs(60)).is_err(),
            "refills up to the burst only"
        );
    }

    #[test]
    fn without_a_limit_everything_passes() {
        let limiter = RateLimiter::new(None, ["a"]);
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.take("a", now).is_ok()));
    }
}
