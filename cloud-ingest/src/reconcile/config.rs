//! `[reconcile]`: the site model (tanks with their gauge tags and strapping tables, meters,
//! stations, known places, trucks), tolerances per stage and site, and the schedules of the
//! daily run and the analytics. Documented key by key in `config/cloud-ingest.example.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::MeterRole;

/// The stages a tolerance can be set for.
pub const STAGES: [&str; 9] = [
    "ship",
    "jetty",
    "tanks",
    "tank-balance",
    "gantry",
    "meter-check",
    "stations",
    "transit",
    "station-gauge",
];

/// `[reconcile]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Run the daily reconciliation (and the analytics) inside `serve`. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Time of day (UTC, `HH:MM`) of the daily run. Default `02:00`.
    #[serde(default = "default_run_at")]
    pub run_at: String,
    /// The daily run reconciles this many days back from yesterday (yesterday included), so
    /// trips whose ePOD grace period ended since are settled. Default 2.
    #[serde(default = "default_lookback")]
    pub lookback_days: u32,
    /// A loaded trip without an ePOD this long after its last batch is an exception. Default 24.
    #[serde(default = "default_grace")]
    pub epod_grace_hours: f64,
    /// A stock at an instant uses each gauge tag's last good reading at most this old. Default 900.
    #[serde(default = "default_gauge_age")]
    pub gauge_max_age_s: u64,
    /// Event kind of the edge's gantry batch records. Default `gantry-batch`.
    #[serde(default = "default_batch_kind")]
    pub batch_event_kind: String,
    /// Event kind of TLS-350 delivery reports (the edge-agent's TLS-350 driver emits
    /// `delivery`). Default `delivery`.
    #[serde(default = "default_tls_kind")]
    pub tls_event_kind: String,
    /// A figure is complete when every input tag has at least this share of its expected
    /// readings (good ones) over the figure's window, 0…1; below it, or with a gap or stale span
    /// at an instant the figure reads (opening, closing, window ends), the record is
    /// `incomplete`. Default 0.98.
    #[serde(default = "default_min_coverage")]
    pub min_coverage: f64,
    /// Readings are expected at most this often, data-time seconds, whatever a tag's birth
    /// catalog says (its poll interval). Under a simulated clock the catalogs state real-time
    /// poll intervals, far shorter than the data time between two readings. Default 0 (the
    /// catalog's interval).
    #[serde(default)]
    pub expected_interval_min_s: u64,
    /// A dead-lettered data batch of an input's agent received in a figure's window makes the
    /// figure incomplete. Default true.
    #[serde(default = "yes")]
    pub dead_letters_incomplete: bool,
    /// Days back (yesterday included) that `serve` watches for late data: a day whose last run
    /// has incomplete records is run again when more of their missing data has arrived
    /// (checked with the stale-tag check). Default 7.
    #[serde(default = "default_recheck_days")]
    pub recheck_days: u32,
    /// `[reconcile.tolerances]`.
    #[serde(default)]
    pub tolerances: Tolerances,
    /// `[reconcile.stale]`: stale-tag detection.
    #[serde(default)]
    pub stale: StaleConfig,
    /// `[reconcile.drift]`: meter drift control limits.
    #[serde(default)]
    pub drift: DriftConfig,
    /// `[reconcile.stops]`: GPS stops during loaded trips.
    #[serde(default)]
    pub stops: StopConfig,
    /// `[[reconcile.tanks]]`.
    #[serde(default)]
    pub tanks: Vec<TankConfig>,
    /// `[[reconcile.meters]]`.
    #[serde(default)]
    pub meters: Vec<MeterConfig>,
    /// `[[reconcile.stations]]`: delivery stations (also known places for GPS stops).
    #[serde(default)]
    pub stations: Vec<PlaceConfig>,
    /// `[[reconcile.places]]`: other known places (terminals, depots, authorised rest areas).
    #[serde(default)]
    pub places: Vec<PlaceConfig>,
    /// `[[reconcile.trucks]]`: trucks with GPS tags.
    #[serde(default)]
    pub trucks: Vec<TruckConfig>,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            enabled: true,
            run_at: default_run_at(),
            lookback_days: default_lookback(),
            epod_grace_hours: default_grace(),
            gauge_max_age_s: default_gauge_age(),
            batch_event_kind: default_batch_kind(),
            tls_event_kind: default_tls_kind(),
            min_coverage: default_min_coverage(),
            expected_interval_min_s: 0,
            dead_letters_incomplete: true,
            recheck_days: default_recheck_days(),
            tolerances: Tolerances::default(),
            stale: StaleConfig::default(),
            drift: DriftConfig::default(),
            stops: StopConfig::default(),
            tanks: Vec::new(),
            meters: Vec::new(),
            stations: Vec::new(),
            places: Vec::new(),
            trucks: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_min_coverage() -> f64 {
    0.98
}
fn default_recheck_days() -> u32 {
    7
}
fn default_run_at() -> String {
    "02:00".into()
}
fn default_lookback() -> u32 {
    2
}
fn default_grace() -> f64 {
    24.0
}
fn default_gauge_age() -> u64 {
    900
}
fn default_batch_kind() -> String {
    "gantry-batch".into()
}
fn default_tls_kind() -> String {
    "delivery".into()
}

/// `[reconcile.tolerances]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tolerances {
    /// Every stage, ± %. Default 1.5 (pilot); the target is 0.5.
    #[serde(default = "default_tolerance")]
    pub default_pct: f64,
    /// Per stage (keys from [`STAGES`]), ± %.
    #[serde(default)]
    pub stages: BTreeMap<String, f64>,
    /// `[[reconcile.tolerances.sites]]`: per site (and optionally stage).
    #[serde(default)]
    pub sites: Vec<SiteTolerance>,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            default_pct: default_tolerance(),
            stages: BTreeMap::new(),
            sites: Vec::new(),
        }
    }
}

fn default_tolerance() -> f64 {
    1.5
}

/// A site's tolerance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteTolerance {
    /// Site.
    pub site: String,
    /// Stage; absent = every stage of the site.
    #[serde(default)]
    pub stage: Option<String>,
    /// ± %.
    pub pct: f64,
}

impl Tolerances {
    /// The tolerance of `stage` at `site`: site+stage, then site, then stage, then the default.
    pub fn pct(&self, site: &str, stage: &str) -> f64 {
        let by_site = |want: Option<&str>| {
            self.sites
                .iter()
                .find(|t| t.site == site && t.stage.as_deref() == want)
                .map(|t| t.pct)
        };
        by_site(Some(stage))
            .or_else(|| by_site(None))
            .or_else(|| self.stages.get(stage).copied())
            .unwrap_or(self.default_pct)
    }
}

/// `[reconcile.stale]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaleConfig {
    /// Seconds between checks. Default 300.
    #[serde(default = "default_stale_every")]
    pub interval_s: u64,
    /// A tag is stale when its newest *good* reading is older than this many of its poll intervals
    /// (from the birth catalog). Default 3.
    #[serde(default = "default_stale_factor")]
    pub factor: f64,
    /// … and older than this. Default 60.
    #[serde(default = "default_stale_min")]
    pub min_age_s: u64,
    /// Check every registered tag, not only the site model's tank and meter tags. Default false
    /// (truck GPS tags are silent between trips).
    #[serde(default)]
    pub all_tags: bool,
}

impl Default for StaleConfig {
    fn default() -> Self {
        StaleConfig {
            interval_s: default_stale_every(),
            factor: default_stale_factor(),
            min_age_s: default_stale_min(),
            all_tags: false,
        }
    }
}

fn default_stale_every() -> u64 {
    300
}
fn default_stale_factor() -> f64 {
    3.0
}
fn default_stale_min() -> u64 {
    60
}

/// `[reconcile.drift]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Baseline: the in-control points of this many preceding days. Default 14.
    #[serde(default = "default_window")]
    pub window_days: u32,
    /// Fewest baseline points before limits are drawn. Default 5.
    #[serde(default = "default_min_points")]
    pub min_points: usize,
    /// Control limits: mean ± this many standard deviations … Default 3.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
    /// … but at least ± this, % (the 0.15 % meter-factor practice). Default 0.15.
    #[serde(default = "default_min_shift")]
    pub min_shift_pct: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            window_days: default_window(),
            min_points: default_min_points(),
            sigma: default_sigma(),
            min_shift_pct: default_min_shift(),
        }
    }
}

fn default_window() -> u32 {
    14
}
fn default_min_points() -> usize {
    5
}
fn default_sigma() -> f64 {
    3.0
}
fn default_min_shift() -> f64 {
    0.15
}

/// `[reconcile.stops]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StopConfig {
    /// Fixes within this distance of each other are one stop, metres. Default 100.
    #[serde(default = "default_stop_radius")]
    pub radius_m: f64,
    /// A stop lasts at least this long, minutes. Default 10.
    #[serde(default = "default_stop_minutes")]
    pub min_minutes: f64,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            radius_m: default_stop_radius(),
            min_minutes: default_stop_minutes(),
        }
    }
}

fn default_stop_radius() -> f64 {
    100.0
}
fn default_stop_minutes() -> f64 {
    10.0
}

/// A tank of the site model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TankConfig {
    /// Tank id (unique).
    pub id: String,
    /// Terminal site (as in the agents' topics).
    pub site: String,
    /// Agent whose tags these are.
    pub agent: String,
    /// Product.
    pub product: String,
    /// Innage level tag, mm.
    pub level_tag: String,
    /// Product temperature tag, °C.
    pub temperature_tag: String,
    /// Observed density tag, kg/m³ (at `density_temp_tag`, or at the product temperature).
    pub density_tag: String,
    /// Temperature of the density measurement, °C. Absent: the product temperature.
    #[serde(default)]
    pub density_temp_tag: Option<String>,
    /// Free-water level tag, mm. Absent: no free water.
    #[serde(default)]
    pub water_tag: Option<String>,
    /// Ambient temperature tag, °C (uninsulated shell temperature). Absent: the product's.
    #[serde(default)]
    pub ambient_tag: Option<String>,
    /// Strapping (capacity) table CSV `level_mm,volume` (relative to the config file).
    pub strapping_table: PathBuf,
    /// Litres per unit of the table's volume column. Default 1000 (m³).
    #[serde(default = "default_table_unit")]
    pub table_unit_l: f64,
    /// Commodity group: `crude`, `refined`, `lube`, or `special` (with `alpha60_per_f`).
    #[serde(default = "default_group")]
    pub group: String,
    /// Thermal expansion coefficient at 60 °F for `group = "special"`, 1/°F.
    #[serde(default)]
    pub alpha60_per_f: Option<f64>,
    /// Base temperature: `15C`, `20C` or `60F`. Default `15C`.
    #[serde(default = "default_base")]
    pub base: String,
    /// Shell expansion coefficient, 1/°C. Default 1.12e-5 (mild steel).
    #[serde(default = "default_shell_alpha")]
    pub shell_alpha_per_c: f64,
    /// Temperature the table was calibrated at, °C. Default 15.
    #[serde(default = "default_shell_ref")]
    pub shell_ref_temp_c: f64,
    /// Insulated shell (shell temperature = product temperature). Default false.
    #[serde(default)]
    pub insulated: bool,
    /// Sediment and water, % (refined products: 0). Default 0.
    #[serde(default)]
    pub sw_pct: f64,
    /// Floating-roof adjustment, m³ (subtracted). Default 0.
    #[serde(default)]
    pub floating_roof_adjust_m3: f64,
    /// Minimum operating level, mm: the product below it cannot be pumped out (suction, roof
    /// legs), so the console's *ready stock* is the net standard volume above this level.
    /// Default 0 (the whole stock is ready).
    #[serde(default)]
    pub min_operating_level_mm: f64,
}

fn default_table_unit() -> f64 {
    1000.0
}
fn default_group() -> String {
    "refined".into()
}
fn default_base() -> String {
    "15C".into()
}
fn default_shell_alpha() -> f64 {
    1.12e-5
}
fn default_shell_ref() -> f64 {
    15.0
}

/// A meter of the site model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Meter id (unique; the `meter` field of gantry batch records).
    pub id: String,
    /// Terminal site.
    pub site: String,
    /// Agent whose tag the totalizer is.
    pub agent: String,
    /// `jetty` or `gantry`.
    pub role: MeterRole,
    /// Product.
    pub product: String,
    /// Volume totalizer tag: net standard volume (default), or gross with `gross_totalizer`.
    pub totalizer_tag: String,
    /// The totalizer counts gross (indicated) volume: the meter check compares it with the
    /// batch records' gross volumes instead of their net. Jetty meters must count net.
    /// Default false.
    #[serde(default)]
    pub gross_totalizer: bool,
    /// Litres per totalizer unit. Default 1.
    #[serde(default = "default_unit")]
    pub unit_l: f64,
    /// Meter factor applied to the totalizer delta. Default 1.
    #[serde(default = "default_unit")]
    pub meter_factor: f64,
    /// Gantry meters: the tank it draws from (for the meter-vs-tank trend).
    #[serde(default)]
    pub tank: Option<String>,
}

fn default_unit() -> f64 {
    1.0
}

/// A known place.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlaceConfig {
    /// Id (stations: the `station` of ePODs).
    pub id: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Radius, metres. Default 300.
    #[serde(default = "default_radius")]
    pub radius_m: f64,
    /// Stations with a TLS-350 gauge: the site of its agent's TLS-350 `delivery` events.
    #[serde(default)]
    pub gauge_site: Option<String>,
}

fn default_radius() -> f64 {
    300.0
}

/// A truck with GPS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TruckConfig {
    /// Truck id (the `truck` of batch records and ePODs).
    pub id: String,
    /// Site of its agent.
    pub site: String,
    /// Its agent.
    pub agent: String,
    /// Latitude tag, degrees.
    pub lat_tag: String,
    /// Longitude tag, degrees.
    pub lon_tag: String,
}

/// `x > min`, false for NaN (so `!gt(..)` rejects NaN too).
fn gt(x: f64, min: f64) -> bool {
    x > min
}

/// `x >= min`, false for NaN.
fn ge(x: f64, min: f64) -> bool {
    x >= min
}

impl ReconcileConfig {
    /// The coverage rule of `min_coverage` and `dead_letters_incomplete`.
    pub fn coverage_rule(&self) -> super::engine::coverage::CoverageRule {
        super::engine::coverage::CoverageRule {
            min_coverage: self.min_coverage,
            dead_letters_incomplete: self.dead_letters_incomplete,
        }
    }

    /// Every station and known place, as the stop analysis sees them.
    pub fn known_places(&self) -> Vec<super::model::Place> {
        self.stations
            .iter()
            .chain(&self.places)
            .map(|p| super::model::Place {
                id: p.id.clone(),
                lat: p.lat,
                lon: p.lon,
                radius_m: p.radius_m,
            })
            .collect()
    }

    /// The daily run time as minutes after midnight UTC.
    pub fn run_at_minutes(&self) -> Result<u32, String> {
        let bad = || format!("run_at {:?}: use HH:MM (UTC), e.g. \"02:00\"", self.run_at);
        let (h, m) = self.run_at.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(h * 60 + m)
    }

    /// The terminal sites of the model (tanks' and meters' sites), sorted.
    pub fn sites(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .tanks
            .iter()
            .map(|t| t.site.clone())
            .chain(self.meters.iter().map(|m| m.site.clone()))
            .collect();
        s.sort();
        s.dedup();
        s
    }

    /// A strapping table's path, relative to the config file's directory.
    pub fn table_path(&self, tank: &TankConfig, base_dir: &Path) -> PathBuf {
        if tank.strapping_table.is_absolute() {
            tank.strapping_table.clone()
        } else {
            base_dir.join(&tank.strapping_table)
        }
    }

    /// Check everything; every problem is reported (one per line), naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        if let Err(m) = self.run_at_minutes() {
            e.push(m);
        }
        if !ge(self.epod_grace_hours, 0.0) {
            e.push(format!(
                "epod_grace_hours {} must be ≥ 0",
                self.epod_grace_hours
            ));
        }
        if !(ge(self.min_coverage, 0.0) && self.min_coverage <= 1.0) {
            e.push(format!(
                "min_coverage {} must be between 0 and 1 (a share of the expected readings)",
                self.min_coverage
            ));
        }
        let tol = |e: &mut Vec<String>, key: String, v: f64| {
            if !(v > 0.0 && v < 100.0) {
                e.push(format!(
                    "{key} = {v}: a tolerance is a percentage > 0 and < 100"
                ));
            }
        };
        tol(
            &mut e,
            "tolerances.default_pct".into(),
            self.tolerances.default_pct,
        );
        for (stage, v) in &self.tolerances.stages {
            if !STAGES.contains(&stage.as_str()) {
                e.push(format!(
                    "tolerances.stages.{stage}: unknown stage (one of {})",
                    STAGES.join(", ")
                ));
            }
            tol(&mut e, format!("tolerances.stages.{stage}"), *v);
        }
        for (i, s) in self.tolerances.sites.iter().enumerate() {
            if let Some(stage) = &s.stage {
                if !STAGES.contains(&stage.as_str()) {
                    e.push(format!(
                        "tolerances.sites[{i}] stage {stage:?}: unknown stage (one of {})",
                        STAGES.join(", ")
                    ));
                }
            }
            tol(&mut e, format!("tolerances.sites[{i}].pct"), s.pct);
        }
        if self.stale.factor < 1.0 {
            e.push(format!("stale.factor {} must be ≥ 1", self.stale.factor));
        }
        if self.stale.interval_s == 0 {
            e.push("stale.interval_s must be > 0".into());
        }
        if self.drift.min_points < 2 {
            e.push("drift.min_points must be ≥ 2".into());
        }
        if !gt(self.drift.sigma, 0.0) || !ge(self.drift.min_shift_pct, 0.0) {
            e.push("drift.sigma must be > 0 and drift.min_shift_pct ≥ 0".into());
        }
        if !gt(self.stops.radius_m, 0.0) || !gt(self.stops.min_minutes, 0.0) {
            e.push("stops.radius_m and stops.min_minutes must be > 0".into());
        }
        let dup = |e: &mut Vec<String>, what: &str, ids: Vec<&str>| {
            let mut seen = std::collections::BTreeSet::new();
            for id in ids {
                if id.trim().is_empty() {
                    e.push(format!("{what}: an empty id"));
                } else if !seen.insert(id) {
                    e.push(format!("{what} {id:?}: defined twice"));
                }
            }
        };
        dup(
            &mut e,
            "tanks",
            self.tanks.iter().map(|t| t.id.as_str()).collect(),
        );
        dup(
            &mut e,
            "meters",
            self.meters.iter().map(|m| m.id.as_str()).collect(),
        );
        dup(
            &mut e,
            "stations/places",
            self.stations
                .iter()
                .chain(&self.places)
                .map(|p| p.id.as_str())
                .collect(),
        );
        dup(
            &mut e,
            "trucks",
            self.trucks.iter().map(|t| t.id.as_str()).collect(),
        );
        for t in &self.tanks {
            let at = format!("tanks {:?}", t.id);
            if !["crude", "refined", "lube", "special"].contains(&t.group.as_str()) {
                e.push(format!(
                    "{at}: group {:?}: use crude, refined, lube or special",
                    t.group
                ));
            }
            if t.group == "special" && t.alpha60_per_f.is_none() {
                e.push(format!("{at}: group \"special\" needs alpha60_per_f"));
            }
            if !["15C", "20C", "60F"].contains(&t.base.as_str()) {
                e.push(format!("{at}: base {:?}: use 15C, 20C or 60F", t.base));
            }
            if !(t.sw_pct >= 0.0 && t.sw_pct < 100.0) {
                e.push(format!("{at}: sw_pct {} must be in [0, 100)", t.sw_pct));
            }
            if !gt(t.table_unit_l, 0.0) {
                e.push(format!("{at}: table_unit_l must be > 0"));
            }
            if !(ge(t.min_operating_level_mm, 0.0) && t.min_operating_level_mm.is_finite()) {
                e.push(format!(
                    "{at}: min_operating_level_mm {} must be a level ≥ 0 mm",
                    t.min_operating_level_mm
                ));
            }
        }
        for m in &self.meters {
            let at = format!("meters {:?}", m.id);
            let mf_ok = gt(m.meter_factor, 0.5) && m.meter_factor < 1.5;
            if !gt(m.unit_l, 0.0) || !mf_ok {
                e.push(format!(
                    "{at}: unit_l must be > 0 and meter_factor within 0.5–1.5"
                ));
            }
            match (&m.tank, m.role) {
                (Some(t), _) if !self.tanks.iter().any(|k| &k.id == t) => {
                    e.push(format!("{at}: tank {t:?} is not a [[reconcile.tanks]] id"))
                }
                _ if m.gross_totalizer && m.role == MeterRole::Jetty => {
                    e.push(format!("{at}: a jetty meter's totalizer must count net standard volume (gross_totalizer = false)"))
                }
                (Some(_), MeterRole::Jetty) => {
                    e.push(format!("{at}: a jetty meter has no `tank` (receiving tanks are named per discharge)"))
                }
                _ => {}
            }
        }
        for p in self.stations.iter().chain(&self.places) {
            if !(-90.0..=90.0).contains(&p.lat) || !(-180.0..=180.0).contains(&p.lon) {
                e.push(format!("place {:?}: lat/lon out of range", p.id));
            }
            if !gt(p.radius_m, 0.0) {
                e.push(format!("place {:?}: radius_m must be > 0", p.id));
            }
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("\n"))
        }
    }
}
