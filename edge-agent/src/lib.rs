//! FlowSquare edge agent.
//!
//! # Layout
//! The pipeline is the layout: `config → drivers → (buffer → uplink, in later stages) → sink`.
//!
//! - `config/`: tag maps (TOML): loading with file:line:column diagnostics, validation, the
//!   resolved `TagMap` every stage runs from;
//! - `drivers/`: acquisition; `drivers/modbus/` (planner, decoder, transport, run loops, probe),
//!   `drivers/health.rs` (backoff, unit skipping), `drivers/filter.rs` (totalizers, deadband),
//!   `drivers/stats.rs` (per-device counters);
//! - `sink/`: printing readings (JSON lines, tables) until the buffer stage exists;
//! - `model.rs`: `Reading`, `Value`, `Quality`, shared by every stage;
//! - `cli/`: the `edge-agent` subcommands; `cli/run.rs` is the service: the pipeline, the
//!   ordered shutdown, live reload on SIGHUP and the systemd notifications (crate
//!   `flowsquare-service`); `main.rs` only parses, sets up logging (journal fields under
//!   systemd) and dispatches.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod drivers;
pub mod metrics;
pub mod model;
pub mod sink;
pub mod uplink;
