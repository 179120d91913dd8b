//! Measurement benchmark (`cargo bench -p cloud-ingest --bench calc [-- --quick]`), one thread.
//!
//! (a) `measure::ctl_60f` — CTL only, exact mode, base density at 60 °F given: the issue's
//!     target is ≥ 1,000,000 CTL computations per second per core. Inputs cycle through 4,096
//!     precomputed (group, ρ60, t) triples: crude, refined (all four sub-groups) and lube,
//!     ρ60 650…1150 kg/m³, −50…300 °F, so neither the branch predictor nor the cache sees one
//!     repeated input.
//! (b) `measure::correct` for the full request kinds: 60 °F base with pressure (CTL, CPL),
//!     15 °C base (ρ15 → ρ60 root find), observed density (root find with pressure).
//! (c) The `calc` line path: JSON text in → JSON text out (`cli::calc::line`), and the whole
//!     streaming loop (`cli::calc::stream`) over an in-memory input of the same lines.
//!
//! Each figure is the median of 5 runs, per second of this thread's CPU time (per core, from
//! /proc/thread-self/schedstat; the wall-clock rate is printed too, lower when other processes
//! share the cores); `--quick` runs a tenth.

use std::hint::black_box;
use std::time::Instant;

use cloud_ingest::cli::calc;
use cloud_ingest::measure::{
    correct, ctl_60f, Base, Density, DensityAt, Group, Mode, Pressure, Request, Temperature,
};

/// Small deterministic generator (xorshift64*), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time of this thread, seconds (None when /proc is not Linux's).
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

/// Wall-clock rate of the last [`rate`] call (printed next to the CPU rate).
static WALL: std::sync::Mutex<f64> = std::sync::Mutex::new(0.0);

/// Run `f` (which does `n` operations) 5 times; median operations per CPU second.
fn rate(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut sink = 0.0;
    let (mut cpu_rates, mut wall_rates) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (t, c) = (Instant::now(), thread_cpu());
        sink += f();
        let wall = t.elapsed().as_secs_f64();
        let cpu = match (c, thread_cpu()) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => wall,
        };
        cpu_rates.push(n as f64 / cpu);
        wall_rates.push(n as f64 / wall);
    }
    black_box(sink);
    if let Ok(mut w) = WALL.lock() {
        *w = median(wall_rates);
    }
    median(cpu_rates)
}

fn wall() -> String {
    format!("wall {:.0}/s", WALL.lock().map(|w| *w).unwrap_or(0.0))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let groups = [Group::Crude, Group::Refined, Group::Lube];
    let inputs: Vec<(Group, f64, f64)> = (0..4096)
        .map(|i| {
            let g = groups[i % 3];
            let lo = if g == Group::Lube { 810.0 } else { 650.0 };
            (
                g,
                lo + (1150.0 - lo) * rng.next(),
                -50.0 + 350.0 * rng.next(),
            )
        })
        .collect();

    // (a) CTL hot path.
    let n = 20_000_000 / scale;
    let ctl_rate = rate(n, || {
        let mut acc = 0.0;
        for i in 0..n {
            let (g, rho, t) = inputs[i & 4095];
            acc += ctl_60f(black_box(g), black_box(rho), black_box(t)).unwrap_or(0.0);
        }
        acc
    });
    println!(
        "(a) ctl_60f (exact, base density given):      {:>12.0} CTL/s  ({:.1} ns each; target ≥ 1,000,000/s: {}; {})",
        ctl_rate,
        1e9 / ctl_rate,
        if ctl_rate >= 1e6 { "met" } else { "NOT MET" },
        wall()
    );

    // (b) Full requests.
    let reqs = |f: &dyn Fn(Group, f64, f64) -> Request| -> Vec<Request> {
        inputs.iter().map(|&(g, rho, t)| f(g, rho, t)).collect()
    };
    let kinds: [(&str, Vec<Request>); 3] = [
        (
            "correct, 60 °F base, pressure (CTL+CPL)",
            reqs(&|group, rho, t| Request {
                group,
                base: Base::F60,
                density: DensityAt::Base(Density::KgM3(rho)),
                temperature: Temperature::F(t),
                pressure: Pressure::Psi(150.0),
                mode: Mode::Exact,
            }),
        ),
        (
            "correct, 15 °C base (ρ15 → ρ60 root find) ",
            reqs(&|group, rho, t| Request {
                group,
                base: Base::C15,
                density: DensityAt::Base(Density::KgM3(rho * 0.999)),
                temperature: Temperature::F(t),
                pressure: Pressure::KPa(0.0),
                mode: Mode::Exact,
            }),
        ),
        (
            "correct, observed density + pressure      ",
            reqs(&|group, rho, t| Request {
                group,
                base: Base::F60,
                density: DensityAt::Observed(Density::KgM3(rho * 0.98)),
                temperature: Temperature::F(t),
                pressure: Pressure::Bar(10.0),
                mode: Mode::Exact,
            }),
        ),
    ];
    for (name, rs) in &kinds {
        let n = 2_000_000 / scale;
        let r = rate(n, || {
            let mut acc = 0.0;
            for i in 0..n {
                acc += correct(black_box(&rs[i & 4095]))
                    .map(|c| c.ctpl)
                    .unwrap_or(0.0);
            }
            acc
        });
        println!(
            "(b) {name}:  {r:>12.0} requests/s ({:.0} ns each; {})",
            1e9 / r,
            wall()
        );
    }

    // (c) The calc line path.
    let lines: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(i, &(g, rho, t))| {
            let group = match g {
                Group::Crude => "crude",
                Group::Refined => "refined",
                _ => "lube",
            };
            if i % 2 == 0 {
                format!(r#"{{"id":{i},"group":"{group}","base_temp_f":60,"density_base":{rho:.1},"temp_f":{t:.1},"pressure":150,"pressure_unit":"psi"}}"#)
            } else {
                format!(r#"{{"id":{i},"group":"{group}","base_temp_c":15,"density_observed":{:.1},"density_unit":"kg/m3","temp_f":{t:.1}}}"#, rho * 0.98)
            }
        })
        .collect();
    let n = 500_000 / scale;
    let mut out = String::new();
    let r = rate(n, || {
        let mut acc = 0.0;
        for i in 0..n {
            acc += calc::line(black_box(&lines[i & 4095]), &mut out) as u8 as f64;
            acc += out.len() as f64;
        }
        acc
    });
    println!("(c) calc line (JSON in → JSON out):          {r:>12.0} lines/s ({:.0} ns each; half 60 °F base, half observed → 15 °C; {})", 1e9 / r, wall());
    let only_base: Vec<&String> = lines.iter().step_by(2).collect();
    let r = rate(n, || {
        let mut acc = 0.0;
        for i in 0..n {
            acc += calc::line(black_box(only_base[i & 2047]), &mut out) as u8 as f64;
        }
        acc
    });
    println!(
        "(c) calc line, 60 °F base density given:     {r:>12.0} lines/s ({:.0} ns each; {})",
        1e9 / r,
        wall()
    );
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&lines[i & 4095]);
        text.push('\n');
    }
    let mut sink = Vec::with_capacity(text.len() * 2);
    let r = rate(n, || {
        sink.clear();
        let mut input = std::io::BufReader::with_capacity(64 * 1024, text.as_bytes());
        let ok = calc::stream(&mut input, &mut sink).unwrap_or(false);
        sink.len() as f64 + ok as u8 as f64
    });
    println!(
        "(c) calc stream (in-memory stdin → stdout):  {r:>12.0} lines/s ({:.1} MB in; {})",
        text.len() as f64 / 1e6,
        wall()
    );
}
