//! The RabbitMQ backend against the real broker on 127.0.0.1:5672 (TOCSIN_TEST_AMQP_URI).

use bus::{Bus, Delivery, Queue, RabbitBus, RabbitSettings, Subscription};
use bytes::Bytes;
use std::time::Duration;

fn amqp_uri() -> String {
    std::env::var("TOCSIN_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn settings() -> RabbitSettings {
    RabbitSettings {
        uri: amqp_uri(),
        prefix: format!("tocsin-test-{}", uuid_like()),
        delivery_limit: 5,
        publish_timeout: Duration::from_secs(10),
    }
}

/// Unique per test, so that concurrent tests never share (or delete) each other's queues.
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), model::now_epoch_millis())
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

/// Closes this test's connection from the broker side, as a broker restart would.
fn kill_connection(prefix: &str) {
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
    let listing = String::from_utf8_lossy(&out.stdout);
    let wanted = format!("\"tocsin {prefix}\"");
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&wanted))
        .filter_map(|line| line.split('\t').next())
        .collect();
    assert_eq!(pids.len(), 1, "this test's connection in {listing}");
    let closing = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", pids[0], "test: broker goes away"])
        .output()
        .unwrap();
    assert!(closing.status.success(), "closing {}: {closing:?}", pids[0]);
}

#[tokio::test]
async fn confirms_prefetch_requeue_and_reconnect_lose_nothing() {
    let settings = settings();
    let bus = RabbitBus::start(settings.clone());
    assert!(bus.wait_ready(Duration::from_secs(10)).await, "connected");
    assert_eq!(bus.backend(), "rabbitmq");

    // One call at a time: one message each.
    for i in 0..3 {
        let payload = Bytes::from(format!("m{i}"));
        bus.publish(Queue::Events, vec![payload]).await.unwrap();
    }
    let mut sub = bus.subscribe(Queue::Events, 2).await.unwrap();
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    assert_eq!(&first.payload[..], b"m0");
    assert!(!first.redelivered);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "prefetch 2 holds the third"
    );
    first.ack().await.unwrap();
    second.requeue().await.unwrap();
    let mut rest = vec![next(&mut sub).await, next(&mut sub).await];
    rest.sort_by(|a, b| a.payload.cmp(&b.payload));
    assert_eq!(&rest[0].payload[..], b"m1");
    assert!(rest[0].redelivered);
    assert_eq!(&rest[1].payload[..], b"m2");
    let unacked = rest.pop().unwrap();
    rest.pop().unwrap().ack().await.unwrap();

    // The broker drops us while `m2` is unacked: it must come back, and publishing must resume.
    kill_connection(&settings.prefix);
    drop(unacked);
    bus.publish(Queue::Events, vec![Bytes::from_static(b"after")])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let d = next(&mut sub).await;
        seen.push(String::from_utf8(d.payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, ["after", "m2"]);
    assert!(bus.reconnects() >= 1);
    assert!(bus.is_ready());
    drop(sub);
    settings.delete_topology().await.unwrap();
}

/// The payloads parked on this test's dead-letter queue, waiting up to 5 s for `expected`.
async fn dead_letters(settings: &RabbitSettings, expected: usize) -> Vec<Vec<u8>> {
    let conn = lapin::Connection::connect(&settings.uri, Default::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let dead = format!("{}.dead", settings.prefix);
    let mut parked = Vec::new();
    for _ in 0..50 {
        while let Some(message) = channel
            .basic_get(dead.as_str().into(), Default::default())
            .await
            .unwrap()
        {
            parked.push(message.delivery.data);
        }
        if parked.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    parked
}

#[tokio::test]
async fn a_batch_message_is_settled_payload_by_payload() {
    let settings = settings();
    let bus = RabbitBus::start(settings.clone());
    let payloads = (0..4).map(|i| Bytes::from(format!("m{i}"))).collect();
    bus.publish(Queue::Deliveries, payloads).await.unwrap();
    let mut sub = bus.subscribe(Queue::Deliveries, 3).await.unwrap();
    let (m0, m1, m2) = (
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "the prefetch counts payloads: the fourth waits"
    );
    m0.ack().await.unwrap();
    let m3 = next(&mut sub).await;
    assert_eq!(&m3.payload[..], b"m3");
    m1.requeue().await.unwrap();
    m2.dead_letter().await.unwrap();
    m3.ack().await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!(
        &again.payload[..],
        b"m1",
        "only the requeued payload runs again"
    );
    again.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "acked payloads do not come back"
    );
    assert_eq!(dead_letters(&settings, 1).await, [b"m2".to_vec()]);
    drop(sub);
    settings.delete_topology().await.unwrap();
}

#[tokio::test]
async fn dead_lettered_messages_park_on_the_dead_queue() {
    let settings = settings();
    let bus = RabbitBus::start(settings.clone());
    bus.publish(Queue::Deliveries, vec![Bytes::from_static(b"poison")])
        .await
        .unwrap();
    let mut sub = bus.subscribe(Queue::Deliveries, 1).await.unwrap();
    next(&mut sub).await.dead_letter().await.unwrap();
    assert_eq!(dead_letters(&settings, 1).await, [b"poison".to_vec()]);
    drop(sub);
    settings.delete_topology().await.unwrap();
    // Deleting what is already gone is fine.
    settings.delete_topology().await.unwrap();
}

#[tokio::test]
async fn delayed_messages_wait_in_the_broker_and_come_back() {
    let settings = settings();
    let bus = RabbitBus::start(settings.clone());
    let mut sub = bus.subscribe(Queue::Deliveries, 4).await.unwrap();
    let sent = std::time::Instant::now();
    bus.publish_delayed(
        Queue::Deliveries,
        Bytes::from_static(b"later"),
        Duration::from_millis(1200),
    )
    .await
    .unwrap();
    bus.publish(Queue::Deliveries, vec![Bytes::from_static(b"now")])
        .await
        .unwrap();
    let first = next(&mut sub).await;
    assert_eq!(
        &first.payload[..],
        b"now",
        "a delayed message does not hold the queue"
    );
    first.ack().await.unwrap();
    let later = next(&mut sub).await;
    assert_eq!(&later.payload[..], b"later");
    let waited = sent.elapsed();
    // 1.2 s waits in the 1 s tier, comes out early, and waits again for the rest.
    assert!(
        waited >= Duration::from_millis(1180),
        "came back after {waited:?}"
    );
    later.ack().await.unwrap();
    drop(sub);
    settings.delete_topology().await.unwrap();
}
