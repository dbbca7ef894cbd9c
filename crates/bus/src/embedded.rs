//! The embedded backend: a durable queue in a SQLite file, so that Tocsin runs with nothing
//! else installed.
//!
//! A message is a row; publishing inserts rows through the database's group-commit writer, so
//! concurrent producers share one fsync. Each queue has one dispatcher task that reads rows
//! past its cursor in id order, hands them out, and wakes when a publish commits. Acking
//! deletes the row; a crash simply leaves the rows there, and the next start hands them all out
//! again, flagged `redelivered`. One process owns a data file (a lock file enforces it), so the
//! in-memory cursor is the only record of what is in flight.
//!
//! Delayed messages wait in their own table with a due time; a scheduler task moves those that
//! are due into the queue in one transaction and sleeps until the next one is, so a restart
//! loses none and nothing holds them in memory. A requeued message goes the same way: in one
//! transaction its row leaves the queue and a delayed row takes its place, due after
//! [`crate::requeue_delay`].
//!
//! The delivery limit: each row counts its deliveries. A requeue writes the count into the
//! delayed row; a crash is counted at the next start, from the highest id each dispatcher
//! recorded as handed out (`handed_out`, written as rows are read, not waited for): every row
//! up to it still in the queue was in hand when the process died. A clean stop removes the
//! mark, so a restart counts nothing. A row requeued after its `delivery_limit`-th delivery,
//! or read with that many counted already, goes to `dead_letters` instead ([`dead_letters`]).

mod dead_letters;

use crate::batch::{self, Coalescer, Ending, Enqueue, Settle};
use crate::{Bus, BusError, DeadLetterPage, Delivery, Queue, Reason, Subscription};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    "
    -- Dead letters say why and after how many deliveries, and their ids are never reused
    -- (a replay names one). Those from before were all rejected by their consumer.
    CREATE TABLE dead_letters_counted (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload BLOB NOT NULL,
        enqueued_at_ms INTEGER NOT NULL,
        dead_at_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        deliveries INTEGER NOT NULL
    );
    INSERT INTO dead_letters_counted
        SELECT id, queue, payload, enqueued_at_ms, dead_at_ms, 'rejected', 1 FROM dead_letters;
    DROP TABLE dead_letters;
    ALTER TABLE dead_letters_counted RENAME TO dead_letters;
    ALTER TABLE messages ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE delayed ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE handed_out (
        queue TEXT PRIMARY KEY,
        up_to_id INTEGER NOT NULL
    );
",
];

/// How long the writer waits for company before a commit, while writes come in groups.
const LINGER: Duration = Duration::from_millis(1);

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
    delivery_limit: u32,
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
    requeued: Mutex<VecDeque<Row>>,
    subscribed: AtomicBool,
}

/// A message of the queue, as the dispatcher hands it out.
#[derive(Clone)]
struct Row {
    id: i64,
    message: Bytes,
    /// Times it was handed out before.
    deliveries: u32,
    redelivered: bool,
}

impl EmbeddedBus {
    /// Opens the queue file at `path` with the default delivery limit
    /// ([`crate::DEFAULT_DELIVERY_LIMIT`]).
    pub fn open(path: &Path, observer: Option<CommitObserver>) -> Result<Self, BusError> {
        // Each commit costs an fsync: under load, lingering a moment for company halves the
        // commits (docs/src/performance.md), and a lone writer is not held up.
        let db = Database::open_lingering(path, MIGRATIONS, Durability::Full, observer, LINGER)?;
        let last_id_at_start = {
            let mut conn = rusqlite::Connection::open(path).map_err(storage::StorageError::from)?;
            count_interrupted_deliveries(&mut conn).map_err(storage::StorageError::from)?;
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
        let coalescer = Coalescer::start(rows, Duration::ZERO);
        Ok(EmbeddedBus {
            db,
            queues,
            coalescer,
            last_id_at_start,
            delayed,
            delivery_limit: crate::DEFAULT_DELIVERY_LIMIT,
            scheduler,
        })
    }

    /// Dead-letters a message handed out `limit` times instead of handing it out again (at
    /// least 1). Applies to subscriptions made after it.
    pub fn with_delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.max(1);
        self
    }

    /// Wakes the dispatchers of every queue: rows were added outside a publish.
    fn wake_dispatchers(&self) {
        for state in self.queues.values() {
            state.published.notify_one();
        }
    }
}

/// Counts one delivery for every row the last run handed out and did not settle (it died with
/// them in hand), then forgets the marks: this run records its own.
fn count_interrupted_deliveries(conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    let transaction = conn.transaction()?;
    transaction.execute(
        "UPDATE messages SET deliveries = deliveries + 1 WHERE id <= \
         (SELECT up_to_id FROM handed_out WHERE handed_out.queue = messages.queue)",
        [],
    )?;
    transaction.execute("DELETE FROM handed_out", [])?;
    transaction.commit()
}

/// Where the coalescer puts messages: rows of the queue file.
struct Rows {
    db: Database,
    queues: Arc<HashMap<Queue, Arc<QueueState>>>,
}

#[async_trait]
impl Enqueue for Rows {
    /// One process, one queue: partitions play no part here.
    async fn enqueue(
        &self,
        queue: Queue,
        messages: Vec<(batch::Partition, Bytes)>,
    ) -> Result<(), BusError> {
        let messages: Vec<Bytes> = messages.into_iter().map(|(_, message)| message).collect();
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
    let now = clock::now_epoch_millis();
    let mut insert = c.prepare_cached(
        "INSERT INTO messages (queue, payload, enqueued_at_ms) VALUES (?1, ?2, ?3)",
    )?;
    for message in messages {
        insert.execute((queue, message.as_ref(), now))?;
    }
    Ok(())
}

/// Adds `payloads` of `queue` to the dead letters, each handed out `deliveries` times.
fn insert_dead_letters(
    c: &rusqlite::Connection,
    queue: &str,
    payloads: &[Bytes],
    reason: &Reason,
    deliveries: u32,
) -> rusqlite::Result<()> {
    let now = clock::now_epoch_millis();
    let mut insert = c.prepare_cached(
        "INSERT INTO dead_letters (queue, payload, enqueued_at_ms, dead_at_ms, reason, deliveries) \
         VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
    )?;
    for payload in payloads {
        insert.execute((queue, payload.as_ref(), now, reason.as_str(), deliveries))?;
    }
    Ok(())
}

fn insert_delayed(
    c: &rusqlite::Connection,
    queue: &str,
    message: &[u8],
    delay: Duration,
    deliveries: u32,
) -> rusqlite::Result<()> {
    let due = clock::now_epoch_millis() + delay.as_millis() as i64;
    c.prepare_cached(
        "INSERT INTO delayed (queue, payload, due_at_ms, deliveries) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute((queue, message, due, deliveries))
    .map(drop)
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, queue: Queue, payloads: Vec<Bytes>) -> Result<(), BusError> {
        let payloads = payloads.into_iter().map(|payload| (0, payload)).collect();
        self.coalescer.publish(queue, payloads).await
    }

    async fn publish_delayed(
        &self,
        queue: Queue,
        payload: Bytes,
        delay: Duration,
    ) -> Result<(), BusError> {
        self.db
            .write(move |c| insert_delayed(c, queue.as_str(), &payload, delay, 0))
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
            delivery_limit: self.delivery_limit,
            delayed: Arc::clone(&self.delayed),
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

    /// Messages in `queue`, handed out but unsettled ones included.
    async fn depth(&self, queue: Queue) -> Result<u64, BusError> {
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

    async fn delayed_count(&self) -> Result<u64, BusError> {
        Ok(self
            .db
            .read(|c| c.query_row("SELECT COUNT(*) FROM delayed", [], |r| r.get(0)))
            .await?)
    }

    async fn dead_letter_count(&self) -> Result<u64, BusError> {
        self.count_dead_letters().await
    }

    async fn dead_letters(&self, skip: usize, limit: usize) -> Result<DeadLetterPage, BusError> {
        self.read_dead_letters(skip, limit).await
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<bool, BusError> {
        // Ids are row ids; anything else names no dead letter.
        let Ok(id) = id.parse::<i64>() else {
            return Ok(false);
        };
        Ok(self.replay(Some(id)).await? > 0)
    }

    async fn replay_dead_letters(&self) -> Result<u64, BusError> {
        self.replay(None).await
    }
}

/// Moves delayed messages into their queue when they are due, forever.
async fn promote_due(
    db: Database,
    queues: Arc<HashMap<Queue, Arc<QueueState>>>,
    delayed: Arc<Notify>,
) {
    loop {
        let now = clock::now_epoch_millis();
        let promoted = db
            .write(move |c| {
                let due: Vec<String> = c
                    .prepare_cached("SELECT DISTINCT queue FROM delayed WHERE due_at_ms <= ?1")?
                    .query_map([now], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if !due.is_empty() {
                    c.execute(
                        "INSERT INTO messages (queue, payload, enqueued_at_ms, deliveries) \
                         SELECT queue, payload, ?1, deliveries FROM delayed \
                         WHERE due_at_ms <= ?1 ORDER BY id",
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
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
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
    delivery_limit: u32,
    delayed: Arc<Notify>,
    sender: mpsc::Sender<Delivery>,
}

impl Dispatcher {
    async fn run(self) {
        let mut cursor = 0_i64;
        let mut marking = None;
        'dispatch: loop {
            let Some(mut permits) = self.take_permits().await else {
                break;
            };
            let mut batch: Vec<Row> = {
                let mut requeued = self.state.requeued.lock().expect("requeue list poisoned");
                let take = permits.len().min(requeued.len());
                requeued.drain(..take).collect()
            };
            if batch.len() < permits.len() {
                match self.read_after(cursor, permits.len() - batch.len()).await {
                    Ok(rows) => {
                        if let Some(last) = rows.last() {
                            cursor = last.id;
                            marking = Some(self.mark_handed_out(cursor));
                        }
                        batch.extend(rows);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, queue = self.queue.as_str(), "cannot read the embedded queue");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            if batch.is_empty() {
                drop(permits);
                tokio::select! {
                    _ = self.state.published.notified() => continue,
                    _ = self.sender.closed() => break,
                }
            }
            let (spent, batch): (Vec<Row>, Vec<Row>) = batch
                .into_iter()
                .partition(|row| row.deliveries >= self.delivery_limit);
            if !spent.is_empty() {
                self.bury(spent).await;
            }
            for row in batch {
                let settler = Box::new(EmbeddedSettler {
                    row: row.clone(),
                    db: self.db.clone(),
                    queue: self.queue,
                    state: Arc::clone(&self.state),
                    delivery_limit: self.delivery_limit,
                    delayed: Arc::clone(&self.delayed),
                    settled: false,
                });
                let handed_out = batch::hand_out(
                    row.message,
                    row.redelivered,
                    settler,
                    &self.prefetch,
                    &mut permits,
                    &self.sender,
                )
                .await;
                if !handed_out {
                    break 'dispatch;
                }
            }
        }
        // The consumer is gone, and what it did not settle went back: a clean stop counts no
        // delivery at the next start.
        if let Some(marking) = marking {
            let _ = marking.await;
        }
        let cleared = self
            .db
            .execute(
                "DELETE FROM handed_out WHERE queue = ?1",
                [self.queue.as_str()],
            )
            .await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, queue = self.queue.as_str(), "cannot clear the handed-out mark; the next start counts one more delivery");
        }
    }

    /// Records, without waiting, that rows up to `id` have been handed out.
    fn mark_handed_out(&self, id: i64) -> tokio::task::JoinHandle<()> {
        let (db, queue) = (self.db.clone(), self.queue.as_str());
        tokio::spawn(async move {
            let marked = db
                .execute(
                    "INSERT INTO handed_out (queue, up_to_id) VALUES (?1, ?2) \
                     ON CONFLICT (queue) DO UPDATE SET up_to_id = MAX(up_to_id, ?2)",
                    (queue, id),
                )
                .await;
            if let Err(e) = marked {
                tracing::warn!(error = %e, queue, "cannot mark messages as handed out");
            }
        })
    }

    /// Moves rows handed out `delivery_limit` times already to the dead letters.
    async fn bury(&self, spent: Vec<Row>) {
        let queue = self.queue.as_str();
        let rows = spent.clone();
        let buried = self
            .db
            .write(move |c| {
                for row in &rows {
                    let payloads = batch::unframe(row.message.clone());
                    insert_dead_letters(
                        c,
                        queue,
                        &payloads,
                        &Reason::DeliveryLimit,
                        row.deliveries,
                    )?;
                    c.execute("DELETE FROM messages WHERE id = ?1", [row.id])?;
                }
                Ok(())
            })
            .await;
        match buried {
            Ok(()) => tracing::warn!(
                queue,
                messages = spent.len(),
                "messages over the delivery limit moved to the dead letters"
            ),
            Err(e) => {
                tracing::error!(error = %e, queue, "cannot move messages to the dead letters; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.state
                    .requeued
                    .lock()
                    .expect("requeue list poisoned")
                    .extend(spent);
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

    async fn read_after(&self, cursor: i64, limit: usize) -> Result<Vec<Row>, BusError> {
        let name = self.queue.as_str();
        let since_start = self.last_id_at_start;
        Ok(self
            .db
            .read(move |c| {
                let mut select = c.prepare_cached(
                    "SELECT id, payload, deliveries FROM messages WHERE queue = ?1 AND id > ?2 \
                     ORDER BY id LIMIT ?3",
                )?;
                let rows = select.query_map((name, cursor, limit as i64), |r| {
                    let (id, deliveries): (i64, u32) = (r.get(0)?, r.get(2)?);
                    Ok(Row {
                        id,
                        message: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                        deliveries,
                        redelivered: id <= since_start || deliveries > 0,
                    })
                })?;
                rows.collect()
            })
            .await?)
    }
}

struct EmbeddedSettler {
    row: Row,
    db: Database,
    queue: Queue,
    state: Arc<QueueState>,
    delivery_limit: u32,
    delayed: Arc<Notify>,
    settled: bool,
}

impl EmbeddedSettler {
    /// Times the message has been handed out, this time included.
    fn deliveries(&self) -> u32 {
        self.row.deliveries + 1
    }

    /// Puts the message back in line in memory (its row never left the file), after `delay`.
    fn give_back(&self, delay: Duration) {
        let mut row = self.row.clone();
        row.deliveries = self.deliveries();
        row.redelivered = true;
        let state = Arc::clone(&self.state);
        let hand_back = move || {
            state
                .requeued
                .lock()
                .expect("requeue list poisoned")
                .push_back(row);
            state.published.notify_one();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !delay.is_zero() => {
                runtime.spawn(async move {
                    tokio::time::sleep(delay).await;
                    hand_back();
                });
            }
            _ => hand_back(),
        }
    }

    /// Removes the message, putting `again` in the delayed table (or with the dead letters,
    /// past the delivery limit) and `dead` with the dead letters, in one transaction.
    async fn replace(&self, again: Vec<Bytes>, dead: Vec<Bytes>) -> Result<(), BusError> {
        let (id, queue, deliveries) = (self.row.id, self.queue.as_str(), self.deliveries());
        let spent = deliveries >= self.delivery_limit;
        let delayed = self
            .db
            .write(move |c| {
                let mut delayed = false;
                if spent {
                    insert_dead_letters(c, queue, &again, &Reason::DeliveryLimit, deliveries)?;
                } else if !again.is_empty() {
                    let delay = crate::requeue_delay(deliveries);
                    insert_delayed(c, queue, &batch::frame(again), delay, deliveries)?;
                    delayed = true;
                }
                insert_dead_letters(c, queue, &dead, &Reason::Rejected, deliveries)?;
                c.execute("DELETE FROM messages WHERE id = ?1", [id])?;
                Ok(delayed)
            })
            .await?;
        if delayed {
            self.delayed.notify_one();
        }
        Ok(())
    }
}

#[async_trait]
impl Settle for EmbeddedSettler {
    async fn end(mut self: Box<Self>, ending: Ending) -> Result<(), BusError> {
        self.settled = true;
        let result = match ending {
            Ending::Ack => self
                .db
                .execute("DELETE FROM messages WHERE id = ?1", [self.row.id])
                .await
                .map(drop)
                .map_err(BusError::from),
            Ending::Release => {
                self.give_back(Duration::ZERO);
                return Ok(());
            }
            Ending::Replace { again, dead } => self.replace(again, dead).await,
        };
        if result.is_err() {
            // A settlement that did not reach the file leaves the row in place; handing it out
            // again (not at once: the file is failing) keeps at-least-once without a restart.
            self.give_back(crate::requeue_delay(self.deliveries()));
        }
        result
    }
}

impl Drop for EmbeddedSettler {
    fn drop(&mut self) {
        if !self.settled {
            self.give_back(Duration::ZERO);
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
    async fn at_least_once_across_a_reopen_with_a_hand_back_and_prefetch() {
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
            // Dropped unsettled (its consumer is stopping): back at once, ahead of the rest.
            drop(second);
            first.ack().await.unwrap();
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

    #[tokio::test]
    async fn a_subscriber_leaving_mid_batch_keeps_what_it_finished_and_hands_back_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        {
            let bus = EmbeddedBus::open(&path, None).unwrap();
            // One call: the four payloads share one message; a prefetch of two hands out half.
            let payloads = (0..4).map(|i| Bytes::from(format!("m{i}"))).collect();
            bus.publish(Queue::Events, payloads).await.unwrap();
            let mut sub = bus.subscribe(Queue::Events, 2).await.unwrap();
            let (m0, m1) = (next(&mut sub).await, next(&mut sub).await);
            // The subscriber stops (as at a SIGTERM) while the two it holds still run.
            drop(sub);
            tokio::time::sleep(Duration::from_millis(100)).await;
            m0.ack().await.unwrap();
            m1.ack().await.unwrap();
        }
        let bus = EmbeddedBus::open(&path, None).unwrap();
        let mut sub = bus.subscribe(Queue::Events, 10).await.unwrap();
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

    #[tokio::test]
    async fn a_requeued_message_waits_longer_each_time_then_dies_at_the_limit_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("queue.db"), None)
            .unwrap()
            .with_delivery_limit(3);
        bus.publish(Queue::Deliveries, vec![Bytes::from_static(b"poison")])
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::Deliveries, 4).await.unwrap();
        let mut handed_out_at = Vec::new();
        for _ in 0..3 {
            let delivery = next(&mut sub).await;
            assert_eq!(&delivery.payload[..], b"poison");
            handed_out_at.push(std::time::Instant::now());
            delivery.requeue().await.unwrap();
        }
        let gaps: Vec<Duration> = handed_out_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_millis(990), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(1990), "{gaps:?}");
        // The third requeue was the limit: no fourth delivery, a dead letter instead.
        assert!(
            tokio::time::timeout(Duration::from_millis(4500), sub.next())
                .await
                .is_err()
        );
        assert_eq!(bus.dead_letter_count().await.unwrap(), 1);
        assert_eq!(bus.delayed_count().await.unwrap(), 0);
        let page = bus.dead_letters(0, 10).await.unwrap();
        assert_eq!(page.total, 1);
        let letter = &page.letters[0];
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
                &Reason::DeliveryLimit,
                3
            )
        );
        assert!(!bus.replay_dead_letter("not-an-id").await.unwrap());
        assert!(bus.replay_dead_letter(&letter.id).await.unwrap());
        assert!(!bus.replay_dead_letter(&letter.id).await.unwrap(), "once");
        let replayed = next(&mut sub).await;
        assert_eq!(
            (&replayed.payload[..], replayed.redelivered),
            (&b"poison"[..], false),
            "a fresh message"
        );
        replayed.ack().await.unwrap();
        assert_eq!(bus.dead_letter_count().await.unwrap(), 0);
        assert_eq!(bus.depth(Queue::Deliveries).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn dead_letters_list_newest_first_and_replay_all_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap();
        // One call, one batch message: its payloads die one by one.
        let payloads = (0..3).map(|i| Bytes::from(format!("m{i}"))).collect();
        bus.publish(Queue::Events, payloads).await.unwrap();
        let mut sub = bus.subscribe(Queue::Events, 3).await.unwrap();
        for _ in 0..3 {
            next(&mut sub).await.dead_letter().await.unwrap();
        }
        let page = bus.dead_letters(1, 5).await.unwrap();
        assert_eq!(page.total, 3);
        let listed: Vec<_> = page.letters.iter().map(|l| &l.payload[..]).collect();
        assert_eq!(
            listed,
            [&b"m1"[..], b"m0"],
            "newest first, after one skipped"
        );
        assert!(page.letters.iter().all(|l| l.reason == Reason::Rejected));
        assert_eq!(bus.replay_dead_letters().await.unwrap(), 3);
        let mut again: Vec<_> = Vec::new();
        for _ in 0..3 {
            let delivery = next(&mut sub).await;
            again.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
        assert_eq!(again, ["m0", "m1", "m2"], "back in the order they came");
        assert_eq!(bus.dead_letter_count().await.unwrap(), 0);
    }

    fn marks(path: &Path) -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("SELECT COUNT(*) FROM handed_out", [], |r| r.get(0))
            .unwrap()
    }

    /// Runs `phase` on a runtime of its own, then drops the runtime: tasks still running stop
    /// where they are, as in a process that dies.
    fn in_a_process<T>(phase: impl std::future::Future<Output = T>) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(phase)
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_message_in_hand_at_a_crash_counts_a_delivery_and_a_clean_stop_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let limited = || {
            EmbeddedBus::open(&path, None)
                .unwrap()
                .with_delivery_limit(2)
        };
        in_a_process(async {
            let bus = limited();
            bus.publish(Queue::Events, vec![Bytes::from_static(b"crashy")])
                .await
                .unwrap();
            let mut sub = bus.subscribe(Queue::Events, 1).await.unwrap();
            let delivery = next(&mut sub).await;
            wait_until("the hand-out is marked", || marks(&path) == 1).await;
            // A clean stop: the consumer lets go, the dispatcher clears its mark.
            drop((delivery, sub));
            wait_until("the mark is cleared", || marks(&path) == 0).await;
        });
        in_a_process(async {
            let bus = limited();
            let mut sub = bus.subscribe(Queue::Events, 1).await.unwrap();
            let delivery = next(&mut sub).await;
            assert!(delivery.redelivered);
            wait_until("the hand-out is marked", || marks(&path) == 1).await;
            // The process dies with the delivery in hand.
            std::mem::forget(delivery);
        });
        in_a_process(async {
            let bus = limited();
            let mut sub = bus.subscribe(Queue::Events, 1).await.unwrap();
            // The crash was the second delivery: a requeue now is past the limit of 2.
            next(&mut sub).await.requeue().await.unwrap();
            let page = bus.dead_letters(0, 10).await.unwrap();
            assert_eq!(page.total, 1);
            assert_eq!(
                (&page.letters[0].reason, page.letters[0].deliveries),
                (&Reason::DeliveryLimit, 2)
            );
            assert_eq!(bus.depth(Queue::Events).await.unwrap(), 0);
        });
    }
}
