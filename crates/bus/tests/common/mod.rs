//! What the RabbitMQ tests share.

use std::time::{Duration, Instant};

/// Polls `read` until it returns `expected` (the broker updates its counts asynchronously).
pub async fn eventually<T, F, Fut>(expected: T, mut read: F)
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let value = read().await;
        if value == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{value:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker-side ids of the connections of the buses with `prefix`.
#[allow(dead_code)] // not every test binary closes connections
pub fn connections(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let wanted = format!("\"tocsin {prefix}\"");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&wanted))
        .filter_map(|line| line.split('\t').next().map(str::to_owned))
        .collect()
}

/// Closes the connection `pid` from the broker side, as a broker restart or a dying peer would.
#[allow(dead_code)] // not every test binary closes connections
pub fn close_connection(pid: &str) {
    let closing = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pid, "test: the connection goes away"])
        .output()
        .unwrap();
    assert!(closing.status.success(), "closing {pid}: {closing:?}");
}
