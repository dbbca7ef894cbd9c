//! The alerts API, under `/tocsin/v1/alerts` (Tocsin's own, beside the ANS APIs):
//! - `GET /tocsin/v1/alerts` — the alerts, last seen first, filtered by `state`, `severity`,
//!   `eventType`, `resourceName`, `since`/`until` (last seen, epoch seconds) and `q` (text in
//!   the key or subject), paged like the consumer API;
//! - `GET /tocsin/v1/alerts/{key}` — one alert and its timeline: every event of its chain, every
//!   delivery attempt of each, every person's act; and what each stateful destination created
//!   for it ([`created`]: the Slack thread, the B2C incident, the ServiceNow record);
//! - `POST /tocsin/v1/alerts/{key}/acknowledge|unacknowledge|resolve|comment` with an optional
//!   `{"comment": "…"}` (required for `comment`).
//!
//! An act is checked against the alert as it is (404 for an unknown alert, 409 for a resolved
//! one, 200 and nothing more when it is already so), then sent into the pipeline as an event
//! of the alert's chain carrying the act ([`act`]): `202` once it is queued. The router folds
//! the act into the alert's state as it routes the event, and the subscriptions carry the event
//! to the destinations — the incident gets the note and is solved, the Slack thread the reply.
//! Reading and acting both need the `responder` scope. Every act is audited ([`audit`]:
//! `GET /tocsin/v1/audit`, `configuration` scope) by the one act path every way of acting
//! takes ([`perform`]).

mod act;
mod api;
pub mod audit;
mod created;
mod paging;

pub use act::{act_event, perform, ActError, Performed};
pub use api::{alert_with_timeline, check_comment, list_page, routes, State};
