//! The embedded backend: a durable queue in a SQLite file, so that Tocsin runs with nothing
//! else installed.
//!
//! A message is a row; publishing inserts rows through the database's group-commit writer, so
//! concurrent producers share one fsync. Each queue has one dispatcher task that reads rows
//! past its cursor in id order, hands them out, and wakes when a publish commits. Acking
//! deletes the row; requeueing puts the row back in front of the cursor; a crash simply leaves
//! the rows there, and the next start hands them all out again, flagged `redelivered`.
//! One process owns a data file (a lock file enforces it), so the in-memory cursor is the only
//! record of what is in flight.
//!
//! Delayed messages wait in their own table with a due time; a scheduler task moves those that
//! are due into the queue in one transaction and sleeps until the next one is, so a restart
//! loses none and nothing holds them in memory.

use crate::batch::{self, Coalescer, Enqueue, Settle, Settlement};
use crate::{Bus, BusError, Delivery, Queue, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use storage::{CommitObserver, Database, Durability};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload BLOB NOT NULL,
        enqueued_at_ms INTEGER NOT NULL
    );
    CREATE INDEX messages_by_queue ON messages (queue, id);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        payload BLOB NOT NULL,
        enqueued_at_ms INTEGER NOT NULL,
        dead_at_ms INTEGER NOT NULL
    );
",
    "
    CREATE TABLE delayed (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload BLOB NOT NULL,
        due_at_ms INTEGER NOT NULL
    );
    CREATE INDEX delayed_by_due ON delayed (due_at_ms);
",
];

/// How long the writer waits for company before a commit, while writes come in groups.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Rows read per dispatcher round trip, at most.
const READ_BATCH: usize = 256;

pub struct EmbeddedBus {
    db: Database,
    queues: Arc<HashMap<Queue, Arc<QueueState>>>,
    coalescer: Coalescer,
    /// Rows with an id up to this one existed at start, so may have been handed out before.
    last_id_at_start: i64,
    /// Wakes the scheduler when a delayed message may be due sooner than it planned.
    delayed: Arc<Notify>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl Drop for EmbeddedBus {
    fn drop(&mut self) {
        self.scheduler.abort();
    }
}

#[derive(Default)]
struct QueueState {
    published: Notify,
    /// Deliveries given back by their consumer, served before the cursor moves on.
    requeued: Mutex<VecDeque<(i64, Bytes)>>,
    subscribed: AtomicBool,
}

impl EmbeddedBus {
    pub fn open(path: &Path, observer: Option<CommitObserver>) -> Result<Self, BusError> {
        // Each commit costs an fsync: under load, lingering a moment for company halves the
        // commits (README, Performance), and a lone writer is not held up.
        let db = Database::open_lingering(path, MIGRATIONS, Durability::Full, observer, LINGER)?;
        let last_id_at_start = {
            let conn = rusqlite::Connection::open(path).map_err(storage::StorageError::from)?;
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| {
                r.get(0)
            })
            .map_err(storage::StorageError::from)?
        };
        let queues: Arc<HashMap<_, _>> = Arc::new(
            Queue::ALL
                .into_iter()
                .map(|q| (q, Arc::new(QueueState::default())))
                .collect(),
        );
        let delayed = Arc::new(Notify::new());
        let scheduler = tokio::spawn(promote_due(
            db.clone(),
            Arc::clone(&queues),
            Arc::clone(&delayed),
        ));
        let rows = Arc::new(Rows {
            db: db.clone(),
            queues: Arc::clone(&queues),
        });
        // The writer lingers already.
        let coalescer = Coalescer::start(rows, std::time::Duration::ZERO);
        Ok(EmbeddedBus {
            db,
            queues,
            coalescer,
            last_id_at_start,
            delayed,
            scheduler,
        })
    }

    /// Messages waiting for their delay to pass, on every queue.
    pub async fn delayed_count(&self) -> Result<u64, BusError> {
        Ok(self
            .db
            .read(|c| c.query_row("SELECT COUNT(*) FROM delayed", [], |r| r.get(0)))
            .await?)
    }

    /// Messages waiting in `queue` (handed out but unacked ones included).
    pub async fn depth(&self, queue: Queue) -> Result<u64, BusError> {
        let name = queue.as_str();
        Ok(self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM messages WHERE queue = ?1",
                    [name],
                    |r| r.get(0),
                )
            })
            .await?)
    }
}

/// Where the coalescer puts messages: rows of the queue file.
struct Rows {
    db: Database,
    queues: Arc<HashMap<Queue, Arc<QueueState>>>,
}

#[async_trait]
impl Enqueue for Rows {
    async fn enqueue(&self, queue: Queue, messages: Vec<Bytes>) -> Result<(), BusError> {
        self.db
            .write(move |c| insert_messages(c, queue.as_str(), &messages))
            .await?;
        self.queues[&queue].published.notify_one();
        Ok(())
    }
}

fn insert_messages(
    c: &rusqlite::Connection,
    queue: &str,
    messages: &[Bytes],
) -> rusqlite::Result<()> {
    insert_each(
        c,
        "INSERT INTO messages (queue, payload, enqueued_at_ms) VALUES (?1, ?2, ?3)",
        queue,
        messages,
    )
}

fn insert_dead_letters(
    c: &rusqlite::Connection,
    queue: &str,
    payloads: &[Bytes],
) -> rusqlite::Result<()> {
    insert_each(
        c,
        "INSERT INTO dead_letters (queue, payload, enqueued_at_ms, dead_at_ms) \
         VALUES (?1, ?2, ?3, ?3)",
        queue,
        payloads,
    )
}

/// Runs `insert` (parameters: queue, payload, now in ms) once per payload.
fn insert_each(
    c: &rusqlite::Connection,
    insert: &str,
    queue: &str,
    payloads: &[Bytes],
) -> rusqlite::Result<()> {
    let now = model::now_epoch_millis();
    let mut insert = c.prepare_cached(insert)?;
    for payload in payloads {
        insert.execute((queue, payload.as_ref(), now))?;
    }
    Ok(())
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, queue: Queue, payloads: Vec<Bytes>) -> Result<(), BusError> {
        self.coalescer.publish(queue, payloads).await
    }

    async fn publish_delayed(
        &self,
        queue: Queue,
        payload: Bytes,
        delay: std::time::Duration,
    ) -> Result<(), BusError> {
        let name = queue.as_str();
        let due = model::now_epoch_millis() + delay.as_millis() as i64;
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO delayed (queue, payload, due_at_ms) VALUES (?1, ?2, ?3)",
                    (name, payload.as_ref(), due),
                )
            })
            .await?;
        self.delayed.notify_one();
        Ok(())
    }

    async fn subscribe(&self, queue: Queue, prefetch: u16) -> Result<Subscription, BusError> {
        let state = Arc::clone(&self.queues[&queue]);
        if state.subscribed.swap(true, Ordering::SeqCst) {
            return Err(BusError::AlreadySubscribed(queue.as_str()));
        }
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let dispatcher = Dispatcher {
            db: self.db.clone(),
            queue,
            state,
            prefetch: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            last_id_at_start: self.last_id_at_start,
            sender,
        };
        tokio::spawn(dispatcher.run());
        Ok(Subscription::new(receiver))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// Moves delayed messages into their queue when they are due, forever.
async fn promote_due(
    db: Database,
    queues: Arc<HashMap<Queue, Arc<QueueState>>>,
    delayed: Arc<Notify>,
) {
    loop {
        let now = model::now_epoch_millis();
        let promoted = db
            .write(move |c| {
                let due: Vec<String> = c
                    .prepare_cached("SELECT DISTINCT queue FROM delayed WHERE due_at_ms <= ?1")?
                    .query_map([now], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if !due.is_empty() {
                    c.execute(
                        "INSERT INTO messages (queue, payload, enqueued_at_ms) \
                         SELECT queue, payload, ?1 FROM delayed WHERE due_at_ms <= ?1 ORDER BY id",
                        [now],
                    )?;
                    c.execute("DELETE FROM delayed WHERE due_at_ms <= ?1", [now])?;
                }
                let next: Option<i64> =
                    c.query_row("SELECT MIN(due_at_ms) FROM delayed", [], |r| r.get(0))?;
                Ok((due, next))
            })
            .await;
        let wait = match promoted {
            Ok((due, next)) => {
                for (queue, state) in queues.iter() {
                    if due.iter().any(|name| name == queue.as_str()) {
                        state.published.notify_one();
                    }
                }
                next.map_or(60_000, |at| (at - now).clamp(1, 60_000))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot move due delayed messages");
                1_000
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(wait as u64)) => {}
            _ = delayed.notified() => {}
        }
    }
}

struct Dispatcher {
    db: Database,
    queue: Queue,
    state: Arc<QueueState>,
    /// One permit per delivery out with the consumer: that is what bounds the prefetch.
    prefetch: Arc<Semaphore>,
    last_id_at_start: i64,
    sender: mpsc::Sender<Delivery>,
}

impl Dispatcher {
    async fn run(self) {
        let mut cursor = 0_i64;
        loop {
            let Some(mut permits) = self.take_permits().await else {
                return;
            };
            let mut batch: Vec<(i64, Bytes, bool)> = {
                let mut requeued = self.state.requeued.lock().expect("requeue list poisoned");
                let take = permits.len().min(requeued.len());
                requeued
                    .drain(..take)
                    .map(|(id, p)| (id, p, true))
                    .collect()
            };
            if batch.len() < permits.len() {
                match self.read_after(cursor, permits.len() - batch.len()).await {
                    Ok(rows) => {
                        if let Some((last, _)) = rows.last() {
                            cursor = *last;
                        }
                        let since_start = self.last_id_at_start;
                        batch.extend(rows.into_iter().map(|(id, p)| (id, p, id <= since_start)));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, queue = self.queue.as_str(), "cannot read the embedded queue");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
            if batch.is_empty() {
                drop(permits);
                tokio::select! {
                    _ = self.state.published.notified() => continue,
                    _ = self.sender.closed() => return,
                }
            }
            for (id, message, redelivered) in batch {
                let settler = Box::new(EmbeddedSettler {
                    id,
                    message: message.clone(),
                    db: self.db.clone(),
                    queue: self.queue,
                    state: Arc::clone(&self.state),
                    settled: false,
                });
                let handed_out = batch::hand_out(
                    message,
                    redelivered,
                    settler,
                    &self.prefetch,
                    &mut permits,
                    &self.sender,
                )
                .await;
                if !handed_out {
                    return;
                }
            }
        }
    }

    /// Waits for room for one delivery, then takes what more room there is, up to a batch:
    /// as many messages are read (each holds one delivery or more).
    async fn take_permits(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let first = tokio::select! {
            permit = Arc::clone(&self.prefetch).acquire_owned() => permit.ok()?,
            _ = self.sender.closed() => return None,
        };
        let mut permits = vec![first];
        while permits.len() < READ_BATCH {
            match Arc::clone(&self.prefetch).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        Some(permits)
    }

    async fn read_after(&self, cursor: i64, limit: usize) -> Result<Vec<(i64, Bytes)>, BusError> {
        let name = self.queue.as_str();
        Ok(self
            .db
            .read(move |c| {
                let mut select = c.prepare_cached(
                    "SELECT id, payload FROM messages WHERE queue = ?1 AND id > ?2 \
                     ORDER BY id LIMIT ?3",
                )?;
                let rows = select.query_map((name, cursor, limit as i64), |r| {
                    Ok((r.get::<_, i64>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?)))
                })?;
                rows.collect()
            })
            .await?)
    }
}

struct EmbeddedSettler {
    id: i64,
    message: Bytes,
    db: Database,
    queue: Queue,
    state: Arc<QueueState>,
    settled: bool,
}

impl EmbeddedSettler {
    fn give_back(&self) {
        self.state
            .requeued
            .lock()
            .expect("requeue list poisoned")
            .push_back((self.id, self.message.clone()));
        self.state.published.notify_one();
    }
}

#[async_trait]
impl Settle for EmbeddedSettler {
    async fn settle(mut self: Box<Self>, settlement: Settlement) -> Result<(), BusError> {
        let (id, queue) = (self.id, self.queue.as_str());
        let result = match settlement {
            Settlement::Ack => self
                .db
                .execute("DELETE FROM messages WHERE id = ?1", [id])
                .await
                .map(drop),
            Settlement::DeadLetter => {
                let message = self.message.clone();
                self.db
                    .write(move |c| {
                        insert_dead_letters(c, queue, &batch::unframe(message))?;
                        c.execute("DELETE FROM messages WHERE id = ?1", [id])
                    })
                    .await
                    .map(drop)
            }
            Settlement::Requeue => Ok(()),
        };
        if settlement == Settlement::Requeue || result.is_err() {
            // A settlement that did not reach the file leaves the row in place; handing it out
            // again keeps at-least-once without waiting for a restart.
            self.give_back();
        }
        self.settled = true;
        Ok(result?)
    }

    async fn replace(
        mut self: Box<Self>,
        again: Vec<Bytes>,
        dead: Vec<Bytes>,
    ) -> Result<(), BusError> {
        let (id, queue) = (self.id, self.queue.as_str());
        let replaced = self
            .db
            .write(move |c| {
                if !again.is_empty() {
                    insert_messages(c, queue, &[batch::frame(again)])?;
                }
                insert_dead_letters(c, queue, &dead)?;
                c.execute("DELETE FROM messages WHERE id = ?1", [id])
            })
            .await;
        self.settled = true;
        match replaced {
            Ok(_) => {
                self.state.published.notify_one();
                Ok(())
            }
            Err(e) => {
                self.give_back();
                Err(e.into())
            }
        }
    }
}

impl Drop for EmbeddedSettler {
    fn drop(&mut self) {
        if !self.settled {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(sub: &mut Subscription) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a delivery in time")
            .expect("subscription open")
    }

    #[tokio::test]
    async fn at_least_once_across_a_reopen_with_requeue_and_prefetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        {
            let bus = EmbeddedBus::open(&path, None).unwrap();
            // One call at a time: one message each.
            for i in 0..5 {
                let payload = Bytes::from(format!("m{i}"));
                bus.publish(Queue::Events, vec![payload]).await.unwrap();
            }
            let mut sub = bus.subscribe(Queue::Events, 2).await.unwrap();
            let first = next(&mut sub).await;
            let second = next(&mut sub).await;
            assert_eq!((&first.payload[..], first.redelivered), (&b"m0"[..], false));
            // Prefetch 2: nothing more until one is settled.
            assert!(tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .is_err());
            first.ack().await.unwrap();
            second.requeue().await.unwrap();
            let again = next(&mut sub).await;
            assert_eq!((&again.payload[..], again.redelivered), (&b"m1"[..], true));
            again.ack().await.unwrap();
            let third = next(&mut sub).await;
            assert_eq!(&third.payload[..], b"m2");
            assert!(bus.subscribe(Queue::Events, 1).await.is_err());
            assert_eq!(bus.depth(Queue::Events).await.unwrap(), 3);
            // `third` is dropped unsettled and the bus goes away: as after a crash.
        }
        let bus = EmbeddedBus::open(&path, None).unwrap();
        let mut sub = bus.subscribe(Queue::Events, 10).await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = next(&mut sub).await;
            assert!(d.redelivered);
            seen.push(String::from_utf8(d.payload.to_vec()).unwrap());
            d.ack().await.unwrap();
        }
        assert_eq!(seen, ["m2", "m3", "m4"]);
        bus.publish(Queue::Events, vec![Bytes::from_static(b"new")])
            .await
            .unwrap();
        let fresh = next(&mut sub).await;
        assert_eq!(
            (&fresh.payload[..], fresh.redelivered),
            (&b"new"[..], false)
        );
        fresh.dead_letter().await.unwrap();
        assert_eq!(bus.depth(Queue::Events).await.unwrap(), 0);
        assert_eq!(bus.depth(Queue::Deliveries).await.unwrap(), 0);
    }

    async fn dead_letters(bus: &EmbeddedBus) -> Vec<String> {
        bus.db
            .read(|c| {
                c.prepare("SELECT payload FROM dead_letters ORDER BY id")?
                    .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                    .map(|p| Ok(String::from_utf8(p?).unwrap()))
                    .collect()
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn concurrent_publishes_share_messages_and_each_payload_is_settled_alone() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap());
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let bus = Arc::clone(&bus);
                tokio::spawn(async move {
                    let payload = Bytes::from(format!("m{i}"));
                    bus.publish(Queue::Deliveries, vec![payload]).await
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let messages = bus.depth(Queue::Deliveries).await.unwrap();
        assert!(messages < 50, "50 concurrent calls in {messages} messages");

        let mut sub = bus.subscribe(Queue::Deliveries, 50).await.unwrap();
        let mut all = Vec::new();
        for _ in 0..50 {
            all.push(next(&mut sub).await);
        }
        let mut seen: Vec<_> = all.iter().map(|d| d.payload.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 50, "every payload once");
        // In every message, one payload fails for good and one must run again; the rest are
        // done. Only the failed ones come back, once each.
        let mut again = Vec::new();
        let mut dead = Vec::new();
        for (i, delivery) in all.into_iter().enumerate() {
            let text = String::from_utf8(delivery.payload.to_vec()).unwrap();
            match i % 10 {
                3 => {
                    again.push(text);
                    delivery.requeue().await.unwrap();
                }
                7 => {
                    dead.push(text);
                    delivery.dead_letter().await.unwrap();
                }
                _ => delivery.ack().await.unwrap(),
            }
        }
        let mut back = Vec::new();
        for _ in 0..again.len() {
            let delivery = next(&mut sub).await;
            back.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        back.sort();
        again.sort();
        assert_eq!(back, again);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), sub.next())
                .await
                .is_err(),
            "acked payloads do not come back"
        );
        let mut buried = dead_letters(&bus).await;
        buried.sort();
        dead.sort();
        assert_eq!(buried, dead);
        assert_eq!(bus.depth(Queue::Deliveries).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_prefetch_counts_payloads_not_messages() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap();
        let payloads = (0..4).map(|i| Bytes::from(format!("m{i}"))).collect();
        bus.publish(Queue::Events, payloads).await.unwrap();
        assert_eq!(
            bus.depth(Queue::Events).await.unwrap(),
            1,
            "one call, one message"
        );
        let mut sub = bus.subscribe(Queue::Events, 3).await.unwrap();
        let first = next(&mut sub).await;
        let _second = next(&mut sub).await;
        let _third = next(&mut sub).await;
        assert!(tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err());
        first.ack().await.unwrap();
        assert_eq!(&next(&mut sub).await.payload[..], b"m3");
    }

    #[tokio::test]
    async fn delayed_messages_come_due_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        {
            let bus = EmbeddedBus::open(&path, None).unwrap();
            let long = Duration::from_millis(600);
            bus.publish_delayed(Queue::Deliveries, Bytes::from_static(b"later"), long)
                .await
                .unwrap();
            assert_eq!(bus.delayed_count().await.unwrap(), 1);
            // The bus goes away before the message is due.
        }
        let bus = EmbeddedBus::open(&path, None).unwrap();
        let started = std::time::Instant::now();
        let mut sub = bus.subscribe(Queue::Deliveries, 4).await.unwrap();
        bus.publish_delayed(
            Queue::Deliveries,
            Bytes::from_static(b"soon"),
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        bus.publish(Queue::Deliveries, vec![Bytes::from_static(b"now")])
            .await
            .unwrap();
        let order: Vec<_> = [
            next(&mut sub).await,
            next(&mut sub).await,
            next(&mut sub).await,
        ]
        .into_iter()
        .map(|d| String::from_utf8(d.payload.to_vec()).unwrap())
        .collect();
        assert_eq!(order, ["now", "soon", "later"]);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(bus.delayed_count().await.unwrap(), 0);
    }
}
