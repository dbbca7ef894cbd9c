//! The RabbitMQ backend against the real broker on 127.0.0.1:5672 (TOCSIN_TEST_AMQP_URI).

mod common;

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
        // Several, so that every test here runs on partitioned deliveries.
        delivery_partitions: 3,
    }
}

/// Unique per test, so that concurrent tests never share (or delete) each other's queues.
fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), clock::now_epoch_millis())
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

/// Closes this test's connection from the broker side, as a broker restart would.
fn kill_connection(prefix: &str) {
    let pids = common::connections(prefix);
    assert_eq!(pids.len(), 1, "this test's connection in {pids:?}");
    common::close_connection(&pids[0]);
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
    // One partition: the four payloads (keyed by their bytes) share one message.
    let settings = RabbitSettings {
        delivery_partitions: 1,
        ..settings()
    };
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
async fn a_subscriber_leaving_mid_batch_keeps_what_it_finished_and_hands_back_the_rest() {
    // One partition: the four payloads share one message; a prefetch of two hands out half.
    let settings = RabbitSettings {
        delivery_partitions: 1,
        ..settings()
    };
    let bus = RabbitBus::start(settings.clone());
    let payloads = (0..4).map(|i| Bytes::from(format!("m{i}"))).collect();
    bus.publish(Queue::Deliveries, payloads).await.unwrap();
    let mut sub = bus.subscribe(Queue::Deliveries, 2).await.unwrap();
    let (m0, m1) = (next(&mut sub).await, next(&mut sub).await);
    // The subscriber stops (as at a SIGTERM) while the two it holds are still running, and
    // the consumer is waiting for room to hand out the third.
    drop(sub);
    tokio::time::sleep(Duration::from_millis(100)).await;
    m0.ack().await.unwrap();
    m1.ack().await.unwrap();

    let mut sub = bus.subscribe(Queue::Deliveries, 10).await.unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        again.push(String::from_utf8(d.payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    assert_eq!(
        again,
        ["m2", "m3"],
        "only what was never handed out comes back"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "the finished payloads do not come back"
    );
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

/// Waits until the bus counts `expected` dead letters.
async fn eventually_count(bus: &RabbitBus, expected: u64) {
    common::eventually(expected, || async {
        bus.dead_letter_count().await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_requeued_message_backs_off_dies_at_the_limit_is_listed_and_replays() {
    let settings = RabbitSettings {
        delivery_limit: 3,
        ..settings()
    };
    let bus = RabbitBus::start(settings.clone());
    bus.publish(Queue::Deliveries, vec![Bytes::from_static(b"poison")])
        .await
        .unwrap();
    let mut sub = bus.subscribe(Queue::Deliveries, 4).await.unwrap();
    let mut handed_out_at = Vec::new();
    for n in 0..3 {
        let delivery = next(&mut sub).await;
        assert_eq!(&delivery.payload[..], b"poison");
        assert_eq!(delivery.redelivered, n > 0);
        handed_out_at.push(std::time::Instant::now());
        delivery.requeue().await.unwrap();
    }
    let gaps: Vec<Duration> = handed_out_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(980), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1980), "{gaps:?}");
    eventually_count(&bus, 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "no fourth delivery"
    );
    let page = bus.dead_letters(0, 10).await.unwrap();
    assert_eq!(page.total, 1);
    let letter = page.letters[0].clone();
    assert_eq!(
        (
            letter.queue,
            &letter.payload[..],
            &letter.reason,
            letter.deliveries
        ),
        (
            Some(Queue::Deliveries),
            &b"poison"[..],
            &bus::Reason::DeliveryLimit,
            3
        )
    );
    assert!((clock::now_epoch_millis() - letter.dead_at_ms).abs() < 60_000);
    // Reading took nothing away, and names it the same way again.
    eventually_count(&bus, 1).await;
    let id = letter.id.clone();
    assert_eq!(bus.dead_letters(0, 10).await.unwrap().letters, [letter]);

    assert!(!bus.replay_dead_letter("0123").await.unwrap());
    assert!(bus.replay_dead_letter(&id).await.unwrap());
    let replayed = next(&mut sub).await;
    assert_eq!(
        (&replayed.payload[..], replayed.redelivered),
        (&b"poison"[..], false),
        "a fresh message"
    );
    replayed.ack().await.unwrap();
    eventually_count(&bus, 0).await;
    drop(sub);
    settings.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_batch_the_broker_dead_letters_is_read_payload_by_payload_and_replays_in_parts() {
    // With a limit of 1, the broker dead-letters a message handed back unsettled twice.
    let settings = RabbitSettings {
        delivery_limit: 1,
        ..settings()
    };
    let bus = RabbitBus::start(settings.clone());
    let payloads = (0..3).map(|i| Bytes::from(format!("m{i}"))).collect();
    bus.publish(Queue::Events, payloads).await.unwrap();
    {
        let mut sub = bus.subscribe(Queue::Events, 3).await.unwrap();
        for _ in 0..2 {
            let batch: Vec<Delivery> = vec![
                next(&mut sub).await,
                next(&mut sub).await,
                next(&mut sub).await,
            ];
            // Dropped unsettled, as by a consumer that dies: back to the broker at once.
            drop(batch);
        }
        eventually_count(&bus, 1).await;
    }
    let page = bus.dead_letters(0, 10).await.unwrap();
    assert_eq!(page.total, 3, "one message, three payloads");
    let mut listed: Vec<_> = page.letters.iter().map(|l| &l.payload[..]).collect();
    listed.sort();
    assert_eq!(listed, [&b"m0"[..], b"m1", b"m2"]);
    for letter in &page.letters {
        assert_eq!(letter.queue, Some(Queue::Events));
        assert_eq!(letter.reason, bus::Reason::DeliveryLimit);
        assert!((clock::now_epoch_millis() - letter.dead_at_ms).abs() < 60_000);
    }
    let chosen = page
        .letters
        .iter()
        .find(|l| &l.payload[..] == b"m1")
        .unwrap();
    assert!(bus.replay_dead_letter(&chosen.id).await.unwrap());
    // The other two went back to the dead letters, one message each, as they were.
    eventually_count(&bus, 2).await;
    let rest = bus.dead_letters(0, 10).await.unwrap();
    let mut rest_ids: Vec<_> = rest.letters.iter().map(|l| l.id.clone()).collect();
    let mut expected: Vec<_> = page
        .letters
        .iter()
        .filter(|l| l.id != chosen.id)
        .map(|l| l.id.clone())
        .collect();
    rest_ids.sort();
    expected.sort();
    assert_eq!(rest_ids, expected);

    let mut sub = bus.subscribe(Queue::Events, 4).await.unwrap();
    let replayed = next(&mut sub).await;
    assert_eq!(&replayed.payload[..], b"m1");
    replayed.ack().await.unwrap();
    assert_eq!(bus.replay_dead_letters().await.unwrap(), 2);
    let mut again = vec![next(&mut sub).await, next(&mut sub).await];
    again.sort_by(|a, b| a.payload.cmp(&b.payload));
    assert_eq!(&again[0].payload[..], b"m0");
    assert_eq!(&again[1].payload[..], b"m2");
    for delivery in again {
        delivery.ack().await.unwrap();
    }
    eventually_count(&bus, 0).await;
    drop(sub);
    settings.delete_topology().await.unwrap();
}
