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

use bytes::Bytes;
use std::path::Path;
use storage::{Database, Durability, StorageError};

const MIGRATIONS: &[&str] = &["
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
"];

/// Where a job stands in its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It is the head: run it.
    Run,
    /// It waits behind the head.
    Parked,
}

/// A job that is in a lane, as the lanes know it.
#[derive(Debug, Clone)]
pub struct LaneJob {
    pub action: String,
    pub key: String,
    /// Identifies the job across redeliveries: event id and action.
    pub id: String,
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
                let mut head_of =
                    c.prepare_cached("SELECT head FROM lanes WHERE action = ?1 AND key = ?2")?;
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
                    let head: Option<String> = head_of
                        .query_row((&job.action, &job.key), |r| r.get(0))
                        .optional()?;
                    let claim = match head {
                        None => {
                            open.execute((&job.action, &job.key, &job.id))?;
                            Claim::Run
                        }
                        // The head itself, back from a retry delay or redelivered.
                        Some(head) if head == job.id => Claim::Run,
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
                            "UPDATE lanes SET head = ?3 WHERE action = ?1 AND key = ?2",
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
            payload: Bytes::from(id.to_owned()),
        }
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
