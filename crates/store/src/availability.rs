//! Whether the store answers. SQLite files always do (a failing file is an error of its own);
//! the shared PostgreSQL database can go away — restarted, failed over, the network cut — and
//! the pipeline must then pause rather than burn its deliveries' attempts on a store that
//! cannot record them.
//!
//! Flow: a PostgreSQL operation whose error says the database is unreachable
//! ([`StoreError::is_unavailable`]) marks the store unavailable and starts one probe, which
//! asks the database `SELECT 1` with a growing pause until it answers and then marks it
//! available again. The delivery worker waits on [`Availability::wait`] before it takes more
//! work; `/readyz` and the `tocsin_store_available` gauge read [`Availability::is_available`].

use crate::postgres::Postgres;
use crate::StoreError;
use std::time::Duration;
use tokio::sync::watch;

/// The first pause of the probe; each failed probe doubles it up to [`MAX_PROBE_PAUSE`].
const FIRST_PROBE_PAUSE: Duration = Duration::from_millis(200);
const MAX_PROBE_PAUSE: Duration = Duration::from_secs(5);

/// A view of whether the store answers; cheap to clone.
#[derive(Clone)]
pub struct Availability {
    /// `None`: a store that is always there (SQLite files).
    state: Option<watch::Receiver<bool>>,
}

impl Availability {
    /// A store that is always there.
    pub fn always() -> Self {
        Availability { state: None }
    }

    pub fn is_available(&self) -> bool {
        self.state.as_ref().is_none_or(|state| *state.borrow())
    }

    /// Returns once the store answers (at once if it does).
    pub async fn wait(&self) {
        if let Some(state) = &self.state {
            let mut state = state.clone();
            // An error here means the sender is gone with the store: nothing left to wait for.
            let _ = state.wait_for(|available| *available).await;
        }
    }
}

/// The writing half, kept by the PostgreSQL handle.
pub(crate) struct Tracker {
    state: watch::Sender<bool>,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Tracker {
            state: watch::channel(true).0,
        }
    }

    pub(crate) fn view(&self) -> Availability {
        Availability {
            state: Some(self.state.subscribe()),
        }
    }

    /// Notes `error`: if it says the database is unreachable, the store is unavailable until a
    /// probe on `database` gets an answer (one probe at a time).
    pub(crate) fn note(&self, error: &StoreError, database: &Postgres) {
        if !error.is_unavailable() || !self.state.send_replace(false) {
            return;
        }
        tracing::warn!(error = %error, "the PostgreSQL store is unavailable; delivery pauses until it answers");
        let database = database.clone();
        tokio::spawn(async move {
            let mut pause = FIRST_PROBE_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                match database.ping().await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "the PostgreSQL store still does not answer")
                    }
                }
                pause = (pause * 2).min(MAX_PROBE_PAUSE);
            }
            tracing::info!("the PostgreSQL store answers again; delivery resumes");
            database.tracker().state.send_replace(true);
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::postgres::{testing, Postgres};
    use crate::records::{Attempt, AttemptOutcome, RecordStore, Region};
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    /// A TCP relay to the tests' PostgreSQL that the test can cut: while cut it drops the
    /// relayed connections and closes new ones at once.
    async fn relay(upstream: String) -> (u16, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let cutting = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *cutting.borrow() {
                    continue;
                }
                let mut cut = cutting.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        (port, cut)
    }

    fn attempt() -> Attempt {
        Attempt {
            action: "a".into(),
            attempt: 1,
            started_at_ms: 1,
            duration_ms: 1,
            outcome: AttemptOutcome::Delivered,
            code: None,
            reason: None,
            digest: None,
        }
    }

    /// The database goes away: a write fails as unavailable and the store says so; it comes
    /// back: the probe notices within its pause, and writes work again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_that_goes_away_is_unavailable_until_it_answers_again() {
        let url = testing::scratch_url().await;
        let config: tokio_postgres::Config = url.parse().unwrap();
        let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
            panic!("the tests' database is reached over TCP");
        };
        let upstream = format!("{host}:{}", config.get_ports()[0]);
        let (port, cut) = relay(upstream).await;
        let relayed = url.replacen(
            &format!(":{}/", config.get_ports()[0]),
            &format!(":{port}/"),
            1,
        );
        assert_ne!(relayed, url, "the URL names the port");
        let database = Postgres::connect(&relayed).await.unwrap();
        let region = Region {
            name: "local".into(),
            kind: "tocsin".into(),
        };
        let records = RecordStore::on_postgres(&database, region).await.unwrap();
        let availability = records.availability();
        records.record_attempt("e1", attempt()).await.unwrap();
        assert!(availability.is_available());

        cut.send_replace(true);
        let failed = records.record_attempt("e2", attempt()).await.unwrap_err();
        assert!(failed.is_unavailable(), "{failed}");
        assert!(!availability.is_available());
        // Still down a moment later: the probe does not pretend.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!availability.is_available());

        cut.send_replace(false);
        tokio::time::timeout(Duration::from_secs(10), availability.wait())
            .await
            .expect("available again once the database answers");
        records.record_attempt("e3", attempt()).await.unwrap();
        assert_eq!(records.attempts("e3").await.unwrap().len(), 1);
    }
}
