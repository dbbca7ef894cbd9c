//! Tickets: a job's hold on the queue delivery that brought it.
//!
//! The router sends an event once for all the actions it matched (`DeliveryJob::also`), and
//! the worker runs one job per action. Each job settles its own ticket; the delivery is settled
//! with the last one: acked when every job is done, handed back whole when any job must run
//! again. The others then run twice, which at-least-once allows: handing back is what the
//! worker does when it cannot record or queue something, not a destination's failure (those
//! are retried job by job).

use bus::{BusError, Delivery};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct Ticket {
    held: Arc<Held>,
    settled: bool,
    redelivered: bool,
}

struct Held {
    delivery: Mutex<Option<Delivery>>,
    unsettled: AtomicUsize,
    again: AtomicBool,
}

impl Held {
    /// Notes one job's end; the delivery, once it was the last.
    fn settle_one(&self, again: bool) -> Option<Delivery> {
        if again {
            self.again.store(true, Ordering::SeqCst);
        }
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.delivery.lock().expect("ticket poisoned").take()
        } else {
            None
        }
    }
}

impl Ticket {
    /// One ticket for each of the `jobs` jobs `delivery` carries (at least one).
    pub fn split(delivery: Delivery, jobs: usize) -> Vec<Ticket> {
        let redelivered = delivery.redelivered;
        let held = Arc::new(Held {
            delivery: Mutex::new(Some(delivery)),
            unsettled: AtomicUsize::new(jobs),
            again: AtomicBool::new(false),
        });
        (0..jobs)
            .map(|_| Ticket {
                held: Arc::clone(&held),
                settled: false,
                redelivered,
            })
            .collect()
    }

    /// The delivery came before and was not settled then (a crash, or handed back): this job
    /// may have run already.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// This job is done.
    pub async fn ack(self) -> Result<(), BusError> {
        self.settle(false).await
    }

    /// This job must run again: its delivery goes back to the queue.
    pub async fn requeue(self) -> Result<(), BusError> {
        self.settle(true).await
    }

    async fn settle(mut self, again: bool) -> Result<(), BusError> {
        self.settled = true;
        let Some(delivery) = self.held.settle_one(again) else {
            return Ok(());
        };
        if self.held.again.load(Ordering::SeqCst) {
            delivery.requeue().await
        } else {
            delivery.ack().await
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            // A delivery dropped unsettled goes back to the queue: the bus sees to that.
            drop(self.held.settle_one(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::{Bus, EmbeddedBus, Queue};
    use bytes::Bytes;
    use std::time::Duration;

    async fn one_delivery(bus: &EmbeddedBus, sub: &mut bus::Subscription) -> Delivery {
        bus.publish(Queue::Deliveries, vec![Bytes::from_static(b"job")])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn the_delivery_is_acked_with_its_last_job_or_handed_back_if_one_must_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap();
        let mut sub = bus.subscribe(Queue::Deliveries, 4).await.unwrap();

        let mut tickets = Ticket::split(one_delivery(&bus, &mut sub).await, 2);
        tickets.pop().unwrap().ack().await.unwrap();
        assert_eq!(
            bus.depth(Queue::Deliveries).await.unwrap(),
            1,
            "one job left"
        );
        tickets.pop().unwrap().ack().await.unwrap();
        assert_eq!(bus.depth(Queue::Deliveries).await.unwrap(), 0);

        let mut tickets = Ticket::split(one_delivery(&bus, &mut sub).await, 3);
        tickets.pop().unwrap().requeue().await.unwrap();
        tickets.pop().unwrap().ack().await.unwrap();
        drop(tickets.pop());
        let again = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert!(again.redelivered, "handed back whole");
    }
}
