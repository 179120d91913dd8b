//! The engine's plain inputs and outputs: what the store loads (stocks at instants, batch
//! records, ePODs, discharges, meter deltas, GPS tracks) and what a run produces (variance
//! records and alerts). No I/O here.
//!
//! Quantities are litres at the base temperature (net standard volume, NSV) unless a name says
//! otherwise (`gross_l`: at the observed temperature). Times are UTC epoch milliseconds; a day
//! is a UTC calendar day, numbered from the epoch ([`day_start_ms`]).

use serde::{Deserialize, Serialize};

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Start of day number `day` (days since 1970-01-01, UTC), epoch ms.
pub fn day_start_ms(day: i64) -> i64 {
    day * DAY_MS
}

/// The day number of an instant.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_name(day: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
        .map(|t| t.date())
        .unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Parse `YYYY-MM-DD` into a day number.
pub fn parse_day(s: &str) -> Result<i64, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(s.trim(), fmt)
        .map_err(|e| format!("{s:?} is not a date YYYY-MM-DD ({e})"))?;
    Ok(d.midnight()
        .assume_utc()
        .unix_timestamp()
        .div_euclid(86_400))
}

/// A tank's stock at an instant (computed from its gauge tags and strapping table).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    /// Net standard volume, litres.
    pub nsv_l: f64,
    /// Gross observed (total observed − free water), litres, for information.
    pub gov_l: f64,
}

/// A receipt window of a tank on one day (a discharge's window clipped to the day).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptWindow {
    /// Discharge id.
    pub discharge: i64,
    /// Stock at the window's start (None: no usable gauge data).
    pub start: Option<Stock>,
    /// Stock at the window's end.
    pub end: Option<Stock>,
}

/// A tank over one day.
#[derive(Debug, Clone, PartialEq)]
pub struct TankDay {
    /// Tank id (site model).
    pub id: String,
    /// Product.
    pub product: String,
    /// Stock at 00:00.
    pub opening: Option<Stock>,
    /// Stock at 24:00.
    pub closing: Option<Stock>,
    /// Receipts during the day.
    pub receipts: Vec<ReceiptWindow>,
    /// The data behind the day's figures (gauge tags over the day; boundaries: 00:00, 24:00
    /// and the receipt windows' ends). None: not measured (engine tests).
    pub coverage: Option<Coverage>,
}

/// What a meter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterRole {
    /// Jetty (ship discharge) meter.
    Jetty,
    /// Gantry (truck loading) meter.
    Gantry,
}

/// A meter over one day: its totalizer delta.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterDay {
    /// Meter id (site model; the `meter` field of batch records).
    pub id: String,
    /// Jetty or gantry.
    pub role: MeterRole,
    /// Product.
    pub product: String,
    /// The tank it draws from (gantry meters).
    pub tank: Option<String>,
    /// Totalizer end − start over the day, litres (× meter factor); None: no data.
    pub delta_l: Option<f64>,
    /// The totalizer counts gross volume (else net standard volume).
    pub gross: bool,
    /// The data behind `delta_l` (the totalizer tag over the day).
    pub coverage: Option<Coverage>,
}

/// A gantry batch record (one compartment of one load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Load / BOL number (the trip).
    pub bol: String,
    /// Truck.
    pub truck: String,
    /// Meter id.
    pub meter: String,
    /// Compartment number.
    pub compartment: i64,
    /// Product.
    pub product: String,
    /// Gross volume, litres.
    pub gross_l: f64,
    /// Net standard volume, litres.
    pub nsv_l: f64,
    /// End of the batch, epoch ms.
    pub ts_ms: i64,
}

/// One compartment of an ePOD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpodCompartment {
    /// Compartment number.
    pub compartment: i64,
    /// Product.
    pub product: String,
    /// Delivered gross volume, litres.
    pub gross_l: f64,
    /// Delivered net standard volume, litres (None: not measured; gross is compared).
    pub net_l: Option<f64>,
}

/// An electronic proof of delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Epod {
    /// Database id (0 before it is stored).
    #[serde(default)]
    pub id: i64,
    /// Trip number.
    pub trip: String,
    /// BOL number (the load it confirms).
    pub bol: String,
    /// Truck.
    pub truck: String,
    /// Station id.
    pub station: String,
    /// Delivered at, epoch ms.
    pub delivered_ms: i64,
    /// Who received.
    pub receiver: String,
    /// Latitude of the delivery, degrees.
    pub lat: Option<f64>,
    /// Longitude, degrees.
    pub lon: Option<f64>,
    /// Compartments.
    pub compartments: Vec<EpodCompartment>,
}

/// A ship discharge as the reconciliation of its close day sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DischargeDay {
    /// Discharge id.
    pub id: i64,
    /// Vessel.
    pub vessel: String,
    /// Parcel / B/L number.
    pub parcel: String,
    /// Product.
    pub product: String,
    /// B/L quantity, litres NSV.
    pub bl_l: f64,
    /// The ship's figure of what it discharged (ullage before/after), litres NSV.
    pub ship_l: Option<f64>,
    /// Jetty meter totalizer delta over the window, litres (None: no meter data).
    pub jetty_l: Option<f64>,
    /// Σ over the receiving tanks of NSV(close) − NSV(open), litres (None: missing gauge data).
    pub tanks_l: Option<f64>,
    /// The data behind `jetty_l` (jetty totalizer tags over the discharge window).
    pub jetty_coverage: Option<Coverage>,
    /// The data behind `tanks_l` (receiving tanks' gauge tags over the discharge window).
    pub tanks_coverage: Option<Coverage>,
}

/// A GPS fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Epoch ms.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

/// A known place (terminal, station, depot) with a radius.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// Name.
    pub id: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Radius, metres.
    pub radius_m: f64,
}

/// A trip's GPS track (from its load to its delivery).
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// BOL.
    pub bol: String,
    /// Fixes, in time order.
    pub fixes: Vec<Fix>,
}

/// A delivery reported by a station's tank gauge (TLS-350 delivery report).
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeDelivery {
    /// Station id.
    pub station: String,
    /// Product, if the report names it.
    pub product: Option<String>,
    /// End of the delivery, ms.
    pub ts_ms: i64,
    /// Delivered volume (temperature-compensated when the gauge gives it), litres.
    pub delivered_l: f64,
}

/// A past point of a meter's meter-vs-tank trend (from stored variance records).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrendPoint {
    /// Day.
    pub day: i64,
    /// (meter − tank) / tank, %.
    pub pct: f64,
    /// Whether it is usable as a baseline (in control, no tank exception that day).
    pub usable: bool,
}

/// Everything one site's reconciliation of one day needs.
#[derive(Debug, Clone, Default)]
pub struct DayInputs {
    /// Terminal site.
    pub site: String,
    /// Day number.
    pub day: i64,
    /// The instant the run looks from (ePOD grace periods end relative to it).
    pub as_of_ms: i64,
    /// Tanks.
    pub tanks: Vec<TankDay>,
    /// Meters.
    pub meters: Vec<MeterDay>,
    /// Batch records of the day.
    pub batches: Vec<BatchRecord>,
    /// ePODs of the day's loads (matched by BOL).
    pub epods: Vec<Epod>,
    /// Discharges closed on the day.
    pub discharges: Vec<DischargeDay>,
    /// GPS tracks of the day's trips.
    pub tracks: Vec<Track>,
    /// Known places (terminals, stations, depots) for GPS stops.
    pub places: Vec<Place>,
    /// Delivery reports of the stations with a tank gauge (by station id).
    pub gauge_deliveries: Vec<GaugeDelivery>,
    /// Stations that have a tank gauge.
    pub gauged_stations: Vec<String>,
    /// Past meter-trend points per meter id, oldest first.
    pub trends: Vec<(String, Vec<TrendPoint>)>,
}

/// What a variance record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// A stage of a product's chain on a day (ship → tanks → gantry → stations).
    Chain,
    /// A stage of one vessel parcel (B/L → ship → jetty meter → tanks).
    Parcel,
    /// A tank's stock balance on a day.
    Tank,
    /// A trip's transit variance (loaded vs delivered).
    Trip,
    /// A gantry meter's batch records against its totalizer.
    MeterCheck,
    /// A meter's meter-vs-tank trend point with control limits.
    MeterTrend,
}

impl RecordKind {
    /// The spelling in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Chain => "chain",
            RecordKind::Parcel => "parcel",
            RecordKind::Tank => "tank",
            RecordKind::Trip => "trip",
            RecordKind::MeterCheck => "meter-check",
            RecordKind::MeterTrend => "meter-trend",
        }
    }

    /// From its spelling.
    pub fn parse(s: &str) -> Option<RecordKind> {
        [
            RecordKind::Chain,
            RecordKind::Parcel,
            RecordKind::Tank,
            RecordKind::Trip,
            RecordKind::MeterCheck,
            RecordKind::MeterTrend,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The verdict of a variance record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Within tolerance.
    Ok,
    /// Outside tolerance (an alert is raised).
    Exception,
    /// Not decidable yet (ePOD within its grace period).
    Pending,
    /// Inputs missing (no gauge data, no meter data): reported, not judged.
    NoData,
    /// Some input data of the figure is missing (a gap, a stale span, too few readings):
    /// reported with its coverage, not judged; re-run when the data arrives.
    Incomplete,
}

impl Verdict {
    /// The spelling in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Exception => "exception",
            Verdict::Pending => "pending",
            Verdict::NoData => "no-data",
            Verdict::Incomplete => "incomplete",
        }
    }

    /// From its spelling.
    pub fn parse(s: &str) -> Verdict {
        match s {
            "ok" => Verdict::Ok,
            "exception" => Verdict::Exception,
            "pending" => Verdict::Pending,
            "incomplete" => Verdict::Incomplete,
            _ => Verdict::NoData,
        }
    }
}

/// One variance record: a measured quantity against the reference it should match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variance {
    /// Day (`YYYY-MM-DD`).
    pub date: String,
    /// Terminal site.
    pub site: String,
    /// What it is about.
    pub kind: RecordKind,
    /// Where: product, parcel, tank, BOL, meter.
    pub place: String,
    /// Stage within the kind (`ship`, `jetty`, `tanks`, `gantry`, `stations`; `balance`; …).
    pub stage: String,
    /// Product.
    pub product: String,
    /// The reference quantity (the previous stage), litres.
    pub reference_l: Option<f64>,
    /// The measured quantity (this stage), litres.
    pub measured_l: Option<f64>,
    /// measured − reference, litres (negative = loss).
    pub variance_l: Option<f64>,
    /// variance / basis × 100.
    pub variance_pct: Option<f64>,
    /// The tolerance applied, ± %.
    pub tolerance_pct: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Stage-specific figures (opening, receipts, control limits, unconfirmed quantity, …).
    pub detail: serde_json::Value,
    /// The data behind the figure (None: the figure has no tag inputs, e.g. trips and the
    /// stations stage, which compare documents).
    #[serde(default)]
    pub coverage: Option<Coverage>,
}

/// A span of time, epoch ms, `[from_ms, to_ms]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Start.
    pub from_ms: i64,
    /// End.
    pub to_ms: i64,
}

impl Span {
    /// Does it contain the instant `t`?
    pub fn contains(&self, t: i64) -> bool {
        self.from_ms <= t && t <= self.to_ms
    }
}

/// A reported gap (cloud `gaps` table) overlapping an input's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapSpan {
    /// Start, ms.
    pub from_ms: i64,
    /// End, ms.
    pub to_ms: i64,
    /// Readings lost as reported (None: unknown count).
    pub count: Option<i64>,
    /// Why (the agent's reason).
    pub reason: String,
    /// The data of the span has arrived since (a backfill or an import): it no longer counts.
    pub filled: bool,
}

/// One input tag of a figure over the figure's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagCoverage {
    /// `agent/name`.
    pub tag: String,
    /// Window start, ms.
    pub from_ms: i64,
    /// Window end, ms (exclusive).
    pub to_ms: i64,
    /// Readings expected in the window (its length over the tag's poll interval, counted from
    /// the tag's first reading).
    pub expected: i64,
    /// Good readings present in the window.
    pub present: i64,
    /// Reported gaps overlapping the window.
    pub gaps: Vec<GapSpan>,
    /// Spans without a good reading for longer than the tag's stale limit (bad quality counts as
    /// missing), clipped to the window.
    pub stale: Vec<Span>,
    /// Instants the figure reads the tag at (opening, closing, window ends) that fall in an
    /// unfilled gap or a stale span.
    pub boundaries_missing: Vec<i64>,
}

impl TagCoverage {
    /// present / expected, at most 1 (1 when nothing is expected).
    pub fn ratio(&self) -> f64 {
        if self.expected <= 0 {
            1.0
        } else {
            (self.present as f64 / self.expected as f64).min(1.0)
        }
    }
}

/// The data behind a figure: its input tags, the agents' dead letters in the window, and the
/// verdict on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// The weakest input's present / expected (1 without inputs).
    pub ratio: f64,
    /// Whether the figure's data is complete (see [`crate::reconcile::engine::coverage`]).
    pub complete: bool,
    /// Per input tag and window.
    pub inputs: Vec<TagCoverage>,
    /// Dead-lettered data batches of the inputs' agents received in the window.
    pub dead_letters: i64,
    /// What is missing, for people ("data missing for gw-1/JM1.total 2026-03-05 10:00–12:00").
    pub missing: Vec<String>,
}

/// An alert the engine or the analytics raise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAlert {
    /// `tank-balance`, `chain-variance`, `parcel-variance`, `transit-loss`, `epod-missing`,
    /// `meter-check`, `meter-drift`, `unscheduled-stop`, `stale-tag`, `no-data`.
    pub kind: String,
    /// Site.
    pub site: String,
    /// Where (tank, meter, truck/BOL, product/stage, tag).
    pub place: String,
    /// Day (`YYYY-MM-DD`).
    pub date: String,
    /// What happened, for people.
    pub message: String,
    /// Figures.
    pub detail: serde_json::Value,
}
