//! Deterministic synthetic tank-farm data, for size tests and benchmarks here and in the agent
//! and ingest (no randomness crate, no I/O: the same parameters always give the same batch).

use serde::Serialize;

use crate::batch::{Batch, Quality, WireReading, WireValue};

/// A tiny xorshift64 generator (Marsaglia), good enough for test data.
#[derive(Debug, Clone)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator from a seed (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        XorShift64(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A tank farm polled once a second: `tags` tags on devices of 20 tags each, for `seconds`.
///
/// Tags cycle through ten roles (tag index mod 10), values made the way the agent makes them
/// (scaled registers are `raw / 10^k`, float registers are widened `f32`):
///
/// | role | tag            | value                                                   |
/// |------|----------------|---------------------------------------------------------|
/// | 0-2  | level, m       | random walk in 1 mm steps (u32 mm / 1000)               |
/// | 3-4  | temperature, °C| changes by 0.1 now and then (i16 tenths / 10)           |
/// | 5-6  | totalizer, m3  | increases by 0-5 L a second while flowing (u32 L / 1000)|
/// | 7    | flow, m3/h     | `f32` register, noisy around a set point while flowing  |
/// | 8    | density, kg/m3 | `f32` register, drifting slowly                         |
/// | 9    | pump running   | bool, rarely changes                                    |
///
/// Each device is polled at `start_ms + s × 1000 + its offset + 0-15 ms jitter`; all tags of
/// a device share the timestamp of that poll.
#[derive(Debug, Clone)]
pub struct TankFarm {
    /// Number of tags.
    pub tags: usize,
    /// Number of one-second polls.
    pub seconds: usize,
    /// Time of the first poll, UTC ms.
    pub start_ms: i64,
    /// Random seed.
    pub seed: u64,
    /// Read every analog value through an `f32` register (widened to `f64`): the harder case
    /// for the encoder, where no value is a short decimal.
    pub f32_registers: bool,
}

impl TankFarm {
    /// `tags` × `seconds` readings from a fixed seed and start time.
    pub fn new(tags: usize, seconds: usize) -> Self {
        TankFarm {
            tags,
            seconds,
            start_ms: 1_700_000_000_000,
            seed: 42,
            f32_registers: false,
        }
    }

    /// The readings in poll order (time-major), all of good quality.
    pub fn readings(&self) -> Vec<WireReading> {
        let mut rng = XorShift64::new(self.seed);
        // Per-tag state: an integer for the scaled roles, a float for the f32 roles.
        let mut raw: Vec<i64> = Vec::with_capacity(self.tags);
        let mut real: Vec<f32> = Vec::with_capacity(self.tags);
        let mut flowing: Vec<bool> = Vec::with_capacity(self.tags);
        for t in 0..self.tags {
            raw.push(match t % 10 {
                0..=2 => 2_000 + rng.below(13_000) as i64,
                3..=4 => 150 + rng.below(150) as i64,
                5..=6 => rng.below(4_000_000_000) as i64,
                9 => i64::from(rng.chance(0.5)),
                _ => 0,
            });
            real.push(match t % 10 {
                7 => 80.0 + rng.below(400) as f32,
                8 => 700.0 + rng.below(200) as f32 + 0.1 * rng.below(10) as f32,
                _ => 0.0,
            });
            flowing.push(rng.chance(0.5));
        }
        let devices = self.tags.div_ceil(20);
        let offsets: Vec<i64> = (0..devices).map(|d| (d as i64 * 37) % 1000).collect();

        let mut out = Vec::with_capacity(self.tags * self.seconds);
        for s in 0..self.seconds {
            let ts: Vec<i64> = offsets
                .iter()
                .map(|o| self.start_ms + s as i64 * 1000 + o + rng.below(16) as i64)
                .collect();
            for t in 0..self.tags {
                let value = match t % 10 {
                    0..=2 => {
                        raw[t] += rng.below(3) as i64 - 1;
                        WireValue::Float(raw[t] as f64 / 1000.0)
                    }
                    3..=4 => {
                        if rng.chance(0.1) {
                            raw[t] += if rng.chance(0.5) { 1 } else { -1 };
                        }
                        WireValue::Float(raw[t] as f64 / 10.0)
                    }
                    5..=6 => {
                        if flowing[t] {
                            raw[t] = (raw[t] + rng.below(6) as i64) % 4_294_967_296;
                        }
                        WireValue::Float(raw[t] as f64 / 1000.0)
                    }
                    7 => {
                        let noise = (rng.below(2001) as f32 - 1000.0) * 0.0005;
                        let v = if flowing[t] { real[t] + noise } else { 0.0 };
                        WireValue::Float(f64::from(v))
                    }
                    8 => {
                        real[t] += (rng.below(3) as f32 - 1.0) * 0.01;
                        WireValue::Float(f64::from(real[t]))
                    }
                    _ => {
                        if rng.chance(0.01) {
                            raw[t] ^= 1;
                        }
                        WireValue::Bool(raw[t] != 0)
                    }
                };
                let value = match value {
                    WireValue::Float(f) if self.f32_registers => {
                        WireValue::Float(f64::from(f as f32))
                    }
                    other => other,
                };
                out.push(WireReading {
                    tag: t as u32,
                    ts_ms: ts[t / 20],
                    value: Some(value),
                    quality: Quality::Good,
                    status: None,
                    error: None,
                    counter: None,
                });
            }
        }
        out
    }

    /// A batch of [`TankFarm::readings`].
    pub fn batch(&self) -> Batch {
        let mut b = Batch::new(
            "terminal-01",
            "gw-01",
            1,
            "sha256:5e1f0c",
            self.start_ms + self.seconds as i64 * 1000,
        );
        b.readings = self.readings();
        b
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonValue<'a> {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(&'a str),
}

#[derive(Serialize)]
struct JsonReading<'a> {
    tag: u32,
    ts: i64,
    value: Option<JsonValue<'a>>,
    quality: &'static str,
}

/// The readings of a batch as a plain JSON array of `{tag, ts, value, quality}` objects: the
/// naive format the batch encoding is compared with.
pub fn readings_json(batch: &Batch) -> Vec<u8> {
    let rows: Vec<JsonReading<'_>> = batch
        .readings
        .iter()
        .map(|r| JsonReading {
            tag: r.tag,
            ts: r.ts_ms,
            value: r.value.as_ref().map(|v| match v {
                WireValue::Bool(b) => JsonValue::Bool(*b),
                WireValue::Int(i) => JsonValue::Int(*i),
                WireValue::UInt(u) => JsonValue::UInt(*u),
                WireValue::Float(f) => JsonValue::Float(*f),
                WireValue::Text(s) => JsonValue::Text(s),
            }),
            quality: r.quality.as_str(),
        })
        .collect();
    // Cannot fail: plain structs of numbers and strings.
    serde_json::to_vec(&rows).expect("plain readings always serialize")
}
