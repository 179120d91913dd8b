//! A Veeder-Root TLS-350 console for the edge agent's `tls-350` driver: answers `i201` (in-tank
//! inventory) and `i202` (delivery report) in computer format, `9999FF1B` to everything else,
//! over a serial port / pty or TCP, with an optional bad-checksum fault.
//!
//! - `config.rs`: the console file (TOML): tanks, stored deliveries, faults;
//! - `console.rs`: state and replies (pure);
//! - `server.rs`: serial and TCP serve loops.

pub mod config;
pub mod console;
pub mod server;

pub use config::{ConsoleConfig, DeliveryConfig};
pub use console::Console;
pub use server::{console_now, console_time, serve_serial, serve_stream, serve_tcp, SharedConsole};
