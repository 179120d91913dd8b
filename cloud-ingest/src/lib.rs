//! FlowSquare cloud ingest.
//!
//! # Layout
//! The pipeline is the layout: `consume → store → reconcile → api`.
//!
//! - `config.rs`: the service configuration (TOML);
//! - `consume/`: MQTT consumer — classification of messages (pure, `state.rs`) and the loop with
//!   manual MQTT acks after the database commit and end-to-end acks to the agents (`run.rs`);
//! - `store/`: the `Store` trait and its backends (`postgres/`, `sqlite/`) with one shared test
//!   suite (`store/suite.rs`);
//! - (to come: `api/` HTTP API and console, `reconcile/`).

pub mod api;
pub mod cli;
pub mod config;
pub mod consume;
pub mod store;
