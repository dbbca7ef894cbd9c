//! Ordering: events that share an `ans:sourceEventId` reach an action in the order they were
//! accepted, even while an earlier one waits for a retry — a close never overtakes its open —
//! and without holding up anything else.
//!
//! Each (action, key) with work in progress is a *lane* whose *head* is the one job allowed to
//! run. While the head is being attempted, later jobs of the lane simply wait in memory, their
//! queue messages unacked (a crash hands them out again, in order). Only when the head has to
//! wait for a retry does the lane become durable, here in SQLite (`lanes.db`): the head's lane
//! is recorded and the jobs behind it are *parked* (their queue messages then acked). When a
//! durable lane's head is done — delivered or given up — the next parked job becomes the head
//! and goes back on the queue. The hot path, where deliveries succeed, writes nothing here.
//! Jobs without a key have no lane.
//!
//! [`OrderingLanes`] is the whole of it, both halves: the lanes in memory and the durable ones
//! ([`Lanes`], the SQLite file). The worker asks it three things: which of the jobs just taken
//! from the queue may run ([`OrderingLanes::admit`]), to hold a lane while its head waits for a
//! retry ([`OrderingLanes::hold`]), and to hand a lane on when its head is done
//! ([`OrderingLanes::release`]).

use crate::ticket::Ticket;
use bus::{Bus, Queue};
use bytes::Bytes;
use model::DeliveryJob;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE lanes (
        action TEXT NOT NULL,
        key TEXT NOT NULL,
        head TEXT NOT NULL,
        PRIMARY KEY (action, key)
    );
    CREATE TABLE parked (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        action TEXT NOT NULL,
        key TEXT NOT NULL,
        job_id TEXT NOT NULL,
        job BLOB NOT NULL
    );
    CREATE INDEX parked_by_lane ON parked (action, key, seq);
",
    "
    -- The attempt count of the head's copy that waits on the queue for its retry, once that
    -- copy is there: an older copy of the head (a redelivery after a crash) is then stale.
    ALTER TABLE lanes ADD COLUMN waiting_attempt INTEGER;
",
];

/// Where a job stands in its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It is the head: run it.
    Run,
    /// It waits behind the head.
    Parked,
    /// An older copy of the head, whose newer copy waits on the queue for its retry (this one
    /// came back after a crash): drop it, the newer one carries on.
    Stale,
}

/// A job that is in a lane, as the lanes know it.
#[derive(Debug, Clone)]
pub struct LaneJob {
    pub action: String,
    pub key: String,
    /// Identifies the job across redeliveries: event id and action.
    pub id: String,
    /// Attempts the job had made when this copy of it was queued.
    pub attempt: u32,
    pub payload: Bytes,
}

/// The job that became its lane's head, to be put back on the queue; then [`Lanes::forget`].
#[derive(Debug, Clone)]
pub struct Promoted {
    pub seq: i64,
    pub payload: Bytes,
}

#[derive(Clone)]
pub struct Lanes {
    db: Database,
}

impl Lanes {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Ok(Lanes {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
        })
    }

    /// Claims lanes for `jobs` in their arrival order, in one transaction.
    pub async fn claim(&self, jobs: Vec<LaneJob>) -> Result<Vec<Claim>, StorageError> {
        self.db
            .write(move |c| {
                let mut head_of = c.prepare_cached(
                    "SELECT head, waiting_attempt FROM lanes WHERE action = ?1 AND key = ?2",
                )?;
                let mut open =
                    c.prepare_cached("INSERT INTO lanes (action, key, head) VALUES (?1, ?2, ?3)")?;
                let mut parked_already = c.prepare_cached(
                    "SELECT 1 FROM parked WHERE action = ?1 AND key = ?2 AND job_id = ?3",
                )?;
                let mut park = c.prepare_cached(
                    "INSERT INTO parked (action, key, job_id, job) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut claims = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    use rusqlite::OptionalExtension;
                    let head: Option<(String, Option<u32>)> = head_of
                        .query_row((&job.action, &job.key), |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    let claim = match head {
                        None => {
                            open.execute((&job.action, &job.key, &job.id))?;
                            Claim::Run
                        }
                        Some((head, Some(waiting))) if head == job.id && job.attempt < waiting => {
                            Claim::Stale
                        }
                        // The head itself, back from a retry delay or redelivered.
                        Some((head, _)) if head == job.id => Claim::Run,
                        Some(_) => {
                            // A redelivered parked job is parked once.
                            if !parked_already.exists((&job.action, &job.key, &job.id))? {
                                park.execute((
                                    &job.action,
                                    &job.key,
                                    &job.id,
                                    job.payload.as_ref(),
                                ))?;
                            }
                            Claim::Parked
                        }
                    };
                    claims.push(claim);
                }
                Ok(claims)
            })
            .await
    }

    /// The head `job_id` of (`action`, `key`) waits on the queue for its retry, as a copy that
    /// had made `attempt` attempts: older copies of it are stale from now on.
    pub async fn waiting(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<(), StorageError> {
        let (action, key, job_id) = (action.to_owned(), key.to_owned(), job_id.to_owned());
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE lanes SET waiting_attempt = ?4 \
                     WHERE action = ?1 AND key = ?2 AND head = ?3",
                    (&action, &key, &job_id, attempt),
                )
            })
            .await
            .map(drop)
    }

    /// The head `job_id` of (`action`, `key`) is done. Returns the job that takes its place,
    /// if one was waiting.
    pub async fn release(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
    ) -> Result<Option<Promoted>, StorageError> {
        let (action, key, job_id) = (action.to_owned(), key.to_owned(), job_id.to_owned());
        self.db
            .write(move |c| {
                use rusqlite::OptionalExtension;
                // A promoted job that was put back on the queue twice (a crash in between) is
                // parked no more once it is done.
                c.execute(
                    "DELETE FROM parked WHERE action = ?1 AND key = ?2 AND job_id = ?3",
                    (&action, &key, &job_id),
                )?;
                let next: Option<(i64, String, Vec<u8>)> = c
                    .query_row(
                        "SELECT seq, job_id, job FROM parked WHERE action = ?1 AND key = ?2 \
                         ORDER BY seq LIMIT 1",
                        (&action, &key),
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                match next {
                    Some((seq, next_id, payload)) => {
                        c.execute(
                            "UPDATE lanes SET head = ?3, waiting_attempt = NULL WHERE action = ?1 AND key = ?2",
                            (&action, &key, &next_id),
                        )?;
                        Ok(Some(Promoted {
                            seq,
                            payload: Bytes::from(payload),
                        }))
                    }
                    None => {
                        c.execute(
                            "DELETE FROM lanes WHERE action = ?1 AND key = ?2",
                            (&action, &key),
                        )?;
                        Ok(None)
                    }
                }
            })
            .await
    }

    /// The promoted job is back on the queue: its parked copy can go.
    pub async fn forget(&self, seq: i64) -> Result<(), StorageError> {
        self.db
            .write(move |c| c.execute("DELETE FROM parked WHERE seq = ?1", [seq]))
            .await
            .map(drop)
    }

    /// Heads that were promoted but maybe never put back on the queue (a crash in between):
    /// to be published again at start.
    pub async fn stranded_heads(&self) -> Result<Vec<Promoted>, StorageError> {
        self.db
            .read(|c| {
                c.prepare(
                    "SELECT p.seq, p.job FROM parked p JOIN lanes l \
                     ON l.action = p.action AND l.key = p.key AND l.head = p.job_id ORDER BY p.seq",
                )?
                .query_map([], |r| {
                    Ok(Promoted {
                        seq: r.get(0)?,
                        payload: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    })
                })?
                .collect()
            })
            .await
    }

    /// Every lane that is durable now (its head waits for a retry, or was promoted).
    pub async fn durable_lanes(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.db
            .read(|c| {
                c.prepare("SELECT action, key FROM lanes")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await
    }
}

/// A lane: (action, alert key).
type LaneKey = (String, String);

/// The lanes this process is working on.
#[derive(Default)]
struct LaneMemory {
    /// Lanes whose head is being attempted here, with the jobs waiting behind it.
    active: HashMap<LaneKey, VecDeque<(Ticket, DeliveryJob)>>,
    /// Lanes that are durable in SQLite (a head waits for a retry): their jobs go there.
    durable: HashSet<LaneKey>,
}

/// The ordering lanes, in memory and durable; see the module doc.
pub struct OrderingLanes {
    durable: Lanes,
    bus: Arc<dyn Bus>,
    /// A tokio mutex: making a lane durable awaits SQLite while no new job may slip into it.
    memory: tokio::sync::Mutex<LaneMemory>,
}

fn lane_key(job: &DeliveryJob) -> Option<LaneKey> {
    Some((job.action.clone(), job.ordering_key()?.to_owned()))
}

/// A job with a lane, as `payload`: where it queues behind others with the same key.
fn lane_of(job: &DeliveryJob, payload: Bytes) -> Option<LaneJob> {
    let (action, key) = lane_key(job)?;
    Some(LaneJob {
        action,
        key,
        id: job_id(job),
        attempt: job.attempt,
        payload,
    })
}

fn job_id(job: &DeliveryJob) -> String {
    format!("{}/{}", job.event.id, job.action)
}

impl OrderingLanes {
    pub fn new(durable: Lanes, bus: Arc<dyn Bus>) -> Self {
        OrderingLanes {
            durable,
            bus,
            memory: Default::default(),
        }
    }

    /// At start: learns which lanes are durable, and puts back on the queue the heads that
    /// were promoted just before a crash and may never have reached it.
    pub async fn recover(&self) -> Result<(), bus::BusError> {
        self.memory.lock().await.durable =
            self.durable.durable_lanes().await?.into_iter().collect();
        for head in self.durable.stranded_heads().await? {
            self.bus
                .publish(Queue::Deliveries, vec![head.payload])
                .await?;
            self.durable.forget(head.seq).await?;
        }
        Ok(())
    }

    /// Sorts jobs just taken from the queue: those behind a lane head wait (in memory) or are
    /// parked (durably, and acked); the rest are returned to run, in arrival order.
    pub async fn admit(&self, jobs: Vec<(Ticket, DeliveryJob)>) -> Vec<(Ticket, DeliveryJob)> {
        let mut memory = self.memory.lock().await;
        let mut run = Vec::with_capacity(jobs.len());
        let mut to_durable: Vec<(Ticket, DeliveryJob)> = Vec::new();
        for (delivery, job) in jobs {
            let Some(key) = lane_key(&job) else {
                run.push((delivery, job));
                continue;
            };
            if memory.durable.contains(&key) {
                to_durable.push((delivery, job));
            } else if let Some(waiting) = memory.active.get_mut(&key) {
                tracing::debug!(event = %job.event.id, action = %job.action, "waiting behind an earlier event with the same key");
                waiting.push_back((delivery, job));
            } else {
                memory.active.insert(key, Default::default());
                run.push((delivery, job));
            }
        }
        if !to_durable.is_empty() {
            // Still under the lock: a job admitted later cannot claim before these.
            run.extend(self.claim_durably(to_durable).await);
        }
        run
    }

    /// Claims durable lanes for `jobs`, in order: heads back from a retry run, the others are
    /// parked (and acked). Returns the jobs to run.
    async fn claim_durably(&self, jobs: Vec<(Ticket, DeliveryJob)>) -> Vec<(Ticket, DeliveryJob)> {
        let lane_jobs = jobs
            .iter()
            .filter_map(|(_, job)| lane_of(job, job.encode().into()))
            .collect();
        let claims = match self.durable.claim(lane_jobs).await {
            Ok(claims) => claims,
            Err(e) => {
                // Without the lanes, order cannot be kept: leave these jobs queued.
                tracing::error!(error = %e, "cannot claim ordering lanes; requeueing");
                for (delivery, _) in jobs {
                    crate::worker::settle(delivery.requeue().await, "requeue");
                }
                return Vec::new();
            }
        };
        let mut run = Vec::new();
        for ((delivery, job), claim) in jobs.into_iter().zip(claims) {
            match claim {
                Claim::Run => run.push((delivery, job)),
                Claim::Parked => {
                    tracing::debug!(event = %job.event.id, action = %job.action, "parked behind an earlier event that waits for a retry");
                    crate::worker::settle(delivery.ack().await, "ack");
                }
                Claim::Stale => {
                    tracing::info!(event = %job.event.id, action = %job.action, attempts = job.attempt, "an older copy of a job that waits for its retry; dropped");
                    crate::worker::settle(delivery.ack().await, "ack");
                }
            }
        }
        run
    }

    /// The head `job` of an in-memory lane is going to wait for a retry, as `payload`: record
    /// its lane durably and park the jobs waiting behind it there, in order, before anything
    /// else can arrive.
    pub async fn hold(&self, job: &DeliveryJob, payload: &Bytes) -> Result<(), StorageError> {
        let Some(key) = lane_key(job) else {
            return Ok(());
        };
        let mut memory = self.memory.lock().await;
        if memory.durable.contains(&key) {
            return Ok(());
        }
        let head = lane_of(job, payload.clone()).expect("a keyed job");
        self.durable.claim(vec![head]).await?;
        memory.durable.insert(key.clone());
        let waiting: Vec<_> = memory.active.remove(&key).unwrap_or_default().into();
        drop(self.claim_durably(waiting).await);
        Ok(())
    }

    /// The head `job`'s copy for its retry is on the queue now: an older copy of it that comes
    /// back (after a crash, from a message that was not yet settled) is dropped. Keyless jobs
    /// have no lane, and no such guard.
    pub async fn waiting(&self, job: &DeliveryJob) -> Result<(), StorageError> {
        match lane_key(job) {
            Some((action, key)) => {
                self.durable
                    .waiting(&action, &key, &job_id(job), job.attempt)
                    .await
            }
            None => Ok(()),
        }
    }

    /// `job` goes back to the queue unfinished (Tocsin could not make its next step durable):
    /// its in-memory lane is given up, or its redelivery would wait behind itself, and the jobs
    /// waiting behind it are returned, to go back after it. A durable lane stays: its head
    /// comes back to it.
    pub async fn abandon(&self, job: &DeliveryJob) -> Vec<(Ticket, DeliveryJob)> {
        let Some(key) = lane_key(job) else {
            return Vec::new();
        };
        let mut memory = self.memory.lock().await;
        memory.active.remove(&key).unwrap_or_default().into()
    }

    /// `job` is over: its lane goes to the next job with its key — returned when it waits here
    /// in memory, put back on the queue when it was parked durably. An error means the lane
    /// could not be handed on, and `job` must run again.
    pub async fn release(
        &self,
        job: &DeliveryJob,
    ) -> Result<Option<(Ticket, DeliveryJob)>, StorageError> {
        let Some(key) = lane_key(job) else {
            return Ok(None);
        };
        let mut memory = self.memory.lock().await;
        if !memory.durable.contains(&key) {
            let Some(waiting) = memory.active.get_mut(&key) else {
                return Ok(None);
            };
            let next = waiting.pop_front();
            if next.is_none() {
                memory.active.remove(&key);
            }
            return Ok(next);
        }
        match self
            .durable
            .release(&job.action, &key.1, &job_id(job))
            .await?
        {
            None => {
                memory.durable.remove(&key);
            }
            Some(next) => {
                let queued = self
                    .bus
                    .publish(Queue::Deliveries, vec![next.payload])
                    .await;
                match queued {
                    Ok(()) => {
                        if let Err(e) = self.durable.forget(next.seq).await {
                            tracing::warn!(error = %e, "cannot forget a promoted job; it may run twice");
                        }
                    }
                    // It stays parked as the head: the next start publishes it.
                    Err(e) => tracing::error!(error = %e, "cannot queue the next job of a lane"),
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parked_count(lanes: &Lanes) -> u64 {
        lanes
            .db
            .read(|c| c.query_row("SELECT COUNT(*) FROM parked", [], |r| r.get(0)))
            .await
            .unwrap()
    }

    fn job(id: &str, key: &str) -> LaneJob {
        LaneJob {
            action: "hook".into(),
            key: key.into(),
            id: id.into(),
            attempt: 0,
            payload: Bytes::from(id.to_owned()),
        }
    }

    #[tokio::test]
    async fn an_older_copy_of_a_head_that_waits_for_its_retry_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = Lanes::open(&dir.path().join("lanes.db")).unwrap();
        assert_eq!(
            lanes.claim(vec![job("open", "k")]).await.unwrap(),
            [Claim::Run]
        );
        // Before its retry copy is on the queue, a redelivered first copy still runs.
        assert_eq!(
            lanes.claim(vec![job("open", "k")]).await.unwrap(),
            [Claim::Run]
        );
        lanes.waiting("hook", "k", "open", 1).await.unwrap();
        let retried = LaneJob {
            attempt: 1,
            ..job("open", "k")
        };
        assert_eq!(
            lanes.claim(vec![job("open", "k"), retried]).await.unwrap(),
            [Claim::Stale, Claim::Run]
        );
        // The next head of the lane is no older copy of anything.
        assert_eq!(
            lanes.claim(vec![job("close", "k")]).await.unwrap(),
            [Claim::Parked]
        );
        let next = lanes.release("hook", "k", "open").await.unwrap().unwrap();
        assert_eq!(&next.payload[..], b"close");
        assert_eq!(
            lanes.claim(vec![job("close", "k")]).await.unwrap(),
            [Claim::Run]
        );
    }

    #[tokio::test]
    async fn one_head_per_lane_the_rest_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let lanes = Lanes::open(&dir.path().join("lanes.db")).unwrap();
        let claims = lanes
            .claim(vec![
                job("open", "k"),
                job("repeat", "k"),
                job("other", "j"),
                job("close", "k"),
            ])
            .await
            .unwrap();
        assert_eq!(
            claims,
            [Claim::Run, Claim::Parked, Claim::Run, Claim::Parked]
        );
        // The head comes back from a retry; a parked job is redelivered: nothing changes.
        assert_eq!(
            lanes
                .claim(vec![job("open", "k"), job("repeat", "k")])
                .await
                .unwrap(),
            [Claim::Run, Claim::Parked]
        );
        assert_eq!(parked_count(&lanes).await, 2);

        let next = lanes.release("hook", "k", "open").await.unwrap().unwrap();
        assert_eq!(&next.payload[..], b"repeat");
        // Crash before the promoted job was published: it is found at start.
        assert_eq!(lanes.stranded_heads().await.unwrap().len(), 1);
        lanes.forget(next.seq).await.unwrap();
        assert!(lanes.stranded_heads().await.unwrap().is_empty());
        assert_eq!(
            lanes.claim(vec![job("repeat", "k")]).await.unwrap(),
            [Claim::Run]
        );
        let next = lanes.release("hook", "k", "repeat").await.unwrap().unwrap();
        assert_eq!(&next.payload[..], b"close");
        lanes.forget(next.seq).await.unwrap();
        assert!(lanes.release("hook", "k", "close").await.unwrap().is_none());
        assert_eq!(
            lanes.claim(vec![job("new", "k")]).await.unwrap(),
            [Claim::Run],
            "the lane was freed"
        );
    }
}
