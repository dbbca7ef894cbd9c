//! SQLite plumbing shared by everything that keeps state in a Tocsin data file: the embedded
//! queue, the delivery records and, later, configuration.
//!
//! A [`Database`] owns one file. All writes go to a single dedicated writer thread, which takes
//! every write waiting in its channel, runs them in one transaction (each inside its own
//! savepoint, so that one failing write does not undo its neighbours) and commits once: concurrent
//! callers share one fsync (group commit), and nothing blocks the async runtime. Reads run on
//! a small pool of read-only connections through `spawn_blocking`; WAL mode lets them proceed
//! while the writer commits.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Writes taken into one transaction at most; bounds the latency a single commit adds.
const MAX_WRITES_PER_COMMIT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("a blocking database task failed: {0}")]
    Join(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Waiting a moment for company before work that is cheaper done for many at once (a commit, a
/// publish) — only while work comes in groups: a caller working alone, one piece after the
/// other, would otherwise wait it out every time.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    wait: Duration,
    had_company: bool,
}

impl Linger {
    /// Waits `wait` (zero: never).
    pub fn new(wait: Duration) -> Self {
        Linger {
            wait,
            had_company: false,
        }
    }

    /// Given the pieces just gathered (`gathered`, at most `full`), how long to wait for more:
    /// only when the previous round had company and there is room.
    pub fn wait_for_company(&mut self, gathered: usize, full: usize) -> Option<Duration> {
        let wait =
            (self.had_company && !self.wait.is_zero() && gathered < full).then_some(self.wait);
        self.had_company = gathered > 1;
        wait
    }
}

/// How durable a commit must be before a write is reported done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: a write that returned survives a power cut (the queue).
    Full,
    /// fsync at WAL checkpoints: a write that returned survives a crash of the process, not of
    /// the machine (records that can be re-derived by redelivery).
    Normal,
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: given the connection inside the open transaction (or `None` when the transaction
/// could not even begin, so it must not run), it does its work and returns how to report it.
type WriteJob = Box<dyn FnOnce(Option<&Connection>) -> Completion + Send>;

/// Observes each commit (writes in it, time it took) — for metrics, without this crate knowing
/// about Prometheus.
pub type CommitObserver = Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>;

/// A handle to one SQLite file; cheap to clone.
#[derive(Clone)]
pub struct Database {
    writer: mpsc::Sender<WriteJob>,
    readers: Arc<ReaderPool>,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Database {
    /// Opens (creating if needed) the file at `path` and brings its schema up to date:
    /// `migrations[i]` runs once, when the file's `user_version` is `i`.
    pub fn open(
        path: &Path,
        migrations: &[&str],
        durability: Durability,
        observer: Option<CommitObserver>,
    ) -> Result<Self> {
        Self::open_lingering(path, migrations, durability, observer, Duration::ZERO)
    }

    /// Like [`Database::open`], for a file written in many small concurrent writes that can
    /// wait a little: while writes arrive in groups, the writer waits `linger` after a write
    /// arrives, for more to share its commit. A commit writes every page it touched to the
    /// WAL, so on a table with several indexes the bytes written fall with each write that
    /// joins one. A lone writer is not held up.
    pub fn open_lingering(
        path: &Path,
        migrations: &[&str],
        durability: Durability,
        observer: Option<CommitObserver>,
        linger: Duration,
    ) -> Result<Self> {
        let open_error = |source| StorageError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;"
        ))
        .map_err(open_error)?;
        migrate(&mut conn, migrations)?;

        let (writer, jobs) = mpsc::channel(4 * MAX_WRITES_PER_COMMIT);
        let name = format!(
            "sqlite-writer-{}",
            path.file_stem().unwrap_or_default().to_string_lossy()
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || run_writer(conn, jobs, observer, linger))
            .map_err(|e| StorageError::Commit(format!("cannot start writer thread: {e}")))?;
        Ok(Database {
            writer,
            readers: Arc::new(ReaderPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `write` in the writer's next transaction and returns its result once that
    /// transaction is committed. If `write` fails, only its own changes are rolled back.
    pub async fn write<T, F>(&self, write: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(move |conn| in_savepoint(conn, write)).await
    }

    /// Runs the one statement `sql` with `params` in the writer's next transaction; returns
    /// the rows it changed once that transaction is committed. A statement that fails undoes
    /// itself, so this skips the savepoint that [`Database::write`] pays for, which counts on
    /// the hottest writes (an ack, a record, an attempt).
    pub async fn execute<P>(&self, sql: &'static str, params: P) -> Result<usize>
    where
        P: rusqlite::Params + Send + 'static,
    {
        self.submit(move |conn| conn.prepare_cached(sql)?.execute(params))
            .await
    }

    async fn submit<T, F>(&self, write: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let outcome = match conn {
                Some(conn) => write(conn).map_err(StorageError::from),
                None => Err(StorageError::Commit(
                    "the transaction could not begin".into(),
                )),
            };
            Box::new(move |commit: Result<(), String>| {
                let outcome = commit.map_err(StorageError::Commit).and(outcome);
                let _ = done.send(outcome);
            })
        });
        self.writer
            .send(job)
            .await
            .map_err(|_| StorageError::WriterGone)?;
        result.await.map_err(|_| StorageError::WriterGone)?
    }

    /// Runs `read` on a read-only connection off the async runtime.
    pub async fn read<T, F>(&self, read: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = read(&conn);
            pool.give_back(conn);
            Ok(result?)
        })
        .await
        .map_err(|e| StorageError::Join(e.to_string()))?
    }
}

impl ReaderPool {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().expect("reader pool poisoned").pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        self.idle.lock().expect("reader pool poisoned").push(conn);
    }
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", index + 1))?;
        tx.commit()?;
    }
    Ok(())
}

fn in_savepoint<T>(
    conn: &Connection,
    write: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // Cached: every write pays for these, and parsing them anew showed in profiles.
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(drop);
    run("SAVEPOINT write")?;
    match write(conn) {
        Ok(value) => {
            run("RELEASE write")?;
            Ok(value)
        }
        Err(e) => {
            run("ROLLBACK TO write")?;
            run("RELEASE write")?;
            Err(e)
        }
    }
}

fn run_writer(
    conn: Connection,
    mut jobs: mpsc::Receiver<WriteJob>,
    observer: Option<CommitObserver>,
    linger: Duration,
) {
    let mut batch = Vec::with_capacity(MAX_WRITES_PER_COMMIT);
    let mut completions: Vec<Completion> = Vec::with_capacity(MAX_WRITES_PER_COMMIT);
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(drop);
    let mut linger = Linger::new(linger);
    while jobs.blocking_recv_many(&mut batch, MAX_WRITES_PER_COMMIT) > 0 {
        if let Some(wait) = linger.wait_for_company(batch.len(), MAX_WRITES_PER_COMMIT) {
            std::thread::sleep(wait);
            while batch.len() < MAX_WRITES_PER_COMMIT {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let started = Instant::now();
        let writes = batch.len();
        let outcome = run("BEGIN IMMEDIATE").and_then(|()| {
            completions.extend(batch.drain(..).map(|job| job(Some(&conn))));
            run("COMMIT")
        });
        let outcome = outcome.map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::error!(error = %e, writes, "sqlite commit failed");
            e.to_string()
        });
        // Jobs never run when BEGIN failed still owe their callers an answer.
        completions.extend(batch.drain(..).map(|job| job(None)));
        for complete in completions.drain(..) {
            complete(outcome.clone());
        }
        if let Some(observe) = &observer {
            observe(writes, started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[&str] = &["CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"];

    fn open(dir: &tempfile::TempDir) -> Database {
        Database::open(&dir.path().join("t.db"), SCHEMA, Durability::Full, None).unwrap()
    }

    #[tokio::test]
    async fn concurrent_writes_commit_and_a_failing_one_leaves_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| c.execute("INSERT INTO t VALUES (?1, ?2)", (format!("k{i}"), i)))
                    .await
            }));
        }
        let duplicate = db
            .write(|c| {
                c.execute("INSERT INTO t VALUES ('dup', 1)", [])?;
                c.execute("INSERT INTO t VALUES ('dup', 2)", [])
            })
            .await;
        assert!(duplicate.is_err());
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        let (count, dup): (i64, i64) = db
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*), (SELECT COUNT(*) FROM t WHERE k = 'dup') FROM t",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .await
            .unwrap();
        assert_eq!((count, dup), (200, 0), "the failed write rolled back alone");

        // One statement, no savepoint: a failing one still undoes only itself.
        let insert = "INSERT INTO t VALUES (?1, ?2)";
        let (first, clash, next) = tokio::join!(
            db.execute(insert, ("x", 1)),
            db.execute(insert, ("k0", 2)),
            db.execute(insert, ("y", 3)),
        );
        assert_eq!((first.unwrap(), next.unwrap()), (1, 1));
        assert!(clash.is_err());
        let v: i64 = db
            .read(|c| c.query_row("SELECT v FROM t WHERE k = 'k0'", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(v, 0, "the clashing insert changed nothing");
    }

    #[test]
    fn lingering_only_follows_a_round_with_company() {
        let mut linger = Linger::new(Duration::from_millis(2));
        let rounds = [1, 1, 3, 2, 1, 1, 5, 8, 3];
        let waits: Vec<bool> = rounds
            .iter()
            .map(|&n| linger.wait_for_company(n, 8).is_some())
            .collect();
        // A lone writer never waits; after a round with company it does, unless already full.
        assert_eq!(
            waits,
            [false, false, false, true, true, false, false, false, true]
        );
        let mut never = Linger::new(Duration::ZERO);
        assert!((0..3).all(|_| never.wait_for_company(4, 8).is_none()));
    }

    #[tokio::test]
    async fn migrations_run_once_and_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        db.write(|c| c.execute("INSERT INTO t VALUES ('a', 1)", []))
            .await
            .unwrap();
        drop(db);
        let db = open(&dir);
        let v: i64 = db
            .read(|c| c.query_row("SELECT v FROM t WHERE k = 'a'", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(v, 1);
    }
}
