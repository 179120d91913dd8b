//! The reconciliation stage: movements → daily reconciliation → variance records and alerts.
//!
//! # Layout
//! - `model.rs`: the plain inputs (stocks, batch records, ePODs, discharges, meter deltas, GPS
//!   tracks) and outputs (variance records, alerts);
//! - `engine.rs`: the pure computation of one site and day (chain, tank balances, parcels,
//!   trips, meter checks and trends, tolerance verdicts), unit-tested without a database;
//! - `config.rs`: `[reconcile]`, the site model and tolerances;
//! - `run.rs`: loading a day's inputs from the store (tank NSV from gauge tags and strapping
//!   tables through [`crate::measure`]), running the engine, saving the results; the daily
//!   schedule and the 5-minute stale-tag check;
//! - `error.rs`.
//!
//! The simulated terminal month the tests reconcile is test support outside this library: the
//! `flowsquare-sim-month` crate (`sim-month/`), built on site-sim's terminal physics.

pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod run;

pub use config::ReconcileConfig;
pub use engine::{reconcile_day, DayResult, Params};
pub use error::ReconcileError;
pub use run::{Reconciler, RunReport};
