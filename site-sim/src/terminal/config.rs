//! `config/sim/terminal.toml`: the simulated terminal — tanks, jetty meter, vessel discharges,
//! gantry bays, loading schedule, trucks, stations and faults. Days count from the sim start
//! (day 0 = the start date); times of day are UTC `"HH:MM"`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::TerminalError;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalConfig {
    /// Site id of the terminal (the gateway agent's `[agent] site`).
    #[serde(default = "default_site")]
    pub site: String,
    /// Gateway agent id.
    #[serde(default = "default_agent")]
    pub agent: String,
    /// Site id of the trucks' agents.
    #[serde(default = "default_fleet")]
    pub fleet_site: String,
    /// Default sim time origin, RFC 3339 (`--start` overrides). Must be a UTC midnight.
    #[serde(default = "default_start")]
    pub start: String,
    /// Terminal position, degrees.
    #[serde(default = "default_lat")]
    pub lat: f64,
    /// Terminal position, degrees.
    #[serde(default = "default_lon")]
    pub lon: f64,
    /// Seed of the gauge noise.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Gauge noise: level ± mm (uniform). Default 0.2.
    #[serde(default = "default_level_noise")]
    pub level_noise_mm: f64,
    /// Shore tanks.
    #[serde(rename = "tank", default)]
    pub tanks: Vec<TankConfig>,
    /// The jetty meter.
    #[serde(default)]
    pub jetty: JettyConfig,
    /// Vessel discharges.
    #[serde(rename = "discharge", default)]
    pub discharges: Vec<DischargeConfig>,
    /// Gantry bays (one meter each, drawing from one tank).
    #[serde(rename = "bay", default)]
    pub bays: Vec<BayConfig>,
    /// The loading schedule.
    #[serde(default)]
    pub loading: LoadingConfig,
    /// Trucks (each with its own agent reading an NMEA pty).
    #[serde(rename = "truck", default)]
    pub trucks: Vec<TruckConfig>,
    /// Stations (delivery destinations, in turn).
    #[serde(rename = "station", default)]
    pub stations: Vec<StationConfig>,
    /// Faults (none by default).
    #[serde(default)]
    pub faults: FaultsConfig,
}

/// Where a tank's gauge is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    /// The Modbus TCP tank-farm PLC (unit 1, 20 registers per tank).
    Modbus,
    /// The OPC UA server (variables `<id>.Level` …).
    Opcua,
}

/// `[[tank]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TankConfig {
    /// Tank id (as in cloud-ingest `[[reconcile.tanks]]`).
    pub id: String,
    /// Product code.
    pub product: String,
    /// Density at 15 °C, kg/m³.
    pub density_15c: f64,
    /// NSV at the start, m³.
    pub opening_nsv_m3: f64,
    /// Free water, mm (constant).
    #[serde(default = "default_water")]
    pub water_mm: f64,
    /// Mean product temperature, °C (a ±1.5 °C daily swing, lowest at 00:00 + 6 h … ).
    #[serde(default = "default_temp")]
    pub temp_mean_c: f64,
    /// Capacity table CSV `level_mm,volume_m3`, relative to this file.
    pub strapping_table: PathBuf,
    /// Where its gauge is served.
    #[serde(default = "default_server")]
    pub server: Server,
}

/// `[jetty]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JettyConfig {
    /// Meter id.
    #[serde(default = "default_jetty_id")]
    pub meter: String,
    /// Net totalizer at the start, L.
    #[serde(default = "default_jetty_total")]
    pub start_total_l: f64,
    /// The meter's (in tolerance) over-reading, fraction. Default 0.0002.
    #[serde(default = "default_jetty_bias")]
    pub bias: f64,
}

impl Default for JettyConfig {
    fn default() -> Self {
        JettyConfig {
            meter: default_jetty_id(),
            start_total_l: default_jetty_total(),
            bias: default_jetty_bias(),
        }
    }
}

/// `[[discharge]]`: a vessel discharging one product into tanks (evenly).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DischargeConfig {
    /// Vessel name.
    pub vessel: String,
    /// Parcel / B/L number.
    pub parcel: String,
    /// Product (the receiving tanks' product).
    pub product: String,
    /// Receiving tanks.
    pub tanks: Vec<String>,
    /// Day (from the sim start).
    pub day: i64,
    /// Start time of day, "HH:MM".
    pub start: String,
    /// Duration, hours (ends the same day: the gauges are still at midnight).
    pub hours: f64,
    /// Litres (NSV) pumped ashore.
    pub volume_l: f64,
    /// B/L figure above the truth, fraction. Default 0.0012.
    #[serde(default = "default_bl")]
    pub bl_excess: f64,
    /// Ship's figure above the truth, fraction. Default 0.0006.
    #[serde(default = "default_ship")]
    pub ship_excess: f64,
}

/// `[[bay]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BayConfig {
    /// Bay number (the gantry record's `bay`; Modbus unit 10 + n).
    pub number: u16,
    /// Meter id.
    pub meter: String,
    /// Tank it draws from.
    pub tank: String,
    /// Net totalizer at the start, L.
    #[serde(default = "default_meter_total")]
    pub start_total_l: f64,
}

/// `[loading]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadingConfig {
    /// First load of the day, "HH:MM".
    #[serde(default = "default_first")]
    pub first: String,
    /// No load starts after, "HH:MM".
    #[serde(default = "default_last")]
    pub last: String,
    /// Minutes between load starts (bays and trucks in turn).
    #[serde(default = "default_every")]
    pub every_min: i64,
    /// Compartments per truck.
    #[serde(default = "default_compartments")]
    pub compartments: i64,
    /// Gross litres per compartment.
    #[serde(default = "default_compartment_l")]
    pub compartment_l: f64,
    /// Minutes per compartment.
    #[serde(default = "default_comp_min")]
    pub minutes_per_compartment: i64,
    /// Minutes at the station.
    #[serde(default = "default_unload")]
    pub unload_min: i64,
    /// Truck speed, km/h.
    #[serde(default = "default_kmh")]
    pub speed_kmh: f64,
}

impl Default for LoadingConfig {
    fn default() -> Self {
        LoadingConfig {
            first: default_first(),
            last: default_last(),
            every_min: default_every(),
            compartments: default_compartments(),
            compartment_l: default_compartment_l(),
            minutes_per_compartment: default_comp_min(),
            unload_min: default_unload(),
            speed_kmh: default_kmh(),
        }
    }
}

/// `[[truck]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruckConfig {
    /// Truck id (`TRK-01`); its agent id is the lower-case id.
    pub id: String,
}

/// `[[station]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Station id.
    pub id: String,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Its TLS-350 console tank receiving deliveries (the station with a console; at most one).
    #[serde(default)]
    pub tls_tank: Option<u8>,
}

/// `[faults]`: each with where and when (sim days from the start).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    /// Leaking tanks.
    #[serde(default)]
    pub tank_leak: Vec<TankLeak>,
    /// Drifting meters.
    #[serde(default)]
    pub meter_drift: Vec<MeterDrift>,
    /// Trucks losing product in transit.
    #[serde(default)]
    pub transit_loss: Vec<TransitLoss>,
    /// Devices that stop answering.
    #[serde(default)]
    pub silent: Vec<Silent>,
    /// MQTT relay cut.
    #[serde(default)]
    pub broker_outage: Vec<Outage>,
}

/// A tank losing `litres` (NSV) evenly over `hours` from `at` on `day`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TankLeak {
    /// Tank id.
    pub tank: String,
    /// Day.
    pub day: i64,
    /// "HH:MM".
    #[serde(default = "default_noon")]
    pub at: String,
    /// Hours.
    #[serde(default = "default_leak_hours")]
    pub hours: f64,
    /// Litres lost.
    pub litres: f64,
}

/// A meter over-reading by `fraction` from `from_day` on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterDrift {
    /// Meter id (a bay's).
    pub meter: String,
    /// First day.
    pub from_day: i64,
    /// Over-reading, fraction (0.003 = 0.3 %).
    pub fraction: f64,
}

/// The first trip of `truck` on `day` loses `fraction` and stops `stop_min` on the way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitLoss {
    /// Truck id.
    pub truck: String,
    /// Day.
    pub day: i64,
    /// Fraction lost.
    pub fraction: f64,
    /// Minutes stopped half way.
    #[serde(default = "default_stop")]
    pub stop_min: i64,
}

/// Which device goes silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// The Modbus tank-farm PLC (unit 1: tanks and the jetty meter).
    TankPlc,
    /// The station's TLS-350 console.
    Tls350,
}

/// A device silent for `minutes` from `at` on `day`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silent {
    /// Device.
    pub device: Device,
    /// Day.
    pub day: i64,
    /// "HH:MM".
    pub at: String,
    /// Minutes (sim).
    pub minutes: i64,
}

/// The MQTT relay cut for `minutes` from `at` on `day`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Day.
    pub day: i64,
    /// "HH:MM".
    pub at: String,
    /// Minutes (sim).
    pub minutes: i64,
}

fn default_site() -> String {
    "dar-terminal".into()
}
fn default_agent() -> String {
    "gw-1".into()
}
fn default_fleet() -> String {
    "fleet".into()
}
fn default_start() -> String {
    "2026-03-02T00:00:00Z".into()
}
fn default_lat() -> f64 {
    -6.8235
}
fn default_lon() -> f64 {
    39.2695
}
fn default_seed() -> u64 {
    7
}
fn default_level_noise() -> f64 {
    0.2
}
fn default_water() -> f64 {
    25.0
}
fn default_temp() -> f64 {
    29.0
}
fn default_server() -> Server {
    Server::Modbus
}
fn default_jetty_id() -> String {
    "JM1".into()
}
fn default_jetty_total() -> f64 {
    5.0e8
}
fn default_jetty_bias() -> f64 {
    0.0002
}
fn default_bl() -> f64 {
    0.0012
}
fn default_ship() -> f64 {
    0.0006
}
fn default_meter_total() -> f64 {
    1.0e7
}
fn default_first() -> String {
    "05:00".into()
}
fn default_last() -> String {
    "21:00".into()
}
fn default_every() -> i64 {
    40
}
fn default_compartments() -> i64 {
    4
}
fn default_compartment_l() -> f64 {
    9000.0
}
fn default_comp_min() -> i64 {
    5
}
fn default_unload() -> i64 {
    20
}
fn default_kmh() -> f64 {
    50.0
}
fn default_noon() -> String {
    "12:00".into()
}
fn default_leak_hours() -> f64 {
    2.0
}
fn default_stop() -> i64 {
    40
}

/// The fault kinds of `[faults]`, as `--fault KIND:…` names them.
pub const FAULT_KINDS: &[&str] = &[
    "tank_leak",
    "meter_drift",
    "transit_loss",
    "silent",
    "broker_outage",
];

/// A `--fault KIND:key=value,key=value` flag as the TOML of one `[[faults.KIND]]` entry, with
/// the same keys as the file (e.g. `tank_leak:tank=T3,day=1,at=12:00,hours=2,litres=4000`).
/// Values that read as numbers or booleans stay so; the rest become strings.
pub fn fault_flag_toml(flag: &str) -> Result<String, String> {
    let (kind, rest) = flag.split_once(':').ok_or_else(|| {
        format!(
            "expected KIND:key=value,…; KIND is one of {}",
            FAULT_KINDS.join(", ")
        )
    })?;
    let kind = kind.trim();
    if !FAULT_KINDS.contains(&kind) {
        return Err(format!(
            "unknown fault kind {kind:?}; one of {}",
            FAULT_KINDS.join(", ")
        ));
    }
    let mut out = format!("[[faults.{kind}]]\n");
    for kv in rest.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{k:?} is not a key name"));
        }
        let literal = if v.parse::<f64>().is_ok() || v == "true" || v == "false" {
            v.to_string()
        } else {
            toml::Value::String(v.to_string()).to_string()
        };
        out.push_str(&format!("{k} = {literal}\n"));
    }
    Ok(out)
}

/// "HH:MM" → minutes after midnight.
pub fn minutes_of(hhmm: &str) -> Option<i64> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

/// RFC 3339 → Unix ms.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

impl TerminalConfig {
    /// Parse and validate `text` (file name for messages; table paths relative to `dir`).
    pub fn from_toml_str(text: &str, file: &Path) -> Result<TerminalConfig, TerminalError> {
        let cfg: TerminalConfig = toml::from_str(text).map_err(|e| TerminalError::Config {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|problems| TerminalError::Config {
            file: file.to_owned(),
            message: problems.join("\n"),
        })?;
        Ok(cfg)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<TerminalConfig, TerminalError> {
        Self::load_with_faults(path, &[])
    }

    /// [`TerminalConfig::load`] with faults given on the command line added to the file's
    /// `[faults]` (see [`fault_flag_toml`]); they are validated like the file's own.
    pub fn load_with_faults(
        path: &Path,
        faults: &[String],
    ) -> Result<TerminalConfig, TerminalError> {
        let mut text = std::fs::read_to_string(path).map_err(|e| TerminalError::Io {
            what: format!("reading {}", path.display()),
            source: e,
        })?;
        for f in faults {
            let t = fault_flag_toml(f).map_err(|message| TerminalError::Config {
                file: PathBuf::from(format!("--fault {f}")),
                message,
            })?;
            text.push('\n');
            text.push_str(&t);
        }
        Self::from_toml_str(&text, path)
    }

    /// Every problem, one line each.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut e = Vec::new();
        match parse_time_ms(&self.start) {
            None => e.push(format!("start: {:?} is not an RFC 3339 time", self.start)),
            Some(ms) if ms.rem_euclid(86_400_000) != 0 => {
                e.push(format!("start: {:?} is not a UTC midnight", self.start))
            }
            Some(_) => {}
        }
        if self.tanks.is_empty() {
            e.push("tank: at least one [[tank]]".into());
        }
        let tank = |id: &str| self.tanks.iter().find(|t| t.id == id);
        for (i, t) in self.tanks.iter().enumerate() {
            if self.tanks[..i].iter().any(|o| o.id == t.id) {
                e.push(format!("tank {}: duplicate id", t.id));
            }
            if !(600.0..=1100.0).contains(&t.density_15c) {
                e.push(format!(
                    "tank {}: density_15c {} is not 600–1100 kg/m³",
                    t.id, t.density_15c
                ));
            }
            if t.opening_nsv_m3 < 0.0 || t.water_mm < 0.0 {
                e.push(format!(
                    "tank {}: opening_nsv_m3 and water_mm must be ≥ 0",
                    t.id
                ));
            }
        }
        for d in &self.discharges {
            if d.tanks.is_empty() {
                e.push(format!("discharge {}: no tanks", d.parcel));
            }
            for t in &d.tanks {
                match tank(t) {
                    None => e.push(format!("discharge {}: unknown tank {t:?}", d.parcel)),
                    Some(k) if k.product != d.product => e.push(format!(
                        "discharge {}: tank {t} holds {}, not {}",
                        d.parcel, k.product, d.product
                    )),
                    Some(_) => {}
                }
            }
            match minutes_of(&d.start) {
                None => e.push(format!("discharge {}: start {:?} is not HH:MM", d.parcel, d.start)),
                Some(m) if m < 30 || m as f64 + d.hours * 60.0 > 1410.0 || d.hours <= 0.0 => e.push(format!(
                    "discharge {}: from 30 min before start to 30 min after start + hours (the paperwork) must lie within the day (the gauges are still at midnight)",
                    d.parcel
                )),
                Some(_) => {}
            }
            if d.volume_l <= 0.0 || d.day < 0 {
                e.push(format!("discharge {}: volume_l > 0 and day ≥ 0", d.parcel));
            }
        }
        for b in &self.bays {
            if tank(&b.tank).is_none() {
                e.push(format!("bay {}: unknown tank {:?}", b.number, b.tank));
            }
            if b.number == 0 || b.number > 200 {
                e.push(format!("bay {}: number must be 1–200", b.number));
            }
        }
        let l = &self.loading;
        let (first, last) = (minutes_of(&l.first), minutes_of(&l.last));
        if first.is_none() || last.is_none() {
            e.push("loading: first/last must be HH:MM".into());
        }
        if l.every_min <= 0
            || l.compartments <= 0
            || l.compartment_l <= 0.0
            || l.minutes_per_compartment <= 0
            || l.speed_kmh <= 0.0
        {
            e.push("loading: every_min, compartments, compartment_l, minutes_per_compartment, speed_kmh must be > 0".into());
        }
        if !self.bays.is_empty() && (self.trucks.is_empty() || self.stations.is_empty()) {
            e.push("bays need at least one [[truck]] and one [[station]]".into());
        }
        if self
            .stations
            .iter()
            .filter(|s| s.tls_tank.is_some())
            .count()
            > 1
        {
            e.push("station: at most one station has a tls_tank".into());
        }
        let f = &self.faults;
        for x in &f.tank_leak {
            if tank(&x.tank).is_none() {
                e.push(format!("faults.tank_leak: unknown tank {:?}", x.tank));
            }
            if minutes_of(&x.at).is_none() {
                e.push(format!("faults.tank_leak: at {:?} is not HH:MM", x.at));
            }
        }
        for x in &f.meter_drift {
            if !self.bays.iter().any(|b| b.meter == x.meter) {
                e.push(format!(
                    "faults.meter_drift: {:?} is no bay's meter",
                    x.meter
                ));
            }
        }
        for x in &f.transit_loss {
            if !self.trucks.iter().any(|t| t.id == x.truck) {
                e.push(format!("faults.transit_loss: unknown truck {:?}", x.truck));
            }
            if !(0.0..1.0).contains(&x.fraction) {
                e.push("faults.transit_loss: fraction must be in [0, 1)".into());
            }
        }
        for (what, at) in f.silent.iter().map(|s| ("faults.silent", &s.at)).chain(
            f.broker_outage
                .iter()
                .map(|o| ("faults.broker_outage", &o.at)),
        ) {
            if minutes_of(at).is_none() {
                e.push(format!("{what}: at {at:?} is not HH:MM"));
            }
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Sim start, Unix ms (validated).
    pub fn start_ms(&self) -> i64 {
        parse_time_ms(&self.start).unwrap_or(0)
    }

    /// A tank's strapping table path resolved against the config file's directory.
    pub fn table_path(&self, config_file: &Path, t: &TankConfig) -> PathBuf {
        match config_file.parent() {
            Some(dir) if t.strapping_table.is_relative() => dir.join(&t.strapping_table),
            _ => t.strapping_table.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/sim/terminal.toml")
    }

    #[test]
    fn a_fault_flag_adds_an_entry_with_typed_values() {
        let t = fault_flag_toml("tank_leak:tank=T3,day=1,at=12:00,hours=2,litres=4000").unwrap();
        assert_eq!(
            t,
            "[[faults.tank_leak]]\ntank = \"T3\"\nday = 1\nat = \"12:00\"\nhours = 2\nlitres = 4000\n"
        );
        let cfg = TerminalConfig::load_with_faults(
            &example(),
            &[
                "tank_leak:tank=T3,day=1,at=12:00,hours=2,litres=4000".into(),
                "broker_outage:day=0,at=10:00,minutes=30".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.faults.tank_leak.len(), 1);
        assert_eq!(cfg.faults.tank_leak[0].tank, "T3");
        assert_eq!(cfg.faults.broker_outage.len(), 1);
    }

    #[test]
    fn bad_fault_flags_say_what_is_wrong() {
        let e = fault_flag_toml("leak:tank=T3").unwrap_err();
        assert!(
            e.contains("unknown fault kind") && e.contains("tank_leak"),
            "{e}"
        );
        assert!(fault_flag_toml("tank_leak")
            .unwrap_err()
            .contains("KIND:key=value"));
        assert!(fault_flag_toml("tank_leak:tank")
            .unwrap_err()
            .contains("key=value"));
        // An unknown tank is caught by the same validation as the file's own faults.
        let e = TerminalConfig::load_with_faults(
            &example(),
            &["tank_leak:tank=T9,day=1,at=12:00,hours=2,litres=4000".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown tank"), "{e}");
        // A misspelt key is refused (deny_unknown_fields), not ignored.
        assert!(TerminalConfig::load_with_faults(
            &example(),
            &["tank_leak:tnk=T3,day=1,at=12:00,hours=2,litres=4000".into()],
        )
        .is_err());
    }
}
