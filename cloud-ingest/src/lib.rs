//! FlowSquare cloud ingest.
//!
//! # Layout
//! The pipeline is the layout: `consume → store → reconcile → api`.
//!
//! - `config.rs`: the service configuration (TOML);
//! - `broker/`: the optional embedded MQTT broker (rumqttd, with an authenticating gate) for single-box sites and the demo;
//! - `api/`: the HTTP API for cloud ops (bearer roles, problem+json, OpenAPI);
//! - `cli/`: `serve` (with the systemd readiness/watchdog supervision), `migrate`,
//!   `check-config`, `import`, `hash-token`;
//! - `consume/`: MQTT consumer — classification of messages (pure, `state.rs`) and the loop with
//!   manual MQTT acks after the database commit and end-to-end acks to the agents (`run.rs`);
//! - `store/`: the `Store` trait and its backends (`postgres/`, `sqlite/`) with one shared test
//!   suite (`store/suite.rs`);
//! - `measure`: re-export of the `flowsquare-measure` crate (`measure/` in the workspace):
//!   petroleum measurement (pure): API 11.1 CTL/CPL, tank quantities, meter factor;
//! - `reconcile/`: movements (discharges, tank stocks, gantry loadings, ePODs), the daily
//!   reconciliation (chain, tank balances, trips, parcels) with tolerances and its run loop (the
//!   simulated month the tests reconcile is the `flowsquare-sim-month` test-support crate, not
//!   part of this library); `analytics/`: stale tags, meter drift, GPS stops;
//! - `api/console/`: the ops console (embedded HTML/CSS/JS) and its KPI, site-model and track routes;
//! - `times.rs`: time sanity, the one range check of every time the API or a gap record gives.

pub mod analytics;
pub mod api;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consume;
pub mod reconcile;
pub mod store;
pub mod times;

/// Petroleum measurement lives in its own crate (the site simulator needs it too); every
/// `cloud_ingest::measure::…` path keeps working through this re-export.
pub use flowsquare_measure as measure;
