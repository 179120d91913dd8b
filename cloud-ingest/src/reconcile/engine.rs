//! The pure reconciliation of one terminal site and one day: [`reconcile_day`] turns
//! [`DayInputs`] into variance records and alerts. No I/O; unit-tested below.
//!
//! - **Tank balance** (per tank): `opening + receipts − dispatched − closing`, where receipts are
//!   the NSV changes over the discharge windows and `dispatched` the NSV of the batch records of
//!   the gantry meters drawing from the tank. Variance = closing − book closing (negative = loss),
//!   in % of the tank's throughput (receipts + dispatched; the opening stock on a day without
//!   movements).
//! - **Meter check** (per gantry meter): Σ batch gross against the totalizer delta (missed or
//!   invented batch records).
//! - **Meter trend** (per gantry meter, or the group of meters of one tank): `(meter − tank) /
//!   tank` on clean days (tank balance within tolerance), against control limits
//!   ([`crate::analytics::drift`]).
//! - **Chain** (per product): `gantry` = loaded (batch NSV) vs tank outflow (opening + receipts −
//!   closing of the product's tanks); `stations` = delivered (ePODs) vs loaded for the confirmed
//!   trips, with the unconfirmed quantity beside; `ship`, `jetty`, `tanks` for the parcels closed
//!   that day (alerts for those are raised per parcel).
//! - **Parcel** (per discharge closed that day): B/L → ship's figure → jetty meter → tank receipts.
//! - **Trip** (per BOL): delivered vs loaded; no ePOD after the grace period = `epod-missing`;
//!   stops outside known places during the loaded trip = `unscheduled-stop`; at a station with a
//!   tank gauge, the gauge's delivery report (within ±3 h) against the ePOD (`station-gauge`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::config::{DriftConfig, StopConfig, Tolerances};
use super::model::*;
use crate::analytics::{drift, stops};

pub mod coverage;
pub mod totalizer;

use coverage::merge;

/// Settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// Tolerances.
    pub tolerances: &'a Tolerances,
    /// ePOD grace period, ms.
    pub grace_ms: i64,
    /// Drift limits.
    pub drift: &'a DriftConfig,
    /// Stop detection.
    pub stops: &'a StopConfig,
}

/// What a day's reconciliation produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayResult {
    /// Variance records.
    pub variances: Vec<Variance>,
    /// Alerts.
    pub alerts: Vec<NewAlert>,
}

impl DayResult {
    /// Records with verdict exception.
    pub fn exceptions(&self) -> usize {
        self.variances
            .iter()
            .filter(|v| v.verdict == Verdict::Exception)
            .count()
    }
}

/// A parcel stage: name, reference, measured, the data behind it.
type Stage<'a> = (&'a str, Option<f64>, Option<f64>, Option<Coverage>);

/// Round to millilitres (stored figures stay readable).
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Ctx<'a> {
    inp: &'a DayInputs,
    p: &'a Params<'a>,
    date: String,
    out: DayResult,
}

impl Ctx<'_> {
    /// Add a record comparing `measured` with `reference` (variance % of `basis`).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        kind: RecordKind,
        place: &str,
        stage: &str,
        tol_stage: &str,
        product: &str,
        reference: Option<f64>,
        measured: Option<f64>,
        basis: Option<f64>,
        detail: serde_json::Value,
    ) -> Verdict {
        let tolerance_pct = self.p.tolerances.pct(&self.inp.site, tol_stage);
        let (variance_l, variance_pct, verdict) = match (reference, measured) {
            (Some(r), Some(m)) => {
                let v = m - r;
                let basis = basis.unwrap_or(r);
                let pct = (basis.abs() > 1e-9).then(|| v / basis * 100.0);
                let verdict = match pct {
                    Some(p) if p.abs() > tolerance_pct => Verdict::Exception,
                    Some(_) => Verdict::Ok,
                    // nothing moved: any variance at all is an exception
                    None if v.abs() > 1.0 => Verdict::Exception,
                    None => Verdict::Ok,
                };
                (Some(r3(v)), pct, verdict)
            }
            _ => (None, None, Verdict::NoData),
        };
        self.out.variances.push(Variance {
            date: self.date.clone(),
            site: self.inp.site.clone(),
            kind,
            place: place.to_owned(),
            stage: stage.to_owned(),
            product: product.to_owned(),
            reference_l: reference.map(r3),
            measured_l: measured.map(r3),
            variance_l,
            variance_pct,
            tolerance_pct,
            verdict,
            detail,
            coverage: None,
        });
        verdict
    }

    /// Attach the data behind the last record; an incomplete coverage makes it `incomplete`
    /// (not judged). Returns the record's verdict.
    fn cover(&mut self, coverage: Option<Coverage>) -> Verdict {
        let Some(v) = self.out.variances.last_mut() else {
            return Verdict::NoData;
        };
        if coverage.as_ref().is_some_and(|c| !c.complete) {
            v.verdict = Verdict::Incomplete;
        }
        v.coverage = coverage;
        v.verdict
    }

    /// The `data-missing` alert of the last record (raised instead of a loss).
    fn missing_alert(&mut self, place: &str) {
        let Some(v) = self.out.variances.last() else {
            return;
        };
        let missing = v
            .coverage
            .as_ref()
            .map(|c| c.missing.clone())
            .unwrap_or_default();
        let head = if missing.is_empty() {
            "data missing".to_owned()
        } else {
            missing.join("; ")
        };
        let msg = format!(
            "{head}: {} {} {} on {} is not judged until the data arrives",
            v.kind.as_str(),
            v.place,
            v.stage,
            v.date
        );
        let detail = json!({ "kind": v.kind.as_str(), "place": v.place, "stage": v.stage,
                             "ratio": v.coverage.as_ref().map(|c| c.ratio), "missing": missing });
        self.alert("data-missing", place, msg, detail);
    }

    fn alert(&mut self, kind: &str, place: &str, message: String, detail: serde_json::Value) {
        self.out.alerts.push(NewAlert {
            kind: kind.to_owned(),
            site: self.inp.site.clone(),
            place: place.to_owned(),
            date: self.date.clone(),
            message,
            detail,
        });
    }

    /// Alert text for the last record.
    fn last_summary(&self) -> String {
        match self.out.variances.last() {
            Some(v) => format!(
                "{} {} {}: measured {:.0} L against {:.0} L, variance {:+.0} L ({:+.3} %, tolerance ±{} %)",
                v.date,
                v.place,
                v.stage,
                v.measured_l.unwrap_or(f64::NAN),
                v.reference_l.unwrap_or(f64::NAN),
                v.variance_l.unwrap_or(f64::NAN),
                v.variance_pct.unwrap_or(f64::NAN),
                v.tolerance_pct
            ),
            None => String::new(),
        }
    }
}

/// The batch records of the day summed per meter (gross, NSV, count), per tank and per
/// product (NSV).
#[derive(Default)]
struct BatchSums<'a> {
    by_meter: BTreeMap<&'a str, (f64, f64, usize)>,
    by_tank: BTreeMap<&'a str, f64>,
    by_product: BTreeMap<&'a str, f64>,
}

/// What the tank balances leave for the later stages, per tank: its outflow (opening +
/// receipts − closing), whether it balanced (a clean day for the meter trend), its coverage.
#[derive(Default)]
struct TankResults<'a> {
    outflow: BTreeMap<&'a str, Option<f64>>,
    ok: BTreeMap<&'a str, bool>,
    coverage: BTreeMap<&'a str, Option<&'a Coverage>>,
}

/// Per product: (loaded on confirmed trips, delivered, unconfirmed, missing ePODs, pending
/// ePODs).
type StationSums = BTreeMap<String, (f64, f64, f64, usize, usize)>;

/// Reconcile one site and day: the stages in order (each appends its records and alerts).
pub fn reconcile_day(inp: &DayInputs, p: &Params<'_>) -> DayResult {
    let mut cx = Ctx {
        inp,
        p,
        date: day_name(inp.day),
        out: DayResult::default(),
    };
    let sums = cx.batch_sums();
    let tanks = cx.tank_balances(&sums);
    cx.meter_checks(&sums);
    cx.meter_trends(&sums, &tanks);
    cx.parcels();
    let stations = cx.trips();
    cx.chains(&sums, &tanks, &stations);
    cx.out
}

/// Delivered litres of the ePOD's compartments that pass `keep`: net when every compartment
/// has a net figure (`net_known`), else gross.
fn epod_litres(e: &Epod, net_known: bool, keep: impl Fn(&EpodCompartment) -> bool) -> f64 {
    e.compartments
        .iter()
        .filter(|c| keep(c))
        .map(|c| {
            if net_known {
                c.net_l.unwrap_or(0.0)
            } else {
                c.gross_l
            }
        })
        .sum()
}

/// One trip (BOL): its batch records summed.
struct TripLoad<'a> {
    bol: &'a str,
    truck: String,
    place: String,
    /// The last compartment's end.
    last_ms: i64,
    loaded_nsv: f64,
    loaded_gross: f64,
    /// NSV per product.
    products: BTreeMap<String, f64>,
    /// The products joined with `+`.
    product: String,
}

impl<'a> TripLoad<'a> {
    fn new(bol: &'a str, batches: &[&BatchRecord]) -> TripLoad<'a> {
        let truck = batches[0].truck.clone();
        let mut products: BTreeMap<String, f64> = BTreeMap::new();
        for b in batches {
            *products.entry(b.product.clone()).or_default() += b.nsv_l;
        }
        TripLoad {
            bol,
            place: format!("{truck}/{bol}"),
            truck,
            last_ms: batches.iter().map(|b| b.ts_ms).max().unwrap_or(0),
            loaded_nsv: batches.iter().map(|b| b.nsv_l).sum(),
            loaded_gross: batches.iter().map(|b| b.gross_l).sum(),
            product: products.keys().cloned().collect::<Vec<_>>().join("+"),
            products,
        }
    }
}

impl<'a> Ctx<'a> {
    /// Batch sums; an alert for every meter the records name that the site model lacks.
    fn batch_sums(&mut self) -> BatchSums<'a> {
        let inp = self.inp;
        let meter_tank: BTreeMap<&str, Option<&str>> = inp
            .meters
            .iter()
            .map(|m| (m.id.as_str(), m.tank.as_deref()))
            .collect();
        let mut sums = BatchSums::default();
        let mut unknown_meters = BTreeSet::new();
        for b in &inp.batches {
            let e = sums.by_meter.entry(&b.meter).or_default();
            e.0 += b.gross_l;
            e.1 += b.nsv_l;
            e.2 += 1;
            *sums.by_product.entry(&b.product).or_default() += b.nsv_l;
            match meter_tank.get(b.meter.as_str()) {
                Some(Some(t)) => *sums.by_tank.entry(t).or_default() += b.nsv_l,
                Some(None) => {}
                None => {
                    unknown_meters.insert(b.meter.clone());
                }
            }
        }
        for m in unknown_meters {
            self.alert(
                "unknown-meter",
                &m,
                format!("batch records name meter {m:?}, which is not in the site model"),
                json!({}),
            );
        }
        sums
    }

    /// Tank balances.
    fn tank_balances(&mut self, sums: &BatchSums<'_>) -> TankResults<'a> {
        let inp = self.inp;
        let mut res = TankResults::default();
        for t in &inp.tanks {
            let receipts: Option<f64> = t
                .receipts
                .iter()
                .map(|w| Some(w.end?.nsv_l - w.start?.nsv_l))
                .sum();
            let dispatched = sums.by_tank.get(t.id.as_str()).copied().unwrap_or(0.0);
            let (opening, closing) = (t.opening.map(|s| s.nsv_l), t.closing.map(|s| s.nsv_l));
            let out = match (opening, receipts, closing) {
                (Some(o), Some(r), Some(c)) => Some(o + r - c),
                _ => None,
            };
            res.outflow.insert(&t.id, out);
            let book = match (opening, receipts) {
                (Some(o), Some(r)) => Some(o + r - dispatched),
                _ => None,
            };
            let through = receipts.map(|r| r.abs() + dispatched);
            let basis = match through {
                Some(x) if x > 1.0 => Some(x),
                _ => opening,
            };
            let detail = json!({
                "opening_l": opening.map(r3), "receipts_l": receipts.map(r3),
                "dispatched_l": r3(dispatched), "closing_l": closing.map(r3),
                "book_closing_l": book.map(r3), "tank_outflow_l": out.map(r3),
            });
            self.record(
                RecordKind::Tank,
                &t.id,
                "balance",
                "tank-balance",
                &t.product,
                book,
                closing,
                basis,
                detail,
            );
            let v = self.cover(t.coverage.clone());
            res.coverage.insert(&t.id, t.coverage.as_ref());
            res.ok.insert(&t.id, v == Verdict::Ok);
            match v {
                Verdict::Exception => {
                    let msg = format!("tank {} stock balance: {}", t.id, self.last_summary());
                    self.alert("tank-balance", &t.id, msg, json!({ "tank": t.id }));
                }
                Verdict::Incomplete => self.missing_alert(&t.id),
                Verdict::NoData => {
                    let msg = format!(
                        "tank {}: no usable gauge data for the opening, closing or a receipt window",
                        t.id
                    );
                    self.alert("no-data", &t.id, msg, json!({ "tank": t.id }));
                }
                _ => {}
            }
        }
        res
    }

    /// Meter checks: each gantry meter's batch records against its totalizer delta.
    fn meter_checks(&mut self, sums: &BatchSums<'_>) {
        let inp = self.inp;
        for m in inp.meters.iter().filter(|m| m.role == MeterRole::Gantry) {
            let (gross, net, n) = sums
                .by_meter
                .get(m.id.as_str())
                .copied()
                .unwrap_or_default();
            let counted = if m.gross { gross } else { net };
            self.record(
                RecordKind::MeterCheck,
                &m.id,
                "totalizer",
                "meter-check",
                &m.product,
                m.delta_l,
                Some(counted),
                None,
                json!({ "batches": n, "basis": if m.gross { "gross" } else { "net" },
                        "totalizer_delta_l": m.delta_l.map(r3), "batch_gross_l": r3(gross), "batch_nsv_l": r3(net) }),
            );
            let v = self.cover(m.coverage.clone());
            if v == Verdict::Incomplete {
                self.missing_alert(&m.id);
            }
            if v == Verdict::Exception {
                let msg = format!(
                    "meter {}: batch records do not add up to the totalizer (missed or duplicated batches?): {}",
                    m.id,
                    self.last_summary()
                );
                self.alert("meter-check", &m.id, msg, json!({ "meter": m.id }));
            }
        }
    }

    /// Meter trends: per tank, its gantry meters together against the tank's outflow on clean
    /// days, within control limits drawn from the past.
    fn meter_trends(&mut self, sums: &BatchSums<'_>, tanks: &TankResults<'_>) {
        let inp = self.inp;
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for m in inp.meters.iter().filter(|m| m.role == MeterRole::Gantry) {
            if let Some(t) = m.tank.as_deref() {
                groups.entry(t).or_default().push(&m.id);
            }
        }
        for (tank, meters) in groups {
            self.meter_trend(tank, &meters, sums, tanks);
        }
    }

    /// The meter trend of one tank's group of meters.
    fn meter_trend(
        &mut self,
        tank: &str,
        meters: &[&str],
        sums: &BatchSums<'_>,
        tanks: &TankResults<'_>,
    ) {
        let inp = self.inp;
        let place = meters.join("+");
        let product = inp
            .tanks
            .iter()
            .find(|t| t.id == tank)
            .map(|t| t.product.clone())
            .unwrap_or_default();
        let measured = sums.by_tank.get(tank).copied().unwrap_or(0.0);
        let reference = tanks.outflow.get(tank).copied().flatten();
        let clean = tanks.ok.get(tank).copied().unwrap_or(false);
        let history = inp
            .trends
            .iter()
            .find(|(p, _)| *p == place)
            .map(|(_, h)| h.as_slice())
            .unwrap_or(&[]);
        let limits = drift::limits(history, inp.day, self.p.drift);
        let pct = match reference {
            Some(r) if r > 1.0 && clean && measured > 0.0 => Some((measured - r) / r * 100.0),
            _ => None,
        };
        let verdict = match (pct, limits) {
            (None, _) => Verdict::NoData,
            (Some(_), None) => Verdict::Ok,
            (Some(x), Some(l)) if l.contains(x) => Verdict::Ok,
            _ => Verdict::Exception,
        };
        let half = limits.map_or(0.0, |l| l.ucl - l.mean);
        self.out.variances.push(Variance {
            date: self.date.clone(),
            site: inp.site.clone(),
            kind: RecordKind::MeterTrend,
            place: place.clone(),
            stage: "meter-vs-tank".into(),
            product,
            reference_l: reference.map(r3),
            measured_l: Some(r3(measured)),
            variance_l: reference.map(|r| r3(measured - r)),
            variance_pct: pct,
            tolerance_pct: half,
            verdict,
            detail: json!({
                "tank": tank,
                "clean_transfer": clean,
                "mean_pct": limits.map(|l| l.mean), "sd_pct": limits.map(|l| l.sd),
                "lcl_pct": limits.map(|l| l.lcl), "ucl_pct": limits.map(|l| l.ucl),
                "baseline_points": limits.map_or(0, |l| l.points),
            }),
            coverage: None,
        });
        let group_cov = merge(
            std::iter::once(tanks.coverage.get(tank).copied().flatten()).chain(
                inp.meters
                    .iter()
                    .filter(|m| meters.contains(&m.id.as_str()))
                    .map(|m| m.coverage.as_ref()),
            ),
        );
        let verdict = self.cover(group_cov);
        if verdict == Verdict::Exception {
            if let (Some(x), Some(l)) = (pct, limits) {
                let msg = format!(
                    "meter {place} (tank {tank}) drifts: meter vs tank {x:+.3} % on {}, outside the control limits {:+.3} … {:+.3} % (baseline mean {:+.3} %, {} days)",
                    self.date, l.lcl, l.ucl, l.mean, l.points
                );
                self.alert(
                    "meter-drift",
                    &place,
                    msg,
                    json!({ "tank": tank, "pct": x, "lcl_pct": l.lcl, "ucl_pct": l.ucl }),
                );
            }
        }
    }

    /// Parcels closed today: B/L → ship's figure → jetty meter → tank receipts.
    fn parcels(&mut self) {
        let inp = self.inp;
        for d in &inp.discharges {
            let place = d.parcel.clone();
            let base = json!({ "discharge": d.id, "vessel": d.vessel });
            // An incomplete jetty figure is no reference for the tanks: the ship's figure is.
            let jetty_ok = d.jetty_coverage.as_ref().is_none_or(|c| c.complete);
            let jetty_ref = d.jetty_l.filter(|_| jetty_ok);
            let tanks_cov = if jetty_ref.is_some() {
                merge([d.jetty_coverage.as_ref(), d.tanks_coverage.as_ref()])
            } else {
                d.tanks_coverage.clone()
            };
            let stages: [Stage<'_>; 3] = [
                ("ship", Some(d.bl_l), d.ship_l, None),
                (
                    "jetty",
                    d.ship_l.or(Some(d.bl_l)),
                    d.jetty_l,
                    d.jetty_coverage.clone(),
                ),
                (
                    "tanks",
                    jetty_ref.or(d.ship_l).or(Some(d.bl_l)),
                    d.tanks_l,
                    tanks_cov,
                ),
            ];
            for (stage, reference, measured, coverage) in stages {
                if stage == "ship" && measured.is_none() {
                    continue; // no ship's figure given: B/L goes straight to the jetty stage
                }
                self.record(
                    RecordKind::Parcel,
                    &place,
                    stage,
                    stage,
                    &d.product,
                    reference,
                    measured,
                    None,
                    base.clone(),
                );
                let v = self.cover(coverage);
                if v == Verdict::Incomplete {
                    self.missing_alert(&format!("{place}/{stage}"));
                }
                if v == Verdict::Exception {
                    let msg = format!(
                        "vessel {} parcel {}: {}",
                        d.vessel,
                        d.parcel,
                        self.last_summary()
                    );
                    self.alert(
                        "parcel-variance",
                        &format!("{place}/{stage}"),
                        msg,
                        base.clone(),
                    );
                }
            }
        }
    }

    /// Trips (per BOL): with an ePOD, delivered vs loaded, the station's gauge and the stops on
    /// the way; without, pending or (after the grace period) `epod-missing`. Returns the
    /// station sums for the chain.
    fn trips(&mut self) -> StationSums {
        let inp = self.inp;
        let mut trips: BTreeMap<&str, Vec<&BatchRecord>> = BTreeMap::new();
        for b in &inp.batches {
            trips.entry(&b.bol).or_default().push(b);
        }
        let epods: BTreeMap<&str, &Epod> = inp.epods.iter().map(|e| (e.bol.as_str(), e)).collect();
        let mut stations = StationSums::new();
        for (bol, batches) in &trips {
            let trip = TripLoad::new(bol, batches);
            match epods.get(bol) {
                Some(e) => self.trip_delivered(&trip, e, &mut stations),
                None => self.trip_unconfirmed(&trip, &mut stations),
            }
        }
        stations
    }

    /// A trip with its ePOD.
    fn trip_delivered(&mut self, trip: &TripLoad<'_>, e: &Epod, stations: &mut StationSums) {
        let (bol, truck, place) = (trip.bol, &trip.truck, &trip.place);
        let net_known = e.compartments.iter().all(|c| c.net_l.is_some());
        let delivered = epod_litres(e, net_known, |_| true);
        let loaded = if net_known {
            trip.loaded_nsv
        } else {
            trip.loaded_gross
        };
        for (prod, l) in &trip.products {
            let d = epod_litres(e, net_known, |c| &c.product == prod);
            let s = stations.entry(prod.clone()).or_default();
            s.0 += if net_known {
                *l
            } else {
                l * trip.loaded_gross / trip.loaded_nsv.max(1e-9)
            };
            s.1 += d;
        }
        let v = self.record(
            RecordKind::Trip,
            place,
            "transit",
            "transit",
            &trip.product,
            Some(loaded),
            Some(delivered),
            None,
            json!({ "bol": bol, "truck": truck, "station": e.station, "trip": e.trip,
                    "basis": if net_known { "net" } else { "gross" },
                    "loaded_ms": trip.last_ms, "delivered_ms": e.delivered_ms, "epod": e.id }),
        );
        if v == Verdict::Exception {
            let msg = format!(
                "truck {truck} trip {bol} to {}: {}",
                e.station,
                self.last_summary()
            );
            self.alert(
                "transit-loss",
                place,
                msg,
                json!({ "bol": bol, "truck": truck, "station": e.station }),
            );
        }
        if self.inp.gauged_stations.contains(&e.station) {
            self.station_gauge(trip, e, delivered);
        }
        self.unscheduled_stops(trip, e);
    }

    /// At a station with a tank gauge: the gauge's delivery report closest to the ePOD within
    /// ±3 h against the ePOD.
    fn station_gauge(&mut self, trip: &TripLoad<'_>, e: &Epod, delivered: f64) {
        let (bol, truck, place) = (trip.bol, &trip.truck, &trip.place);
        let near = self
            .inp
            .gauge_deliveries
            .iter()
            .filter(|g| g.station == e.station && (g.ts_ms - e.delivered_ms).abs() <= 3 * 3_600_000)
            .filter(|g| {
                g.product
                    .as_deref()
                    .is_none_or(|p| trip.products.contains_key(p))
            })
            .min_by_key(|g| (g.ts_ms - e.delivered_ms).abs());
        let v = self.record(
            RecordKind::Trip,
            place,
            "station-gauge",
            "station-gauge",
            &trip.product,
            Some(delivered),
            near.map(|g| g.delivered_l),
            None,
            json!({ "bol": bol, "truck": truck, "station": e.station, "gauge_ts_ms": near.map(|g| g.ts_ms) }),
        );
        if v == Verdict::Exception {
            let msg = format!(
                "station {} tank gauge against the ePOD of {bol}: {}",
                e.station,
                self.last_summary()
            );
            self.alert(
                "station-gauge-variance",
                place,
                msg,
                json!({ "bol": bol, "station": e.station }),
            );
        }
    }

    /// Stops outside every known place while the trip was loaded (last compartment → ePOD).
    fn unscheduled_stops(&mut self, trip: &TripLoad<'_>, e: &Epod) {
        let inp = self.inp;
        let (bol, truck, place) = (trip.bol, &trip.truck, &trip.place);
        let Some(track) = inp.tracks.iter().find(|t| t.bol == *bol) else {
            return;
        };
        let fixes: Vec<Fix> = track
            .fixes
            .iter()
            .copied()
            .filter(|f| f.ts_ms >= trip.last_ms && f.ts_ms <= e.delivered_ms)
            .collect();
        for s in stops::stops(&fixes, &inp.places, self.p.stops)
            .into_iter()
            .filter(|s| s.place.is_none())
        {
            let msg = format!(
                "truck {truck}, loaded with {bol}, stopped {:.0} min at {:.5}, {:.5}, outside every known site",
                s.minutes(), s.lat, s.lon
            );
            self.alert(
                "unscheduled-stop",
                place,
                msg,
                json!({ "bol": bol, "truck": truck, "stop": s }),
            );
        }
    }

    /// A trip without an ePOD: pending within the grace period, then `epod-missing`.
    fn trip_unconfirmed(&mut self, trip: &TripLoad<'_>, stations: &mut StationSums) {
        let (inp, p) = (self.inp, self.p);
        let (bol, truck, place) = (trip.bol, &trip.truck, &trip.place);
        let overdue = inp.as_of_ms > trip.last_ms + p.grace_ms;
        for (prod, l) in &trip.products {
            let s = stations.entry(prod.clone()).or_default();
            s.2 += l;
            if overdue {
                s.3 += 1;
            } else {
                s.4 += 1;
            }
        }
        let verdict = if overdue {
            Verdict::Exception
        } else {
            Verdict::Pending
        };
        self.out.variances.push(Variance {
            date: self.date.clone(),
            site: inp.site.clone(),
            kind: RecordKind::Trip,
            place: place.clone(),
            stage: "transit".into(),
            product: trip.product.clone(),
            reference_l: Some(r3(trip.loaded_nsv)),
            measured_l: None,
            variance_l: None,
            variance_pct: None,
            tolerance_pct: p.tolerances.pct(&inp.site, "transit"),
            verdict,
            detail: json!({ "bol": bol, "truck": truck, "epod": null, "loaded_ms": trip.last_ms }),
            coverage: None,
        });
        if overdue {
            let msg = format!(
                "truck {truck} loaded {bol} ({:.0} L, {}) on {} and no ePOD has been posted within {} h",
                trip.loaded_nsv,
                trip.product,
                self.date,
                p.grace_ms / 3_600_000
            );
            self.alert(
                "epod-missing",
                place,
                msg,
                json!({ "bol": bol, "truck": truck, "loaded_l": r3(trip.loaded_nsv) }),
            );
        }
    }

    /// The chain per product: ship stages (from the parcels closed today), tanks → gantry,
    /// gantry → stations.
    fn chains(&mut self, sums: &BatchSums<'_>, tanks: &TankResults<'_>, stations: &StationSums) {
        let inp = self.inp;
        let mut products: BTreeSet<String> = BTreeSet::new();
        products.extend(inp.tanks.iter().map(|t| t.product.clone()));
        products.extend(sums.by_product.keys().map(|p| (*p).to_owned()));
        for product in products {
            self.chain_ship(&product);
            let loaded = sums
                .by_product
                .get(product.as_str())
                .copied()
                .unwrap_or(0.0);
            self.chain_gantry(&product, loaded, tanks);
            self.chain_stations(&product, loaded, stations);
        }
    }

    /// Ship stages of the chain: the parcel records carry the verdicts and alerts.
    fn chain_ship(&mut self, product: &str) {
        let parcels: Vec<&DischargeDay> = self
            .inp
            .discharges
            .iter()
            .filter(|d| d.product == product)
            .collect();
        if parcels.is_empty() {
            return;
        }
        let sum = |f: &dyn Fn(&DischargeDay) -> Option<f64>| -> Option<f64> {
            parcels.iter().map(|d| f(d)).sum()
        };
        let bl = sum(&|d| Some(d.bl_l));
        let ship = sum(&|d| d.ship_l);
        let jetty = sum(&|d| d.jetty_l);
        let tanks = sum(&|d| d.tanks_l);
        let ids: Vec<i64> = parcels.iter().map(|d| d.id).collect();
        let jetty_cov = merge(parcels.iter().map(|d| d.jetty_coverage.as_ref()));
        let tanks_cov = merge(
            parcels
                .iter()
                .flat_map(|d| [d.jetty_coverage.as_ref(), d.tanks_coverage.as_ref()]),
        );
        self.record(
            RecordKind::Chain,
            product,
            "ship",
            "ship",
            product,
            bl,
            ship.or(bl),
            None,
            json!({ "discharges": ids }),
        );
        self.record(
            RecordKind::Chain,
            product,
            "jetty",
            "jetty",
            product,
            ship.or(bl),
            jetty,
            None,
            json!({ "discharges": ids }),
        );
        self.cover(jetty_cov);
        self.record(
            RecordKind::Chain,
            product,
            "tanks",
            "tanks",
            product,
            jetty.or(ship).or(bl),
            tanks,
            None,
            json!({ "discharges": ids }),
        );
        self.cover(tanks_cov);
    }

    /// Tanks → gantry: the product's tank outflow against the batch records' NSV.
    fn chain_gantry(&mut self, product: &str, loaded: f64, res: &TankResults<'_>) {
        let tanks: Vec<&TankDay> = self
            .inp
            .tanks
            .iter()
            .filter(|t| t.product == product)
            .collect();
        let outflow: Option<f64> = tanks
            .iter()
            .map(|t| res.outflow.get(t.id.as_str()).copied().flatten())
            .sum();
        let tank_ids: Vec<&str> = tanks.iter().map(|t| t.id.as_str()).collect();
        self.record(
            RecordKind::Chain,
            product,
            "gantry",
            "gantry",
            product,
            outflow,
            Some(loaded),
            None,
            json!({ "tanks": tank_ids }),
        );
        // Incomplete: the tanks' own data-missing alerts say what is missing.
        let v = self.cover(merge(
            tanks
                .iter()
                .map(|t| res.coverage.get(t.id.as_str()).copied().flatten()),
        ));
        if v == Verdict::Exception {
            let msg = format!("product {product}, tanks → gantry: {}", self.last_summary());
            self.alert(
                "chain-variance",
                &format!("{product}/gantry"),
                msg,
                json!({ "product": product, "stage": "gantry" }),
            );
        }
    }

    /// Gantry → stations: loaded on the confirmed trips against delivered.
    fn chain_stations(&mut self, product: &str, loaded: f64, stations: &StationSums) {
        let (conf_loaded, delivered, unconfirmed, missing, pending) =
            stations.get(product).copied().unwrap_or_default();
        let v = self.record(
            RecordKind::Chain,
            product,
            "stations",
            "stations",
            product,
            Some(conf_loaded),
            Some(delivered),
            None,
            json!({ "loaded_total_l": r3(loaded), "unconfirmed_l": r3(unconfirmed),
                    "missing_epods": missing, "pending_epods": pending }),
        );
        if v == Verdict::Exception {
            let msg = format!(
                "product {product}, gantry → stations (confirmed trips): {}",
                self.last_summary()
            );
            self.alert(
                "chain-variance",
                &format!("{product}/stations"),
                msg,
                json!({ "product": product, "stage": "stations" }),
            );
        }
    }
}

#[cfg(test)]
mod tests;
