//! A simulated gantry batch controller (DanLoad / MultiLoad / AccuLoad style): one bay loading
//! trucks. Each completed batch writes its record block, then bumps the sequence register —
//! the order a real controller uses, so a reader that sees the new number finds the whole
//! record. Options: the sequence wraps after `seq_rollover` (9999 → 0), records can be
//! skipped (the number jumps), and the controller can wait for the agent's handshake before
//! the next batch (an ack coil the agent sets, or a register the agent writes the sequence
//! number into).
//!
//! # Record layout (holding registers, offsets from `base`)
//!
//! | offset | field | type | unit |
//! | --- | --- | --- | --- |
//! | 0 | sequence number | u16 | |
//! | 2 | bay | u16 | |
//! | 3 | arm | u16 | |
//! | 4 | compartment | u16 | |
//! | 5–8 | product | string, 8 bytes | |
//! | 9–16 | BOL (load) number | string, 16 bytes | |
//! | 17 | preset | u32 | L |
//! | 19 | gross volume | f32 | L |
//! | 21 | net standard volume | f32 | L (15 °C) |
//! | 23 | average temperature | f32 | °C |
//! | 25 | density | f32 | kg/m³ |
//! | 27 | meter factor | f32 | |
//! | 29 / 31 | start / end time | u32 | Unix s |
//! | 33 / 35 | start / end totalizer | u32 | L |
//! | 37–44 | truck | string, 16 bytes | |
//! | 45–48 | meter | string, 8 bytes | |
//!
//! (The truck and meter fields are blank unless the record was [`Gantry::publish`]ed by a
//! caller that knows them, as the simulated terminal does.)
//!
//! All values are big-endian (ABCD). [`Gantry::agent_event_toml`] prints the matching edge-agent
//! `[[device.event]]`.
//!
//! Used in-process ([`Gantry::complete_batch`], [`Gantry::skip`], [`Gantry::wait_for_ack`]) or
//! on a timer ([`Gantry::run`]; `[unit.gantry]` in a `flowsquare-sim` map).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use super::simulator::Unit;
use super::values::{DataType, RegisterKind, Value, WordOrder};
use crate::duration::HumanDuration;

/// Offset of the first record register after the sequence number.
pub const BLOCK_START: u16 = 2;
/// Registers of the record block from `base` (sequence number included).
pub const BLOCK_LEN: u16 = 49;

/// How the controller waits for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// It does not wait.
    #[default]
    None,
    /// The agent sets coil `ack_address` to true; the controller clears it with the next record.
    Coil,
    /// The agent writes the record's sequence number into holding register `ack_address`.
    Register,
}

/// `[unit.gantry]`: a batch-record generator on a unit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GantryConfig {
    /// Holding register of the sequence number; the record follows (see the module docs).
    #[serde(default = "default_base")]
    pub base: u16,
    /// Bay number written into every record.
    #[serde(default = "default_bay")]
    pub bay: u16,
    /// Loading arms of the bay (records cycle through 1..=arms).
    #[serde(default = "default_arms")]
    pub arms: u16,
    /// Last sequence number before it wraps to 0.
    #[serde(default = "default_rollover")]
    pub seq_rollover: u16,
    /// Sequence number shown before the first batch.
    #[serde(default)]
    pub start_seq: u16,
    /// Handshake the controller waits for: `none`, `coil` or `register`.
    #[serde(default)]
    pub ack: Ack,
    /// Coil (ack = "coil") or holding register (ack = "register") of the handshake.
    #[serde(default = "default_ack_address")]
    pub ack_address: u16,
    /// Time between two batches when running on a timer.
    #[serde(default = "default_interval")]
    pub batch_interval: HumanDuration,
    /// When running on a timer: every Nth batch, one sequence number is skipped (a record the
    /// agent never sees). 0 = never.
    #[serde(default)]
    pub skip_every: u32,
}

fn default_base() -> u16 {
    100
}
fn default_bay() -> u16 {
    1
}
fn default_arms() -> u16 {
    2
}
fn default_rollover() -> u16 {
    9999
}
fn default_ack_address() -> u16 {
    100
}
fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl Default for GantryConfig {
    fn default() -> Self {
        GantryConfig {
            base: default_base(),
            bay: default_bay(),
            arms: default_arms(),
            seq_rollover: default_rollover(),
            start_seq: 0,
            ack: Ack::None,
            ack_address: default_ack_address(),
            batch_interval: default_interval(),
            skip_every: 0,
        }
    }
}

/// One batch record as the controller wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    /// Sequence number.
    pub seq: u16,
    /// Bay.
    pub bay: u16,
    /// Arm.
    pub arm: u16,
    /// Compartment.
    pub compartment: u16,
    /// Product code.
    pub product: String,
    /// Bill of lading / load number.
    pub bol: String,
    /// Preset, L.
    pub preset: u32,
    /// Gross volume, L.
    pub gross: f32,
    /// Net standard volume, L.
    pub nsv: f32,
    /// Average temperature, °C.
    pub avg_temp: f32,
    /// Density, kg/m³.
    pub density: f32,
    /// Meter factor.
    pub meter_factor: f32,
    /// Start time, Unix s.
    pub start_time: u32,
    /// End time, Unix s.
    pub end_time: u32,
    /// Totalizer at start, L.
    pub start_total: u32,
    /// Totalizer at end, L.
    pub end_total: u32,
    /// Truck (blank when unknown).
    pub truck: String,
    /// Meter id (blank when unknown).
    pub meter: String,
}

#[derive(Debug)]
struct State {
    seq: u16,
    batches: u32,
    total: u32,
    clock_s: u32,
}

/// A gantry batch controller on a simulated unit.
#[derive(Debug)]
pub struct Gantry {
    unit: Arc<Unit>,
    cfg: GantryConfig,
    state: Mutex<State>,
}

fn words(dt: DataType, v: &Value, length: u16) -> Vec<u16> {
    super::values::encode(dt, WordOrder::ABCD, v, length).unwrap_or_default()
}

impl Gantry {
    /// Put a controller on `unit`: the sequence register shows `start_seq`, the ack is clear.
    pub fn new(unit: Arc<Unit>, cfg: GantryConfig) -> Arc<Gantry> {
        let g = Gantry {
            state: Mutex::new(State {
                seq: cfg.start_seq,
                batches: 0,
                total: 1_000_000,
                clock_s: 1_780_000_000,
            }),
            unit,
            cfg,
        };
        let _ = g
            .unit
            .set_words(RegisterKind::Holding, g.cfg.base, &[g.cfg.start_seq]);
        g.clear_ack();
        Arc::new(g)
    }

    /// Its configuration.
    pub fn config(&self) -> &GantryConfig {
        &self.cfg
    }

    /// The sequence number on display.
    pub fn seq(&self) -> u16 {
        self.state.lock().map(|s| s.seq).unwrap_or(0)
    }

    fn next_seq(&self, seq: u16, by: u32) -> u16 {
        let m = u32::from(self.cfg.seq_rollover) + 1;
        ((u32::from(seq) + by) % m) as u16
    }

    fn clear_ack(&self) {
        match self.cfg.ack {
            Ack::None => {}
            Ack::Coil => {
                let _ = self
                    .unit
                    .set_bits(RegisterKind::Coil, self.cfg.ack_address, &[false]);
            }
            Ack::Register => {
                // A value that is no sequence number of the next record.
                let _ =
                    self.unit
                        .set_words(RegisterKind::Holding, self.cfg.ack_address, &[u16::MAX]);
            }
        }
    }

    /// Has the agent acknowledged the record on display?
    pub fn acked(&self) -> bool {
        match self.cfg.ack {
            Ack::None => true,
            Ack::Coil => self
                .unit
                .bits(RegisterKind::Coil, self.cfg.ack_address, 1)
                .first()
                .copied()
                .unwrap_or(false),
            Ack::Register => {
                self.unit
                    .words(RegisterKind::Holding, self.cfg.ack_address, 1)
                    .first()
                    .copied()
                    == Some(self.seq())
            }
        }
    }

    /// Wait until the agent acknowledged the record on display; false after `timeout`.
    pub async fn wait_for_ack(&self, timeout: Duration) -> bool {
        let mut writes = self.unit.subscribe_writes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.acked() {
                return true;
            }
            match tokio::time::timeout_at(deadline, writes.recv()).await {
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) | Err(_) => return self.acked(),
            }
        }
    }

    /// Complete the next batch: write its record, then show its sequence number.
    pub fn complete_batch(&self) -> BatchRecord {
        let rec = {
            let Ok(mut s) = self.state.lock() else {
                // A panicking test thread poisoned it; nothing sensible to write.
                return self.record_for(0, 0, 0, 0);
            };
            let seq = self.next_seq(s.seq, 1);
            s.batches += 1;
            let r = self.record_for(seq, s.batches, s.total, s.clock_s);
            s.total = r.end_total;
            s.clock_s = r.end_time + 60;
            s.seq = seq;
            r
        };
        self.write_record(&rec);
        rec
    }

    /// Skip `n` records: `n` batches happen (their volume moves the totalizer, their sequence
    /// numbers are used) but their records are never shown, as when a reader misses them.
    pub fn skip(&self, n: u16) {
        if let Ok(mut s) = self.state.lock() {
            for _ in 0..n {
                s.batches += 1;
                let r = self.record_for(0, s.batches, s.total, s.clock_s);
                s.total = r.end_total;
                s.clock_s = r.end_time + 60;
            }
            s.seq = self.next_seq(s.seq, u32::from(n));
        }
    }

    fn record_for(&self, seq: u16, batch: u32, total: u32, clock_s: u32) -> BatchRecord {
        let preset = 5_000 + (batch % 7) * 1_000;
        // Meters deliver close to the preset; gross = end − start totalizer exactly.
        let gross_l = preset - (batch % 3);
        let temp = 18.0 + (batch % 10) as f32 * 0.5;
        let density = 835.0 + (batch % 5) as f32;
        // A rough VCF for diesel near 15 °C: 1 − 0.00083·(t − 15).
        let vcf = 1.0 - 0.00083 * (temp - 15.0);
        BatchRecord {
            seq,
            bay: self.cfg.bay,
            arm: 1 + (batch % u32::from(self.cfg.arms.max(1))) as u16,
            compartment: 1 + (batch % 4) as u16,
            product: if batch % 2 == 0 { "ULP95" } else { "DIESEL" }.into(),
            bol: format!("BOL-{:06}", batch),
            preset,
            gross: gross_l as f32,
            nsv: (gross_l as f32 * vcf).round(),
            avg_temp: temp,
            density,
            meter_factor: 1.0002,
            start_time: clock_s,
            end_time: clock_s + 420 + batch % 60,
            start_total: total,
            end_total: total + gross_l,
            truck: String::new(),
            meter: String::new(),
        }
    }

    /// Show a record the caller made (a simulated terminal that knows its trucks and meters):
    /// it gets the next sequence number (returned), is written, then the number is shown.
    pub fn publish(&self, mut rec: BatchRecord) -> u16 {
        let seq = match self.state.lock() {
            Ok(mut s) => {
                let seq = self.next_seq(s.seq, 1);
                s.batches += 1;
                s.seq = seq;
                s.total = rec.end_total;
                seq
            }
            // A panicking thread poisoned it; nothing sensible to show.
            Err(_) => return 0,
        };
        rec.seq = seq;
        rec.bay = self.cfg.bay;
        self.write_record(&rec);
        seq
    }

    fn write_record(&self, r: &BatchRecord) {
        let b = self.cfg.base;
        let h = RegisterKind::Holding;
        let u = |off: u16, w: Vec<u16>| {
            let _ = self.unit.set_words(h, b + off, &w);
        };
        // The handshake of the previous record no longer applies.
        self.clear_ack();
        u(2, vec![r.bay, r.arm, r.compartment]);
        u(
            5,
            words(DataType::String, &Value::Text(r.product.clone()), 8),
        );
        u(9, words(DataType::String, &Value::Text(r.bol.clone()), 16));
        u(
            17,
            words(DataType::U32, &Value::Int(i64::from(r.preset)), 0),
        );
        for (off, v) in [
            (19, r.gross),
            (21, r.nsv),
            (23, r.avg_temp),
            (25, r.density),
            (27, r.meter_factor),
        ] {
            u(off, words(DataType::F32, &Value::Float(f64::from(v)), 0));
        }
        for (off, v) in [
            (29, r.start_time),
            (31, r.end_time),
            (33, r.start_total),
            (35, r.end_total),
        ] {
            u(off, words(DataType::U32, &Value::Int(i64::from(v)), 0));
        }
        u(
            37,
            words(DataType::String, &Value::Text(r.truck.clone()), 16),
        );
        u(
            45,
            words(DataType::String, &Value::Text(r.meter.clone()), 8),
        );
        // Last: the new sequence number makes the record visible.
        u(0, vec![r.seq]);
    }

    /// Run on a timer until `stop` resolves: a batch every `batch_interval` (waiting for the
    /// handshake first when `ack` is set), skipping one number every `skip_every` batches.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.batch_interval.0) => {}
                _ = &mut stop => return,
            }
            // Before the first batch there is no record to acknowledge.
            if self.cfg.ack != Ack::None && n > 0 {
                tokio::select! {
                    _ = async { while !self.wait_for_ack(Duration::from_secs(3600)).await {} } => {}
                    _ = &mut stop => return,
                }
            }
            n += 1;
            if self.cfg.skip_every > 0 && n % self.cfg.skip_every == 0 {
                self.skip(1);
                tracing::info!(
                    unit = self.unit.id(),
                    seq = self.seq(),
                    "gantry: record skipped"
                );
            }
            let r = self.complete_batch();
            tracing::info!(unit = self.unit.id(), seq = r.seq, bol = %r.bol, gross = r.gross, "gantry: batch complete");
        }
    }

    /// The edge-agent `[[device.event]]` matching this controller (append to a `[[device]]`).
    pub fn agent_event_toml(&self, name: &str) -> String {
        let b = self.cfg.base;
        let mut s = format!(
            "[[device.event]]\nname = \"{name}\"\nkind = \"gantry-batch\"\nseq_rollover = {}\n\
             trigger = {{ register = \"holding\", address = {b}, type = \"u16\", mode = \"sequence\" }}\n",
            self.cfg.seq_rollover
        );
        match self.cfg.ack {
            Ack::None => {}
            Ack::Coil => s.push_str(&format!(
                "handshake = {{ register = \"coil\", address = {}, value = true }}\n",
                self.cfg.ack_address
            )),
            Ack::Register => s.push_str(&format!(
                "handshake = {{ register = \"holding\", address = {}, type = \"u16\", value = \"seq\" }}\n",
                self.cfg.ack_address
            )),
        }
        s.push_str("fields = [\n");
        for (n, off, ty, extra) in [
            ("bay", 2, "u16", ""),
            ("arm", 3, "u16", ""),
            ("compartment", 4, "u16", ""),
            ("product", 5, "string", ", length = 8"),
            ("bol", 9, "string", ", length = 16"),
            ("preset", 17, "u32", ", unit = \"L\""),
            ("gross_volume", 19, "f32", ", unit = \"L\""),
            ("net_standard_volume", 21, "f32", ", unit = \"L\""),
            ("avg_temperature", 23, "f32", ", unit = \"degC\""),
            ("density", 25, "f32", ", unit = \"kg/m3\""),
            ("meter_factor", 27, "f32", ""),
            ("start_time", 29, "u32", ", unit = \"s\""),
            ("end_time", 31, "u32", ", unit = \"s\""),
            ("start_totalizer", 33, "u32", ", unit = \"L\""),
            ("end_totalizer", 35, "u32", ", unit = \"L\""),
        ] {
            s.push_str(&format!(
                "  {{ name = \"{n}\", register = \"holding\", address = {}, type = \"{ty}\"{extra} }},\n",
                b + off
            ));
        }
        s.push_str("]\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::Simulator;

    fn gantry(cfg: GantryConfig) -> Arc<Gantry> {
        let sim = Simulator::from_toml_str("[[unit]]\nid = 1\n").expect("sim");
        let unit = sim.unit(1).expect("unit").clone();
        Gantry::new(unit, cfg)
    }

    #[test]
    fn records_are_written_before_the_sequence_number_and_wrap_at_rollover() {
        let g = gantry(GantryConfig {
            start_seq: 9998,
            ..GantryConfig::default()
        });
        let r = g.complete_batch();
        assert_eq!(r.seq, 9999);
        assert_eq!(r.end_total - r.start_total, r.gross as u32);
        let r2 = g.complete_batch();
        assert_eq!(r2.seq, 0);
        assert_eq!(r2.start_total, r.end_total);
        assert_eq!(g.unit.words(RegisterKind::Holding, 100, 1), vec![0]);
        g.skip(2);
        let r3 = g.complete_batch();
        assert_eq!(r3.seq, 3);
        assert!(
            r3.start_total > r2.end_total,
            "the skipped batches moved the totalizer"
        );
    }

    #[test]
    fn the_demo_map_parses_with_its_gantry() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/sim/gantry-demo.toml"
        );
        let map = crate::modbus::MapConfig::load(path).expect("gantry demo map");
        let g = map.units[0].gantry.as_ref().expect("gantry");
        assert_eq!(g.ack, Ack::Coil);
        Simulator::new(&map).expect("simulator");
    }

    #[test]
    fn coil_ack_is_cleared_by_the_next_record() {
        let g = gantry(GantryConfig {
            ack: Ack::Coil,
            ..GantryConfig::default()
        });
        g.complete_batch();
        assert!(!g.acked());
        g.unit
            .set_bits(RegisterKind::Coil, 100, &[true])
            .expect("set");
        assert!(g.acked());
        g.complete_batch();
        assert!(!g.acked());
    }
}
