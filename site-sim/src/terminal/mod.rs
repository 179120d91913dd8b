//! The coherent simulated terminal (`flowsquare-sim terminal`): a vessel discharging through
//! the jetty meter into shore tanks, gantry bays loading trucks, trucks driving to stations, and
//! every figure the devices show derived from one physical truth, so cloud-ingest's daily
//! reconciliation adds up — or points at the injected fault.
//!
//! # Layout
//! - `config.rs`: `config/sim/terminal.toml` (tanks, jetty, discharges, bays, loading, trucks,
//!   stations, faults);
//! - `model.rs`: the pure physics stepped by sim time (tank NSV, totalizers, trips, records;
//!   unit-tested mass balance);
//! - `physics.rs`: the pure physics shared with the generated month of `flowsquare-sim-month`
//!   (CTL, gauge figures from the NSV truth, strapping tables, temperatures, distances);
//! - `faults.rs`: the device/relay fault windows in sim time (pure);
//! - `run.rs`: the run loop exposing the model over the Modbus, OPC UA, TLS-350 servers, NMEA
//!   ptys, the MQTT relay and the cloud-ingest API (discharges, ePODs);
//! - `maps.rs`: the matching edge-agent tag maps; `pty.rs`: the pseudo-terminal pairs;
//! - `error.rs`: [`TerminalError`].

pub mod config;
mod error;
pub mod faults;
pub mod maps;
pub mod model;
pub mod physics;
pub mod pty;
pub mod run;

pub use config::TerminalConfig;
pub use error::TerminalError;
pub use model::Model;
pub use run::{run, Endpoint, Options};
