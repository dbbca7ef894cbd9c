//! The RabbitMQ backend, through `lapin`.
//!
//! A supervisor task owns the connection: it connects (retrying with exponential backoff),
//! declares the topology, opens a publisher channel in confirm mode and shares the result as
//! the current [`Link`]; when the connection fails it withdraws the link and starts over.
//! Publishers wait a bounded time for a link, publish persistent messages and wait for every
//! confirm. Each subscription is a task that (re)opens a consumer channel with a prefetch on
//! each new link and forwards deliveries; unacked ones go back to the queue when a channel
//! dies, which is what makes a broker restart lose nothing.
//!
//! Topology (`<p>` is the configured prefix): a durable direct exchange `<p>` passes each
//! queue's messages (routing key `events` or `deliveries`) on to the headers exchange
//! `<p>.partitions`, which routes each to its partition's durable quorum queue by two headers,
//! its queue and partition: `<p>.events.0` (the router's one line), and `<p>.deliveries.<i>`
//! for each of `delivery_partitions` partitions, a job going to the partition of its ordering
//! key's hash ([`crate::ordering_key`]). Every partition queue has a *single active consumer*:
//! of the processes consuming it, the broker hands its messages to one at a time (the first
//! that subscribed; the next takes over when its channel closes), so that one key is in flight
//! in one process. Rejected or over-delivered messages dead-letter through the fanout exchange
//! `<p>.dlx` into the quorum queue `<p>.dead`.
//! Delayed messages wait in per-delay quorum queues `<p>.<queue>.delay.<ms>` with that message
//! TTL, dead-lettering (at least once) back into `<queue>` when it expires; a delay goes to the
//! longest tier that does not exceed it, and carries its due time in a header, so that a
//! message that comes out of its tier early is delayed again for the rest before any consumer
//! sees it. Its partition headers go with it, so it comes back to its own partition.
//! Configuration snapshots go through the fanout exchange `<p>.config` to one exclusive queue
//! per process and to `<p>.config.latest`, which keeps only the newest one for processes that
//! (re)connect later.
//!
//! Settling: an ack is an ack, and a delivery dropped unsettled (its consumer is stopping) is
//! nacked back to its queue at once. Anything else replaces the message: the payloads to run
//! again are published to a delay tier for [`crate::requeue_delay`], the dead ones to `<p>.dlx`
//! one by one, each with headers saying which queue, why, when and after how many deliveries
//! ([`dead_letters`]); only once those publishes are confirmed is the message acked. A message
//! carries the deliveries of its earlier copies in a header, to which the broker's own count
//! of this copy's redeliveries (`x-delivery-count`) is added, so the delivery limit holds across
//! requeues: past it, the payloads to run again go to the dead letters instead. The queues'
//! own `x-delivery-limit` still dead-letters a message whose copy keeps coming back without
//! being settled (a consumer that crashes on it).

mod dead_letters;

use crate::batch::{self, Coalescer, Ending, Enqueue, Settle};
use crate::{Bus, BusError, DeadLetterPage, Delivery, Queue, Reason, Subscription};
use async_trait::async_trait;
use backon::BackoffBuilder;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Where the broker is and how Tocsin's topology is named.
#[derive(Debug, Clone)]
pub struct RabbitSettings {
    /// `amqp://user:password@host:port/vhost`.
    pub uri: String,
    /// Prefix of every exchange and queue name, so that several installations (or tests) can
    /// share one broker.
    pub prefix: String,
    /// Deliveries after which a message that keeps failing is dead-lettered
    /// ([`crate::DEFAULT_DELIVERY_LIMIT`] unless configured).
    pub delivery_limit: u32,
    /// How long a publish waits for a connection before it fails as unavailable.
    pub publish_timeout: Duration,
    /// Partitions of the deliveries queue (at least one; `bus.delivery_partitions`). Fixed
    /// once a broker holds them: a job goes to the partition of its key's hash modulo this.
    pub delivery_partitions: u16,
}

/// Partitions of the deliveries queue unless configured otherwise: one, since each
/// partition's active consumer is whichever process subscribed first, so that more partitions
/// add no parallelism yet and split each published batch into more messages
/// (docs/src/scaling-out.md).
pub const DEFAULT_DELIVERY_PARTITIONS: u16 = 1;

/// How long a batch of publishes waits for more under load: the broker's work is per message,
/// so larger messages leave it more of the machine (docs/src/performance.md).
const PUBLISH_LINGER: Duration = Duration::from_millis(1);

/// The delays a message can wait for in one go, in milliseconds.
pub const DELAY_TIERS_MS: [u64; 7] = [100, 1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000];

impl RabbitSettings {
    /// Partitions of `queue`: the events queue has one.
    pub fn partitions(&self, queue: Queue) -> u16 {
        match queue {
            Queue::Events => 1,
            Queue::Deliveries => self.delivery_partitions.max(1),
        }
    }

    /// The quorum queue of `partition` of `queue`.
    pub fn queue_name(&self, queue: Queue, partition: u16) -> String {
        format!("{}.{}.{partition}", self.prefix, queue.as_str())
    }

    /// The partition a payload of `queue` whose ordering key hashes to `key` goes to.
    pub fn partition_of(&self, queue: Queue, key: u64) -> u16 {
        (key % u64::from(self.partitions(queue))) as u16
    }

    /// The headers exchange that routes each message to its partition.
    fn partitions_exchange(&self) -> String {
        format!("{}.partitions", self.prefix)
    }

    /// The quorum queue where dead letters wait.
    pub fn dead_letter_queue_name(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Every queue and exchange this topology declares (for tools and tests that remove it).
    pub fn topology(&self) -> (Vec<String>, Vec<String>) {
        let mut queues = vec![
            self.dead_letter_queue_name(),
            format!("{}.config.latest", self.prefix),
        ];
        for queue in Queue::ALL {
            queues.extend((0..self.partitions(queue)).map(|p| self.queue_name(queue, p)));
            queues.extend(DELAY_TIERS_MS.map(|tier| self.delay_queue_name(queue, tier)));
        }
        let exchanges = ["", ".dlx", ".config", ".partitions"]
            .map(|suffix| format!("{}{suffix}", self.prefix))
            .to_vec();
        (queues, exchanges)
    }

    /// Deletes every queue and exchange of this topology, messages included: for tests and
    /// for removing an installation. Deleting what is already gone is fine.
    pub async fn delete_topology(&self) -> Result<(), lapin::Error> {
        let connection = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let (queues, exchanges) = self.topology();
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await?;
        }
        for exchange in exchanges {
            channel
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await?;
        }
        connection.close(200, "topology deleted".into()).await
    }

    /// The delay queue of `queue` for `tier_ms`.
    pub fn delay_queue_name(&self, queue: Queue, tier_ms: u64) -> String {
        format!("{}.{}.delay.{tier_ms}", self.prefix, queue.as_str())
    }
}

/// The tier a delay waits in: the longest that does not exceed it (the shortest for less).
fn delay_tier(delay: Duration) -> u64 {
    let wanted = delay.as_millis() as u64;
    DELAY_TIERS_MS
        .iter()
        .copied()
        .rev()
        .find(|&tier| tier <= wanted)
        .unwrap_or(DELAY_TIERS_MS[0])
}

/// A live connection with its topology declared.
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
    /// This process's queue of configuration updates, on this connection.
    config_updates: String,
    /// Set on each new link: the next `config_updates` call must catch up from the latest.
    catch_up: Arc<std::sync::atomic::AtomicBool>,
}

pub struct RabbitBus {
    publisher: Arc<Publisher>,
    coalescer: Coalescer,
    reconnects: Arc<AtomicU64>,
    /// One read of the dead letters at a time: a read holds what it took until it ends.
    dead_letter_reads: tokio::sync::Mutex<()>,
    supervisor: tokio::task::JoinHandle<()>,
}

/// The broker settings and the current link: what every publish (and the bus itself) works
/// from. Publishes whole messages on whatever link is current.
struct Publisher {
    settings: Arc<RabbitSettings>,
    link: watch::Receiver<Option<Link>>,
}

impl RabbitBus {
    /// Starts the connection supervisor. Returns at once: the bus is not ready until the first
    /// connection is up, and publishes wait for it up to `publish_timeout`.
    pub fn start(settings: RabbitSettings) -> Self {
        let settings = Arc::new(settings);
        let (publish_link, link) = watch::channel(None);
        let reconnects = Arc::new(AtomicU64::new(0));
        let supervisor = tokio::spawn(supervise(
            Arc::clone(&settings),
            publish_link,
            Arc::clone(&reconnects),
        ));
        let publisher = Arc::new(Publisher { settings, link });
        let coalescer = Coalescer::start(publisher.clone(), PUBLISH_LINGER);
        RabbitBus {
            publisher,
            coalescer,
            reconnects,
            dead_letter_reads: tokio::sync::Mutex::new(()),
            supervisor,
        }
    }

    /// Messages ready in the queues `names`, by passive declares on a channel of their own
    /// (a failed one closes its channel).
    async fn message_count(&self, names: &[String]) -> Result<u64, BusError> {
        let channel = self.publisher.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut count = 0;
        for name in names {
            let declared = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .map_err(unavailable)?;
            count += u64::from(declared.message_count());
        }
        let _ = channel.close(200, "".into()).await;
        Ok(count)
    }

    /// Waits until connected, for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        current_link(&mut self.publisher.link.clone(), timeout)
            .await
            .is_some()
    }
}

impl Drop for RabbitBus {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

async fn current_link(link: &mut watch::Receiver<Option<Link>>, timeout: Duration) -> Option<Link> {
    let waited = tokio::time::timeout(timeout, link.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(link)) => link.clone(),
        _ => None,
    }
}

async fn supervise(
    settings: Arc<RabbitSettings>,
    publish_link: watch::Sender<Option<Link>>,
    reconnects: Arc<AtomicU64>,
) {
    // 100 ms doubling to 5 s, with jitter, for as long as it takes.
    let schedule = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let mut backoff = schedule.build();
    let mut connected_before = false;
    loop {
        match connect(&settings).await {
            Ok(link) => {
                backoff = schedule.build();
                if connected_before {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                tracing::info!(prefix = %settings.prefix, "connected to RabbitMQ, topology declared");
                let connection = Arc::clone(&link.connection);
                publish_link.send_replace(Some(link));
                wait_until_lost(&connection).await;
                publish_link.send_replace(None);
                tracing::warn!("lost the RabbitMQ connection; reconnecting");
            }
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot connect to RabbitMQ");
                tokio::time::sleep(delay).await;
            }
        }
        if publish_link.is_closed() {
            return;
        }
    }
}

async fn wait_until_lost(connection: &Connection) {
    let mut events = Box::pin(connection.events_listener());
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(lapin::Event::Error(e)) => {
                    tracing::warn!(error = %e, "RabbitMQ connection error");
                    return;
                }
                None => return,
                Some(_) => {}
            },
            _ = check.tick() => if !connection.status().connected() {
                return;
            },
        }
    }
}

async fn connect(settings: &RabbitSettings) -> Result<Link, lapin::Error> {
    let connection = Connection::connect(
        &settings.uri,
        ConnectionProperties::default()
            .with_connection_name(format!("tocsin {}", settings.prefix).into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    declare_topology(&channel, settings).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let updates = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            updates.name().clone(),
            format!("{}.config", settings.prefix).as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Link {
        connection: Arc::new(connection),
        publisher: channel,
        config_updates: updates.name().to_string(),
        catch_up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
    })
}

async fn declare_topology(
    channel: &Channel,
    settings: &RabbitSettings,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let exchange = settings.prefix.as_str();
    let dead_letter_exchange = format!("{exchange}.dlx");
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let quorum = |dead_letter: bool| {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        if dead_letter {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(dead_letter_exchange.as_str())),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
            );
        }
        args
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = settings.dead_letter_queue_name();
    channel
        .queue_declare(dead.as_str().into(), durable_queue, quorum(false))
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let config_exchange = format!("{exchange}.config");
    channel
        .exchange_declare(
            config_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let partitions = settings.partitions_exchange();
    channel
        .exchange_declare(
            partitions.as_str().into(),
            ExchangeKind::Headers,
            durable,
            FieldTable::default(),
        )
        .await?;
    let mut keep_one = FieldTable::default();
    keep_one.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    let latest = format!("{config_exchange}.latest");
    channel
        .queue_declare(latest.as_str().into(), durable_queue, keep_one)
        .await?;
    channel
        .queue_bind(
            latest.as_str().into(),
            config_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for queue in Queue::ALL {
        for tier in DELAY_TIERS_MS {
            let mut args = quorum(false);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(tier as i64));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(exchange)),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(queue.as_str())),
            );
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString(LongString::from("at-least-once")),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString(LongString::from("reject-publish")),
            );
            let name = settings.delay_queue_name(queue, tier);
            channel
                .queue_declare(name.as_str().into(), durable_queue, args)
                .await?;
        }
        channel
            .exchange_bind(
                partitions.as_str().into(),
                exchange.into(),
                queue.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for partition in 0..settings.partitions(queue) {
            let mut args = quorum(true);
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            let name = settings.queue_name(queue, partition);
            channel
                .queue_declare(name.as_str().into(), durable_queue, args)
                .await?;
            let mut binding = route_headers(queue, partition);
            binding.insert(
                "x-match".into(),
                AMQPValue::LongString(LongString::from("all")),
            );
            channel
                .queue_bind(
                    name.as_str().into(),
                    partitions.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    binding,
                )
                .await?;
        }
    }
    Ok(())
}

/// The headers that route a message to `partition` of `queue` (and bind the partition).
fn route_headers(queue: Queue, partition: u16) -> FieldTable {
    let mut headers = FieldTable::default();
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    headers.insert(ROUTE_QUEUE_HEADER.into(), text(queue.as_str()));
    headers.insert(ROUTE_PARTITION_HEADER.into(), text(&partition.to_string()));
    headers
}

/// Persistent messages: what every publish sends.
fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// The content type of `message`: a lone JSON payload, or a batch of them.
fn content_type(message: &[u8]) -> &'static str {
    if batch::is_framed(message) {
        "application/vnd.tocsin.batch"
    } else {
        "application/json"
    }
}

/// The header a delayed message carries: when it is due, in ms since the epoch.
const DUE_HEADER: &str = "x-tocsin-due-ms";
/// The headers that route a message to its partition: its queue, and the partition's number
/// (not `x-…`: a headers exchange does not match on those).
const ROUTE_QUEUE_HEADER: &str = "tocsin-queue";
const ROUTE_PARTITION_HEADER: &str = "tocsin-partition";
/// The header of a requeued message (and a dead letter): deliveries of its earlier copies.
const DELIVERIES_HEADER: &str = "x-tocsin-deliveries";

/// A header's value as a number, whichever integer type the broker or a client used.
fn integer(value: &AMQPValue) -> Option<i64> {
    match *value {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        AMQPValue::Timestamp(n) => i64::try_from(n).ok(),
        _ => None,
    }
}

/// The header `name` of `properties`.
fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// Times a consumed message has been handed out, this time included: its earlier copies'
/// deliveries and this copy's own (the broker counts redeliveries in `x-delivery-count`).
fn deliveries(properties: &BasicProperties) -> u32 {
    let count = |name| header(properties, name).and_then(integer).unwrap_or(0);
    let total = count(DELIVERIES_HEADER) + count("x-delivery-count") + 1;
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// How long until a delayed message is due, if it came out of its delay tier early.
fn still_early(properties: &BasicProperties) -> Option<Duration> {
    let due = integer(header(properties, DUE_HEADER)?)?;
    let wait = due - clock::now_epoch_millis();
    // A few milliseconds early is on time: clocks and timers are not that precise.
    (wait > 20).then(|| Duration::from_millis(wait as u64))
}

/// Publishes `payloads` on `link` and waits for every confirm.
async fn publish_on(
    link: &Link,
    exchange: &str,
    routing_key: &str,
    payloads: &[Bytes],
    properties: &BasicProperties,
) -> Result<(), BusError> {
    // Publish everything first and then wait for the confirms: they are pipelined.
    let mut confirms = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let confirm = link
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties
                    .clone()
                    .with_content_type(content_type(payload).into()),
            )
            .await
            .map_err(unavailable)?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match confirm.await.map_err(unavailable)? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(returned)) => {
                return Err(BusError::Refused(format!(
                    "unroutable: {}",
                    returned.reply_text
                )))
            }
            Confirmation::Nack(_) => return Err(BusError::Refused("nacked by the broker".into())),
            Confirmation::NotRequested => {
                return Err(BusError::Refused("publisher confirms are off".into()))
            }
        }
    }
    Ok(())
}

fn unavailable(e: lapin::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl Publisher {
    /// The current link, if connected.
    fn link(&self) -> Result<Link, BusError> {
        let link = self.link.borrow().clone();
        link.ok_or_else(|| BusError::Unavailable("not connected to RabbitMQ".into()))
    }

    /// A channel of its own on the current link, for reads that may fail or hold messages.
    async fn channel(&self) -> Result<Channel, BusError> {
        self.link()?
            .connection
            .create_channel()
            .await
            .map_err(unavailable)
    }

    /// Publishes `message` to wait `delay` before it reaches `partition` of `queue`, counting
    /// `deliveries` of its earlier copies.
    async fn publish_later(
        &self,
        queue: Queue,
        partition: u16,
        message: Bytes,
        delay: Duration,
        deliveries: u32,
    ) -> Result<(), BusError> {
        let tier = self.settings.delay_queue_name(queue, delay_tier(delay));
        let mut headers = route_headers(queue, partition);
        let due = clock::now_epoch_millis() + delay.as_millis() as i64;
        headers.insert(DUE_HEADER.into(), AMQPValue::LongLongInt(due));
        if deliveries > 0 {
            headers.insert(
                DELIVERIES_HEADER.into(),
                AMQPValue::LongLongInt(deliveries.into()),
            );
        }
        let properties = persistent().with_headers(headers);
        self.publish_retrying("", &tier, &[message], &properties)
            .await
    }

    async fn publish_retrying(
        &self,
        exchange: &str,
        routing_key: &str,
        payloads: &[Bytes],
        properties: &BasicProperties,
    ) -> Result<(), BusError> {
        // A connection can break under a publish before the supervisor notices; retrying on the
        // next link until the deadline turns a broker blip into latency instead of an error.
        // A retried batch may be partly duplicated, which at-least-once allows.
        let deadline = tokio::time::Instant::now() + self.settings.publish_timeout;
        let mut link_watch = self.link.clone();
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let link = current_link(&mut link_watch, remaining)
                .await
                .ok_or_else(|| BusError::Unavailable("not connected to RabbitMQ".into()))?;
            match publish_on(&link, exchange, routing_key, payloads, properties).await {
                Err(BusError::Unavailable(reason)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%reason, "publish failed on a broken link; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcome => return outcome,
            }
        }
    }
}

#[async_trait]
impl Enqueue for Publisher {
    /// One publish per partition, side by side: each keeps its messages in order.
    async fn enqueue(
        &self,
        queue: Queue,
        messages: Vec<(batch::Partition, Bytes)>,
    ) -> Result<(), BusError> {
        let mut by_partition: std::collections::BTreeMap<u16, Vec<Bytes>> = Default::default();
        for (partition, message) in messages {
            by_partition.entry(partition).or_default().push(message);
        }
        let publishes = by_partition
            .into_iter()
            .map(|(partition, messages)| async move {
                let properties = persistent().with_headers(route_headers(queue, partition));
                self.publish_retrying(
                    &self.settings.prefix,
                    queue.as_str(),
                    &messages,
                    &properties,
                )
                .await
            });
        futures::future::join_all(publishes)
            .await
            .into_iter()
            .collect()
    }
}

impl Publisher {
    /// The partition of each of `payloads`, read from it where `queue` has several.
    fn partitioned(&self, queue: Queue, payloads: Vec<Bytes>) -> Vec<(batch::Partition, Bytes)> {
        let several = self.settings.partitions(queue) > 1;
        payloads
            .into_iter()
            .map(|payload| {
                let partition = if several {
                    let key = crate::ordering_key(queue, &payload);
                    self.settings.partition_of(queue, key)
                } else {
                    0
                };
                (partition, payload)
            })
            .collect()
    }
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, queue: Queue, payloads: Vec<Bytes>) -> Result<(), BusError> {
        let payloads = self.publisher.partitioned(queue, payloads);
        self.coalescer.publish(queue, payloads).await
    }

    async fn publish_keyed(
        &self,
        queue: Queue,
        payloads: Vec<(u64, Bytes)>,
    ) -> Result<(), BusError> {
        let settings = &self.publisher.settings;
        let payloads = payloads
            .into_iter()
            .map(|(key, payload)| (settings.partition_of(queue, key), payload))
            .collect();
        self.coalescer.publish(queue, payloads).await
    }

    async fn publish_delayed(
        &self,
        queue: Queue,
        payload: Bytes,
        delay: Duration,
    ) -> Result<(), BusError> {
        let mut partitioned = self.publisher.partitioned(queue, vec![payload]);
        let (partition, payload) = partitioned.pop().expect("one payload");
        self.publisher
            .publish_later(queue, partition, payload, delay, 0)
            .await
    }

    async fn broadcast_config(&self, snapshot: Bytes) -> Result<(), BusError> {
        let exchange = format!("{}.config", self.publisher.settings.prefix);
        self.publisher
            .publish_retrying(&exchange, "", &[snapshot], &persistent())
            .await
    }

    async fn config_updates(&self) -> Result<Vec<Bytes>, BusError> {
        let Some(link) = self.publisher.link.borrow().clone() else {
            return Ok(Vec::new());
        };
        let channel = &link.publisher;
        let mut updates = Vec::new();
        if link.catch_up.swap(false, Ordering::SeqCst) {
            let latest = format!("{}.config.latest", self.publisher.settings.prefix);
            // Peek: take the newest snapshot and put it back for the next process.
            if let Some(message) = channel
                .basic_get(latest.as_str().into(), BasicGetOptions::default())
                .await
                .map_err(unavailable)?
            {
                updates.push(Bytes::from(message.delivery.data.clone()));
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map_err(unavailable)?;
            }
        }
        while let Some(message) = channel
            .basic_get(
                link.config_updates.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .map_err(unavailable)?
        {
            updates.push(Bytes::from(message.delivery.data));
        }
        Ok(updates)
    }
    /// Consumes every partition of `queue`, each on a channel of its own; this process is
    /// the active consumer of those partitions that no earlier subscriber holds.
    async fn subscribe(&self, queue: Queue, prefetch: u16) -> Result<Subscription, BusError> {
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let permits = Arc::new(Semaphore::new(usize::from(prefetch.max(1))));
        for partition in 0..self.publisher.settings.partitions(queue) {
            let consumer = Consumer {
                publisher: Arc::clone(&self.publisher),
                queue,
                partition,
                queue_name: self.publisher.settings.queue_name(queue, partition),
                prefetch: prefetch.max(1),
                permits: Arc::clone(&permits),
                link: self.publisher.link.clone(),
                sender: sender.clone(),
            };
            tokio::spawn(consumer.run());
        }
        Ok(Subscription::new(receiver))
    }

    fn is_ready(&self) -> bool {
        self.publisher.link.borrow().is_some()
    }

    fn backend(&self) -> &'static str {
        "rabbitmq"
    }

    /// Messages ready in `queue`'s partitions: RabbitMQ does not count those handed out and
    /// not yet acked.
    async fn depth(&self, queue: Queue) -> Result<u64, BusError> {
        let settings = &self.publisher.settings;
        let names: Vec<String> = (0..settings.partitions(queue))
            .map(|partition| settings.queue_name(queue, partition))
            .collect();
        self.message_count(&names).await
    }

    async fn delayed_count(&self) -> Result<u64, BusError> {
        let names: Vec<String> = Queue::ALL
            .into_iter()
            .flat_map(|queue| {
                DELAY_TIERS_MS.map(|tier| self.publisher.settings.delay_queue_name(queue, tier))
            })
            .collect();
        self.message_count(&names).await
    }

    fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Messages ready in the dead-letter queue: one per payload, except a batch the broker
    /// dead-lettered whole, which counts once.
    async fn dead_letter_count(&self) -> Result<u64, BusError> {
        self.message_count(&[self.publisher.settings.dead_letter_queue_name()])
            .await
    }

    async fn dead_letters(&self, skip: usize, limit: usize) -> Result<DeadLetterPage, BusError> {
        let _one_read = self.dead_letter_reads.lock().await;
        self.read_dead_letters(skip, limit).await
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<bool, BusError> {
        let _one_read = self.dead_letter_reads.lock().await;
        self.replay(Some(id)).await.map(|replayed| replayed > 0)
    }

    async fn replay_dead_letters(&self) -> Result<u64, BusError> {
        let _one_read = self.dead_letter_reads.lock().await;
        self.replay(None).await
    }
}

struct Consumer {
    publisher: Arc<Publisher>,
    queue: Queue,
    partition: u16,
    queue_name: String,
    /// Unacked messages the broker may hand this consumer.
    prefetch: u16,
    /// One per delivery out with the subscriber: a message may hold several.
    permits: Arc<Semaphore>,
    link: watch::Receiver<Option<Link>>,
    sender: mpsc::Sender<Delivery>,
}

impl Consumer {
    async fn run(mut self) {
        loop {
            let link = tokio::select! {
                link = self.link.wait_for(Option::is_some) => match link {
                    Ok(link) => link.clone().expect("waited for a link"),
                    Err(_) => return,
                },
                _ = self.sender.closed() => return,
            };
            match self.consume(&link).await {
                Ok(Stop::SubscriberGone) => return,
                Ok(Stop::ChannelEnded) => {}
                Err(e) => tracing::warn!(error = %e, queue = %self.queue_name, "consumer failed"),
            }
            // The link may still look alive for a moment after its connection broke.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn consume(&self, link: &Link) -> Result<Stop, lapin::Error> {
        let channel = link.connection.create_channel().await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.queue_name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // The consumer stream does not always end when the connection dies; the supervisor
        // withdrawing the link is the reliable signal.
        let mut link_watch = self.link.clone();
        link_watch.mark_unchanged();
        loop {
            let delivery = tokio::select! {
                delivery = consumer.next() => delivery,
                _ = link_watch.changed() => return Ok(Stop::ChannelEnded),
                _ = self.sender.closed() => return self.stop(&channel, &consumer).await,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e),
                None => return Ok(Stop::ChannelEnded),
            };
            if let Some(wait) = still_early(&delivery.properties) {
                // The tier rounded the delay down: wait again for the rest; then this copy goes.
                let tier = self
                    .publisher
                    .settings
                    .delay_queue_name(self.queue, delay_tier(wait));
                let again = publish_on(
                    link,
                    "",
                    &tier,
                    &[Bytes::from(delivery.data)],
                    &delivery.properties,
                )
                .await;
                let settled = match again {
                    Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot delay an early message again; requeueing it");
                        delivery
                            .acker
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..Default::default()
                            })
                            .await
                    }
                };
                settled?;
                continue;
            }
            let deliveries = deliveries(&delivery.properties);
            let settler = Box::new(RabbitSettler {
                acker: delivery.acker,
                queue: self.queue,
                partition: self.partition,
                deliveries,
                publisher: Arc::clone(&self.publisher),
            });
            let handed_out = batch::hand_out(
                Bytes::from(delivery.data),
                // A requeued message comes back as a new copy, which the broker does not flag.
                delivery.redelivered || deliveries > 1,
                settler,
                &self.permits,
                &mut Vec::new(),
                &self.sender,
            )
            .await;
            if !handed_out {
                return self.stop(&channel, &consumer).await;
            }
        }
    }

    /// The subscriber is gone: stop receiving, but keep the channel open until the workers
    /// finishing what they were handed have settled it. Each delivery holds a permit until its
    /// ack or nack is sent, and acks on a closed channel are lost (the broker would hand those
    /// messages out again after a restart).
    async fn stop(
        &self,
        channel: &lapin::Channel,
        consumer: &lapin::Consumer,
    ) -> Result<Stop, lapin::Error> {
        channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await?;
        let settled = self.permits.acquire_many(u32::from(self.prefetch)).await;
        drop(settled);
        Ok(Stop::SubscriberGone)
    }
}

enum Stop {
    SubscriberGone,
    ChannelEnded,
}

struct RabbitSettler {
    acker: lapin::Acker,
    queue: Queue,
    /// Where the message came from, and where what runs again goes back to.
    partition: u16,
    /// Times the message has been handed out, this time included.
    deliveries: u32,
    publisher: Arc<Publisher>,
}

impl RabbitSettler {
    /// Hands the message back to its queue at once (the broker counts it as a delivery).
    async fn nack(&self) -> Result<(), BusError> {
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        self.acker
            .nack(requeue)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn ack(&self) -> Result<(), BusError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Publishes `again` to wait for the requeue delay (or to the dead letters, past the
    /// delivery limit) and `dead` to the dead letters.
    async fn replace(&self, again: Vec<Bytes>, dead: Vec<Bytes>) -> Result<(), BusError> {
        let deliveries = self.deliveries;
        let died = |reason| dead_letters::Death::now(self.queue, reason, deliveries);
        if deliveries >= self.publisher.settings.delivery_limit {
            self.publisher
                .publish_dead(&again, &died(Reason::DeliveryLimit))
                .await?;
        } else if !again.is_empty() {
            let delay = crate::requeue_delay(deliveries);
            self.publisher
                .publish_later(
                    self.queue,
                    self.partition,
                    batch::frame(again),
                    delay,
                    deliveries,
                )
                .await?;
        }
        self.publisher
            .publish_dead(&dead, &died(Reason::Rejected))
            .await
    }
}

#[async_trait]
impl Settle for RabbitSettler {
    async fn end(self: Box<Self>, ending: Ending) -> Result<(), BusError> {
        match ending {
            Ending::Ack => self.ack().await,
            Ending::Release => self.nack().await,
            Ending::Replace { again, dead } => match self.replace(again, dead).await {
                Ok(()) => self.ack().await,
                Err(e) => {
                    // Whole again: what was published runs twice, which at-least-once allows.
                    self.nack().await?;
                    Err(e)
                }
            },
        }
    }
}
