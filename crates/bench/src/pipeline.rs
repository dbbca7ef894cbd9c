//! `--mode pipeline`: the whole path under load, the way issue 8 measures it.
//!
//! A local HTTP sink stands in for a webhook destination. Tocsin routes every bench event to a
//! WEB_HOOK action (the sink) and to a STORE action. Events are sent open-loop at `--rate`
//! per second (0: as fast as `--concurrency` allows) for `--duration` seconds; each event's
//! latency runs from the moment it was *scheduled* to be sent to the moment the sink received
//! it, so a stalled Tocsin cannot hide its stall (no coordinated omission). At the end the tool
//! waits for stragglers and reports accepted/s, delivered/s, the latency percentiles, Tocsin's
//! peak RSS, the HTTP errors, and the events lost: accepted but neither delivered nor on record
//! as undelivered. With `--group-by` the sink action groups (`groupWaitSeconds` and
//! `groupIntervalSeconds` 1): the sink receives digests, and counts every event each names.

use crate::Target;
use anyhow::Context;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::Filter;

/// Receipt times at the sink, in µs since the run started (0: not received), per event.
struct Sink {
    received_at: Vec<AtomicU64>,
    received: AtomicUsize,
    started: Instant,
}

/// What precedes an event's index in the body Tocsin delivers (the event, compact JSON).
const KEY_MARKER: &str = "\"ans:sourceEventId\":\"p-";

/// The indexes of the bench events in a delivered body: one event, or a digest's. A substring
/// search, not a JSON parse: the sink shares the machine with Tocsin and should cost it as
/// little as possible.
fn event_indexes(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let text = std::str::from_utf8(body).unwrap_or("");
    text.split(KEY_MARKER).skip(1).filter_map(|after| {
        let end = after.find('"')?;
        after[..end].parse().ok()
    })
}

/// Starts the sink on loopback; returns its URL.
async fn start_sink(sink: Arc<Sink>) -> anyhow::Result<String> {
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |body: Bytes| {
            let at = sink.started.elapsed().as_micros().max(1) as u64;
            for slot in event_indexes(&body).filter_map(|i| sink.received_at.get(i)) {
                if slot
                    .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    sink.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/sink", listener.local_addr()?);
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(url)
}

/// The routing: every bench event to the sink (WEB_HOOK, grouped by `group_by` if given)
/// and to STORE.
pub fn routing(event_type: &str, sink_url: &str, group_by: Option<&str>) -> serde_json::Value {
    let mut sink = serde_json::json!({"destination": sink_url});
    if let Some(keys) = group_by {
        sink["groupBy"] = keys.into();
        sink["groupWaitSeconds"] = "1".into();
        sink["groupIntervalSeconds"] = "1".into();
    }
    serde_json::json!({
        "actions": [
            {"name": "bench-store", "type": "STORE", "state": "ENABLED"},
            {"name": "bench-sink", "type": "WEB_HOOK", "state": "ENABLED", "properties": sink}
        ],
        "conditions": [{"name": "bench-type", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": event_type}],
        "subscriptions": [{"name": "bench", "state": "ENABLED", "conditions": ["bench-type"], "actions": ["bench-store", "bench-sink"]}]
    })
}

pub struct Load {
    pub rate: u64,
    pub duration: Duration,
    pub events: usize,
    pub concurrency: usize,
    pub event_type: String,
    /// The sink action's `groupBy`, if it groups.
    pub group_by: Option<String>,
}

/// Runs `load` against the Tocsins `start` starts, posting to each in turn. With a
/// `shared_store` every process answers for every record; otherwise each counts its own.
pub async fn run(
    load: Load,
    shared_store: bool,
    start: impl AsyncFnOnce(serde_json::Value) -> anyhow::Result<Vec<Target>>,
) -> anyhow::Result<()> {
    let total = if load.rate > 0 {
        (load.rate as f64 * load.duration.as_secs_f64()) as usize
    } else {
        load.events
    };
    let sink = Arc::new(Sink {
        received_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        received: AtomicUsize::new(0),
        started: Instant::now(),
    });
    let sink_url = start_sink(Arc::clone(&sink)).await?;
    let routing = routing(&load.event_type, &sink_url, load.group_by.as_deref());
    let targets = start(routing).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(load.concurrency)
        .build()?;
    let entrances: Arc<Vec<(String, String, String)>> = Arc::new(
        targets
            .iter()
            .map(|t| {
                let url = format!("{}/cf/producer/v1/resource-events", t.base);
                (url, t.user.clone(), t.password.clone())
            })
            .collect(),
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(load.concurrency));
    let bodies = crate::Bodies::new(&load.event_type);
    let scheduled_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let base = sink.started.elapsed();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = if load.rate > 0 {
            base + Duration::from_secs_f64(i as f64 / load.rate as f64)
        } else {
            sink.started.elapsed()
        };
        if load.rate > 0 {
            tokio::time::sleep_until(tokio::time::Instant::from_std(sink.started + due)).await;
        }
        scheduled_at[i].store(due.as_micros() as u64, Ordering::Relaxed);
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (http, entrances) = (http.clone(), Arc::clone(&entrances));
        let (accepted, refused) = (Arc::clone(&accepted), Arc::clone(&refused));
        let body = bodies.body(i);
        tasks.spawn(async move {
            let (url, user, password) = &entrances[i % entrances.len()];
            let response = http
                .post(url.as_str())
                .basic_auth(user, Some(password))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            match response {
                Ok(r) if r.status() == 202 => accepted.fetch_add(1, Ordering::Relaxed),
                _ => refused.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let sent_in = sink.started.elapsed() - base;
    let accepted = accepted.load(Ordering::Relaxed);
    // Stragglers: wait until the sink has everything accepted, or nothing moves for 30 s.
    let mut last = (sink.received.load(Ordering::Relaxed), Instant::now());
    while sink.received.load(Ordering::Relaxed) < accepted
        && last.1.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = sink.received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let delivered = sink.received.load(Ordering::Relaxed);
    let mut latencies: Vec<u64> = (0..total)
        .filter_map(|i| {
            let got = sink.received_at[i].load(Ordering::Relaxed);
            (got > 0).then(|| got.saturating_sub(scheduled_at[i].load(Ordering::Relaxed)))
        })
        .collect();
    latencies.sort_unstable();
    let last_delivery = (0..total)
        .map(|i| sink.received_at[i].load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let delivered_in = Duration::from_micros(last_delivery).saturating_sub(base);
    let counted = if shared_store {
        &targets[..1]
    } else {
        &targets[..]
    };
    let (mut undelivered, mut stored) = (0, 0);
    for target in counted {
        undelivered += count(&http, target, "undelivered-events", &load.event_type).await?;
        stored += count(&http, target, "matched-events", &load.event_type).await?;
    }
    let peak_rss_mb = targets
        .iter()
        .filter_map(Target::peak_rss_kib)
        .max()
        .map(|k| k as f64 / 1024.0);
    let percentile = |p: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1000.0
    };
    let grouped = match &load.group_by {
        Some(keys) => format!(", sink grouped by {keys}"),
        None => String::new(),
    };
    println!(
        "mode:          pipeline (WEB_HOOK to a local sink + STORE{grouped}), {} connections, {} process(es)",
        load.concurrency,
        targets.len()
    );
    if load.rate > 0 {
        println!(
            "offered:       {} events/s for {:.0} s = {total} events",
            load.rate,
            load.duration.as_secs_f64()
        );
    } else {
        println!("offered:       {total} events as fast as possible");
    }
    println!(
        "accepted/s:    {:.0}  ({accepted} accepted, {} refused, in {:.2} s)",
        accepted as f64 / sent_in.as_secs_f64(),
        refused.load(Ordering::Relaxed),
        sent_in.as_secs_f64()
    );
    println!(
        "delivered/s:   {:.0}  ({delivered} delivered to the sink, the last after {:.2} s)",
        delivered as f64 / delivered_in.as_secs_f64(),
        delivered_in.as_secs_f64()
    );
    println!("stored:        {stored} matched records, {undelivered} undelivered");
    println!(
        "ingest→delivery ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        percentile(0.999),
        percentile(1.0)
    );
    if let Some(mb) = peak_rss_mb {
        println!("peak RSS:      {mb:.0} MB (the largest Tocsin)");
    }
    if let Ok(commits) = sqlite_commits(&http, &targets[0]).await {
        println!("sqlite commits: {commits}");
    }
    let lost = accepted.saturating_sub(delivered + undelivered as usize);
    println!("lost:          {lost}");
    if lost > 0 {
        anyhow::bail!("{lost} accepted events were neither delivered nor recorded undelivered");
    }
    Ok(())
}

async fn count(
    http: &reqwest::Client,
    target: &Target,
    what: &str,
    event_type: &str,
) -> anyhow::Result<u64> {
    let url = format!(
        "{}/cf/consumer/v1/{what}?eventType={event_type}&pageSize=1",
        target.base
    );
    let page: serde_json::Value = http
        .get(url)
        .basic_auth(&target.user, Some(&target.password))
        .send()
        .await?
        .json()
        .await?;
    page["responseMetadata"]["totalResultsCount"]
        .as_u64()
        .context("a consumer page")
}

/// Tocsin's SQLite commits by database file and the writes each shared on average, from its
/// metrics: how well group commit batches under this load.
async fn sqlite_commits(http: &reqwest::Client, target: &Target) -> anyhow::Result<String> {
    let text = http
        .get(format!("{}/metrics", target.base))
        .basic_auth(&target.user, Some(&target.password))
        .send()
        .await?
        .text()
        .await?;
    let series = |name: &str| -> std::collections::BTreeMap<String, f64> {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix("{database=\"")?;
                let (database, value) = rest.split_once("\"} ")?;
                Some((database.to_owned(), value.parse().ok()?))
            })
            .collect()
    };
    let sums = series("tocsin_sqlite_commit_writes_sum");
    let counts = series("tocsin_sqlite_commit_writes_count");
    Ok(counts
        .iter()
        .filter(|(_, &count)| count > 0.0)
        .map(|(database, count)| {
            let writes = sums.get(database).copied().unwrap_or(0.0);
            format!("{database} {count:.0} ({:.1} writes each)", writes / count)
        })
        .collect::<Vec<_>>()
        .join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_finds_the_index_tocsin_delivers() {
        let bodies = crate::Bodies::new("BenchStore");
        let sent: serde_json::Value = serde_json::from_slice(&bodies.body(4711)).unwrap();
        assert_eq!(sent["tags"]["ans:sourceEventId"], "p-4711");
        assert_eq!(sent["resource"]["resourceName"], "p-4711");
        // What Tocsin delivers: the event as accepted, with fields of its own.
        let delivered = serde_json::json!({"id": "e", "eventType": "BenchStore",
            "tags": {"ans:correlationId": "x", "ans:sourceEventId": "p-4711"}});
        let indexes = |body: &serde_json::Value| {
            event_indexes(body.to_string().as_bytes()).collect::<Vec<_>>()
        };
        assert_eq!(indexes(&delivered), [4711]);
        assert_eq!(indexes(&serde_json::json!({})), Vec::<usize>::new());
        let digest = serde_json::json!({"type": "tocsin.digest", "events": [delivered,
            {"id": "f", "tags": {"ans:sourceEventId": "p-12"}}]});
        assert_eq!(indexes(&digest), [4711, 12]);
    }
}
