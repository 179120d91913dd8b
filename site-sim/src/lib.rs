//! FlowSquare site simulator: simulated field devices for integration tests (in-process, through
//! this library) and for benchmarks and demos (as the `flowsquare-sim` binary).
//!
//! # Layout
//!
//! | module | what |
//! | --- | --- |
//! | [`clock`] | simulation time ([`clock::Clock`]: real, or manual for deterministic tests) |
//! | [`duration`] | `"500ms"` / `"2s"` / `"1m"` durations in config files |
//! | [`modbus`] | simulated Modbus devices |
//! | [`modbus::config`] | the register map file (TOML): units, registers, generators, faults |
//! | [`modbus::values`] | register kinds, data types, word orders; value ↔ register encoding |
//! | [`modbus::generator`] | time-dependent values: ramp, sine, counter, random walk |
//! | `modbus::registers` | one unit's register image: mapped points plus client writes |
//! | `modbus::simulator` | [`modbus::Simulator`] (the units of a device) and [`modbus::Unit`] |
//! | [`modbus::gantry`] | a gantry batch controller: batch records, rollover, skips, handshake |
//! | [`modbus::faults`] | fault injection and the runtime [`modbus::FaultHandle`] |
//! | [`modbus::service`] | request routing and execution; the tokio-modbus `Service` impl |
//! | `modbus::frame` | byte-level Modbus: PDU codec, RTU CRC and framing, MBAP |
//! | [`modbus::server`] | TCP and RTU serve loops, serial port opening |
//! | [`modbus::gen_map`] | generated benchmark maps (and the matching agent tag list) |
//! | [`modbus::error`] | [`modbus::SimError`] |
//! | [`nmea`] | NMEA 0183 feeder: a truck on a route (fix loss, bad checksums, partial lines) or a replayed file |
//! | [`tls350`] | Veeder-Root TLS-350 console: i201 inventory, i202 deliveries, 9999FF1B, bad-checksum fault |
//! | [`terminal`] | the coherent simulated terminal: pure model (tanks, meters, trips, faults) exposed over the servers above, NMEA ptys, an MQTT relay, ePODs |
//! | [`opcua`] | simulated OPC UA server (async-opcua): changing variables, optional security, bench items, a gantry batch-record table (`opcua::gantry`) |
//!
//! The binary (`src/main.rs`) is a thin CLI over this library.

pub mod clock;
pub mod duration;
pub mod modbus;
pub mod nmea;
pub mod opcua;
pub mod terminal;
pub mod tls350;
