//! The terminal physics both terminal simulators share: the live terminal ([`super::model`],
//! stepped by sim time behind the device servers) and the generated month of the
//! `flowsquare-sim-month` test-support crate (wire batches straight into cloud-ingest's store).
//!
//! The truth is a tank's NSV; what a gauge shows is *derived* from it: TOV = NSV / CTL / CTSh +
//! free water, level = the strapping table's inverse at the TOV, observed density = ρ15 · CTL
//! (API 11.1, refined products, 15 °C base). The cloud's reconciliation, running the same
//! measurement code forwards, must find the litres again. Pure functions, no state.

use flowsquare_measure::{self as measure, Base, Group, Mode};

/// Milliseconds per day.
pub const DAY_MS: i64 = 86_400_000;

/// Thermal expansion of a carbon-steel tank shell, per °C (CTSh).
pub const SHELL_ALPHA_PER_C: f64 = 1.12e-5;

/// CTL from 15 °C to `t` (refined products); 1 outside the standard's range.
pub fn ctl(rho15: f64, t: f64) -> f64 {
    measure::correct_from_base(Group::Refined, Base::C15, rho15, t, 0.0, Mode::Exact)
        .map(|c| c.ctl)
        .unwrap_or(1.0)
}

/// Product temperature of tank `i` (0-based) whose daily mean is `mean_c`, at `day_frac` of
/// the (UTC) day: a ±1.5 °C daily swing (coolest at midnight, warmest at noon), tank `i`
/// 0.2 °C·i warmer.
pub fn tank_temp_c(mean_c: f64, i: usize, day_frac: f64) -> f64 {
    mean_c + 0.2 * i as f64 + 1.5 * ((day_frac - 0.25) * std::f64::consts::TAU).sin()
}

/// The fraction of its UTC day at Unix ms `t`.
pub fn day_frac(t: i64) -> f64 {
    t.rem_euclid(DAY_MS) as f64 / DAY_MS as f64
}

/// Total observed volume (m³) a gauge sees for `nsv_m3` of product of density `rho15` at
/// `temp_c` above `free_water_m3` of water: NSV / CTL / CTSh + free water.
pub fn tov_m3(nsv_m3: f64, rho15: f64, temp_c: f64, free_water_m3: f64) -> f64 {
    let c = ctl(rho15, temp_c);
    let cs = measure::ctsh(SHELL_ALPHA_PER_C, temp_c, 15.0);
    nsv_m3 / c / cs + free_water_m3
}

/// Observed density (kg/m³) at `temp_c` of a product of density `rho15`: ρ15 · CTL.
pub fn observed_density(rho15: f64, temp_c: f64) -> f64 {
    rho15 * ctl(rho15, temp_c)
}

/// Great-circle distance, metres.
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_000.0 * a.sqrt().asin()
}

/// Level (mm) at volume (m³): the inverse of the table's linear interpolation.
pub fn level_at(rows: &[(f64, f64)], vol: f64) -> f64 {
    for w in rows.windows(2) {
        let ((l0, v0), (l1, v1)) = (w[0], w[1]);
        if vol <= v1 {
            return l0 + (vol - v0) / (v1 - v0) * (l1 - l0);
        }
    }
    rows.last().map_or(0.0, |r| r.0)
}

/// The capacity table of the simulated terminal's tank `i`: 0–15,000 mm by 100 mm,
/// ≈ 333 m³/m with ±0.2 % course variation (tank `i` varies differently). (level mm, m³).
pub fn table_rows(i: usize) -> Vec<(f64, f64)> {
    let mut rows = vec![(0.0, 0.0)];
    let mut v = 0.0;
    for k in 1..=150 {
        let area = 333.333 * (1.0 + 0.002 * ((k as f64) * 0.7 + i as f64).sin());
        v += area * 0.1;
        rows.push((k as f64 * 100.0, v));
    }
    rows
}

/// [`table_rows`] as a strapping-table CSV (`level_mm,volume_m3`).
pub fn table_csv(i: usize) -> String {
    let mut s = String::from("level_mm,volume_m3\n");
    for (l, v) in table_rows(i) {
        s.push_str(&format!("{l:.1},{v:.6}\n"));
    }
    s
}
