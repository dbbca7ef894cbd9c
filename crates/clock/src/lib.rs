//! Wall-clock time as Tocsin records it: epoch seconds, the unit of every ANS timestamp, and
//! epoch milliseconds where seconds are too coarse (latency, retry deadlines, due times).
//! Every crate reads the time here, so that there is one definition of "now".

/// Seconds since the Unix epoch.
pub fn now_epoch_seconds() -> i64 {
    now_epoch_millis() / 1000
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_epoch_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_are_the_millis_truncated() {
        let (ms, s) = (super::now_epoch_millis(), super::now_epoch_seconds());
        assert!(ms > 1_700_000_000_000, "after 2023");
        assert!((s - ms / 1000).abs() <= 1);
    }
}
