//! The engine on hand-made days.

use super::*;
use crate::reconcile::config::{DriftConfig, StopConfig, Tolerances};

const DAY: i64 = 20_400; // 2025-11-08

fn stock(l: f64) -> Option<Stock> {
    Some(Stock { nsv_l: l, gov_l: l })
}

fn batch(bol: &str, truck: &str, meter: &str, product: &str, nsv: f64, ts: i64) -> BatchRecord {
    BatchRecord {
        bol: bol.into(),
        truck: truck.into(),
        meter: meter.into(),
        compartment: 1,
        product: product.into(),
        gross_l: nsv * 1.004,
        nsv_l: nsv,
        ts_ms: ts,
    }
}

fn epod(bol: &str, truck: &str, net: f64, at: i64) -> Epod {
    Epod {
        id: 1,
        trip: format!("TRIP-{bol}"),
        bol: bol.into(),
        truck: truck.into(),
        station: "ST-1".into(),
        delivered_ms: at,
        receiver: "r".into(),
        lat: None,
        lon: None,
        compartments: vec![EpodCompartment {
            compartment: 1,
            product: "AGO".into(),
            gross_l: net * 1.004,
            net_l: Some(net),
        }],
    }
}

/// One AGO tank T1 drawn by meter M1: 1,000,000 L opening, two trips of 30,000 L.
fn day() -> DayInputs {
    let t0 = day_start_ms(DAY);
    DayInputs {
        site: "terminal".into(),
        day: DAY,
        as_of_ms: t0 + 3 * DAY_MS,
        tanks: vec![TankDay {
            id: "T1".into(),
            product: "AGO".into(),
            opening: stock(1_000_000.0),
            closing: stock(940_000.0),
            receipts: vec![],
            coverage: None,
        }],
        meters: vec![MeterDay {
            id: "M1".into(),
            role: MeterRole::Gantry,
            product: "AGO".into(),
            tank: Some("T1".into()),
            delta_l: Some(60_000.0),
            gross: false,
            coverage: None,
        }],
        batches: vec![
            batch("B1", "TRK-1", "M1", "AGO", 30_000.0, t0 + 3_600_000),
            batch("B2", "TRK-2", "M1", "AGO", 30_000.0, t0 + 7_200_000),
        ],
        epods: vec![
            epod("B1", "TRK-1", 29_990.0, t0 + 5 * 3_600_000),
            epod("B2", "TRK-2", 30_000.0, t0 + 6 * 3_600_000),
        ],
        ..DayInputs::default()
    }
}

fn run(inp: &DayInputs) -> DayResult {
    let tol = Tolerances {
        default_pct: 0.5,
        ..Tolerances::default()
    };
    reconcile_day(
        inp,
        &Params {
            tolerances: &tol,
            grace_ms: 24 * 3_600_000,
            drift: &DriftConfig::default(),
            stops: &StopConfig::default(),
        },
    )
}

fn find<'a>(r: &'a DayResult, kind: RecordKind, place: &str, stage: &str) -> &'a Variance {
    r.variances
        .iter()
        .find(|v| v.kind == kind && v.place == place && v.stage == stage)
        .unwrap_or_else(|| panic!("no {kind:?} {place} {stage} in {:#?}", r.variances))
}

#[test]
fn a_consistent_day_has_no_alert() {
    let r = run(&day());
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    let t = find(&r, RecordKind::Tank, "T1", "balance");
    assert_eq!(t.variance_l, Some(0.0));
    assert_eq!(t.verdict, Verdict::Ok);
    let s = find(&r, RecordKind::Chain, "AGO", "stations");
    assert_eq!(s.reference_l, Some(60_000.0));
    assert_eq!(s.measured_l, Some(59_990.0));
    let trip = find(&r, RecordKind::Trip, "TRK-1/B1", "transit");
    assert_eq!(trip.variance_l, Some(-10.0));
}

#[test]
fn a_tank_loss_is_a_tank_balance_exception_and_a_chain_exception() {
    let mut d = day();
    d.tanks[0].closing = stock(940_000.0 - 480.0); // 0.8 % of the 60,000 L throughput
    let r = run(&d);
    let t = find(&r, RecordKind::Tank, "T1", "balance");
    assert_eq!(t.variance_l, Some(-480.0));
    assert!((t.variance_pct.unwrap() + 0.8).abs() < 1e-9);
    assert_eq!(t.verdict, Verdict::Exception);
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![("tank-balance", "T1"), ("chain-variance", "AGO/gantry")]
    );
    // not a clean transfer: no meter-trend point
    assert_eq!(
        find(&r, RecordKind::MeterTrend, "M1", "meter-vs-tank").verdict,
        Verdict::NoData
    );
}

#[test]
fn a_receipt_enters_the_balance() {
    let mut d = day();
    d.tanks[0].receipts = vec![ReceiptWindow {
        discharge: 7,
        start: stock(990_000.0),
        end: stock(1_490_000.0),
    }];
    d.tanks[0].closing = stock(1_440_000.0);
    let r = run(&d);
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    let t = find(&r, RecordKind::Tank, "T1", "balance");
    assert_eq!(t.detail["receipts_l"], 500_000.0);
}

#[test]
fn transit_loss_and_missing_epod_and_pending_epod() {
    let mut d = day();
    d.epods[0].compartments[0].net_l = Some(30_000.0 * 0.98);
    d.epods.pop(); // B2: no ePOD
    let r = run(&d);
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("transit-loss", "TRK-1/B1"),
            ("epod-missing", "TRK-2/B2"),
            // one confirmed trip: its loss is the whole stage's
            ("chain-variance", "AGO/stations")
        ],
        "{:#?}",
        r.alerts
    );
    // the unconfirmed trip stays out of the stations stage
    let s = find(&r, RecordKind::Chain, "AGO", "stations");
    assert_eq!(s.reference_l, Some(30_000.0));
    assert_eq!(s.detail["unconfirmed_l"], 30_000.0);
    // within the grace period: pending, no alert
    d.as_of_ms = day_start_ms(DAY) + 10 * 3_600_000;
    d.epods[0].compartments[0].net_l = Some(29_990.0);
    let r = run(&d);
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    assert_eq!(
        find(&r, RecordKind::Trip, "TRK-2/B2", "transit").verdict,
        Verdict::Pending
    );
}

#[test]
fn a_meter_step_outside_the_control_limits_is_drift() {
    let mut d = day();
    d.trends = vec![(
        "M1".into(),
        (1..=10)
            .map(|i| TrendPoint {
                day: DAY - i,
                pct: if i % 2 == 0 { 0.01 } else { -0.01 },
                usable: true,
            })
            .collect(),
    )];
    let r = run(&d);
    assert!(r.alerts.is_empty(), "{:#?}", r.alerts);
    // meter reads 0.3 % high: tank balance is within 0.5 %, the trend is not
    for b in &mut d.batches {
        b.nsv_l *= 1.003;
        b.gross_l *= 1.003;
    }
    d.meters[0].delta_l = d.meters[0].delta_l.map(|x| x * 1.003);
    let r = run(&d);
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(kinds, vec![("meter-drift", "M1")], "{:#?}", r.alerts);
    let m = find(&r, RecordKind::MeterTrend, "M1", "meter-vs-tank");
    assert!((m.variance_pct.unwrap() - 0.3).abs() < 1e-6);
}

#[test]
fn a_missed_batch_shows_in_the_meter_check() {
    let mut d = day();
    d.meters[0].delta_l = Some(90_000.0);
    let r = run(&d);
    assert!(
        r.alerts
            .iter()
            .any(|a| a.kind == "meter-check" && a.place == "M1"),
        "{:#?}",
        r.alerts
    );
}

#[test]
fn a_parcel_goes_from_bl_to_tanks() {
    let mut d = day();
    d.discharges = vec![DischargeDay {
        id: 7,
        vessel: "MT Kilimanjaro".into(),
        parcel: "BL-42".into(),
        product: "AGO".into(),
        bl_l: 10_000_000.0,
        ship_l: Some(9_985_000.0),
        jetty_l: Some(9_980_000.0),
        tanks_l: Some(9_700_000.0),
        jetty_coverage: None,
        tanks_coverage: None,
    }];
    let r = run(&d);
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![("parcel-variance", "BL-42/tanks")],
        "{:#?}",
        r.alerts
    );
    assert_eq!(
        find(&r, RecordKind::Parcel, "BL-42", "jetty").verdict,
        Verdict::Ok
    );
    assert_eq!(
        find(&r, RecordKind::Chain, "AGO", "tanks").verdict,
        Verdict::Exception
    );
}

#[test]
fn missing_gauge_data_is_no_data_not_a_variance() {
    let mut d = day();
    d.tanks[0].closing = None;
    let r = run(&d);
    assert_eq!(
        find(&r, RecordKind::Tank, "T1", "balance").verdict,
        Verdict::NoData
    );
    assert_eq!(
        find(&r, RecordKind::Chain, "AGO", "gantry").verdict,
        Verdict::NoData
    );
    let kinds: Vec<&str> = r.alerts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, vec!["no-data"]);
}

#[test]
fn a_stop_outside_known_places_during_a_loaded_trip_is_flagged() {
    let mut d = day();
    let t0 = day_start_ms(DAY);
    let mut fixes = Vec::new();
    for m in 0..240 {
        let ts = t0 + 3_600_000 + m * 60_000;
        let lat = if (60..90).contains(&m) {
            -6.5
        } else {
            -6.0 - 0.01 * m as f64
        };
        fixes.push(Fix {
            ts_ms: ts,
            lat,
            lon: 39.0,
        });
    }
    d.tracks = vec![Track {
        bol: "B1".into(),
        fixes,
    }];
    d.places = vec![Place {
        id: "ST-1".into(),
        lat: -10.0,
        lon: 39.0,
        radius_m: 300.0,
    }];
    let r = run(&d);
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![("unscheduled-stop", "TRK-1/B1")],
        "{:#?}",
        r.alerts
    );
}

#[test]
fn days_are_named_and_parsed() {
    assert_eq!(day_name(DAY), "2025-11-08");
    assert_eq!(parse_day("2025-11-08"), Ok(DAY));
    assert!(parse_day("2025-13-01").is_err());
    assert_eq!(day_of(day_start_ms(DAY) + DAY_MS - 1), DAY);
}

#[test]
fn a_station_gauge_report_is_checked_against_the_epod() {
    let mut d = day();
    let t0 = day_start_ms(DAY);
    d.gauged_stations = vec!["ST-1".into()];
    d.gauge_deliveries = vec![
        GaugeDelivery {
            station: "ST-1".into(),
            product: Some("AGO".into()),
            ts_ms: t0 + 5 * 3_600_000 + 600_000,
            delivered_l: 29_985.0,
        },
        GaugeDelivery {
            station: "ST-1".into(),
            product: None,
            ts_ms: t0 + 6 * 3_600_000 + 900_000,
            delivered_l: 29_000.0,
        },
    ];
    let r = run(&d);
    assert_eq!(
        find(&r, RecordKind::Trip, "TRK-1/B1", "station-gauge").verdict,
        Verdict::Ok
    );
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![("station-gauge-variance", "TRK-2/B2")],
        "{:#?}",
        r.alerts
    );
}

/// A coverage of one input, complete or with a two-hour hole.
fn cov(complete: bool) -> Option<Coverage> {
    use super::coverage::{judge, CoverageRule};
    let t0 = day_start_ms(DAY);
    let input = TagCoverage {
        tag: "gw-1/JM1.total".into(),
        from_ms: t0,
        to_ms: t0 + DAY_MS,
        expected: 288,
        present: if complete { 288 } else { 264 },
        gaps: vec![],
        stale: if complete {
            vec![]
        } else {
            vec![Span {
                from_ms: t0 + 10 * 3_600_000,
                to_ms: t0 + 12 * 3_600_000,
            }]
        },
        boundaries_missing: vec![],
    };
    Some(judge(vec![input], 0, &CoverageRule::default()))
}

#[test]
fn an_incomplete_tank_is_not_judged_and_says_what_is_missing() {
    let mut d = day();
    // A "loss" of 10,000 L that is really missing gauge data.
    d.tanks[0].closing = stock(930_000.0);
    d.tanks[0].coverage = cov(false);
    let r = run(&d);
    let t = find(&r, RecordKind::Tank, "T1", "balance");
    assert_eq!(t.verdict, Verdict::Incomplete);
    assert!((t.coverage.as_ref().expect("coverage").ratio - 264.0 / 288.0).abs() < 1e-9);
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(kinds, vec![("data-missing", "T1")], "{:#?}", r.alerts);
    assert!(
        r.alerts[0]
            .message
            .starts_with("data missing for gw-1/JM1.total"),
        "{}",
        r.alerts[0].message
    );
    // The chain stage built on the tank is incomplete too (without another alert), and the
    // meter trend has no clean transfer.
    assert_eq!(
        find(&r, RecordKind::Chain, "AGO", "gantry").verdict,
        Verdict::Incomplete
    );
    // Complete: judged as before (a loss).
    d.tanks[0].coverage = cov(true);
    let r = run(&d);
    assert_eq!(
        find(&r, RecordKind::Tank, "T1", "balance").verdict,
        Verdict::Exception
    );
}

#[test]
fn an_incomplete_jetty_meter_is_no_reference_for_the_tanks() {
    let mut d = day();
    d.discharges = vec![DischargeDay {
        id: 7,
        vessel: "MT Kilimanjaro".into(),
        parcel: "BL-42".into(),
        product: "AGO".into(),
        bl_l: 10_000_000.0,
        ship_l: Some(9_985_000.0),
        // two hours of the meter missing: it looks like a 10 % loss
        jetty_l: Some(8_900_000.0),
        tanks_l: Some(9_980_000.0),
        jetty_coverage: cov(false),
        tanks_coverage: cov(true),
    }];
    let r = run(&d);
    assert_eq!(
        find(&r, RecordKind::Parcel, "BL-42", "jetty").verdict,
        Verdict::Incomplete
    );
    let tanks = find(&r, RecordKind::Parcel, "BL-42", "tanks");
    assert_eq!(tanks.verdict, Verdict::Ok);
    assert_eq!(tanks.reference_l, Some(9_985_000.0));
    let kinds: Vec<(&str, &str)> = r
        .alerts
        .iter()
        .map(|a| (a.kind.as_str(), a.place.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![("data-missing", "BL-42/jetty")],
        "{:#?}",
        r.alerts
    );
    assert_eq!(
        find(&r, RecordKind::Chain, "AGO", "jetty").verdict,
        Verdict::Incomplete
    );
}
