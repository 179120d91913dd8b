//! FlowSquare edge agent.
//!
//! # Layout
//! The pipeline is the layout: `config → drivers → filter → buffer → uplink` (+ `sink` for printing).
//! Folders, bottom-up (a folder imports only folders listed before it; `tests/layering.rs`
//! checks it and lists the edges that still point up):
//!
//! - `model/`: `Reading`, `Value`, `Quality`, time policy, shared by every stage; gap rows with
//!   their enum reason; the event cursor, digest and the `EventLedger` trait the buffer implements;
//! - `settings/`: diagnostics with file:line:column, spanned TOML parsing, durations;
//! - `drivers/`: acquisition; `drivers/modbus/` (planner, decoder, transport, run loops, probe,
//!   the Modbus event binding), `drivers/events/` (protocol-generic event capture: gantry batch
//!   records; pure sequence/flag bookkeeping and the capture loop),
//!   `drivers/opcua/` (session with security/identity/PKI, status and value mapping, the
//!   subscription/polling run loop with reconnect, the OPC UA event binding),
//!   `drivers/gps/` (NMEA 0183 and gpsd: sentence/report parsers, the merged fix, run loop),
//!   `drivers/tls350/` (Veeder-Root TLS-350: frames and checksum, i201/i202 decoding, delivery
//!   tracker, run loop), `drivers/serial.rs` (serial port settings and opening, for every serial
//!   driver), `drivers/health.rs` (backoff, unit skipping), `drivers/filter.rs`
//!   (totalizers, deadband), `drivers/stats.rs` (per-device counters), `drivers/lines.rs`
//!   (bounded line splitting, log rate limiting for the serial drivers);
//! - `buffer/`, `metrics/`, `uplink/`: store-and-forward, figures, MQTT delivery;
//! - `config/`: tag maps (TOML): loading, validation, the resolved `TagMap` every stage runs from
//!   (tags and `[[device.event]]` definitions), assembled from each driver's protocol config;
//! - `sink/`: printing readings (JSON lines, tables);
//! - `runtime/`: the service: the pipeline stage, readiness and watchdog (systemd, crate
//!   `flowsquare-service`), live reload on SIGHUP, the ordered shutdown;
//! - `cli/`: the `edge-agent` subcommands (`probe_serial.rs`: `probe nmea` / `probe tls350`;
//!   `run.rs` only wiring); `main.rs` only parses, sets up logging (journal fields under
//!   systemd) and dispatches.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod drivers;
pub mod metrics;
pub mod model;
pub mod runtime;
pub mod settings;
pub mod sink;
pub mod uplink;
