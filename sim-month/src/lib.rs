//! A deterministic, physically consistent terminal month, with optional faults, for
//! cloud-ingest's tests (test support: never part of a production binary).
//!
//! The terminal `dar-terminal` (agent `gw-1`) has four 5,000 m³ tanks (T1, T2 gasoline "PMS",
//! T3, T4 diesel "AGO") with level, temperature, observed density and free-water tags every
//! `tank_interval_s`, a net jetty meter JM1 and one net gantry meter per tank (M1…M4) with
//! totalizers. Every day from 05:00 a truck loads every 20 minutes (48 trips, 4 compartments of
//! 9,000 L gross, from the tanks in turn), drives to one of six stations, and the station posts
//! an ePOD; trucks (site `fleet`, one agent each) report GPS fixes every minute during trips.
//! A ship discharges 2 × 2,300 m³ into a product's two tanks every six days (10:00 → 04:00 the
//! next day; no loading from the receiving tanks meanwhile). The truth is the NSV of each tank;
//! gauge readings are derived from it by site-sim's terminal physics
//! ([`site_sim::terminal::physics`], the same the live `flowsquare-sim terminal` uses: strapping
//! table, API 11.1, with small gauge noise), so that the reconciliation must find no exception.
//! Faults change the truth (a tank leak), a meter (over-reading), one trip (a loss and a stop on
//! the way) or the paperwork (an ePOD not posted).
//!
//! Unlike the live terminal (stepped in sim time behind device servers), the month is generated
//! at once as wire batches, discharges and ePODs and fed through the real [`Store`]
//! ([`SimMonth::load`]). Its site model is `config/sim/month-site.toml` ([`site_model`]).
//!
//! This crate depends on cloud-ingest, so cloud-ingest uses it from its integration tests
//! (`cloud-ingest/tests/`) only: a unit test in cloud-ingest's `src/` would see a second copy of
//! cloud-ingest's types.

use cloud_ingest::reconcile::config::ReconcileConfig;
use cloud_ingest::reconcile::model::*;
use cloud_ingest::store::ledger::{CloseOutcome, NewDischarge};
use cloud_ingest::store::{Store, StoreError};
use flowsquare_wire as wire;
use site_sim::terminal::physics::{self, ctl, level_at, table_csv, table_rows};

/// The site model of the month, `[reconcile]` TOML (`config/sim/month-site.toml`).
pub const SITE_MODEL_TOML: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../config/sim/month-site.toml"
));

/// The terminal's site id.
pub const SITE: &str = "dar-terminal";
/// Its agent.
pub const AGENT: &str = "gw-1";
/// The trucks' site.
pub const FLEET: &str = "fleet";
/// Terminal position.
pub const TERMINAL: (f64, f64) = (-6.8235, 39.2695);

/// Faults to inject (day indexes count from the first simulated day, 0-based).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// (tank, day, fraction of the day's dispatch lost at noon).
    pub tank_loss: Option<(String, i64, f64)>,
    /// (meter, first day, over-reading fraction).
    pub meter_drift: Option<(String, i64, f64)>,
    /// (truck, day, fraction lost): its first trip that day loses it and stops 30 min on the way.
    pub transit_loss: Option<(String, i64, f64)>,
    /// (truck, day): its first trip that day gets no ePOD.
    pub missing_epod: Option<(String, i64)>,
    /// (meter, day, first hour, hours): the meter's totalizer readings of the span are missing
    /// (a communication outage the agent reports as a gap of unknown count); they come later,
    /// in [`SimMonth::backfill`].
    pub meter_outage: Option<(String, i64, i64, i64)>,
    /// (tank, day, first hour, hours): the tank's level gauge answers bad quality only over the
    /// span; its good readings come later, in [`SimMonth::backfill`] (the gauge's own log).
    pub stale_gauge: Option<(String, i64, i64, i64)>,
    /// (meter, day, hour): the meter's totalizer wraps at that hour; the agent marks the first
    /// reading after the wrap with a rollover and the quantity counted across it.
    pub rollover: Option<(String, i64, i64)>,
    /// (meter, day, hour): the meter's totalizer is reset to 0 at that hour (choose an hour
    /// without loading: the agent's reset marker names the total of the reading before); the
    /// agent marks the first reading after the reset with the total before it.
    pub reset: Option<(String, i64, i64)>,
}

impl Faults {
    /// The four faults of the issue: 0.8 % loss in T3 on day 19, 0.3 % drift of M2 from day
    /// 12, 2 % transit loss on TRK-07 on day 8, missing ePOD of TRK-03 on day 22.
    pub fn issue() -> Faults {
        Faults {
            tank_loss: Some(("T3".into(), 19, 0.008)),
            meter_drift: Some(("M2".into(), 12, 0.003)),
            transit_loss: Some(("TRK-07".into(), 8, 0.02)),
            missing_epod: Some(("TRK-03".into(), 22)),
            ..Faults::default()
        }
    }
}

/// Simulation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimOptions {
    /// First day (day number since the epoch).
    pub start_day: i64,
    /// Days.
    pub days: i64,
    /// Tank and totalizer sampling interval, s (divides 300).
    pub tank_interval_s: i64,
    /// GPS interval, s.
    pub gps_interval_s: i64,
    /// Faults.
    pub faults: Faults,
    /// Noise seed.
    pub seed: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            start_day: parse_day("2026-03-01").unwrap_or(20_513),
            days: 30,
            tank_interval_s: 300,
            gps_interval_s: 60,
            faults: Faults::default(),
            seed: 7,
        }
    }
}

/// A discharge as the sim posts it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDischarge {
    /// What is opened.
    pub open: NewDischarge,
    /// When it is closed.
    pub closed_ms: i64,
    /// The ship's figure.
    pub ship_l: f64,
}

/// The generated month.
#[derive(Debug, Clone)]
pub struct SimMonth {
    /// Settings used.
    pub opts: SimOptions,
    /// The site model.
    pub config: ReconcileConfig,
    /// Strapping tables (tank id, CSV).
    pub tables: Vec<(String, String)>,
    /// Births (terminal agent, trucks).
    pub births: Vec<wire::Birth>,
    /// Data batches (readings and gantry batch events).
    pub batches: Vec<wire::Batch>,
    /// Discharges.
    pub discharges: Vec<SimDischarge>,
    /// ePODs to post.
    pub epods: Vec<Epod>,
    /// The alerts the faults must raise: (kind, place, date).
    pub expected: Vec<(String, String, String)>,
    /// The data the outage and stale-gauge faults held back, to commit later (a backfill).
    pub backfill: Vec<wire::Batch>,
    /// The `data-missing` alerts the held-back data raises until it is backfilled.
    pub expected_missing: Vec<(String, String, String)>,
}

/// xorshift64* noise in [-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (x as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

const TANKS: [(&str, &str, f64, f64); 4] = [
    // id, product, ρ15 kg/m³, opening NSV m³
    ("T1", "PMS", 745.0, 2_600.0),
    ("T2", "PMS", 745.0, 2_700.0),
    ("T3", "AGO", 835.0, 3_600.0),
    ("T4", "AGO", 835.0, 3_500.0),
];
const STATIONS: [(&str, f64, f64); 6] = [
    ("ST-KARIAKOO", -6.8161, 39.2804),
    ("ST-UBUNGO", -6.7880, 39.2070),
    ("ST-MBEZI", -6.7200, 39.1500),
    ("ST-KIBAHA", -6.7700, 38.9200),
    ("ST-TEMEKE", -6.8800, 39.2500),
    ("ST-KIGAMBONI", -6.8600, 39.3200),
];
const TRUCKS: usize = 16;
/// The tanks' mean product temperature, °C.
const TEMP_MEAN_C: f64 = 29.0;
const DISCHARGE_L: f64 = 2_300_000.0;

/// The site model of the simulated terminal, parsed from [`SITE_MODEL_TOML`].
pub fn site_model() -> ReconcileConfig {
    #[derive(serde::Deserialize)]
    struct File {
        reconcile: ReconcileConfig,
    }
    // The file is compiled in, and `tests/month.rs` parses it: it cannot fail at run time.
    toml::from_str::<File>(SITE_MODEL_TOML)
        .map(|f| f.reconcile)
        .expect("config/sim/month-site.toml is a valid [reconcile] section")
}

fn truck_id(k: usize) -> String {
    format!("TRK-{:02}", k + 1)
}

fn tag_info(id: u32, name: String, unit: &str, kind: &str, interval_ms: u64) -> wire::TagInfo {
    wire::TagInfo {
        id,
        name,
        unit: Some(unit.into()),
        kind: kind.into(),
        device: "plc".into(),
        description: None,
        data_type: "f64".into(),
        poll_interval_ms: interval_ms,
    }
}

fn birth(agent: &str, site: &str, tags: Vec<wire::TagInfo>, t0: i64) -> wire::Birth {
    wire::Birth {
        v: 1,
        site: site.into(),
        agent: agent.into(),
        agent_version: "0.1.0".into(),
        config_hash: format!("sim-{agent}"),
        started_ms: t0,
        devices: vec![wire::DeviceInfo {
            name: "plc".into(),
            protocol: "sim".into(),
            description: None,
        }],
        events: Vec::new(),
        tags,
        buffer: None,
    }
}

fn reading(tag: u32, ts_ms: i64, v: f64) -> wire::WireReading {
    wire::WireReading {
        tag,
        ts_ms,
        value: Some(wire::WireValue::Float(v)),
        quality: wire::Quality::Good,
        status: None,
        error: None,
        counter: None,
    }
}

struct Trip {
    bol: String,
    truck: usize,
    tank: usize,
    start_ms: i64,
    station: usize,
}

/// Generate the month.
pub fn generate(opts: &SimOptions) -> SimMonth {
    let t0 = day_start_ms(opts.start_day);
    let t_end = day_start_ms(opts.start_day + opts.days);
    let step = opts.tank_interval_s.max(1) * 1000;
    let mut noise = Noise(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let f = &opts.faults;
    let day_name_i = |i: i64| day_name(opts.start_day + i);
    let mut expected = Vec::new();

    // Discharges: PMS every 6 days from day 2, AGO from day 5, 10:00 → 04:00 next day.
    let mut discharges = Vec::new();
    let mut receiving: Vec<(usize, i64, i64, f64)> = Vec::new(); // tank, from, to, litres
    let mut jetty_flow: Vec<(i64, i64, f64)> = Vec::new();
    for (first, tanks, product) in [(2, [0usize, 1], "PMS"), (5, [2, 3], "AGO")] {
        let mut d = first;
        while d + 1 < opts.days {
            let s = day_start_ms(opts.start_day + d) + 10 * 3_600_000;
            let e = day_start_ms(opts.start_day + d + 1) + 4 * 3_600_000;
            let total = DISCHARGE_L * 2.0;
            for &t in &tanks {
                receiving.push((t, s, e, DISCHARGE_L));
            }
            jetty_flow.push((s, e, total * 1.0002));
            discharges.push(SimDischarge {
                open: NewDischarge {
                    site: SITE.into(),
                    vessel: format!("MT {} {}", product, d),
                    parcel: format!("BL-{product}-{}", day_name_i(d)),
                    product: product.into(),
                    bl_l: (total * 1.0012).round(),
                    tanks: tanks.iter().map(|&t| TANKS[t].0.to_owned()).collect(),
                    meters: vec!["JM1".into()],
                    opened_ms: s,
                },
                closed_ms: e,
                ship_l: (total * 1.0006).round(),
            });
            d += 6;
        }
    }
    let receiving_at = |tank: usize, a: i64, b: i64| {
        receiving
            .iter()
            .any(|&(t, s, e, _)| t == tank && a < e && b > s)
    };

    // Trips.
    let mut trips = Vec::new();
    for i in 0..opts.days {
        let day0 = day_start_ms(opts.start_day + i);
        for k in 0..48usize {
            let start = day0 + 5 * 3_600_000 + k as i64 * 20 * 60_000;
            let tank = k % 4;
            if receiving_at(tank, start, start + 25 * 60_000) {
                continue;
            }
            trips.push(Trip {
                bol: format!("BOL-{}-{k:02}", day_name_i(i).replace('-', "")),
                truck: k % TRUCKS,
                tank,
                start_ms: start,
                station: (k / 4 + i as usize) % STATIONS.len(),
            });
        }
    }

    // Terminal agent: tags 0.. per tank (level, temp, density, water), jetty, gantry meters.
    let mut tags = Vec::new();
    for (id, _, _, _) in TANKS {
        let ms = (step) as u64;
        tags.push(tag_info(
            tags.len() as u32,
            format!("tanks/{id}/level_mm"),
            "mm",
            "gauge",
            ms,
        ));
        tags.push(tag_info(
            tags.len() as u32,
            format!("tanks/{id}/temp_c"),
            "degC",
            "gauge",
            ms,
        ));
        tags.push(tag_info(
            tags.len() as u32,
            format!("tanks/{id}/density_kgm3"),
            "kg/m3",
            "gauge",
            ms,
        ));
        tags.push(tag_info(
            tags.len() as u32,
            format!("tanks/{id}/water_mm"),
            "mm",
            "gauge",
            ms,
        ));
    }
    let jetty_tag = tags.len() as u32;
    tags.push(tag_info(
        jetty_tag,
        "jetty/JM1/net_total_l".into(),
        "L",
        "totalizer",
        step as u64,
    ));
    let meter_tag0 = tags.len() as u32;
    for m in 0..4 {
        tags.push(tag_info(
            meter_tag0 + m,
            format!("gantry/M{}/net_total_l", m + 1),
            "L",
            "totalizer",
            step as u64,
        ));
    }
    let mut births = vec![birth(AGENT, SITE, tags, t0)];
    for k in 0..TRUCKS {
        let gps_ms = (opts.gps_interval_s * 1000) as u64;
        births.push(birth(
            &truck_id(k).to_lowercase(),
            FLEET,
            vec![
                tag_info(0, "gps/lat".into(), "deg", "gauge", gps_ms),
                tag_info(1, "gps/lon".into(), "deg", "gauge", gps_ms),
            ],
            t0,
        ));
    }

    // Loadings: batch events, withdrawals (truth) per tank, totalizer increments per meter.
    let mut withdrawals: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 4];
    let mut meter_counts: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 4];
    let mut day_events: Vec<Vec<wire::Event>> = vec![Vec::new(); opts.days as usize];
    let mut epods = Vec::new();
    let mut gps: Vec<Vec<(i64, f64, f64)>> = vec![Vec::new(); TRUCKS];
    let mut seq = 0u64;
    let mut dispatch_day: Vec<Vec<f64>> = vec![vec![0.0; opts.days as usize]; 4];
    let mut transit_done = false;
    let mut missing_done = false;
    for trip in &trips {
        let i = (trip.start_ms - t0) / DAY_MS;
        let (tank_id, product, rho15, _) = TANKS[trip.tank];
        let meter = format!("M{}", trip.tank + 1);
        let drift = match &f.meter_drift {
            Some((m, from, x)) if *m == meter && i >= *from => *x,
            _ => 0.0,
        };
        let temp = physics::tank_temp_c(TEMP_MEAN_C, trip.tank, physics::day_frac(trip.start_ms));
        let c = ctl(rho15, temp);
        let mut true_nsv = 0.0;
        let mut loaded_nsv = 0.0;
        for comp in 0..4i64 {
            let end = trip.start_ms + (comp + 1) * 5 * 60_000;
            let gross = 9_000.0;
            let nsv_true = gross * c;
            let nsv_rep = nsv_true * (1.0 + drift);
            true_nsv += nsv_true;
            loaded_nsv += nsv_rep;
            withdrawals[trip.tank].push((end, nsv_true / 1000.0));
            dispatch_day[trip.tank][i as usize] += nsv_true;
            meter_counts[trip.tank].push((end, nsv_rep));
            seq += 1;
            day_events[i as usize].push(wire::Event {
                source: format!("bay-{}", trip.tank + 1),
                kind: "gantry-batch".into(),
                seq,
                ts_ms: end,
                fields: vec![
                    ("bol".into(), wire::WireValue::Text(trip.bol.clone())),
                    ("truck".into(), wire::WireValue::Text(truck_id(trip.truck))),
                    ("meter".into(), wire::WireValue::Text(meter.clone())),
                    ("compartment".into(), wire::WireValue::Int(comp + 1)),
                    ("product".into(), wire::WireValue::Text(product.into())),
                    (
                        "gross_l".into(),
                        wire::WireValue::Float((gross * (1.0 + drift) * 1000.0).round() / 1000.0),
                    ),
                    (
                        "nsv_l".into(),
                        wire::WireValue::Float((nsv_rep * 1000.0).round() / 1000.0),
                    ),
                    ("temp_c".into(), wire::WireValue::Float(temp)),
                    ("density_15c".into(), wire::WireValue::Float(rho15)),
                ],
            });
        }
        let load_end = trip.start_ms + 20 * 60_000;
        let truck = truck_id(trip.truck);
        let lossy =
            !transit_done && matches!(&f.transit_loss, Some((t, d, _)) if *t == truck && *d == i);
        let missing =
            !missing_done && matches!(&f.missing_epod, Some((t, d)) if *t == truck && *d == i);
        transit_done |= lossy;
        missing_done |= missing;
        let place = format!("{truck}/{}", trip.bol);
        // GPS: at the terminal, drive (50 km/h), [stop 30 min], at the station 30 min.
        let (slat, slon) = (STATIONS[trip.station].1, STATIONS[trip.station].2);
        let dist = physics::distance_m(TERMINAL.0, TERMINAL.1, slat, slon);
        let drive_ms = ((dist / (50_000.0 / 3_600_000.0)) as i64).max(60_000);
        let leave = load_end + 5 * 60_000;
        let stop_ms = if lossy { 30 * 60_000 } else { 0 };
        let arrive = leave + drive_ms + stop_ms;
        let g = opts.gps_interval_s.max(1) * 1000;
        let mut ts = (trip.start_ms - 5 * 60_000) / g * g;
        while ts <= arrive + 30 * 60_000 {
            let frac = if ts <= leave {
                0.0
            } else if lossy {
                let half = drive_ms / 2;
                let t = ts - leave;
                if t < half {
                    t as f64 / drive_ms as f64
                } else if t < half + stop_ms {
                    0.5
                } else {
                    ((t - stop_ms) as f64 / drive_ms as f64).min(1.0)
                }
            } else {
                ((ts - leave) as f64 / drive_ms as f64).min(1.0)
            };
            gps[trip.truck].push((
                ts,
                TERMINAL.0 + (slat - TERMINAL.0) * frac,
                TERMINAL.1 + (slon - TERMINAL.1) * frac,
            ));
            ts += g;
        }
        if lossy {
            expected.push(("transit-loss".into(), place.clone(), day_name_i(i)));
            expected.push(("unscheduled-stop".into(), place.clone(), day_name_i(i)));
        }
        if missing {
            expected.push(("epod-missing".into(), place.clone(), day_name_i(i)));
            continue;
        }
        let loss = match &f.transit_loss {
            Some((_, _, x)) if lossy => *x,
            _ => 0.0,
        };
        let delivered = true_nsv * (1.0 - loss) * (1.0 + 0.0005 * noise.next());
        let _ = loaded_nsv;
        let per = delivered / 4.0;
        let c_station = ctl(rho15, 30.0);
        epods.push(Epod {
            id: 0,
            trip: format!("TRIP-{}", trip.bol),
            bol: trip.bol.clone(),
            truck: truck.clone(),
            station: STATIONS[trip.station].0.into(),
            delivered_ms: arrive + 20 * 60_000,
            receiver: format!("manager {}", STATIONS[trip.station].0),
            lat: Some(slat),
            lon: Some(slon),
            compartments: (1..=4)
                .map(|n| EpodCompartment {
                    compartment: n,
                    product: product.into(),
                    gross_l: ((per / c_station) * 10.0).round() / 10.0,
                    net_l: Some((per * 10.0).round() / 10.0),
                })
                .collect(),
        });
        let _ = tank_id;
    }
    // The tank leak: at noon of the day.
    let mut leaks: Vec<(usize, i64, f64)> = Vec::new();
    if let Some((tank, day, frac)) = &f.tank_loss {
        if let Some(t) = TANKS.iter().position(|x| x.0 == tank) {
            let q = dispatch_day[t][*day as usize] * frac / 1000.0;
            leaks.push((t, day_start_ms(opts.start_day + day) + 12 * 3_600_000, q));
            expected.push(("tank-balance".into(), tank.clone(), day_name_i(*day)));
        }
    }
    if let Some((m, from, _)) = &f.meter_drift {
        expected.push(("meter-drift".into(), m.clone(), day_name_i(*from)));
    }

    // Terminal readings, one batch per day (the last day's batch holds the closing sample too).
    let rows: Vec<Vec<(f64, f64)>> = (0..4).map(table_rows).collect();
    let tables = (0..4)
        .map(|i| (TANKS[i].0.to_owned(), table_csv(i)))
        .collect();
    let mut batches = Vec::new();
    let mut wptr = [0usize; 4];
    let mut wsum = [0.0f64; 4];
    let mut mptr = [0usize; 4];
    let mut msum = [0.0f64; 4];
    let meter_start = [1.0e7, 2.0e7, 3.0e7, 4.0e7];
    let mut b = wire::Batch::new(SITE, AGENT, 1, format!("sim-{AGENT}"), t0);
    let mut day_idx = 0i64;
    let mut ts = t0;
    while ts <= t_end {
        let i = ((ts - t0) / DAY_MS).min(opts.days - 1);
        if i != day_idx {
            b.events = std::mem::take(&mut day_events[day_idx as usize]);
            batches.push(b);
            day_idx = i;
            b = wire::Batch::new(SITE, AGENT, day_idx as u64 + 1, format!("sim-{AGENT}"), ts);
        }
        for t in 0..4 {
            let (_, _, rho15, open_m3) = TANKS[t];
            while wptr[t] < withdrawals[t].len() && withdrawals[t][wptr[t]].0 <= ts {
                wsum[t] += withdrawals[t][wptr[t]].1;
                wptr[t] += 1;
            }
            let mut nsv = open_m3 - wsum[t];
            for &(rt, s, e, l) in &receiving {
                if rt == t && ts > s {
                    nsv += l / 1000.0 * (((ts - s) as f64) / ((e - s) as f64)).min(1.0);
                }
            }
            for &(lt, at, q) in &leaks {
                if lt == t && ts >= at {
                    nsv -= q;
                }
            }
            let temp = physics::tank_temp_c(TEMP_MEAN_C, t, physics::day_frac(ts));
            let water_mm = 25.0;
            let fw = rows[t][0].1 + (rows[t][1].1 - rows[t][0].1) * water_mm / 100.0;
            let tov = physics::tov_m3(nsv, rho15, temp, fw);
            let level = level_at(&rows[t], tov) + 0.2 * noise.next();
            let temp_r = temp + 0.02 * noise.next();
            let dens = physics::observed_density(rho15, temp) + 0.02 * noise.next();
            let base = (t * 4) as u32;
            b.readings.push(reading(base, ts, level));
            b.readings.push(reading(base + 1, ts, temp_r));
            b.readings.push(reading(base + 2, ts, dens));
            b.readings.push(reading(base + 3, ts, water_mm));
            while mptr[t] < meter_counts[t].len() && meter_counts[t][mptr[t]].0 <= ts {
                msum[t] += meter_counts[t][mptr[t]].1;
                mptr[t] += 1;
            }
            b.readings.push(reading(
                meter_tag0 + t as u32,
                ts,
                ((meter_start[t] + msum[t]) * 1000.0).round() / 1000.0,
            ));
        }
        let jet: f64 = jetty_flow
            .iter()
            .map(|&(s, e, l)| {
                if ts > s {
                    l * (((ts - s) as f64) / ((e - s) as f64)).min(1.0)
                } else {
                    0.0
                }
            })
            .sum();
        b.readings.push(reading(
            jetty_tag,
            ts,
            ((5.0e8 + jet) * 1000.0).round() / 1000.0,
        ));
        ts += step;
    }
    b.events = std::mem::take(&mut day_events[day_idx as usize]);
    b.sort_readings();
    batches.push(b);
    for b in &mut batches {
        b.sort_readings();
    }
    let (backfill, expected_missing) =
        data_faults(opts, &mut batches, jetty_tag, meter_tag0, &discharges);
    // Truck GPS: one batch per truck and day.
    for (k, fixes) in gps.iter().enumerate() {
        let agent = truck_id(k).to_lowercase();
        let mut by_day: std::collections::BTreeMap<i64, Vec<(i64, f64, f64)>> = Default::default();
        for &(ts, la, lo) in fixes {
            by_day
                .entry((ts - t0).div_euclid(DAY_MS))
                .or_default()
                .push((ts, la, lo));
        }
        for (d, fx) in by_day {
            let mut b = wire::Batch::new(
                FLEET,
                &agent,
                (d + 1) as u64,
                format!("sim-{agent}"),
                t0 + d * DAY_MS,
            );
            for (ts, la, lo) in fx {
                b.readings.push(reading(0, ts, la));
                b.readings.push(reading(1, ts, lo));
            }
            b.sort_readings();
            batches.push(b);
        }
    }
    SimMonth {
        opts: opts.clone(),
        config: site_model(),
        tables,
        births,
        batches,
        discharges,
        epods,
        expected,
        backfill,
        expected_missing,
    }
}

/// The tag index of a meter id (`JM1`, `M1`…`M4`).
fn meter_tag_of(id: &str, jetty_tag: u32, meter_tag0: u32) -> Option<u32> {
    if id == "JM1" {
        return Some(jetty_tag);
    }
    let k: u32 = id.strip_prefix('M')?.parse().ok()?;
    (1..=4).contains(&k).then(|| meter_tag0 + k - 1)
}

/// A totalizer's wrap (`rollover`) or reset to 0 at the first reading at or after `at`: every
/// later value drops by the modulus (a wrap between the two readings) or by the value at the
/// reset, and that reading carries the agent's marker.
fn counter_fault(batches: &mut [wire::Batch], tag: u32, at: i64, rollover: bool) {
    let mut series: Vec<&mut wire::WireReading> = batches
        .iter_mut()
        .filter(|b| b.site == SITE && b.agent == AGENT)
        .flat_map(|b| b.readings.iter_mut())
        .filter(|r| r.tag == tag)
        .collect();
    series.sort_by_key(|r| r.ts_ms);
    let value = |r: &wire::WireReading| match r.value {
        Some(wire::WireValue::Float(v)) => v,
        _ => 0.0,
    };
    let Some(i) = series.iter().position(|r| r.ts_ms >= at).filter(|i| *i > 0) else {
        return;
    };
    let (before, after) = (value(series[i - 1]), value(series[i]));
    // A wrap: the modulus lies between the two readings. A reset: back to 0 at the reading.
    let drop = if rollover {
        ((before + after) / 2.0).floor()
    } else {
        after
    };
    for r in series.iter_mut().skip(i) {
        let v = value(r);
        r.value = Some(wire::WireValue::Float(v - drop));
    }
    series[i].counter = Some(if rollover {
        wire::Counter::Rollover {
            delta: after - before,
        }
    } else {
        wire::Counter::Reset { previous: before }
    });
}

/// Apply the data faults (outage, stale gauge, rollover, reset) to the terminal's batches; returns the
/// held-back data (one batch) and the `data-missing` alerts expected until it arrives.
fn data_faults(
    opts: &SimOptions,
    batches: &mut [wire::Batch],
    jetty_tag: u32,
    meter_tag0: u32,
    discharges: &[SimDischarge],
) -> (Vec<wire::Batch>, Vec<(String, String, String)>) {
    let f = &opts.faults;
    let at = |day: i64, hour: i64| day_start_ms(opts.start_day + day) + hour * 3_600_000;
    let mut held: Vec<wire::WireReading> = Vec::new();
    let mut expected = Vec::new();
    let terminal = |b: &wire::Batch| b.site == SITE && b.agent == AGENT;
    if let Some((meter, day, hour, hours)) = &f.meter_outage {
        if let Some(tag) = meter_tag_of(meter, jetty_tag, meter_tag0) {
            let (s, e) = (at(*day, *hour), at(*day, hour + hours));
            for b in batches.iter_mut().filter(|b| terminal(b)) {
                let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut b.readings)
                    .into_iter()
                    .partition(|r| r.tag == tag && r.ts_ms >= s && r.ts_ms < e);
                b.readings = keep;
                if !out.is_empty() {
                    b.gaps.push(wire::Gap::uncounted(
                        vec![tag],
                        s,
                        e,
                        wire::GapReason::Other("device timeout".into()),
                    ));
                }
                held.extend(out);
            }
            // A jetty outage leaves the parcel discharging through it incomplete on its close
            // day; a gantry meter's check on its day.
            if tag == jetty_tag {
                for d in discharges
                    .iter()
                    .filter(|d| d.open.opened_ms < e && d.closed_ms > s)
                {
                    expected.push((
                        "data-missing".to_owned(),
                        format!("{}/jetty", d.open.parcel),
                        day_name(day_of(d.closed_ms)),
                    ));
                }
            } else {
                expected.push(("data-missing".into(), meter.clone(), day_name(day_of(s))));
            }
        }
    }
    if let Some((tank, day, hour, hours)) = &f.stale_gauge {
        if let Some(k) = TANKS.iter().position(|t| t.0 == tank) {
            let tag = (k * 4) as u32;
            let (s, e) = (at(*day, *hour), at(*day, hour + hours));
            for r in batches
                .iter_mut()
                .filter(|b| terminal(b))
                .flat_map(|b| b.readings.iter_mut())
                .filter(|r| r.tag == tag && r.ts_ms >= s && r.ts_ms < e)
            {
                held.push(r.clone());
                r.value = None;
                r.quality = wire::Quality::BadCommunication;
                r.error = Some("no response".into());
            }
            expected.push(("data-missing".into(), tank.clone(), day_name(day_of(s))));
        }
    }
    if let Some((meter, day, hour)) = &f.rollover {
        if let Some(tag) = meter_tag_of(meter, jetty_tag, meter_tag0) {
            counter_fault(batches, tag, at(*day, *hour), true);
        }
    }
    if let Some((meter, day, hour)) = &f.reset {
        if let Some(tag) = meter_tag_of(meter, jetty_tag, meter_tag0) {
            counter_fault(batches, tag, at(*day, *hour), false);
        }
    }
    if held.is_empty() {
        return (Vec::new(), expected);
    }
    let created = held.iter().map(|r| r.ts_ms).max().unwrap_or(0);
    let mut b = wire::Batch::new(SITE, AGENT, 1_000_000, format!("sim-{AGENT}"), created);
    b.readings = held;
    b.sort_readings();
    (vec![b], expected)
}

impl SimMonth {
    /// Feed everything through the real store: births, batches (committed a few at a time),
    /// the rollups built (`Store::roll_due`), discharges opened and closed, ePODs posted.
    pub async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        let t0 = day_start_ms(self.opts.start_day);
        for b in &self.births {
            store.birth(b, t0).await?;
        }
        for chunk in self.batches.chunks(8) {
            store.commit(chunk).await?;
        }
        // The rollups, as the service's roller would have built them by the reconciliation
        // (PostgreSQL; `as_of_ms` is after the last day).
        loop {
            let r = store.roll_due(self.as_of_ms(), 0).await?;
            if !r.more || r.minutes + r.hours == 0 {
                break;
            }
        }
        let ledger = store.ledger();
        for d in &self.discharges {
            let row = ledger.open_discharge(&d.open).await?;
            match ledger
                .close_discharge(row.id, d.closed_ms, Some(d.ship_l))
                .await?
            {
                CloseOutcome::Closed(_) => {}
                other => {
                    return Err(StoreError::Invalid(format!(
                        "sim: closing discharge {}: {other:?}",
                        row.id
                    )))
                }
            }
        }
        for e in &self.epods {
            ledger.post_epod(e, e.delivered_ms).await?;
        }
        Ok(())
    }

    /// The instant to reconcile from: two days after the last day (every grace period over).
    pub fn as_of_ms(&self) -> i64 {
        day_start_ms(self.opts.start_day + self.opts.days + 2)
    }
}
