//! FlowSquare edge agent.
//!
//! # Layout
//! The pipeline is the layout: `config → drivers → filter → buffer → uplink` (+ `sink` for printing).
//!
//! - `config/`: tag maps (TOML): loading with file:line:column diagnostics, validation, the
//!   resolved `TagMap` every stage runs from (tags and `[[device.event]]` definitions);
//! - `drivers/`: acquisition; `drivers/modbus/` (planner, decoder, transport, run loops, probe,
//!   the Modbus event binding), `drivers/events/` (protocol-generic event capture: gantry batch
//!   records; pure sequence/flag bookkeeping and the capture loop),
//!   `drivers/opcua/` (session with security/identity/PKI, status and value mapping, the
//!   subscription/polling run loop with reconnect, the OPC UA event binding),
//!   `drivers/gps/` (NMEA 0183 and gpsd: sentence/report parsers, the merged fix, run loop),
//!   `drivers/tls350/` (Veeder-Root TLS-350: frames and checksum, i201/i202 decoding, delivery
//!   tracker, run loop), `drivers/health.rs` (backoff, unit skipping), `drivers/filter.rs`
//!   (totalizers, deadband), `drivers/stats.rs` (per-device counters), `drivers/lines.rs`
//!   (bounded line splitting, log rate limiting for the serial drivers);
//! - `sink/`: printing readings (JSON lines, tables) until the buffer stage exists;
//! - `model.rs`: `Reading`, `Value`, `Quality`, shared by every stage;
//! - `cli/`: the `edge-agent` subcommands (`probe_serial.rs`: `probe nmea` / `probe tls350`);
//!   `cli/run.rs` is the service: the pipeline, the ordered shutdown, live reload on SIGHUP and
//!   the systemd notifications (crate `flowsquare-service`); `main.rs` only parses, sets up
//!   logging (journal fields under systemd) and dispatches.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod drivers;
pub mod metrics;
pub mod model;
pub mod sink;
pub mod uplink;
