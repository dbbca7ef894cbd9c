//! What the metrics read from RabbitMQ: queue depth and delayed messages, by passive declares
//! against the real broker on 127.0.0.1:5672 (TOCSIN_TEST_AMQP_URI).

mod common;

use bus::{Bus, Queue, RabbitBus, RabbitSettings};
use bytes::Bytes;
use common::eventually;
use std::time::Duration;

fn settings() -> RabbitSettings {
    RabbitSettings {
        uri: std::env::var("TOCSIN_TEST_AMQP_URI")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        prefix: format!(
            "tocsin-test-depth-{}-{}",
            std::process::id(),
            clock::now_epoch_millis()
        ),
        delivery_limit: 5,
        publish_timeout: Duration::from_secs(10),
        // Several, so that every test here runs on partitioned deliveries.
        delivery_partitions: 3,
    }
}

#[tokio::test]
async fn depth_and_delayed_count_follow_the_queues() {
    let settings = settings();
    let bus = RabbitBus::start(settings.clone());
    assert!(bus.wait_ready(Duration::from_secs(10)).await);

    let three = (0..3).map(|i| Bytes::from(format!("m{i}"))).collect();
    bus.publish(Queue::Events, three).await.unwrap();
    bus.publish_delayed(
        Queue::Deliveries,
        Bytes::from_static(b"later"),
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    // Depth counts messages, and one call's payloads travel as one.
    eventually(1, || async { bus.depth(Queue::Events).await.unwrap() }).await;
    assert_eq!(bus.depth(Queue::Deliveries).await.unwrap(), 0);
    eventually(1, || async { bus.delayed_count().await.unwrap() }).await;

    // Consumed and acked: gone from the count.
    let mut events = bus.subscribe(Queue::Events, 10).await.unwrap();
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        delivery.ack().await.unwrap();
    }
    eventually(0, || async { bus.depth(Queue::Events).await.unwrap() }).await;

    drop(events);
    drop(bus);
    settings.delete_topology().await.unwrap();
}
