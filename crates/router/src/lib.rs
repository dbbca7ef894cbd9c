//! The router: consumes accepted events, decides which actions each one goes to, and publishes
//! a delivery job for them: one per matched event, naming every action (`also` beyond the
//! first), so that the event crosses the queue once; the worker runs one job per action.
//!
//! It works in batches: it takes every event waiting (up to its prefetch), matches them against
//! the current configuration ([`matcher`]), publishes all resulting jobs in one durable publish
//! — in event order, each with its ordering key, so that events of one source reach their
//! partition of the delivery queue in the order they were accepted — and only then acks the
//! events. (Across processes the events queue has a single active consumer, so one router at
//! a time keeps that order.) A crash in between re-routes the batch; the
//! jobs it had already queued are duplicates that delivery absorbs (records are idempotent).
//!
//! Before it publishes a batch's jobs it folds the batch's events into their alerts
//! ([`store::alerts`]): every event routed is in its alert's timeline, in the order routed, and
//! a person's act (an event the alerts API made) changes the alert's state here, in that same
//! order. A batch routed again after a crash folds nothing twice.
//!
//! A matched event that an active silence covers ([`silences`]) is folded as usual, its
//! timeline line naming the silence, but no job is published for it — except a `CLOSE` of an
//! alert that has an event no silence held back: what was told the alert opened is told it
//! closed. A subscription a time interval mutes fires for nothing, but the alert remembers it
//! lacks the alert's latest state, and a `CLOSE` reaches it if it heard the alert ([`mutes`]).
//! A copy released when a silence or a mute window ended is routed once: if it was folded
//! before (it was queued again after a crash), it publishes nothing; a window's copy goes to
//! its subscription's actions only.
//!
//! It counts what it does: events routed by outcome and jobs queued once they are published,
//! each subscription's matches as they happen (an event routed again after a crash counts
//! again there), and what the fold of alerts changed once it is committed — people's acts, the
//! time to acknowledge and to resolve — which no fold counts twice.

pub mod api;
pub mod matcher;
pub mod mutes;
pub mod released;
pub mod sealing;
pub mod silences;
pub mod store;

use ::store::alerts::{AlertStore, Change, HumanAction, Observed};
use bus::{Bus, Delivery, Queue};
use bytes::Bytes;
use matcher::Matcher;
use metrics::{ActChannel, Counter, Metrics, RouteOutcome};
use model::bus::Released;
use model::event::Transition;
use model::{Catalog, DeliveryJob, IngestedEvent, ResourceEvent};
use mutes::Muting;
use silences::{SilenceSet, Silences};
use std::sync::Arc;
use std::time::Duration;
use store::ConfigStore;
use tokio::sync::watch;

/// Settings of the router.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Events in flight (read but not yet acked) at most; also the largest batch.
    pub prefetch: u16,
}

pub struct Router {
    config: RouterConfig,
    bus: Arc<dyn Bus>,
    store: Arc<ConfigStore>,
    alerts: AlertStore,
    silences: Arc<Silences>,
    metrics: Arc<Metrics>,
    compiled: Arc<Compiled>,
}

/// A configuration compiled for routing, with the match counter of each subscription that can
/// fire, numbered as the matcher numbers them.
struct Compiled {
    catalog: Arc<Catalog>,
    matcher: Matcher,
    matches: Vec<Counter>,
}

impl Compiled {
    fn new(catalog: Arc<Catalog>, metrics: &Metrics) -> Self {
        let matcher = Matcher::new(&catalog);
        let matches = metrics.subscription_counters(&matcher.subscription_names());
        Compiled {
            catalog,
            matcher,
            matches,
        }
    }
}

impl Router {
    pub fn new(
        config: RouterConfig,
        bus: Arc<dyn Bus>,
        store: Arc<ConfigStore>,
        alerts: AlertStore,
        silences: Arc<Silences>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let compiled = Arc::new(Compiled::new(store.current(), &metrics));
        for action in HumanAction::ALL {
            metrics.register_alert_act(action.as_str());
        }
        Router {
            config,
            bus,
            store,
            alerts,
            silences,
            metrics,
            compiled,
        }
    }

    /// Routes until `shutdown` turns true; the batch in hand is finished first.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), bus::BusError> {
        let mut events = self
            .bus
            .subscribe(Queue::Events, self.config.prefetch)
            .await?;
        let limit = usize::from(self.config.prefetch);
        while let Some(batch) = events.next_batch_until(limit, &mut shutdown).await {
            // Changes made through other processes are waiting in our update queue by now if
            // they returned before these events were accepted: take them first.
            self.store.refresh().await;
            self.silences.refresh().await;
            self.route(batch, &mut shutdown).await;
        }
        tracing::info!("router stopped");
        Ok(())
    }

    /// The configuration as it is now (refreshed before each batch), recompiled only when it
    /// changed.
    fn compiled(&mut self) -> Arc<Compiled> {
        let current = self.store.current();
        if !Arc::ptr_eq(&current, &self.compiled.catalog) {
            self.compiled = Arc::new(Compiled::new(current, &self.metrics));
        }
        Arc::clone(&self.compiled)
    }

    async fn route(&mut self, batch: Vec<Delivery>, shutdown: &mut watch::Receiver<bool>) {
        let now = clock::now_epoch_seconds();
        let silences = self.silences.current();
        let compiled = self.compiled();
        let mut jobs = Vec::new();
        let mut observed: Vec<Observed> = Vec::with_capacity(batch.len());
        let mut routed = Vec::with_capacity(batch.len());
        let mut unmatched = 0;
        let mut queued = 0;
        let mut silenced = 0;
        let mut muted = 0;
        for delivery in batch {
            let ingested: IngestedEvent = match serde_json::from_slice(&delivery.payload) {
                Ok(ingested) => ingested,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable event on the events queue; dead-lettering it");
                    if let Err(e) = delivery.dead_letter().await {
                        tracing::warn!(error = %e, "cannot dead-letter");
                    }
                    self.metrics.events_routed(RouteOutcome::Undecodable, 1);
                    continue;
                }
            };
            let mut silenced_by = self.silenced_by(&silences, &ingested, &observed).await;
            let repeat = self.released_before(&ingested, &observed).await;
            // Only subscriptions with time intervals are noted: none, nothing allocated.
            let (mut fired, mut muted_in) = (Vec::new(), Vec::new());
            let matcher = &compiled.matcher;
            let mut actions = matcher.select_reporting(
                &ingested.event,
                now,
                ingested.accepted_at_ms,
                |n| {
                    compiled.matches[n].inc();
                    if matcher.timed(n) {
                        fired.push(n);
                    }
                },
                |n| muted_in.push(n),
            );
            muted += u64::from(!muted_in.is_empty());
            let mut muting = Muting::of(matcher, &fired, &muted_in);
            let released_to = ingested
                .released_by
                .as_ref()
                .and_then(Released::subscription);
            if let Some(subscription) = released_to {
                actions = muting.released_to(matcher, subscription);
            } else if Transition::of(&ingested.event) == Transition::Close {
                let key = ingested.event.alert_key();
                for action in muting
                    .pass_close(matcher, &self.alerts, key, &observed)
                    .await
                {
                    if !actions.contains(&action) {
                        actions.push(action);
                    }
                }
            }
            tracing::debug!(event = %ingested.event.id, actions = ?actions, silenced_by = ?silenced_by, muted_for = ?muting.muted_for, "routed");
            if actions.is_empty() {
                unmatched += 1;
                // Nothing was held back: it would have gone nowhere.
                silenced_by = None;
            } else if silenced_by.is_some() {
                silenced += 1;
                actions.clear();
                muting.heard_nothing();
            } else if repeat {
                actions.clear();
            }
            if let Some((first, also)) = actions.split_first() {
                queued += actions.len() as u64;
                jobs.push((
                    bus::event_key(&ingested.event),
                    job_payload(&ingested.event, ingested.accepted_at_ms, first, also),
                ));
            }
            observed.push(Observed {
                event: ingested.event,
                accepted_at_ms: ingested.accepted_at_ms,
                by: ingested.by,
                silenced_by,
                muted_for: muting.muted_for,
                heard_by: muting.heard_by,
            });
            routed.push(delivery);
        }
        if !self.observe_until_done(observed, shutdown).await {
            return;
        }
        if !jobs.is_empty() && !self.publish_until_done(jobs, shutdown).await {
            // Shutting down with the jobs unpublished: leave the events unacked for next time.
            return;
        }
        self.metrics.delivery_jobs_queued(queued);
        self.metrics.events_silenced(silenced);
        self.metrics.events_muted(muted);
        let matched = routed.len() as u64 - unmatched;
        self.metrics.events_routed(RouteOutcome::Matched, matched);
        self.metrics
            .events_routed(RouteOutcome::Unmatched, unmatched);
        let acks = routed.into_iter().map(|d| d.ack());
        for result in futures::future::join_all(acks).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot ack a routed event; it will be routed again");
            }
        }
    }

    /// The silence that holds `ingested` back, if one is active at its acceptance and it is
    /// not the `CLOSE` of an alert whose destinations heard of it (an event no silence held
    /// back, earlier in this batch or before). With no silence: one length check.
    async fn silenced_by(
        &self,
        silences: &SilenceSet,
        ingested: &IngestedEvent,
        batch: &[Observed],
    ) -> Option<String> {
        if silences.is_empty() {
            return None;
        }
        let event = &ingested.event;
        let id = silences.silencing(event, ingested.accepted_at_ms)?;
        if ingested.released_by.as_ref().and_then(Released::silence) == Some(id) {
            // The silence released it: it ended, whatever a set read a moment ago says.
            return None;
        }
        if Transition::of(event) != Transition::Close {
            return Some(id.to_owned());
        }
        let key = event.alert_key();
        let heard_in_batch = batch
            .iter()
            .any(|o| o.silenced_by.is_none() && o.event.alert_key() == key);
        let heard = heard_in_batch
            || self
                .alerts
                .has_unsilenced_event(key)
                .await
                .unwrap_or_else(|e| {
                    // Telling a destination twice that an alert closed beats never telling it.
                    tracing::warn!(error = %e, alert = %key, "cannot tell whether a silenced CLOSE was heard of; delivering it");
                    true
                });
        (!heard).then(|| id.to_owned())
    }

    /// Whether `ingested` is a released copy routed before (queued again by a release that
    /// was claimed again after a crash): then it publishes nothing.
    async fn released_before(&self, ingested: &IngestedEvent, batch: &[Observed]) -> bool {
        if ingested.released_by.is_none() {
            return false;
        }
        let id = &ingested.event.id;
        batch.iter().any(|o| &o.event.id == id)
            || self.alerts.folded(id).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, event = %id, "cannot tell whether a released event was routed before; routing it");
                false
            })
    }

    /// Folds `observed` into their alerts, retrying while the store cannot; false if shutdown
    /// came first (the events then stay unacked, and are routed and folded next time).
    async fn observe_until_done(
        &self,
        observed: Vec<Observed>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let observed: Arc<[Observed]> = observed.into();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.alerts.observe(Arc::clone(&observed)).await {
                Ok(changes) => {
                    self.count(changes);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot note routed events in their alerts; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Counts what folding a batch into the alerts changed.
    fn count(&self, changes: Vec<Change>) {
        let took = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        for change in changes {
            match change {
                Change::Acted { action, via } => self
                    .metrics
                    .alert_act(action.as_str(), ActChannel::from_via(&via)),
                Change::Acknowledged { after_ms } => {
                    self.metrics.alert_acknowledged(took(after_ms))
                }
                Change::Resolved { after_ms } => self.metrics.alert_resolved(took(after_ms)),
            }
        }
    }

    /// Publishes, retrying while the bus is unavailable; false if shutdown came first.
    async fn publish_until_done(
        &self,
        jobs: Vec<(u64, Bytes)>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .bus
                .publish_keyed(Queue::Deliveries, jobs.clone())
                .await
            {
                Ok(()) => return true,
                Err(e) => tracing::warn!(error = %e, "cannot queue delivery jobs; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// The job for `action` and, in `also`, the event's other actions: the event travels once.
fn job_payload(event: &ResourceEvent, accepted_at_ms: i64, action: &str, also: &[&str]) -> Bytes {
    Bytes::from(DeliveryJob::encode_first(
        event,
        accepted_at_ms,
        action,
        also,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::EmbeddedBus;
    use model::Configuration;
    use serde_json::json;

    fn ingested(event_type: &str, severity: &str) -> Bytes {
        let body = json!({
            "eventType": event_type, "severity": severity, "category": "ALERT",
            "subject": "s", "body": "b", "resource": {"resourceName": "r", "resourceType": "vm"}
        });
        let event = model::parse_event(body.to_string().as_bytes(), "id".into(), 0).unwrap();
        let ingested = IngestedEvent {
            event,
            accepted_at_ms: 0,
            by: None,
            released_by: None,
        };
        Bytes::from(serde_json::to_vec(&ingested).unwrap())
    }

    /// The rendered value of `series`, or `None` if it is not exported.
    fn value(metrics: &Metrics, series: &str) -> Option<String> {
        let text = metrics.render().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{series} ")))?;
        Some(line[series.len() + 1..].to_owned())
    }

    #[tokio::test]
    async fn routing_counts_events_jobs_and_subscription_matches() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(EmbeddedBus::open(&dir.path().join("queue.db"), None).unwrap());
        let bus: Arc<dyn Bus> = queue.clone();
        let keys = crate::sealing::Keys::new(&crate::sealing::Keys::generate_key(), &[]);
        let store = ConfigStore::open(
            &::store::Location::Sqlite(dir.path().to_owned()),
            Arc::clone(&bus),
            Arc::new(model::AnyActionType),
            keys,
        )
        .await
        .unwrap();
        let configuration: Configuration = serde_json::from_value(json!({
            "actions": [
                {"name": "x", "type": "STORE", "state": "ENABLED"},
                {"name": "y", "type": "STORE", "state": "ENABLED"}
            ],
            "conditions": [
                {"name": "type-a", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "A"},
                {"name": "fatal", "propertyKey": "severity", "predicate": "EQUALS", "propertyValue": "FATAL"}
            ],
            "subscriptions": [
                {"name": "a-events", "state": "ENABLED", "conditions": ["type-a"], "actions": ["x", "y"]},
                {"name": "fatal-events", "state": "ENABLED", "conditions": ["fatal"], "actions": ["x"]}
            ]
        }))
        .unwrap();
        store
            .change(|c, types| api::replace(c, configuration, types))
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let alerts =
            ::store::alerts::AlertStore::open(&::store::Location::Sqlite(dir.path().to_owned()))
                .await
                .unwrap();
        let silences = ::store::silences::SilenceStore::open(&::store::Location::Sqlite(
            dir.path().to_owned(),
        ))
        .await
        .unwrap();
        let router = Router::new(
            RouterConfig { prefetch: 16 },
            Arc::clone(&bus),
            Arc::new(store),
            alerts,
            Arc::new(Silences::open(silences).await.unwrap()),
            Arc::clone(&metrics),
        );
        // Series exist from the start, at zero.
        let fatal = "tocsin_subscription_matches_total{subscription=\"fatal-events\"}";
        assert_eq!(value(&metrics, fatal).as_deref(), Some("0"));

        let events = vec![
            ingested("A", "FATAL"), // both subscriptions; jobs for x and y
            ingested("A", "INFO"),  // a-events; x and y
            ingested("B", "INFO"),  // nothing
            Bytes::from_static(b"not an event"),
        ];
        bus.publish(Queue::Events, events).await.unwrap();
        let (stop, stopping) = watch::channel(false);
        let running = tokio::spawn(router.run(stopping));
        let started = std::time::Instant::now();
        while queue.depth(Queue::Events).await.unwrap() > 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "not routed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send_replace(true);
        running.await.unwrap().unwrap();

        // One job per matched event, carrying all its actions.
        let mut jobs = bus.subscribe(Queue::Deliveries, 10).await.unwrap();
        let mut queued = Vec::new();
        for _ in 0..2 {
            let job = tokio::time::timeout(Duration::from_secs(5), jobs.next()).await;
            queued.push(job.expect("two jobs").unwrap());
        }
        let actions: Vec<Vec<String>> = queued
            .iter()
            .map(|d| {
                let job: model::DeliveryJob = serde_json::from_slice(&d.payload).unwrap();
                job.split().into_iter().map(|j| j.action).collect()
            })
            .collect();
        assert_eq!(actions, [["x", "y"], ["x", "y"]]);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), jobs.next())
                .await
                .is_err(),
            "and no more"
        );
        for (series, expected) in [
            ("tocsin_events_routed_total{outcome=\"matched\"}", "2"),
            ("tocsin_events_routed_total{outcome=\"unmatched\"}", "1"),
            ("tocsin_events_routed_total{outcome=\"undecodable\"}", "1"),
            ("tocsin_delivery_jobs_queued_total", "4"),
            (
                "tocsin_subscription_matches_total{subscription=\"a-events\"}",
                "2",
            ),
            (fatal, "1"),
        ] {
            assert_eq!(
                value(&metrics, series).as_deref(),
                Some(expected),
                "{series}"
            );
        }
    }
}
