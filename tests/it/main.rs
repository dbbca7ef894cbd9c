//! The end-to-end tests: one binary (it links once on a 2-core machine), one module per area.
//! Each test runs the real `tocsin` binary against real things (see `common`).

mod act_links;
mod alert_lifecycle;
mod alerts;
mod alerts_cli;
mod auth_edges;
mod b2c_incident_lifecycle;
mod channels_end_to_end;
mod chat_control;
mod circuit_breaker;
mod clients;
mod common;
mod config_at_rest;
mod configuration_api;
mod console;
mod crash_recovery;
mod dead_letters;
mod docs_examples;
mod grouping;
mod https;
mod idempotency;
mod image;
mod observability;
mod oci_notifications;
mod openapi;
mod outbound_policy;
mod sap_client;
mod settings_strict;
mod shared_store;
mod silences;
mod sources_cloudevents_alertmanager;
mod store_and_forward;
mod store_end_to_end;
mod store_outage;
mod time_intervals;
