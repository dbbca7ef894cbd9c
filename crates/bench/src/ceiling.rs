//! `--mode rabbitmq-ceiling`: what the broker itself sustains on this machine, so that
//! Tocsin's figures can be read as a share of it. Publishes messages of an event's size with
//! publisher confirms (pipelined, a window in flight) into one durable quorum queue while a
//! consumer with a prefetch acks them, and reports messages/s end to end.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Instant;

const QUEUE: &str = "tocsin-bench.ceiling";
const WINDOW: usize = 1000;

pub async fn run(uri: &str, messages: usize) -> anyhow::Result<()> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let publisher = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher.queue_declare(QUEUE.into(), durable, args).await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(256, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            QUEUE.into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let payload = vec![b'x'; 700];
    let properties = BasicProperties::default().with_delivery_mode(2);
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut seen = 0;
        while seen < messages {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            delivery.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        Ok::<_, lapin::Error>(started.elapsed())
    });
    let mut confirms = std::collections::VecDeque::with_capacity(WINDOW);
    for _ in 0..messages {
        if confirms.len() == WINDOW {
            let confirm: lapin::PublisherConfirm = confirms.pop_front().expect("a full window");
            confirm.await?;
        }
        let confirm = publisher
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &payload,
                properties.clone(),
            )
            .await?;
        confirms.push_back(confirm);
    }
    for confirm in confirms {
        confirm.await?;
    }
    let published_in = started.elapsed();
    let consumed_in = consume.await??;
    publisher
        .queue_delete(QUEUE.into(), QueueDeleteOptions::default())
        .await?;
    println!("mode:          RabbitMQ ceiling: {messages} persistent 700-byte messages, confirms (window {WINDOW}), one quorum queue, prefetch 256");
    println!(
        "published/s:   {:.0}  (confirmed)",
        messages as f64 / published_in.as_secs_f64()
    );
    println!(
        "delivered/s:   {:.0}  (published, confirmed, consumed and acked)",
        messages as f64 / consumed_in.as_secs_f64()
    );
    Ok(())
}
