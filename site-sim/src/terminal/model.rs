//! The terminal's physics as pure state stepped by sim time (no sockets, no clocks): tank NSV
//! (the truth), the jetty and gantry meter totalizers, trips and trucks, and the records the
//! devices and people produce (gantry batch records, ePODs, discharge paperwork, station
//! deliveries), taken out with [`Model::drain`].
//!
//! Gauge figures are *derived* from the truth by [`super::physics`] (shared with the generated
//! month of `flowsquare-sim-month`): TOV = NSV / CTL / CTSh + free water, level = the strapping
//! table's inverse at the TOV, observed density = ρ15 · CTL (API 11.1, refined products, 15 °C
//! base). The cloud's reconciliation, running the same measurement code forwards, must find the
//! litres again.
//!
//! Mass balance (checked by the tests): discharged = Δ tank stock + dispatched + leaked, and
//! dispatched = delivered + lost in transit + still in trucks.

use std::collections::VecDeque;

use flowsquare_measure::StrappingTable;

use super::config::{minutes_of, TerminalConfig};
use super::physics;
pub use super::physics::{ctl, distance_m, level_at, table_csv, DAY_MS};
const MIN_MS: i64 = 60_000;
/// Largest integration step.
const STEP_MS: i64 = 30_000;
/// The discharge paperwork is opened this long before the flow starts and closed this long
/// after it ends (hoses connected / disconnected), so the cloud's stock and meter probes at those
/// instants see the tanks and the jetty meter still — whatever the agents' poll interval in sim
/// time, up to this. No truck loads from a receiving tank within the window.
pub const PAPER_MS: i64 = 30 * 60_000;

/// Deterministic noise in [-1, 1) from a seed and two keys.
fn noise(seed: u64, a: u64, b: u64) -> f64 {
    let mut x =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^= x >> 33;
    ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

/// A gauge reading of a tank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauge {
    /// Innage, mm.
    pub level_mm: f64,
    /// Product temperature, °C.
    pub temp_c: f64,
    /// Observed density at the product temperature, kg/m³.
    pub density_kgm3: f64,
    /// Free water, mm.
    pub water_mm: f64,
}

/// One compartment's batch record (the PLC shows it; the agent captures it).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Bay index (into the config's bays).
    pub bay: usize,
    /// BOL / load number.
    pub bol: String,
    /// Truck id.
    pub truck: String,
    /// Meter id.
    pub meter: String,
    /// Compartment 1…
    pub compartment: u16,
    /// Product.
    pub product: String,
    /// Gross litres (as metered).
    pub gross_l: f64,
    /// NSV litres (as metered).
    pub nsv_l: f64,
    /// Average temperature, °C.
    pub temp_c: f64,
    /// ρ15, kg/m³.
    pub density_15c: f64,
    /// Start / end, sim Unix ms.
    pub start_ms: i64,
    /// End.
    pub end_ms: i64,
    /// Meter totalizer (net) at start / end, L.
    pub start_total_l: f64,
    /// End.
    pub end_total_l: f64,
}

/// An ePOD compartment.
#[derive(Debug, Clone, PartialEq)]
pub struct EpodCompartment {
    /// Number.
    pub compartment: i64,
    /// Product.
    pub product: String,
    /// Gross litres at the station.
    pub gross_l: f64,
    /// Net litres.
    pub net_l: f64,
}

/// An electronic proof of delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Epod {
    /// Trip id.
    pub trip: String,
    /// BOL.
    pub bol: String,
    /// Truck.
    pub truck: String,
    /// Station.
    pub station: String,
    /// Delivered at, sim ms.
    pub delivered_ms: i64,
    /// Receiver.
    pub receiver: String,
    /// Station position.
    pub lat: f64,
    /// Station position.
    pub lon: f64,
    /// Compartments.
    pub compartments: Vec<EpodCompartment>,
}

/// A delivery into the station's TLS-350 tank.
#[derive(Debug, Clone, PartialEq)]
pub struct StationDelivery {
    /// Console tank.
    pub tank: u8,
    /// Start / end, sim ms.
    pub start_ms: i64,
    /// End.
    pub end_ms: i64,
    /// Litres delivered (gross at the station temperature).
    pub gross_l: f64,
    /// Litres delivered (net, temperature compensated).
    pub net_l: f64,
}

/// What the model produced since the last [`Model::drain`].
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A compartment loaded.
    Batch(Batch),
    /// A delivery confirmed.
    Epod(Epod),
    /// A discharge began (paperwork: B/L).
    DischargeOpened {
        /// Index into the config's discharges.
        index: usize,
        /// Sim ms.
        at_ms: i64,
        /// B/L litres.
        bl_l: f64,
    },
    /// A discharge ended (ship's figure).
    DischargeClosed {
        /// Index.
        index: usize,
        /// Sim ms.
        at_ms: i64,
        /// Ship's figure, litres.
        ship_l: f64,
    },
    /// A delivery into the station console's tank.
    StationDelivery(StationDelivery),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    /// Loading trip `trip` (index into `trips`).
    Loading,
    /// Waiting at the terminal until `until`.
    Waiting {
        until: i64,
    },
    /// Driving from the terminal to the station.
    Outbound {
        dep: i64,
        arr: i64,
        stop_at: i64,
        stop_ms: i64,
    },
    /// Unloading until `until`.
    Unloading {
        since: i64,
        until: i64,
    },
    /// Driving back.
    Return {
        dep: i64,
        arr: i64,
    },
}

#[derive(Debug, Clone)]
struct Truck {
    id: String,
    phase: Phase,
    trip: Option<usize>,
    lat: f64,
    lon: f64,
    cargo_l: f64,
}

#[derive(Debug, Clone)]
struct Trip {
    bol: String,
    bay: usize,
    truck: usize,
    station: usize,
    start_ms: i64,
    /// Compartments done.
    done: u16,
    /// NSV litres per compartment (truth).
    comp_true: Vec<f64>,
    lossy: Option<(f64, i64)>,
}

#[derive(Debug, Clone)]
struct Tank {
    rows: Vec<(f64, f64)>,
    table: StrappingTable,
    nsv_l: f64,
}

/// Running totals for the mass balance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// NSV pumped ashore, L.
    pub discharged_l: f64,
    /// NSV leaving the tanks into trucks, L.
    pub dispatched_l: f64,
    /// NSV leaked from tanks, L.
    pub leaked_l: f64,
    /// NSV delivered at stations, L.
    pub delivered_l: f64,
    /// NSV lost in transit, L.
    pub transit_lost_l: f64,
}

/// The terminal.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: TerminalConfig,
    start_ms: i64,
    now_ms: i64,
    tanks: Vec<Tank>,
    jetty_total_l: f64,
    meter_total_l: Vec<f64>,
    trucks: Vec<Truck>,
    trips: Vec<Trip>,
    next_truck: usize,
    scheduled_day: i64,
    transit_used: Vec<bool>,
    opened: Vec<bool>,
    closed: Vec<bool>,
    out: VecDeque<Record>,
    totals: Totals,
    opening_l: f64,
}

impl Model {
    /// A terminal at sim time `start_ms` (a UTC midnight: day 0). `tables[i]` is tank i's
    /// strapping table CSV.
    pub fn new(cfg: TerminalConfig, tables: &[String], start_ms: i64) -> Result<Model, String> {
        let mut tanks = Vec::new();
        for (t, csv) in cfg.tanks.iter().zip(tables) {
            let table = StrappingTable::from_csv(csv).map_err(|e| format!("tank {}: {e}", t.id))?;
            let rows: Vec<(f64, f64)> = table.rows().collect();
            tanks.push(Tank {
                rows,
                table,
                nsv_l: t.opening_nsv_m3 * 1000.0,
            });
        }
        if tanks.len() != cfg.tanks.len() {
            return Err("one strapping table per tank".into());
        }
        let trucks = cfg
            .trucks
            .iter()
            .map(|t| Truck {
                id: t.id.clone(),
                phase: Phase::Idle,
                trip: None,
                lat: cfg.lat,
                lon: cfg.lon,
                cargo_l: 0.0,
            })
            .collect();
        let opening_l = tanks.iter().map(|t| t.nsv_l).sum();
        Ok(Model {
            jetty_total_l: cfg.jetty.start_total_l,
            meter_total_l: cfg.bays.iter().map(|b| b.start_total_l).collect(),
            transit_used: vec![false; cfg.faults.transit_loss.len()],
            opened: vec![false; cfg.discharges.len()],
            closed: vec![false; cfg.discharges.len()],
            trucks,
            tanks,
            trips: Vec::new(),
            next_truck: 0,
            scheduled_day: -1,
            out: VecDeque::new(),
            totals: Totals::default(),
            opening_l,
            start_ms,
            now_ms: start_ms,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TerminalConfig {
        &self.cfg
    }

    /// Sim time of the state.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Day index (from the start) of sim time `t`.
    pub fn day_of(&self, t: i64) -> i64 {
        (t - self.start_ms).div_euclid(DAY_MS)
    }

    fn at(&self, day: i64, hhmm: &str) -> i64 {
        self.start_ms + day * DAY_MS + minutes_of(hhmm).unwrap_or(0) * MIN_MS
    }

    /// Product temperature of tank `i` at `t` (a ±1.5 °C daily swing).
    pub fn temp_c(&self, i: usize, t: i64) -> f64 {
        let frac = (t - self.start_ms).rem_euclid(DAY_MS) as f64 / DAY_MS as f64;
        physics::tank_temp_c(self.cfg.tanks[i].temp_mean_c, i, frac)
    }

    /// Tank `i`'s NSV now, litres (the truth).
    pub fn nsv_l(&self, i: usize) -> f64 {
        self.tanks[i].nsv_l
    }

    /// Sum of the tank stocks, litres.
    pub fn stock_l(&self) -> f64 {
        self.tanks.iter().map(|t| t.nsv_l).sum()
    }

    /// Stock at the start, litres.
    pub fn opening_l(&self) -> f64 {
        self.opening_l
    }

    /// Litres in trucks now.
    pub fn in_trucks_l(&self) -> f64 {
        self.trucks.iter().map(|t| t.cargo_l).sum()
    }

    /// The totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The jetty meter's net totalizer, L.
    pub fn jetty_total_l(&self) -> f64 {
        self.jetty_total_l
    }

    /// Bay `b`'s meter net totalizer, L.
    pub fn meter_total_l(&self, b: usize) -> f64 {
        self.meter_total_l[b]
    }

    /// Tank `i`'s gauge now (noise from the seed, the tank and the second).
    pub fn gauge(&self, i: usize) -> Gauge {
        let t = self.now_ms;
        let spec = &self.cfg.tanks[i];
        let tank = &self.tanks[i];
        let temp = self.temp_c(i, t);
        let fw = tank.table.volume_at(spec.water_mm).unwrap_or(0.0);
        let tov = physics::tov_m3(tank.nsv_l / 1000.0, spec.density_15c, temp, fw);
        let sec = (t / 1000) as u64;
        let level = level_at(&tank.rows, tov)
            + self.cfg.level_noise_mm * noise(self.cfg.seed, i as u64, sec);
        Gauge {
            level_mm: level,
            temp_c: temp + 0.02 * noise(self.cfg.seed, 100 + i as u64, sec),
            density_kgm3: physics::observed_density(spec.density_15c, temp)
                + 0.02 * noise(self.cfg.seed, 200 + i as u64, sec),
            water_mm: spec.water_mm,
        }
    }

    /// Truck `k`'s position (degrees), speed over ground (knots) and course (degrees).
    pub fn truck_fix(&self, k: usize) -> (f64, f64, f64, f64) {
        let tr = &self.trucks[k];
        let (moving, course) = match (&tr.phase, tr.trip) {
            (Phase::Outbound { .. }, Some(trip)) => {
                let s = &self.cfg.stations[self.trips[trip].station];
                (true, bearing(self.cfg.lat, self.cfg.lon, s.lat, s.lon))
            }
            (Phase::Return { .. }, Some(trip)) => {
                let s = &self.cfg.stations[self.trips[trip].station];
                (true, bearing(s.lat, s.lon, self.cfg.lat, self.cfg.lon))
            }
            _ => (false, 0.0),
        };
        let stopped = matches!(tr.phase, Phase::Outbound { stop_at, stop_ms, .. } if self.now_ms >= stop_at && self.now_ms < stop_at + stop_ms);
        let kn = if moving && !stopped {
            self.cfg.loading.speed_kmh / 1.852
        } else {
            0.0
        };
        (tr.lat, tr.lon, kn, course)
    }

    /// Number of trucks.
    pub fn trucks(&self) -> usize {
        self.trucks.len()
    }

    /// Take the records produced so far.
    pub fn drain(&mut self) -> Vec<Record> {
        self.out.drain(..).collect()
    }

    /// Meter drift of bay `b` at `t` (fraction).
    fn drift(&self, b: usize, t: i64) -> f64 {
        let meter = &self.cfg.bays[b].meter;
        let day = self.day_of(t);
        self.cfg
            .faults
            .meter_drift
            .iter()
            .filter(|d| &d.meter == meter && day >= d.from_day)
            .map(|d| d.fraction)
            .sum()
    }

    /// Is tank `i` receiving (a discharge) at any time in [a, b)?
    fn receiving(&self, i: usize, a: i64, b: i64) -> bool {
        let id = &self.cfg.tanks[i].id;
        self.cfg.discharges.iter().any(|d| {
            let s = self.at(d.day, &d.start);
            let e = s + (d.hours * 3_600_000.0) as i64;
            d.tanks.contains(id) && a < e + PAPER_MS && b > s - PAPER_MS
        })
    }

    fn tank_index(&self, id: &str) -> Option<usize> {
        self.cfg.tanks.iter().position(|t| t.id == id)
    }

    fn load_ms(&self) -> i64 {
        self.cfg.loading.compartments * self.cfg.loading.minutes_per_compartment * MIN_MS
    }

    /// Schedule the trips of `day` (bays in turn, stations in turn; trucks at start time).
    fn schedule(&mut self, day: i64) {
        let l = &self.cfg.loading;
        let (first, last) = (
            minutes_of(&l.first).unwrap_or(300),
            minutes_of(&l.last).unwrap_or(1260),
        );
        if self.cfg.bays.is_empty() || self.cfg.trucks.is_empty() {
            return;
        }
        let mut k = 0i64;
        let mut m = first;
        let nb = self.cfg.bays.len() as i64;
        let ns = self.cfg.stations.len() as i64;
        let date = day_label(self.start_ms + day * DAY_MS);
        while m <= last {
            let start = self.start_ms + day * DAY_MS + m * MIN_MS;
            let bay = (k % nb) as usize;
            let tank = self.tank_index(&self.cfg.bays[bay].tank).unwrap_or(0);
            if !self.receiving(tank, start, start + self.load_ms() + 5 * MIN_MS) {
                self.trips.push(Trip {
                    // 11 characters: the gantry record's BOL field holds 16.
                    bol: format!("BOL{}{k:02}", date.replace('-', "").get(2..).unwrap_or("")),
                    bay,
                    truck: usize::MAX,
                    station: ((k + day) % ns) as usize,
                    start_ms: start,
                    done: 0,
                    comp_true: Vec::new(),
                    lossy: None,
                });
            }
            k += 1;
            m += l.every_min;
        }
    }

    /// Advance the state to sim time `t` in steps of at most 30 s.
    pub fn advance_to(&mut self, t: i64) {
        while self.now_ms < t {
            let day = self.day_of(self.now_ms);
            if day > self.scheduled_day {
                self.scheduled_day = day;
                self.schedule(day);
            }
            // Step to the next minute boundary (events are on whole minutes) or t.
            let next = ((self.now_ms / STEP_MS) + 1) * STEP_MS;
            let to = next.min(t);
            self.step(self.now_ms, to);
            self.now_ms = to;
        }
    }

    fn step(&mut self, a: i64, b: i64) {
        // Discharges: paperwork at the edges, flow in between.
        for (i, d) in self.cfg.discharges.clone().iter().enumerate() {
            let s = self.at(d.day, &d.start);
            let e = s + (d.hours * 3_600_000.0) as i64;
            if !self.opened[i] && b > s - PAPER_MS {
                self.opened[i] = true;
                self.out.push_back(Record::DischargeOpened {
                    index: i,
                    at_ms: s - PAPER_MS,
                    bl_l: (d.volume_l * (1.0 + d.bl_excess)).round(),
                });
            }
            let (x, y) = (a.max(s), b.min(e));
            if y > x {
                let q = d.volume_l * (y - x) as f64 / (e - s) as f64;
                let n = d.tanks.len() as f64;
                for id in &d.tanks {
                    if let Some(k) = self.tank_index(id) {
                        self.tanks[k].nsv_l += q / n;
                    }
                }
                self.totals.discharged_l += q;
                self.jetty_total_l += q * (1.0 + self.cfg.jetty.bias);
            }
            if !self.closed[i] && b >= e + PAPER_MS {
                self.closed[i] = true;
                self.out.push_back(Record::DischargeClosed {
                    index: i,
                    at_ms: e + PAPER_MS,
                    ship_l: (d.volume_l * (1.0 + d.ship_excess)).round(),
                });
            }
        }
        // Leaks.
        for lk in self.cfg.faults.tank_leak.clone() {
            let s = self.at(lk.day, &lk.at);
            let e = s + (lk.hours * 3_600_000.0) as i64;
            let (x, y) = (a.max(s), b.min(e));
            if let (true, Some(k)) = (y > x, self.tank_index(&lk.tank)) {
                let q = lk.litres * (y - x) as f64 / (e - s) as f64;
                self.tanks[k].nsv_l -= q;
                self.totals.leaked_l += q;
            }
        }
        // Trips starting now: the next idle truck.
        for ti in 0..self.trips.len() {
            if self.trips[ti].truck == usize::MAX
                && self.trips[ti].start_ms >= a
                && self.trips[ti].start_ms < b
            {
                let n = self.trucks.len();
                let pick = (0..n)
                    .map(|j| (self.next_truck + j) % n)
                    .find(|&j| self.trucks[j].phase == Phase::Idle);
                match pick {
                    Some(j) => {
                        self.next_truck = (j + 1) % n;
                        self.trips[ti].truck = j;
                        self.trucks[j].phase = Phase::Loading;
                        self.trucks[j].trip = Some(ti);
                        let day = self.day_of(self.trips[ti].start_ms);
                        let id = self.trucks[j].id.clone();
                        for (fi, f) in self.cfg.faults.transit_loss.iter().enumerate() {
                            if !self.transit_used[fi] && f.truck == id && f.day == day {
                                self.transit_used[fi] = true;
                                self.trips[ti].lossy = Some((f.fraction, f.stop_min * MIN_MS));
                            }
                        }
                    }
                    // No truck back in time: the load is not made (the schedule is too tight).
                    None => self.trips[ti].truck = usize::MAX - 1,
                }
            }
        }
        // Compartments completing in (a, b].
        let mpc = self.cfg.loading.minutes_per_compartment * MIN_MS;
        let comps = self.cfg.loading.compartments as u16;
        for ti in 0..self.trips.len() {
            let tr = self.trips[ti].clone();
            if tr.truck >= self.trucks.len() || tr.done >= comps {
                continue;
            }
            let end = tr.start_ms + i64::from(tr.done + 1) * mpc;
            if end > b {
                continue;
            }
            let bay = &self.cfg.bays[tr.bay];
            let Some(k) = self.tank_index(&bay.tank) else {
                continue;
            };
            let spec = &self.cfg.tanks[k];
            let temp = self.temp_c(k, end);
            let c = ctl(spec.density_15c, temp);
            let gross = self.cfg.loading.compartment_l;
            let nsv_true = gross * c;
            let drift = self.drift(tr.bay, end);
            let nsv_rep = nsv_true * (1.0 + drift);
            self.tanks[k].nsv_l -= nsv_true;
            self.totals.dispatched_l += nsv_true;
            self.trucks[tr.truck].cargo_l += nsv_true;
            let start_total = self.meter_total_l[tr.bay];
            self.meter_total_l[tr.bay] += nsv_rep;
            let rec = Batch {
                bay: tr.bay,
                bol: tr.bol.clone(),
                truck: self.trucks[tr.truck].id.clone(),
                meter: bay.meter.clone(),
                compartment: tr.done + 1,
                product: spec.product.clone(),
                gross_l: (gross * (1.0 + drift) * 1000.0).round() / 1000.0,
                nsv_l: (nsv_rep * 1000.0).round() / 1000.0,
                temp_c: temp,
                density_15c: spec.density_15c,
                start_ms: end - mpc,
                end_ms: end,
                start_total_l: start_total,
                end_total_l: self.meter_total_l[tr.bay],
            };
            self.out.push_back(Record::Batch(rec));
            let t = &mut self.trips[ti];
            t.done += 1;
            t.comp_true.push(nsv_true);
            if t.done == comps {
                self.trucks[tr.truck].phase = Phase::Waiting {
                    until: end + 5 * MIN_MS,
                };
            }
        }
        // Trucks.
        for j in 0..self.trucks.len() {
            self.truck_step(j, b);
        }
    }

    fn truck_step(&mut self, j: usize, b: i64) {
        let Some(ti) = self.trucks[j].trip else {
            return;
        };
        let trip = self.trips[ti].clone();
        let st = self.cfg.stations[trip.station].clone();
        let (tlat, tlon) = (self.cfg.lat, self.cfg.lon);
        let drive_ms = ((distance_m(tlat, tlon, st.lat, st.lon)
            / (self.cfg.loading.speed_kmh / 3.6))
            * 1000.0) as i64;
        let drive_ms = drive_ms.max(MIN_MS);
        let phase = self.trucks[j].phase.clone();
        match phase {
            Phase::Idle | Phase::Loading => {}
            Phase::Waiting { until } if b >= until => {
                let (stop_at, stop_ms) = match trip.lossy {
                    Some((_, ms)) => (until + drive_ms / 2, ms),
                    None => (i64::MAX, 0),
                };
                self.trucks[j].phase = Phase::Outbound {
                    dep: until,
                    arr: until + drive_ms + stop_ms,
                    stop_at,
                    stop_ms,
                };
            }
            Phase::Waiting { .. } => {}
            Phase::Outbound {
                dep,
                arr,
                stop_at,
                stop_ms,
            } => {
                // Moving time elapsed (the stop does not count).
                let moved = if b < stop_at {
                    b - dep
                } else if b < stop_at + stop_ms {
                    stop_at - dep
                } else {
                    b - dep - stop_ms
                };
                let f = (moved as f64 / drive_ms as f64).clamp(0.0, 1.0);
                self.trucks[j].lat = tlat + (st.lat - tlat) * f;
                self.trucks[j].lon = tlon + (st.lon - tlon) * f;
                if let Some((frac, _)) = trip.lossy {
                    if b >= stop_at + stop_ms / 2 && self.trips[ti].lossy.is_some() {
                        // The product leaves the truck during the stop (once).
                        let q = self.trucks[j].cargo_l * frac;
                        self.trucks[j].cargo_l -= q;
                        self.totals.transit_lost_l += q;
                        self.trips[ti].lossy = None;
                    }
                }
                if b >= arr {
                    self.trucks[j].phase = Phase::Unloading {
                        since: arr,
                        until: arr + self.cfg.loading.unload_min * MIN_MS,
                    };
                }
            }
            Phase::Unloading { since, until } if b >= until => {
                let delivered = self.trucks[j].cargo_l;
                self.trucks[j].cargo_l = 0.0;
                self.totals.delivered_l += delivered;
                let product = self.cfg.tanks
                    [self.tank_index(&self.cfg.bays[trip.bay].tank).unwrap_or(0)]
                .product
                .clone();
                let rho15 = self.cfg.tanks
                    [self.tank_index(&self.cfg.bays[trip.bay].tank).unwrap_or(0)]
                .density_15c;
                let loaded: f64 = trip.comp_true.iter().sum();
                let c30 = ctl(rho15, 30.0);
                let compartments = trip
                    .comp_true
                    .iter()
                    .enumerate()
                    .map(|(n, q)| {
                        let net = if loaded > 0.0 {
                            delivered * q / loaded
                        } else {
                            0.0
                        };
                        EpodCompartment {
                            compartment: n as i64 + 1,
                            product: product.clone(),
                            gross_l: ((net / c30) * 10.0).round() / 10.0,
                            net_l: (net * 10.0).round() / 10.0,
                        }
                    })
                    .collect();
                if let Some(tank) = st.tls_tank {
                    self.out.push_back(Record::StationDelivery(StationDelivery {
                        tank,
                        start_ms: since,
                        end_ms: until,
                        gross_l: delivered / c30,
                        net_l: delivered,
                    }));
                }
                self.out.push_back(Record::Epod(Epod {
                    trip: format!("TRIP-{}", trip.bol),
                    bol: trip.bol.clone(),
                    truck: self.trucks[j].id.clone(),
                    station: st.id.clone(),
                    delivered_ms: until,
                    receiver: format!("manager {}", st.id),
                    lat: st.lat,
                    lon: st.lon,
                    compartments,
                }));
                self.trucks[j].phase = Phase::Return {
                    dep: until,
                    arr: until + drive_ms,
                };
            }
            Phase::Unloading { .. } => {}
            Phase::Return { dep, arr } => {
                let f = ((b - dep) as f64 / drive_ms as f64).clamp(0.0, 1.0);
                self.trucks[j].lat = st.lat + (tlat - st.lat) * f;
                self.trucks[j].lon = st.lon + (tlon - st.lon) * f;
                if b >= arr {
                    self.trucks[j].phase = Phase::Idle;
                    self.trucks[j].trip = None;
                }
            }
        }
    }

    /// The alerts the configured faults must raise: (kind, place prefix, day label).
    pub fn expected_alerts(&self) -> Vec<(String, String, String)> {
        let f = &self.cfg.faults;
        let day = |d: i64| day_label(self.start_ms + d * DAY_MS);
        let mut v = Vec::new();
        for x in &f.tank_leak {
            v.push(("tank-balance".into(), x.tank.clone(), day(x.day)));
        }
        for x in &f.meter_drift {
            v.push(("meter-drift".into(), x.meter.clone(), day(x.from_day)));
        }
        for x in &f.transit_loss {
            v.push(("transit-loss".into(), format!("{}/", x.truck), day(x.day)));
            v.push((
                "unscheduled-stop".into(),
                format!("{}/", x.truck),
                day(x.day),
            ));
        }
        v
    }
}

/// `YYYY-MM-DD` of a Unix ms instant (UTC).
pub fn day_label(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

fn bearing(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dl = (lon2 - lon1).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    (y.atan2(x).to_degrees() + 360.0) % 360.0
}

#[cfg(test)]
mod tests;
