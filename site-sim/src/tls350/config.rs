//! The TLS-350 console simulator's config file (TOML): tanks, stored deliveries, faults.
//! `config/sim/tls350-station.toml` documents every key.

use serde::Deserialize;

/// The whole console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Security code the console requires before each command (6 characters; none by default).
    #[serde(default)]
    pub security_code: Option<String>,
    /// Offset of the console clock from UTC, minutes (its reports carry local time).
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The tanks.
    #[serde(default, rename = "tank")]
    pub tanks: Vec<TankConfig>,
    /// Fault injection.
    #[serde(default)]
    pub faults: ConsoleFaults,
}

/// One tank.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TankConfig {
    /// Tank number, 1–99.
    pub number: u8,
    /// Product code character.
    #[serde(default = "default_product")]
    pub product: char,
    /// Gross volume.
    pub volume: f32,
    /// Temperature-compensated volume (default: volume × 0.995).
    #[serde(default)]
    pub tc_volume: Option<f32>,
    /// Ullage.
    #[serde(default)]
    pub ullage: f32,
    /// Product height.
    #[serde(default)]
    pub height: f32,
    /// Water height.
    #[serde(default)]
    pub water: f32,
    /// Temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Water volume.
    #[serde(default)]
    pub water_volume: f32,
    /// Tank status bits (hex in the reply).
    #[serde(default)]
    pub status: u16,
    /// Deliveries already in the console's memory.
    #[serde(default, rename = "delivery")]
    pub deliveries: Vec<DeliveryConfig>,
}

/// One stored delivery.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Start, `YYMMDDHHmm` console time.
    pub start: String,
    /// End, `YYMMDDHHmm`.
    pub end: String,
    /// Starting volume.
    pub start_volume: f32,
    /// Ending volume.
    pub end_volume: f32,
    /// Starting TC volume (default: starting volume × 0.995).
    #[serde(default)]
    pub start_tc_volume: Option<f32>,
    /// Ending TC volume (default: ending volume × 0.995).
    #[serde(default)]
    pub end_tc_volume: Option<f32>,
    /// Starting water height.
    #[serde(default)]
    pub start_water: f32,
    /// Ending water height.
    #[serde(default)]
    pub end_water: f32,
    /// Starting temperature.
    #[serde(default = "default_temperature")]
    pub start_temperature: f32,
    /// Ending temperature.
    #[serde(default = "default_temperature")]
    pub end_temperature: f32,
    /// Starting product height.
    #[serde(default)]
    pub start_height: f32,
    /// Ending product height.
    #[serde(default)]
    pub end_height: f32,
}

/// Faults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleFaults {
    /// Every Nth reply carries a wrong checksum (0: never).
    #[serde(default)]
    pub bad_checksum_every: u32,
    /// Functions answered `9999FF1B` although the simulator knows them (e.g. `["i202"]`).
    #[serde(default)]
    pub unsupported: Vec<String>,
    /// Do not answer at all.
    #[serde(default)]
    pub silent: bool,
}

fn default_product() -> char {
    '1'
}
fn default_temperature() -> f32 {
    15.0
}

fn valid_code(s: &str) -> bool {
    s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit())
}

impl ConsoleConfig {
    /// Parse and validate a config file's text.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        let c: ConsoleConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Every problem at once.
    pub fn validate(&self) -> Result<(), String> {
        let mut p = Vec::new();
        if let Some(code) = &self.security_code {
            if code.len() != 6 {
                p.push("security_code must be 6 characters".to_owned());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.tanks {
            if !(1..=99).contains(&t.number) || !seen.insert(t.number) {
                p.push(format!("tank {}: numbers must be unique, 1–99", t.number));
            }
            if !t.product.is_ascii_graphic() {
                p.push(format!(
                    "tank {}: product must be one printable character",
                    t.number
                ));
            }
            if t.deliveries.len() > 10 {
                p.push(format!(
                    "tank {}: a console keeps at most 10 deliveries",
                    t.number
                ));
            }
            for d in &t.deliveries {
                if !valid_code(&d.start) || !valid_code(&d.end) {
                    p.push(format!(
                        "tank {}: delivery times must be YYMMDDHHmm",
                        t.number
                    ));
                }
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }
}
