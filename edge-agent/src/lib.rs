//! FlowSquare edge agent.
//!
//! # Layout
//! The pipeline is the layout: `config → drivers → (buffer → uplink, in later stages) → sink`.
//!
//! - `config/`: tag maps (TOML): loading with file:line:column diagnostics, validation, the
//!   resolved `TagMap` every stage runs from;
//! - `drivers/`: acquisition; `drivers/modbus/` (planner, decoder, transport, run loops, probe),
//!   `drivers/opcua/` (session with security/identity/PKI, status and value mapping, the
//!   subscription/polling run loop with reconnect),
//!   `drivers/health.rs` (backoff, unit skipping), `drivers/filter.rs` (totalizers, deadband),
//!   `drivers/stats.rs` (per-device counters);
//! - `sink/`: printing readings (JSON lines, tables) until the buffer stage exists;
//! - `model.rs`: `Reading`, `Value`, `Quality`, shared by every stage;
//! - `cli/`: the `edge-agent` subcommands; `main.rs` only parses and dispatches.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod drivers;
pub mod metrics;
pub mod model;
pub mod sink;
pub mod uplink;
