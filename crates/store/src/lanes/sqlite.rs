//! The durable lanes in SQLite: `lanes.db` in the data directory, this process's alone (the
//! file and schema the lanes had before they moved into the store).

use super::{Claim, Lane, LaneJob, Promoted};
use bytes::Bytes;
use rusqlite::OptionalExtension;
use std::path::Path;
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

#[derive(Clone)]
pub(super) struct SqliteLanes {
    db: Database,
}

impl SqliteLanes {
    pub(super) fn open(path: &Path) -> Result<Self, StorageError> {
        Ok(SqliteLanes {
            db: Database::open(path, MIGRATIONS, Durability::Full, None)?,
        })
    }

    pub(super) async fn claim(&self, jobs: Vec<LaneJob>) -> Result<Vec<Claim>, StorageError> {
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
                    let head: Option<(String, Option<u32>)> = head_of
                        .query_row((&job.action, &job.key), |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    let claim = match head {
                        None => {
                            open.execute((&job.action, &job.key, &job.id))?;
                            Claim::Run
                        }
                        Some((head, waiting)) => {
                            let claim = super::claim_behind(&head, waiting, job);
                            // A redelivered parked job is parked once.
                            if claim == Claim::Parked
                                && !parked_already.exists((&job.action, &job.key, &job.id))?
                            {
                                park.execute((
                                    &job.action,
                                    &job.key,
                                    &job.id,
                                    job.payload.as_ref(),
                                ))?;
                            }
                            claim
                        }
                    };
                    claims.push(claim);
                }
                Ok(claims)
            })
            .await
    }

    pub(super) async fn waiting(
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

    pub(super) async fn release(
        &self,
        action: &str,
        key: &str,
        job_id: &str,
    ) -> Result<Option<Promoted>, StorageError> {
        let (action, key, job_id) = (action.to_owned(), key.to_owned(), job_id.to_owned());
        self.db
            .write(move |c| {
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

    pub(super) async fn forget(&self, seq: i64) -> Result<(), StorageError> {
        self.db
            .write(move |c| c.execute("DELETE FROM parked WHERE seq = ?1", [seq]))
            .await
            .map(drop)
    }

    pub(super) async fn stranded_heads(&self) -> Result<Vec<Promoted>, StorageError> {
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

    pub(super) async fn durable_lanes(&self) -> Result<Vec<Lane>, StorageError> {
        self.db
            .read(|c| {
                c.prepare("SELECT action, key FROM lanes")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await
    }

    pub(super) async fn durable_among(&self, lanes: Vec<Lane>) -> Result<Vec<Lane>, StorageError> {
        self.db
            .read(move |c| {
                let mut durable =
                    c.prepare_cached("SELECT 1 FROM lanes WHERE action = ?1 AND key = ?2")?;
                let mut found = Vec::new();
                for lane in lanes {
                    if durable.exists((&lane.0, &lane.1))? {
                        found.push(lane);
                    }
                }
                Ok(found)
            })
            .await
    }
}
