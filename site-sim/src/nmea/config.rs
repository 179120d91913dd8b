//! The NMEA feeder's config file (TOML): a truck driving a route, or a recorded file replayed.
//! `config/sim/nmea-truck.toml` documents every key.

use serde::Deserialize;

use crate::duration::HumanDuration;

/// The whole feeder config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeederConfig {
    /// Talker id of every sentence (`GP`, `GN`, `GL`…).
    #[serde(default = "default_talker")]
    pub talker: String,
    /// Time between fixes (one RMC, GGA, VTG epoch each).
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Which sentences each epoch carries, in order.
    #[serde(default = "default_sentences")]
    pub sentences: Vec<String>,
    /// GPS time minus system time, ms (simulates a gateway clock that is off: the agent should
    /// report minus this as `gps_clock_offset_ms`).
    #[serde(default)]
    pub time_offset_ms: i64,
    /// Replay this recorded file instead of generating a truck: its lines are written in order,
    /// `interval` after each RMC line.
    #[serde(default)]
    pub replay: Option<std::path::PathBuf>,
    /// Start again at the top of the replay file when it ends.
    #[serde(default)]
    pub repeat: bool,
    /// The truck.
    #[serde(default)]
    pub truck: Truck,
    /// Fault injection.
    #[serde(default)]
    pub faults: Faults,
}

/// The simulated vehicle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truck {
    /// Speed along the route, km/h.
    #[serde(default = "default_speed")]
    pub speed_kmh: f64,
    /// Altitude above mean sea level, m.
    #[serde(default = "default_altitude")]
    pub altitude: f64,
    /// Satellites in use while the fix is good.
    #[serde(default = "default_satellites")]
    pub satellites: u32,
    /// Horizontal dilution of precision.
    #[serde(default = "default_hdop")]
    pub hdop: f64,
    /// GGA fix quality while the fix is good (1 GPS, 2 DGPS…).
    #[serde(default = "default_quality")]
    pub fix_quality: u8,
    /// Waypoints `[latitude, longitude]` in degrees (south and west negative), driven in a loop.
    #[serde(default = "default_route")]
    pub route: Vec<[f64; 2]>,
}

impl Default for Truck {
    fn default() -> Self {
        Truck {
            speed_kmh: default_speed(),
            altitude: default_altitude(),
            satellites: default_satellites(),
            hdop: default_hdop(),
            fix_quality: default_quality(),
            route: default_route(),
        }
    }
}

/// Faults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Lose the fix this often (`"0s"`: never).
    #[serde(default)]
    pub fix_loss_every: HumanDuration,
    /// For this long each time.
    #[serde(default)]
    pub fix_loss_for: HumanDuration,
    /// Every Nth sentence gets a wrong checksum (0: never).
    #[serde(default)]
    pub corrupt_every: u32,
    /// Every Nth sentence is cut short, without checksum or line end (0: never).
    #[serde(default)]
    pub partial_every: u32,
}

fn default_talker() -> String {
    "GP".into()
}
fn default_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_sentences() -> Vec<String> {
    vec!["RMC".into(), "GGA".into(), "VTG".into()]
}
fn default_speed() -> f64 {
    60.0
}
fn default_altitude() -> f64 {
    25.0
}
fn default_satellites() -> u32 {
    9
}
fn default_hdop() -> f64 {
    0.9
}
fn default_quality() -> u8 {
    1
}
fn default_route() -> Vec<[f64; 2]> {
    // Terminal gantry to a station and back (Sydney, southern/eastern hemispheres).
    vec![
        [-33.9530, 151.2045],
        [-33.9100, 151.1800],
        [-33.8830, 151.2100],
    ]
}

impl FeederConfig {
    /// Parse a config file's text.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        let c: FeederConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Check ranges; every problem at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        if self.talker.len() != 2 || !self.talker.bytes().all(|b| b.is_ascii_uppercase()) {
            p.push(format!(
                "talker {:?} must be two capital letters",
                self.talker
            ));
        }
        for s in &self.sentences {
            if !matches!(s.as_str(), "RMC" | "GGA" | "VTG") {
                p.push(format!("sentence {s:?}: use RMC, GGA or VTG"));
            }
        }
        if self.interval.0.is_zero() {
            p.push("interval must be greater than zero".into());
        }
        if self.replay.is_none() {
            if self.truck.route.is_empty() {
                p.push("truck.route needs at least one waypoint".into());
            }
            for [lat, lon] in &self.truck.route {
                if !(-90.0..=90.0).contains(lat) || !(-180.0..=180.0).contains(lon) {
                    p.push(format!("waypoint [{lat}, {lon}] is not a position"));
                }
            }
            if !(0.0..=400.0).contains(&self.truck.speed_kmh) {
                p.push("truck.speed_kmh must be 0–400".into());
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }
}
