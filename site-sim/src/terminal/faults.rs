//! Which timed faults are active at a sim instant (pure). The flow faults (leaks, meter drift,
//! transit losses) are part of the physics in `model.rs`; the ones here act on the servers:
//! a silent device and the MQTT relay cut.

use super::config::{minutes_of, Device, TerminalConfig};
use super::model::DAY_MS;

/// The device and relay faults of a configuration, as sim-time windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Windows {
    silent: Vec<(Device, i64, i64)>,
    outages: Vec<(i64, i64)>,
}

/// What is active at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Active {
    /// The tank-farm PLC does not answer.
    pub tank_plc_silent: bool,
    /// The station console does not answer.
    pub tls350_silent: bool,
    /// The MQTT relay is cut.
    pub broker_down: bool,
}

impl Windows {
    /// The windows of `cfg` for a sim start at `start_ms`.
    pub fn new(cfg: &TerminalConfig, start_ms: i64) -> Windows {
        let at =
            |day: i64, hhmm: &str| start_ms + day * DAY_MS + minutes_of(hhmm).unwrap_or(0) * 60_000;
        Windows {
            silent: cfg
                .faults
                .silent
                .iter()
                .map(|s| {
                    let a = at(s.day, &s.at);
                    (s.device, a, a + s.minutes * 60_000)
                })
                .collect(),
            outages: cfg
                .faults
                .broker_outage
                .iter()
                .map(|o| {
                    let a = at(o.day, &o.at);
                    (a, a + o.minutes * 60_000)
                })
                .collect(),
        }
    }

    /// The faults active at sim time `t`.
    pub fn at(&self, t: i64) -> Active {
        let silent = |d: Device| {
            self.silent
                .iter()
                .any(|&(x, a, b)| x == d && (a..b).contains(&t))
        };
        Active {
            tank_plc_silent: silent(Device::TankPlc),
            tls350_silent: silent(Device::Tls350),
            broker_down: self.outages.iter().any(|&(a, b)| (a..b).contains(&t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn windows_open_and_close_at_their_sim_times() {
        let cfg = TerminalConfig::from_toml_str(
            "[[tank]]\nid = \"T1\"\nproduct = \"A\"\ndensity_15c = 800.0\nopening_nsv_m3 = 1.0\nstrapping_table = \"x\"\n\
             [[faults.silent]]\ndevice = \"tank-plc\"\nday = 1\nat = \"08:00\"\nminutes = 60\n\
             [[faults.broker_outage]]\nday = 0\nat = \"23:30\"\nminutes = 60\n",
            Path::new("t.toml"),
        )
        .expect("cfg");
        let w = Windows::new(&cfg, 0);
        let h = 3_600_000;
        assert_eq!(w.at(0), Active::default());
        assert!(w.at(23 * h + 45 * 60_000).broker_down);
        assert!(w.at(DAY_MS + 20 * 60_000).broker_down);
        assert!(!w.at(DAY_MS + 30 * 60_000).broker_down);
        assert!(w.at(DAY_MS + 8 * h).tank_plc_silent);
        assert!(!w.at(DAY_MS + 9 * h).tank_plc_silent);
        assert!(!w.at(DAY_MS + 8 * h).tls350_silent);
    }
}
