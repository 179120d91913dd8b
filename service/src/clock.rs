//! The data clock: real time, or a *simulated* clock shared by several processes.
//!
//! A simulated terminal (`flowsquare-sim terminal --speed N`) runs faster than real time. For
//! its readings, events and daily reconciliation to mean anything, every process of the demo —
//! the simulator, the edge agents and cloud-ingest — must stamp data with the *same* simulated
//! time. They agree through one environment variable:
//!
//! ```text
//! FLOWSQUARE_CLOCK=sim:<sim_start_unix_ms>:<real_start_unix_ms>:<speed>
//! ```
//!
//! sim now = sim_start + (real now − real_start) × speed. The simulator prints the exact value
//! to export (and accepts one, so it can join a clock another process started). Absent (or
//! empty, or `real`) = the real clock. A malformed value is reported by [`init`]; [`now_ms`]
//! then falls back to the real clock.
//!
//! Only *data* time goes through this clock (reading and event timestamps, the reconciliation
//! schedule, stale checks); network timeouts and backoffs stay in real time. Code that sleeps
//! for a duration of *sim* time converts it with [`Clock::real_duration`].
//!
//! In cloud-ingest every time read is this clock's [`now_ms`]: receive, commit and last-seen
//! stamps (both stores), alert and audit times, API "now", and the database upkeep too
//! (partitions created ahead, retention, compression age, aggregate refresh), because
//! partitions and chunks hold the *data's* days. What stays on the wall clock is only what
//! measures real durations ([`std::time::Instant`]: phase timings, timeouts, backoffs) and
//! [`real_now_ms`] where a test or the simulator must compare the two clocks.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable holding the shared clock.
pub const ENV: &str = "FLOWSQUARE_CLOCK";

/// Largest accepted speed factor.
pub const MAX_SPEED: f64 = 1.0e6;

/// A data clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clock {
    /// The system clock.
    Real,
    /// A simulated clock running `speed` times faster than real time.
    Sim {
        /// Sim time at `real_start_ms`, Unix ms.
        sim_start_ms: i64,
        /// The real instant the sim time was `sim_start_ms`, Unix ms.
        real_start_ms: i64,
        /// Sim seconds per real second (> 0).
        speed: f64,
    },
}

/// A `FLOWSQUARE_CLOCK` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockError {
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{ENV}={:?}: {} (expected sim:<sim_start_unix_ms>:<real_start_unix_ms>:<speed>, or unset for the real clock)",
            self.value, self.reason
        )
    }
}

impl std::error::Error for ClockError {}

/// The system clock, Unix ms (a clock before 1970 reads 0).
pub fn real_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Clock {
    /// Parse a `FLOWSQUARE_CLOCK` value (`""` and `"real"` are the real clock).
    pub fn parse(value: &str) -> Result<Clock, ClockError> {
        let err = |reason: String| ClockError {
            value: value.to_owned(),
            reason,
        };
        let v = value.trim();
        if v.is_empty() || v == "real" {
            return Ok(Clock::Real);
        }
        let parts: Vec<&str> = v.split(':').collect();
        if parts.len() != 4 || parts[0] != "sim" {
            return Err(err("not of the form sim:A:B:SPEED".into()));
        }
        let int = |name: &str, s: &str| {
            s.parse::<i64>()
                .map_err(|_| err(format!("{name} {s:?} is not an integer (Unix ms)")))
        };
        let sim_start_ms = int("sim_start_unix_ms", parts[1])?;
        let real_start_ms = int("real_start_unix_ms", parts[2])?;
        let speed: f64 = parts[3]
            .parse()
            .map_err(|_| err(format!("speed {:?} is not a number", parts[3])))?;
        if !(speed.is_finite() && speed > 0.0 && speed <= MAX_SPEED) {
            return Err(err(format!("speed {speed} is not in (0, {MAX_SPEED}]")));
        }
        Ok(Clock::Sim {
            sim_start_ms,
            real_start_ms,
            speed,
        })
    }

    /// A sim clock whose time is `sim_start_ms` now.
    pub fn sim_starting_now(sim_start_ms: i64, speed: f64) -> Clock {
        Clock::Sim {
            sim_start_ms,
            real_start_ms: real_now_ms(),
            speed,
        }
    }

    /// Is this a simulated clock?
    pub fn is_sim(&self) -> bool {
        matches!(self, Clock::Sim { .. })
    }

    /// Sim seconds per real second (1 for the real clock).
    pub fn speed(&self) -> f64 {
        match self {
            Clock::Real => 1.0,
            Clock::Sim { speed, .. } => *speed,
        }
    }

    /// The clock's time for the real instant `real_ms` (Unix ms).
    pub fn at_real_ms(&self, real_ms: i64) -> i64 {
        match *self {
            Clock::Real => real_ms,
            Clock::Sim {
                sim_start_ms,
                real_start_ms,
                speed,
            } => sim_start_ms + ((real_ms - real_start_ms) as f64 * speed).round() as i64,
        }
    }

    /// The real instant (Unix ms) at which the clock reads `clock_ms`.
    pub fn real_ms_at(&self, clock_ms: i64) -> i64 {
        match *self {
            Clock::Real => clock_ms,
            Clock::Sim {
                sim_start_ms,
                real_start_ms,
                speed,
            } => real_start_ms + ((clock_ms - sim_start_ms) as f64 / speed).round() as i64,
        }
    }

    /// The clock's time now, Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.at_real_ms(real_now_ms())
    }

    /// The real duration that lasts `d` of this clock's time (a sleep "until sim time X").
    pub fn real_duration(&self, d: Duration) -> Duration {
        match self {
            Clock::Real => d,
            Clock::Sim { speed, .. } => Duration::from_secs_f64(d.as_secs_f64() / speed),
        }
    }

    /// The `FLOWSQUARE_CLOCK` value that reproduces this clock (`real` for the real clock).
    pub fn env_value(&self) -> String {
        match self {
            Clock::Real => "real".into(),
            Clock::Sim {
                sim_start_ms,
                real_start_ms,
                speed,
            } => format!("sim:{sim_start_ms}:{real_start_ms}:{speed}"),
        }
    }
}

static CLOCK: OnceLock<Result<Clock, ClockError>> = OnceLock::new();

/// The process's clock from `FLOWSQUARE_CLOCK` (read once). Call it at startup to report a bad
/// value and to log that a simulated clock is active.
pub fn init() -> Result<Clock, ClockError> {
    CLOCK
        .get_or_init(|| match std::env::var(ENV) {
            Ok(v) => Clock::parse(&v),
            Err(_) => Ok(Clock::Real),
        })
        .clone()
}

/// Make `c` the process's clock (a simulator that created the clock it announces). Fails with
/// the clock already in use when [`init`] or [`clock`] ran before with another one.
pub fn install(c: Clock) -> Result<(), Clock> {
    let got = CLOCK.get_or_init(|| Ok(c));
    match got {
        Ok(g) if *g == c => Ok(()),
        Ok(g) => Err(*g),
        Err(_) => Err(Clock::Real),
    }
}

/// The process's clock (the real one when `FLOWSQUARE_CLOCK` is absent or malformed).
pub fn clock() -> Clock {
    init().unwrap_or(Clock::Real)
}

/// Data time now, Unix ms: [`clock`]`().now_ms()`.
pub fn now_ms() -> i64 {
    clock().now_ms()
}

/// The loud startup warning for a simulated clock (None for the real clock); services log it
/// at WARN.
pub fn warning(c: &Clock) -> Option<String> {
    match c {
        Clock::Real => None,
        Clock::Sim { speed, .. } => Some(format!(
            "SIMULATED CLOCK ACTIVE ({ENV}={}): data is stamped in sim time running {speed}× real time, starting at {} ms — not for production",
            c.env_value(),
            c.now_ms()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_runs_a_sim_clock() {
        let c = Clock::parse("sim:1000:5000:60").expect("clock");
        assert!(c.is_sim());
        assert_eq!(c.at_real_ms(5000), 1000);
        assert_eq!(c.at_real_ms(6000), 61_000);
        assert_eq!(c.real_ms_at(61_000), 6000);
        assert_eq!(
            c.real_duration(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(Clock::parse(&c.env_value()), Ok(c));
        assert_eq!(Clock::parse(""), Ok(Clock::Real));
        assert_eq!(Clock::parse("real"), Ok(Clock::Real));
        assert_eq!(Clock::Real.speed(), 1.0);
        assert!(warning(&c).is_some_and(|w| w.contains("SIMULATED CLOCK")));
        assert!(warning(&Clock::Real).is_none());
    }

    #[test]
    fn rejects_bad_values_with_the_reason() {
        for (v, why) in [
            ("sim:1:2", "form"),
            ("wall:1:2:3", "form"),
            ("sim:x:2:3", "sim_start_unix_ms"),
            ("sim:1:y:3", "real_start_unix_ms"),
            ("sim:1:2:fast", "speed"),
            ("sim:1:2:0", "speed"),
            ("sim:1:2:-4", "speed"),
        ] {
            let e = Clock::parse(v).expect_err(v);
            let text = e.to_string();
            assert!(text.contains(why), "{v}: {text}");
            assert!(text.contains(ENV), "{text}");
        }
    }

    #[test]
    fn the_real_clock_is_the_system_clock() {
        let a = real_now_ms();
        let b = Clock::Real.now_ms();
        assert!((b - a).abs() < 5_000);
    }
}
