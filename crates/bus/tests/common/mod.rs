//! What the RabbitMQ tests share.

use std::time::{Duration, Instant};

/// Polls `read` until it returns `expected` (the broker updates its counts asynchronously).
pub async fn eventually<F, Fut>(expected: u64, mut read: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let started = Instant::now();
    loop {
        let value = read().await;
        if value == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
