use super::*;
use crate::terminal::config::TerminalConfig;
use std::path::Path;

fn config(extra: &str) -> TerminalConfig {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/terminal.toml"
    ));
    let text = std::fs::read_to_string(path).expect("terminal.toml");
    TerminalConfig::from_toml_str(&format!("{text}\n{extra}"), path).expect("config")
}

fn model(extra: &str) -> Model {
    let cfg = config(extra);
    let tables: Vec<String> = (0..cfg.tanks.len()).map(table_csv).collect();
    let start = cfg.start_ms();
    Model::new(cfg, &tables, start).expect("model")
}

const FAULTS: &str = r#"
[[faults.tank_leak]]
tank = "T3"
day = 4
litres = 4000.0
[[faults.meter_drift]]
meter = "M2"
from_day = 5
fraction = 0.003
[[faults.transit_loss]]
truck = "TRK-02"
day = 2
fraction = 0.02
"#;

fn balance(m: &Model) {
    let t = m.totals();
    let stock_change = m.stock_l() - m.opening_l();
    let lhs = t.discharged_l;
    let rhs = stock_change + t.dispatched_l + t.leaked_l;
    assert!(
        (lhs - rhs).abs() < 1e-3,
        "in {lhs} vs change+out+leak {rhs}"
    );
    let trucks = t.delivered_l + t.transit_lost_l + m.in_trucks_l();
    assert!(
        (t.dispatched_l - trucks).abs() < 1e-3,
        "dispatched {} vs delivered+lost+in trucks {trucks}",
        t.dispatched_l
    );
}

#[test]
fn the_example_config_parses() {
    let c = config("");
    assert_eq!(c.tanks.len(), 4);
    assert_eq!(c.bays.len(), 4);
    assert!(c.faults.tank_leak.is_empty());
}

#[test]
fn every_litre_in_is_stock_change_plus_out_plus_losses() {
    for extra in ["", FAULTS] {
        let mut m = model(extra);
        let start = m.now_ms();
        let mut t = start;
        while t < start + 7 * DAY_MS {
            t += 7 * 60_000 + 13_000;
            m.advance_to(t);
            balance(&m);
        }
        let tot = m.totals();
        assert!((tot.discharged_l - 3_000_000.0).abs() < 1e-3, "{tot:?}");
        assert!(tot.dispatched_l > 1_000_000.0, "{tot:?}");
        if extra.is_empty() {
            assert_eq!(tot.leaked_l, 0.0);
            assert_eq!(tot.transit_lost_l, 0.0);
        } else {
            assert!((tot.leaked_l - 4000.0).abs() < 1e-6);
            assert!(tot.transit_lost_l > 500.0, "{tot:?}");
        }
    }
}

#[test]
fn records_match_the_physics() {
    let mut m = model(FAULTS);
    let start = m.now_ms();
    m.advance_to(start + 7 * DAY_MS);
    let recs = m.drain();
    let batches: Vec<&Batch> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Batch(b) => Some(b),
            _ => None,
        })
        .collect();
    let epods: Vec<&Epod> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Epod(e) => Some(e),
            _ => None,
        })
        .collect();
    // Every load has four compartments and (apart from the last trips) an ePOD.
    assert_eq!(batches.len() % 4, 0);
    assert!(
        epods.len() * 4 + 8 >= batches.len(),
        "{} epods",
        epods.len()
    );
    // Meter totalizer deltas equal the batch records of the meter.
    for (b, bay) in m.config().bays.iter().enumerate() {
        let sum: f64 = batches.iter().filter(|x| x.bay == b).map(|x| x.nsv_l).sum();
        let delta = m.meter_total_l(b) - bay.start_total_l;
        assert!((sum - delta).abs() < 1.0, "{}: {sum} vs {delta}", bay.meter);
    }
    // The drifting meter over-reads from day 5 only.
    let d5 = start + 5 * DAY_MS;
    for x in batches.iter().filter(|x| x.meter == "M2") {
        let tank = &m.config().tanks[1];
        let truth = 9000.0 * ctl(tank.density_15c, m.temp_c(1, x.end_ms));
        let want = if x.end_ms >= d5 { truth * 1.003 } else { truth };
        assert!((x.nsv_l - want).abs() < 0.01, "{x:?}");
    }
    // The lossy trip delivers 2 % less than it loaded.
    let lossy: Vec<&&Epod> = epods
        .iter()
        .filter(|e| {
            let yymmdd = day_label(start + 2 * DAY_MS).replace('-', "");
            e.truck == "TRK-02" && e.bol.starts_with(&format!("BOL{}", &yymmdd[2..]))
        })
        .collect();
    let first = lossy.first().expect("a TRK-02 trip on day 2");
    let loaded: f64 = batches
        .iter()
        .filter(|b| b.bol == first.bol)
        .map(|b| b.nsv_l)
        .sum();
    let got: f64 = first.compartments.iter().map(|c| c.net_l).sum();
    assert!(
        ((loaded - got) / loaded - 0.02).abs() < 1e-3,
        "{loaded} {got}"
    );
    // Discharge paperwork: open and close for both parcels.
    let opened = recs
        .iter()
        .filter(|r| matches!(r, Record::DischargeOpened { .. }))
        .count();
    let closed = recs
        .iter()
        .filter(|r| matches!(r, Record::DischargeClosed { .. }))
        .count();
    assert_eq!((opened, closed), (2, 2));
    assert_eq!(m.expected_alerts().len(), 4);
}

#[test]
fn the_gauge_gives_the_truth_back_through_the_strapping_table_and_api_11_1() {
    let mut m = model("");
    let start = m.now_ms();
    m.advance_to(start + DAY_MS + 13 * 3_600_000);
    for i in 0..4 {
        let g = m.gauge(i);
        let spec = &m.config().tanks[i];
        let table = flowsquare_measure::StrappingTable::from_csv(&table_csv(i)).expect("table");
        let tov = table.volume_at(g.level_mm).expect("tov");
        let fw = table.volume_at(g.water_mm).expect("fw");
        let c = ctl(spec.density_15c, g.temp_c);
        let cs = flowsquare_measure::ctsh(1.12e-5, g.temp_c, 15.0);
        let nsv = (tov - fw) * cs * c * 1000.0;
        let err = (nsv - m.nsv_l(i)).abs() / m.nsv_l(i);
        assert!(err < 2e-4, "tank {i}: {nsv} vs {}", m.nsv_l(i));
    }
}

#[test]
fn trucks_drive_to_the_station_and_back() {
    let mut m = model("");
    let start = m.now_ms();
    // The first load starts 05:00 with TRK-01: loading 20 min, wait 5, then out to
    // ST-KARIAKOO (≈ 1.45 km, under 2 min at 50 km/h).
    m.advance_to(start + 5 * 3_600_000 + 10 * 60_000);
    let (la, lo, kn, _) = m.truck_fix(0);
    assert_eq!((la, lo, kn), (m.config().lat, m.config().lon, 0.0));
    m.advance_to(start + 5 * 3_600_000 + 25 * 60_000 + 60_000);
    let (la, lo, kn, _) = m.truck_fix(0);
    assert!(kn > 0.0);
    assert!(distance_m(la, lo, m.config().lat, m.config().lon) > 100.0);
    m.advance_to(start + 8 * 3_600_000);
    let (la, lo, _, _) = m.truck_fix(0);
    assert!(distance_m(la, lo, m.config().lat, m.config().lon) < 1.0);
}

#[test]
fn bad_configs_name_every_problem() {
    let path = Path::new("t.toml");
    let e = TerminalConfig::from_toml_str(
        "start = \"2026-03-02T01:00:00Z\"\n[[tank]]\nid = \"T1\"\nproduct = \"A\"\ndensity_15c = 5.0\nopening_nsv_m3 = 1.0\nstrapping_table = \"x\"\n[[bay]]\nnumber = 1\nmeter = \"M1\"\ntank = \"T9\"\n",
        path,
    )
    .expect_err("bad");
    let s = e.to_string();
    for want in ["t.toml", "midnight", "density_15c", "unknown tank", "truck"] {
        assert!(s.contains(want), "{want}: {s}");
    }
    let e = TerminalConfig::from_toml_str("sight = 1\n", path).expect_err("unknown key");
    assert!(e.to_string().contains("line 1"), "{e}");
}
