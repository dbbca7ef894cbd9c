//! Partitioned deliveries on the real broker (127.0.0.1:5672, TOCSIN_TEST_AMQP_URI): each job
//! goes to the partition of its key, a partition's messages go to one consumer at a time
//! (single active consumer) and to the next when that one's connection dies, and delayed and
//! requeued messages come back to their own partition.

mod common;

use bus::{Bus, Delivery, Queue, RabbitBus, RabbitSettings, Subscription};
use bytes::Bytes;
use common::{close_connection, connections, eventually};
use std::time::Duration;

const PARTITIONS: u16 = 4;

fn settings(name: &str) -> RabbitSettings {
    RabbitSettings {
        uri: std::env::var("TOCSIN_TEST_AMQP_URI")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        prefix: format!(
            "tocsin-test-{name}-{}-{}",
            std::process::id(),
            clock::now_epoch_millis()
        ),
        delivery_limit: 5,
        publish_timeout: Duration::from_secs(10),
        delivery_partitions: PARTITIONS,
    }
}

/// A delivery job of an event with `ans:sourceEventId` `key`, as the router writes it.
fn job(id: &str, key: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "event": {
                "id": id, "eventType": "Disk", "severity": "ERROR", "category": "ALERT",
                "subject": "s", "body": "b", "eventTimestamp": 1,
                "resource": {"resourceName": "db-1", "resourceType": "database"},
                "tags": {"ans:sourceEventId": key}
            },
            "acceptedAtMs": 0,
            "action": "hook"
        }))
        .unwrap(),
    )
}

/// A key whose jobs go to `partition`.
fn key_on(settings: &RabbitSettings, partition: u16) -> String {
    (0..)
        .map(|n| format!("key-{n}"))
        .find(|key| {
            settings.partition_of(Queue::Deliveries, bus::ordering_hash(key.as_bytes()))
                == partition
        })
        .unwrap()
}

/// Messages ready in each partition of the deliveries queue.
async fn per_partition(settings: &RabbitSettings) -> Vec<u64> {
    let connection = lapin::Connection::connect(&settings.uri, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut counts = Vec::new();
    for partition in 0..PARTITIONS {
        let name = settings.queue_name(Queue::Deliveries, partition);
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        counts.push(u64::from(declared.message_count()));
    }
    connection.close(200, "".into()).await.unwrap();
    counts
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

#[tokio::test]
async fn each_job_goes_to_the_partition_of_its_key_in_order() {
    let settings = settings("route");
    let bus = RabbitBus::start(settings.clone());
    assert!(bus.wait_ready(Duration::from_secs(10)).await);
    let (k0, k2) = (key_on(&settings, 0), key_on(&settings, 2));
    // Keyed by the caller (the router), and read from the payload (everyone else).
    bus.publish_keyed(
        Queue::Deliveries,
        vec![
            (bus::ordering_hash(k2.as_bytes()), job("a", &k2)),
            (bus::ordering_hash(k0.as_bytes()), job("b", &k0)),
            (bus::ordering_hash(k2.as_bytes()), job("c", &k2)),
        ],
    )
    .await
    .unwrap();
    bus.publish(Queue::Deliveries, vec![job("d", &k2)])
        .await
        .unwrap();
    // Messages: the first call's two jobs on partition 2 share one.
    eventually(vec![1, 0, 2, 0], || per_partition(&settings)).await;
    assert_eq!(
        bus.depth(Queue::Deliveries).await.unwrap(),
        3,
        "every partition counts"
    );

    let mut sub = bus.subscribe(Queue::Deliveries, 10).await.unwrap();
    let mut on_k2 = Vec::new();
    for _ in 0..4 {
        let delivery = next(&mut sub).await;
        let job: serde_json::Value = serde_json::from_slice(&delivery.payload).unwrap();
        if job["event"]["tags"]["ans:sourceEventId"] == k2.as_str() {
            on_k2.push(job["event"]["id"].as_str().unwrap().to_owned());
        }
        delivery.ack().await.unwrap();
    }
    assert_eq!(on_k2, ["a", "c", "d"], "one key's jobs in publish order");
    drop(sub);
    settings.delete_topology().await.unwrap();
}

#[tokio::test]
async fn delayed_and_requeued_jobs_come_back_to_their_partition() {
    let settings = settings("delay");
    let bus = RabbitBus::start(settings.clone());
    assert!(bus.wait_ready(Duration::from_secs(10)).await);
    let k3 = key_on(&settings, 3);
    bus.publish_delayed(
        Queue::Deliveries,
        job("later", &k3),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    eventually(1, || async { bus.delayed_count().await.unwrap() }).await;
    eventually(vec![0, 0, 0, 1], || per_partition(&settings)).await;

    // Handed back by its consumer: it waits for the requeue delay, then the same partition.
    let mut sub = bus.subscribe(Queue::Deliveries, 4).await.unwrap();
    next(&mut sub).await.requeue().await.unwrap();
    drop(sub);
    eventually(1, || async { bus.delayed_count().await.unwrap() }).await;
    eventually(vec![0, 0, 0, 1], || per_partition(&settings)).await;
    settings.delete_topology().await.unwrap();
}

#[tokio::test]
async fn one_consumer_at_a_time_per_partition_and_the_next_takes_over_when_it_dies() {
    let settings = settings("sac");
    let first = RabbitBus::start(settings.clone());
    assert!(first.wait_ready(Duration::from_secs(10)).await);
    let first_connection = connections(&settings.prefix);
    assert_eq!(first_connection.len(), 1);
    let mut first_sub = first.subscribe(Queue::Deliveries, 10).await.unwrap();
    // Its consumers are registered before the second process subscribes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = RabbitBus::start(settings.clone());
    assert!(second.wait_ready(Duration::from_secs(10)).await);
    let mut second_sub = second.subscribe(Queue::Deliveries, 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Two jobs on each partition: a broker sharing a queue's messages between its consumers
    // would hand the second subscriber one of each.
    let keys: Vec<String> = (0..PARTITIONS).map(|p| key_on(&settings, p)).collect();
    let jobs: Vec<Bytes> = (0..2)
        .flat_map(|round| keys.iter().map(move |key| (round, key)))
        .map(|(round, key)| job(&format!("{key}/{round}"), key))
        .collect();
    let published = jobs.len();
    for job in jobs {
        first.publish(Queue::Deliveries, vec![job]).await.unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..published {
        held.push(next(&mut first_sub).await);
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), second_sub.next())
            .await
            .is_err(),
        "the second subscriber gets nothing while the first is active"
    );

    // The first process's connection dies with its jobs unsettled: the second takes every
    // partition over, those jobs first.
    close_connection(&first_connection[0]);
    drop(held);
    let mut taken_over = Vec::new();
    for _ in 0..published {
        let delivery = next(&mut second_sub).await;
        assert!(delivery.redelivered, "handed over unsettled");
        let job: serde_json::Value = serde_json::from_slice(&delivery.payload).unwrap();
        taken_over.push(job["event"]["id"].as_str().unwrap().to_owned());
        delivery.ack().await.unwrap();
    }
    assert_eq!(taken_over.len(), published, "every job taken over");
    drop(first_sub);
    drop(second_sub);
    settings.delete_topology().await.unwrap();
}
