//! The service (`edge-agent run`): the wiring of every stage into one running agent.
//!
//! - `service.rs`: start the stages in order, the service loop (driver outputs, signals,
//!   summaries) and the ordered shutdown;
//! - `pipeline.rs`: the stage between the drivers and the buffer (tag ids of older map
//!   generations translated, deadband filter, counting, printing);
//! - `readiness.rs`: systemd readiness, watchdog on progress, status text;
//! - `reload.rs`: live reload of the tag map on SIGHUP;
//! - `memory.rs`: start-up memory handed back once the agent runs.

pub mod memory;
pub mod pipeline;
pub mod readiness;
pub mod reload;
pub mod service;

pub use service::{run, RuntimeError};
