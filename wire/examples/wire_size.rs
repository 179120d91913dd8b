//! Size and speed of the batch format on synthetic tank-farm data, against plain JSON and
//! JSON + zstd.
//!
//!     cargo run -p flowsquare-wire --example wire_size --release

use std::time::{Duration, Instant};

use flowsquare_wire::batch::{self, Compression, DEFAULT_ZSTD_LEVEL};
use flowsquare_wire::synth::{readings_json, TankFarm};

/// Run `f` until at least `min` has passed (and at least 3 times); the mean time per run.
fn time<T>(min: Duration, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || start.elapsed() < min {
        std::hint::black_box(f());
        runs += 1;
    }
    start.elapsed() / runs
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.1} M/s", n as f64 / d.as_secs_f64() / 1e6)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let min = Duration::from_millis(500);
    for f32_registers in [false, true] {
        println!(
            "\n200 tags at 1 s, {} (B = bytes per reading; throughput in readings/s)",
            if f32_registers {
                "every analog value from an f32 register"
            } else {
                "scaled registers (raw / 10^k) plus f32 flow and density"
            }
        );
        println!(
            "{:>8} {:>9} {:>9} {:>11} {:>7} {:>10} {:>10} {:>11}",
            "readings",
            "batch B",
            "JSON B",
            "JSON+zstd B",
            "vs JSON",
            "vs J+zstd",
            "encode",
            "decode"
        );
        for seconds in [5, 50, 500] {
            let farm = TankFarm {
                f32_registers,
                ..TankFarm::new(200, seconds)
            };
            let b = farm.batch();
            let n = b.readings.len();
            let bytes = batch::encode(&b)?;
            let json = readings_json(&b);
            let json_zstd = zstd::bulk::compress(&json, DEFAULT_ZSTD_LEVEL)?;
            let enc = time(min, || batch::encode(&b));
            let dec = time(min, || batch::decode(&bytes));
            let per = |len: usize| len as f64 / n as f64;
            println!(
                "{n:>8} {:>9.2} {:>9.1} {:>11.2} {:>6.0}x {:>9.1}x {:>10} {:>10}",
                per(bytes.len()),
                per(json.len()),
                per(json_zstd.len()),
                json.len() as f64 / bytes.len() as f64,
                json_zstd.len() as f64 / bytes.len() as f64,
                rate(n, enc),
                rate(n, dec),
            );
        }
    }

    println!("\nzstd level, 10 000 readings (scaled registers):");
    println!(
        "{:>6} {:>9} {:>10} {:>10}",
        "level", "batch B", "encode", "decode"
    );
    let b = TankFarm::new(200, 50).batch();
    let n = b.readings.len();
    let raw = batch::encode_with(&b, Compression::None)?;
    println!(
        "{:>6} {:>9.2} {:>10} {:>10}",
        "none",
        raw.len() as f64 / n as f64,
        rate(n, time(min, || batch::encode_with(&b, Compression::None))),
        rate(n, time(min, || batch::decode(&raw))),
    );
    for level in [1, 3, 9, 19] {
        let bytes = batch::encode_with(&b, Compression::Zstd(level))?;
        println!(
            "{level:>6} {:>9.2} {:>10} {:>10}",
            bytes.len() as f64 / n as f64,
            rate(
                n,
                time(min, || batch::encode_with(&b, Compression::Zstd(level)))
            ),
            rate(n, time(min, || batch::decode(&bytes))),
        );
    }
    Ok(())
}
