//! Simulated Modbus devices: register maps with constant and generated values, per-unit fault
//! injection, Modbus TCP and RTU servers, a gantry batch controller (`gantry.rs`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), site_sim::modbus::SimError> {
//! use std::sync::Arc;
//! use site_sim::modbus::{serve_tcp, Simulator};
//!
//! let sim = Arc::new(Simulator::load("config/sim/modbus-demo.toml")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await
//!     .map_err(|e| site_sim::modbus::SimError::io("bind", e))?;
//! tokio::spawn(serve_tcp(listener, sim.clone(), std::future::pending()));
//! if let Some(faults) = sim.faults(1) {
//!     faults.set_silent(true); // unit 1 stops answering from the next request on
//! }
//! # Ok(()) }
//! ```

pub mod config;
pub mod error;
pub mod faults;
mod frame;
pub mod gantry;
pub mod gen_map;
pub mod generator;
mod registers;
pub mod server;
pub mod service;
mod simulator;
pub mod values;

pub use config::MapConfig;
pub use error::SimError;
pub use faults::{ExceptionRule, FaultHandle, Faults};
pub use gantry::{Ack, BatchRecord, Gantry, GantryConfig};
pub use registers::MAX_STRING_LENGTH;
pub use server::{
    open_serial, serve_rtu, serve_rtu_path, serve_tcp, Parity, SerialConfig, RTU_RESYNC_TIMEOUT,
};
pub use service::{Outcome, Reply, SimService, Transport};
pub use simulator::{PointInfo, Simulator, Unit, UnitStats, WriteEvent};
pub use values::{DataType, RegisterKind, Value, WordOrder};
