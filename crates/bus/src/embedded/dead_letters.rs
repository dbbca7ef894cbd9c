//! The embedded queue's dead letters: rows of the `dead_letters` table, one per payload, read
//! newest first by id, and replayed by moving rows back into `messages` in one transaction
//! (the dead letter is gone exactly when its message is queued).

use super::EmbeddedBus;
use crate::{BusError, DeadLetter, DeadLetterPage, Queue, Reason};
use bytes::Bytes;

impl EmbeddedBus {
    pub(super) async fn count_dead_letters(&self) -> Result<u64, BusError> {
        Ok(self
            .db
            .read(|c| c.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0)))
            .await?)
    }

    pub(super) async fn read_dead_letters(
        &self,
        skip: usize,
        limit: usize,
    ) -> Result<DeadLetterPage, BusError> {
        Ok(self
            .db
            .read(move |c| {
                let total: u64 =
                    c.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
                let mut select = c.prepare(
                    "SELECT id, queue, payload, reason, dead_at_ms, deliveries FROM dead_letters \
                     ORDER BY id DESC LIMIT ?1 OFFSET ?2",
                )?;
                let letters = select
                    .query_map((limit as i64, skip as i64), |r| {
                        Ok(DeadLetter {
                            id: r.get::<_, i64>(0)?.to_string(),
                            queue: Queue::named(&r.get::<_, String>(1)?),
                            payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                            reason: Reason::parse(&r.get::<_, String>(3)?),
                            dead_at_ms: r.get(4)?,
                            deliveries: r.get(5)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(DeadLetterPage { total, letters })
            })
            .await?)
    }

    /// Moves the dead letter `id` (every one, for `None`) back onto its queue as a fresh
    /// message; returns how many moved.
    pub(super) async fn replay(&self, id: Option<i64>) -> Result<u64, BusError> {
        let now = clock::now_epoch_millis();
        let moved = self
            .db
            .write(move |c| {
                // `id IS NULL` selects every row when no id is given.
                let moved = c.execute(
                    "INSERT INTO messages (queue, payload, enqueued_at_ms) \
                     SELECT queue, payload, ?2 FROM dead_letters \
                     WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
                    (id, now),
                )?;
                c.execute("DELETE FROM dead_letters WHERE ?1 IS NULL OR id = ?1", [id])?;
                Ok(moved as u64)
            })
            .await?;
        if moved > 0 {
            self.wake_dispatchers();
            tracing::info!(messages = moved, "dead letters replayed");
        }
        Ok(moved)
    }
}
