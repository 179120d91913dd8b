//! Time-dependent values. A generator is a pure function of the time `t` since the simulator
//! started, so two simulators with the same map produce the same values at the same `t`.

use std::f64::consts::TAU;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::config::GeneratorConfig;

/// A validated generator, ready to evaluate.
#[derive(Debug)]
pub struct Generator(Kind);

#[derive(Debug)]
enum Kind {
    Constant(f64),
    Ramp {
        step: f64,
        every_ns: u128,
        min: f64,
        steps_per_cycle: u128,
    },
    Sine {
        amplitude: f64,
        period_ns: u128,
        offset: f64,
    },
    Counter {
        rate_per_s: f64,
        rollover: Option<f64>,
        start: f64,
    },
    RandomWalk {
        step: f64,
        min: f64,
        max: f64,
        seed: u64,
        every_ns: u128,
        start: f64,
        /// Last evaluated (tick, value): an optimisation only, the walk is recomputed from
        /// tick 0 when time goes backwards.
        cache: Mutex<(u128, f64)>,
    },
}

fn finite(name: &str, x: f64) -> Result<f64, String> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("generator {name} must be a finite number"))
    }
}

impl Generator {
    /// Validate a generator from the map.
    pub fn new(cfg: &GeneratorConfig) -> Result<Self, String> {
        let kind = match cfg {
            GeneratorConfig::Constant(c) => Kind::Constant(finite("value", c.value)?),
            GeneratorConfig::Ramp(r) => {
                let (step, min, max) = (
                    finite("step", r.step)?,
                    finite("min", r.min)?,
                    finite("max", r.max)?,
                );
                if step <= 0.0 {
                    return Err(format!("ramp step {step} must be greater than 0"));
                }
                if max < min {
                    return Err(format!("ramp max {max} is below min {min}"));
                }
                let every_ns = r.every.0.as_nanos();
                if every_ns == 0 {
                    return Err("ramp every must be greater than 0".into());
                }
                // +1e-9 absorbs float error so that e.g. (1.0 - 0.0) / 0.1 counts 10 steps.
                let span_steps = ((max - min) / step + 1e-9).floor();
                if span_steps > 1e15 {
                    return Err(format!(
                        "ramp from {min} to {max} in steps of {step} is too long"
                    ));
                }
                Kind::Ramp {
                    step,
                    every_ns,
                    min,
                    steps_per_cycle: span_steps as u128 + 1,
                }
            }
            GeneratorConfig::Sine(s) => {
                let period_ns = s.period.0.as_nanos();
                if period_ns == 0 {
                    return Err("sine period must be greater than 0".into());
                }
                Kind::Sine {
                    amplitude: finite("amplitude", s.amplitude)?,
                    period_ns,
                    offset: finite("offset", s.offset)?,
                }
            }
            GeneratorConfig::Counter(c) => {
                let rollover = match c.rollover {
                    Some(r) if r.is_finite() && r > 0.0 => Some(r),
                    Some(r) => return Err(format!("counter rollover {r} must be greater than 0")),
                    None => None,
                };
                Kind::Counter {
                    rate_per_s: finite("rate_per_s", c.rate_per_s)?,
                    rollover,
                    start: finite("start", c.start)?,
                }
            }
            GeneratorConfig::RandomWalk(w) => {
                let (step, min, max) = (
                    finite("step", w.step)?,
                    finite("min", w.min)?,
                    finite("max", w.max)?,
                );
                if step <= 0.0 {
                    return Err(format!("random_walk step {step} must be greater than 0"));
                }
                if max < min {
                    return Err(format!("random_walk max {max} is below min {min}"));
                }
                if w.every.0 < Duration::from_millis(1) {
                    return Err("random_walk every must be at least 1ms".into());
                }
                let start = finite("start", w.start.unwrap_or((min + max) / 2.0))?.clamp(min, max);
                Kind::RandomWalk {
                    step,
                    min,
                    max,
                    seed: w.seed,
                    every_ns: w.every.0.as_nanos(),
                    start,
                    cache: Mutex::new((0, start)),
                }
            }
        };
        Ok(Generator(kind))
    }

    /// Is this a counter (integer registers floor it rather than round it)?
    pub fn is_counter(&self) -> bool {
        matches!(self.0, Kind::Counter { .. })
    }

    /// The value at time `t` since start.
    pub fn value_at(&self, t: Duration) -> f64 {
        let t_ns = t.as_nanos();
        match &self.0 {
            Kind::Constant(v) => *v,
            Kind::Ramp {
                step,
                every_ns,
                min,
                steps_per_cycle,
            } => {
                let tick = (t_ns / every_ns) % steps_per_cycle;
                min + tick as f64 * step
            }
            Kind::Sine {
                amplitude,
                period_ns,
                offset,
            } => {
                let phase = (t_ns % period_ns) as f64 / *period_ns as f64;
                offset + amplitude * (TAU * phase).sin()
            }
            Kind::Counter {
                rate_per_s,
                rollover,
                start,
            } => {
                let v = start + rate_per_s * t.as_secs_f64();
                match rollover {
                    Some(r) => v.rem_euclid(*r),
                    None => v,
                }
            }
            Kind::RandomWalk {
                step,
                min,
                max,
                seed,
                every_ns,
                start,
                cache,
            } => {
                let tick = t_ns / every_ns;
                let mut c = cache.lock().unwrap_or_else(PoisonError::into_inner);
                let (mut i, mut v) = if tick >= c.0 { *c } else { (0, *start) };
                while i < tick {
                    i += 1;
                    // Each tick's move depends only on (seed, tick): the walk is reproducible.
                    let r = splitmix64(seed ^ splitmix64(i as u64));
                    let unit = (r >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
                    v = (v + (unit * 2.0 - 1.0) * step).clamp(*min, *max);
                }
                *c = (i, v);
                v
            }
        }
    }
}

/// SplitMix64: a tiny, well-mixed, reproducible pseudo-random function.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::MapConfig;

    fn generator(inline: &str) -> Result<Generator, String> {
        let text = format!(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"holding\"\naddress = 0\ngenerator = {inline}\n"
        );
        let map = MapConfig::from_toml_str(&text).map_err(|e| e.to_string())?;
        let cfg = map.units[0].registers[0]
            .generator
            .clone()
            .ok_or("no generator")?;
        Generator::new(&cfg)
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn constant() {
        let g = generator("{ kind = \"constant\", value = 4.5 }").unwrap();
        assert_eq!(g.value_at(s(0.0)), 4.5);
        assert_eq!(g.value_at(s(1e6)), 4.5);
    }

    #[test]
    fn ramp_steps_and_wraps_after_max() {
        let g = generator("{ kind = \"ramp\", step = 1.0, every = \"1s\", min = 0.0, max = 3.0 }")
            .unwrap();
        let got: Vec<f64> = [0.0, 0.999, 1.0, 2.5, 3.0, 3.999, 4.0, 5.0, 9.0]
            .iter()
            .map(|&t| g.value_at(s(t)))
            .collect();
        assert_eq!(got, [0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 0.0, 1.0, 1.0]);
        // Defaults: step 1, every 1s, 0..=100.
        let g = generator("{ kind = \"ramp\" }").unwrap();
        assert_eq!(g.value_at(s(100.0)), 100.0);
        assert_eq!(g.value_at(s(101.0)), 0.0);
        // Fractional steps count correctly despite float error.
        let g =
            generator("{ kind = \"ramp\", step = 0.1, min = 0.0, max = 1.0, every = \"100ms\" }")
                .unwrap();
        assert!((g.value_at(s(1.0)) - 1.0).abs() < 1e-9);
        assert_eq!(g.value_at(s(1.1)), 0.0);
    }

    #[test]
    fn sine() {
        let g = generator("{ kind = \"sine\", amplitude = 2.0, period = \"4s\", offset = 10.0 }")
            .unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(g.value_at(s(0.0)), 10.0));
        assert!(close(g.value_at(s(1.0)), 12.0));
        assert!(close(g.value_at(s(2.0)), 10.0));
        assert!(close(g.value_at(s(3.0)), 8.0));
        assert!(close(g.value_at(s(401.0)), 12.0));
    }

    #[test]
    fn counter_with_rollover() {
        let g = generator("{ kind = \"counter\", rate_per_s = 10.0, rollover = 100.0 }").unwrap();
        assert!(g.is_counter());
        assert_eq!(g.value_at(s(0.0)), 0.0);
        assert_eq!(g.value_at(s(2.5)), 25.0);
        assert_eq!(g.value_at(s(10.0)), 0.0);
        assert_eq!(g.value_at(s(12.0)), 20.0);
        let g = generator("{ kind = \"counter\", rate_per_s = 2.0, start = 5.0 }").unwrap();
        assert_eq!(g.value_at(s(1000.0)), 2005.0);
    }

    #[test]
    fn random_walk_is_deterministic_and_bounded() {
        let spec = "{ kind = \"random_walk\", step = 5.0, min = 0.0, max = 20.0, seed = 42, every = \"1s\" }";
        let a = generator(spec).unwrap();
        let b = generator(spec).unwrap();
        assert_eq!(a.value_at(s(0.0)), 10.0);
        let forward: Vec<f64> = (0..200).map(|t| a.value_at(s(f64::from(t)))).collect();
        // Evaluated out of order (and backwards) it gives the same values.
        for t in (0..200).rev().step_by(7) {
            assert_eq!(b.value_at(s(f64::from(t))), forward[t as usize]);
        }
        assert!(forward.iter().all(|v| (0.0..=20.0).contains(v)));
        assert!(forward.windows(2).all(|w| (w[1] - w[0]).abs() <= 5.0));
        assert!(forward.windows(2).any(|w| w[1] != w[0]));
        let c =
            generator("{ kind = \"random_walk\", step = 5.0, min = 0.0, max = 20.0, seed = 43 }")
                .unwrap();
        assert_ne!(c.value_at(s(50.0)), forward[50]);
    }

    #[test]
    fn rejects_impossible_generators() {
        assert!(generator("{ kind = \"ramp\", step = 0.0 }")
            .unwrap_err()
            .contains("step"));
        assert!(generator("{ kind = \"ramp\", min = 5.0, max = 1.0 }")
            .unwrap_err()
            .contains("below min"));
        assert!(generator("{ kind = \"ramp\", every = \"0ms\" }")
            .unwrap_err()
            .contains("every"));
        assert!(generator("{ kind = \"sine\", period = \"0s\" }")
            .unwrap_err()
            .contains("period"));
        assert!(generator("{ kind = \"counter\", rollover = -1.0 }")
            .unwrap_err()
            .contains("rollover"));
        assert!(generator("{ kind = \"random_walk\", every = \"100us\" }")
            .unwrap_err()
            .contains("1ms"));
        assert!(generator("{ kind = \"constant\", value = nan }")
            .unwrap_err()
            .contains("finite"));
    }
}
