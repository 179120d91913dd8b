//! Tests of the measurement library: the published API 11.1-2004 examples
//! (/work/shared/reference/measurement.md §1), cross-checks against the 1980 tables' formulas,
//! invariants, every rejected input, strapping tables, the 12.1.1 tank example, meter factors.

use super::*;

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:.12}, want {want:.12} (diff {:.3e}, tolerance {tol:.0e})",
        got - want
    );
}

fn req(group: Group, base: Base, density: DensityAt, t: Temperature, p: Pressure) -> Request {
    Request {
        group,
        base,
        density,
        temperature: t,
        pressure: p,
        mode: Mode::Exact,
    }
}

// ---- Published API 11.1-2004 examples ------------------------------------------------------

#[test]
fn example_11_1_6_1_crude_api_gravity() {
    let rho60 = Density::Api(17.785).kgm3();
    let (rho_star, alpha, used) = shifted_density_alpha60(Group::Crude, rho60);
    assert_eq!(used, GroupUsed::Crude);
    close(rho_star, 946.921215770785, 1e-9, "ρ*");
    close(alpha, 0.000380407044, 1e-12, "α60");
    let c = correct(&req(
        Group::Crude,
        Base::F60,
        DensityAt::Base(Density::Api(17.785)),
        Temperature::F(-27.7),
        Pressure::Psi(0.0),
    ))
    .unwrap();
    close(c.ctl, 1.033011591958, 1e-12, "CTL");
    assert_eq!(c.cpl, 1.0);
    close(
        ctl_60f(Group::Crude, rho60, -27.7).unwrap(),
        1.033011591958,
        1e-12,
        "ctl_60f",
    );
}

#[test]
fn example_11_1_6_1_jet_relative_density_with_pressure() {
    let c = correct(&req(
        Group::Refined,
        Base::F60,
        DensityAt::Base(Density::Relative(0.7943)),
        Temperature::F(85.0),
        Pressure::Psi(247.3),
    ))
    .unwrap();
    assert_eq!(c.group_used, GroupUsed::Jet);
    close(c.density_60f, 0.7943 * 999.016, 1e-12, "ρ60");
    close(c.ctl, 0.986832406683, 1e-12, "CTL");
    close(c.cpl, 1.001646525013, 1e-12, "CPL");
    close(c.ctpl, c.ctl * c.cpl, 0.0, "CTPL");
}

/// The published ρ60 (832.048516184234) is the standard's Newton iterate, stopped when the
/// next correction is below 1e-6 kg/m³ (that rule reproduces it to 1e-12 in a Python
/// re-implementation); the exact root of ρ60·CTL·CPL = ρobs, which this library returns, is
/// 832.048516179913, 4.3e-9 kg/m³ (5e-12 relative) away. Hence 1e-8 on the density.
#[test]
fn example_11_1_6_2_crude_observed_negative_pressure() {
    let c = correct(&req(
        Group::Crude,
        Base::F60,
        DensityAt::Observed(Density::KgM3(823.7)),
        Temperature::F(80.3),
        Pressure::Psi(-5.0),
    ))
    .unwrap();
    close(c.density_60f, 832.048516184234, 1e-8, "ρ60");
    close(c.ctl, 0.989966310837, 1e-12, "CTL");
    assert_eq!(c.cpl, 1.0, "P < 0 is treated as 0");
    close(c.density_60f * c.ctpl, 823.7, 1e-10, "ρ60·CTPL = ρobs");
}

#[test]
fn example_11_1_7_1_refined_15c_base_kpa() {
    let c = correct_from_base(Group::Refined, Base::C15, 865.6, 87.32, 75.0, Mode::Exact).unwrap();
    assert_eq!(c.group_used, GroupUsed::FuelOil);
    close(c.ctl, 0.940416747194, 1e-12, "CTL");
    close(c.cpl, 1.000078931033, 1e-12, "CPL");
    assert_eq!(c.density_base, 865.6);
}

/// Observed 865.6 kg/m³ at 20 °C, 11.25 bar → ρ15. The published 868.425929024799 lies 2.3e-9
/// kg/m³ from the exact root (868.425929027097 with 1 bar = 100 kPa, 1 psi = 6.894757 kPa; the
/// 14.503774 psi/bar rounding moves it by 2e-8): again the standard's iteration stopped at
/// ~1e-6 kg/m³ corrections. Hence 1e-8 on the density.
#[test]
fn example_11_1_7_2_refined_observed_bar() {
    let c = correct(&req(
        Group::Refined,
        Base::C15,
        DensityAt::Observed(Density::KgM3(865.6)),
        Temperature::C(20.0),
        Pressure::Bar(11.25),
    ))
    .unwrap();
    close(c.density_base, 868.425929024799, 1e-8, "ρ15");
    close(c.ctl, 0.995955841168, 1e-12, "CTL 15 °C → 20 °C");
    assert_eq!(c.group_used, GroupUsed::FuelOil);
    // The same through the kg/m³-°C-kPa entry point.
    let d =
        correct_from_observed(Group::Refined, Base::C15, 865.6, 20.0, 1125.0, Mode::Exact).unwrap();
    assert_eq!(c, d);
}

#[test]
fn example_reject_crude_100_api_below_minus_58f() {
    let e = correct(&req(
        Group::Crude,
        Base::F60,
        DensityAt::Base(Density::Api(100.0)),
        Temperature::F(-58.05),
        Pressure::Psi(0.0),
    ))
    .unwrap_err();
    assert_eq!(e.input(), Input::Temperature);
    assert_eq!(
        e.to_string(),
        "temperature -58.05 °F is below the limit -58 °F"
    );
    // At the limit itself it is accepted (100 °API = 610.64 kg/m³ is inside the crude range).
    correct(&req(
        Group::Crude,
        Base::F60,
        DensityAt::Base(Density::Api(100.0)),
        Temperature::F(-58.0),
        Pressure::Psi(0.0),
    ))
    .unwrap();
}

// ---- Other sources --------------------------------------------------------------------------

/// API gravity and relative density conversions (ρ = 141.5·999.016/(API+131.5), RD·999.016).
#[test]
fn density_unit_conversions() {
    close(Density::Api(10.0).kgm3(), 999.016, 1e-12, "10 °API = water");
    close(Density::Relative(1.0).kgm3(), 999.016, 0.0, "RD 1");
    close(
        Density::Api(17.785).kgm3(),
        141.5 * 999.016 / 149.285,
        1e-12,
        "17.785 °API",
    );
}

/// ITS-90 → IPTS-68: 0 at 0 °C, t68 − t90 ≈ +0.010 °C at 40 °C and +0.026 °C at 100 °C
/// (published ITS-90 difference tables), and small over −50…150 °C.
#[test]
fn its90_to_ipts68() {
    let diff = |c: f64| (t68_f(c) - 32.0) / 1.8 - c;
    close(t68_f(0.0), 32.0, 0.0, "0 °C");
    close(diff(40.0), 0.010, 0.0005, "40 °C");
    close(diff(100.0), 0.026, 0.0005, "100 °C");
    for i in -50..=150 {
        let c = i as f64;
        assert!(diff(c).abs() < 0.04, "{c} °C: t68 − t90 = {}", diff(c));
    }
    // 60 °F ITS-90 is 60.0068749 °F IPTS-68 (the constant of the CTL formula).
    close(t68_f(Base::F60.temp_c()), 60.0068749, 5e-8, "60 °F");
}

/// The 1980 tables (6A/6B at 60 °F, 54A/54B at 15 °C; ISO 91-1 formulas without the ITS-90
/// shift) agree with 2004 to ≤ ~5e-5; the reference allows comparing at 1e-4 only.
#[test]
fn agrees_with_1980_tables_at_1e_4() {
    fn vcf_1980(k0: f64, k1: f64, k2: f64, rho: f64, dt: f64) -> f64 {
        let a = k0 / (rho * rho) + k1 / rho + k2;
        (-a * dt * (1.0 + 0.8 * a * dt)).exp()
    }
    // 60 °F tables 6A (crude) and 6B (refined), constants as in 2004.
    for rho in [650.0, 720.0, 780.0, 800.0, 850.0, 900.0, 950.0, 1000.0] {
        for t in [-20.0, 0.0, 32.0, 50.0, 80.0, 100.0, 150.0, 200.0] {
            let dt = t - 60.0;
            let crude = ctl_60f(Group::Crude, rho, t).unwrap();
            close(crude, vcf_1980(341.0957, 0.0, 0.0, rho, dt), 1e-4, "6A");
            let refined = ctl_60f(Group::Refined, rho, t).unwrap();
            let (k0, k1, k2) = if rho < 770.352 {
                (192.4571, 0.2438, 0.0)
            } else if rho < 787.5195 {
                (1489.0670, 0.0, -0.0018684)
            } else if rho < 838.3127 {
                (330.3010, 0.0, 0.0)
            } else {
                (103.8720, 0.2701, 0.0)
            };
            close(refined, vcf_1980(k0, k1, k2, rho, dt), 1e-4, "6B");
        }
    }
    // 15 °C tables 54A (crude) and 54B (refined: 186.9696/0.4862, 594.5418, 346.4228/0.4388).
    // Not the 54B transition zone (−0.00336312 + 2680.32/ρ²): 1980 evaluates the 60 °F
    // correlation at ρ15 there, and α60 is steep in ρ (−1.1e-5 /°C per kg/m³), so 1980 and 2004
    // differ by up to 3.5e-4 at 90 °C — a known 1980 artefact, not a deviation of ours.
    for rho in [700.0, 750.0, 800.0, 850.0, 900.0, 950.0] {
        for t in [-10.0, 0.0, 10.0, 25.0, 40.0, 60.0, 90.0] {
            let dt = t - 15.0;
            let c = correct_from_base(Group::Crude, Base::C15, rho, t, 0.0, Mode::Exact).unwrap();
            close(c.ctl, vcf_1980(613.9723, 0.0, 0.0, rho, dt), 1e-4, "54A");
            let c = correct_from_base(Group::Refined, Base::C15, rho, t, 0.0, Mode::Exact).unwrap();
            let (k0, k1, k2) = if rho < 770.5 {
                (346.4228, 0.4388, 0.0)
            } else if rho < 838.5 {
                (594.5418, 0.0, 0.0)
            } else {
                (186.9696, 0.4862, 0.0)
            };
            close(c.ctl, vcf_1980(k0, k1, k2, rho, dt), 1e-4, "54B");
        }
    }
}

/// The refined-product boundaries at 15 °C fall near 770.846, 787.939 and 838.707 kg/m³.
#[test]
fn refined_boundaries_at_15c() {
    for (b, below, above) in [
        (770.846, GroupUsed::Gasoline, GroupUsed::Transition),
        (787.939, GroupUsed::Transition, GroupUsed::Jet),
        (838.707, GroupUsed::Jet, GroupUsed::FuelOil),
    ] {
        let lo =
            correct_from_base(Group::Refined, Base::C15, b - 0.01, 20.0, 0.0, Mode::Exact).unwrap();
        let hi =
            correct_from_base(Group::Refined, Base::C15, b + 0.01, 20.0, 0.0, Mode::Exact).unwrap();
        assert_eq!(
            (lo.group_used, hi.group_used),
            (below, above),
            "around ρ15 {b}"
        );
    }
    // At 60 °F the boundaries are exact (lower bound inclusive).
    for (b, g) in [
        (770.3520, GroupUsed::Transition),
        (787.5195, GroupUsed::Jet),
        (838.3127, GroupUsed::FuelOil),
    ] {
        let c = correct_from_base(Group::Refined, Base::F60, b, 20.0, 0.0, Mode::Exact).unwrap();
        assert_eq!(c.group_used, g);
    }
}

/// α60 is nearly continuous across the refined boundaries (the transition zone is built for it),
/// so CTL jumps by little there.
#[test]
fn refined_ctl_nearly_continuous_across_boundaries() {
    for b in [770.3520, 787.5195, 838.3127] {
        for t in [-58.0, 0.0, 100.0, 302.0] {
            let lo = ctl_60f(Group::Refined, b - 1e-9, t).unwrap();
            let hi = ctl_60f(Group::Refined, b, t).unwrap();
            assert!((lo - hi).abs() < 2e-3, "{b} at {t} °F: {lo} vs {hi}");
        }
    }
}

/// The refined correlation jumps by < 1e-7 in CTL at a sub-group boundary, so an observed
/// density can fall in a gap with no exact root (or an overlap with two). The root find still
/// answers: the result satisfies ρ60·CTPL = ρobs to within the jump, lies in the group it
/// reports, and is deterministic.
#[test]
fn observed_density_across_refined_boundaries() {
    for b in [770.3520, 787.5195, 838.3127] {
        for (t, p) in [(150.0, 0.0), (-50.0, 10_000.0), (90.0, 3_000.0)] {
            let centre = correct_from_base(Group::Refined, Base::F60, b, t, p, Mode::Exact)
                .unwrap()
                .ctpl
                * b;
            for i in -200..=200 {
                let rho_obs = centre + i as f64 * 1e-6;
                let c =
                    correct_from_observed(Group::Refined, Base::F60, rho_obs, t, p, Mode::Exact)
                        .unwrap();
                close(c.density_60f * c.ctpl, rho_obs, 1e-4, "ρ60·CTPL");
                let again =
                    correct_from_observed(Group::Refined, Base::F60, rho_obs, t, p, Mode::Exact)
                        .unwrap();
                assert_eq!(c, again);
                let (_, _, used) = shifted_density_alpha60(Group::Refined, c.density_60f);
                assert_eq!(used, c.group_used);
            }
        }
    }
}

// ---- Invariants -----------------------------------------------------------------------------

fn groups() -> Vec<(Group, f64, f64)> {
    vec![
        (Group::Crude, 620.0, 1150.0),
        (Group::Refined, 620.0, 1150.0),
        (Group::Lube, 810.0, 1150.0),
        (
            Group::Special {
                alpha60_per_f: 0.0005,
            },
            620.0,
            1150.0,
        ),
        (
            Group::Special {
                alpha60_per_f: 0.00023,
            },
            620.0,
            1150.0,
        ),
    ]
}

fn densities(lo: f64, hi: f64) -> impl Iterator<Item = f64> {
    (0..=20).map(move |i| lo + (hi - lo) * i as f64 / 20.0)
}

#[test]
fn ctl_is_one_at_the_base_temperature() {
    for (g, lo, hi) in groups() {
        for rho in densities(lo, hi) {
            let c = correct(&req(
                g,
                Base::F60,
                DensityAt::Base(Density::KgM3(rho)),
                Temperature::F(60.0),
                Pressure::Psi(0.0),
            ))
            .unwrap();
            close(c.ctl, 1.0, 1e-10, "CTL at 60 °F");
            for (base, t) in [(Base::C15, 15.0), (Base::C20, 20.0)] {
                let rho_b = rho * 0.999; // keep ρ60 in range
                let c = correct_from_base(g, base, rho_b, t, 0.0, Mode::Exact).unwrap();
                assert_eq!(c.ctl, 1.0, "{g:?} {base:?} {rho_b}");
                assert_eq!(c.cpl, 1.0);
            }
        }
    }
}

#[test]
fn ctl_decreases_with_temperature() {
    for (g, lo, hi) in groups() {
        for rho in densities(lo, hi) {
            let mut prev = f64::INFINITY;
            for i in 0..=3600 {
                let t = -58.0 + i as f64 * 0.1;
                let c = ctl_60f(g, rho, t).unwrap();
                assert!(c < prev, "{g:?} ρ60 {rho}: CTL({t}) = {c} not below {prev}");
                prev = c;
            }
        }
    }
}

#[test]
fn cpl_increases_with_pressure() {
    for (g, lo, hi) in groups() {
        for rho in densities(lo, hi) {
            let mut prev = 1.0;
            for p in [1.0, 10.0, 100.0, 500.0, 1000.0, 1500.0] {
                let c = correct(&req(
                    g,
                    Base::F60,
                    DensityAt::Base(Density::KgM3(rho)),
                    Temperature::F(100.0),
                    Pressure::Psi(p),
                ))
                .unwrap();
                assert!(c.cpl > prev, "{g:?} {rho} {p} psig");
                prev = c.cpl;
            }
        }
    }
}

/// base → observed (ρobs = ρb·CTPL) → base gives ρb back, for every group, base, temperature and
/// pressure, including refined densities whose group changes during the iteration.
#[test]
fn base_observed_base_round_trip() {
    for (g, lo, hi) in groups() {
        for base in [Base::F60, Base::C15, Base::C20] {
            for rho_b in densities(lo + 5.0, hi - 5.0)
                .chain([770.3, 770.4, 787.5, 787.6, 838.3, 838.4, 770.846, 838.707])
            {
                if g == Group::Lube && rho_b < lo {
                    continue;
                }
                for t in [-50.0, -10.0, 15.0, 20.0, 45.0, 90.0, 150.0] {
                    for p in [0.0, 500.0, 5000.0, 10_000.0] {
                        let there = match correct_from_base(g, base, rho_b, t, p, Mode::Exact) {
                            Ok(c) => c,
                            // A light product heated far enough leaves the table; not this test.
                            Err(MeasureError::DensityOutOfRange { .. }) => continue,
                            Err(e) => panic!("{g:?} {base:?} {rho_b} {t} {p}: {e}"),
                        };
                        let rho_obs = rho_b * there.ctpl;
                        let back = correct_from_observed(g, base, rho_obs, t, p, Mode::Exact)
                            .unwrap_or_else(|e| panic!("{g:?} {base:?} {rho_b} {t} {p}: {e}"));
                        let what = format!("{g:?} {base:?} ρb {rho_b} at {t} °C {p} kPa");
                        close(back.density_base, rho_b, 1e-8, &what);
                        close(back.ctl, there.ctl, 1e-12, &what);
                        close(back.cpl, there.cpl, 1e-12, &what);
                        assert_eq!(back.group_used, there.group_used, "{what}");
                    }
                }
            }
        }
    }
}

/// ρ60 from the metric base is consistent: ρb = ρ60 · CTL(60 °F → base).
#[test]
fn metric_base_via_60f() {
    for base in [Base::C15, Base::C20] {
        let c = correct_from_base(Group::Crude, base, 850.0, 30.0, 0.0, Mode::Exact).unwrap();
        let to_base = ctl_60f(Group::Crude, c.density_60f, base.temp_c() * 1.8 + 32.0).unwrap();
        close(c.density_60f * to_base, 850.0, 1e-9, "ρb");
    }
}

/// Special applications: ρ* = ρ60·exp(α·δ60/2·(1 + 0.4·α·δ60)) and the given α60 is used.
#[test]
fn special_alpha_is_used() {
    let g = Group::Special {
        alpha60_per_f: 0.0006,
    };
    let (rho_star, alpha, used) = shifted_density_alpha60(g, 800.0);
    assert_eq!((alpha, used), (0.0006, GroupUsed::Special));
    let d: f64 = 0.01374979547;
    close(
        rho_star,
        800.0 * (0.0006 * d / 2.0 * (1.0 + 0.4 * 0.0006 * d)).exp(),
        1e-12,
        "ρ*",
    );
    let dt = t68_f((100.0 - 32.0) / 1.8) - 60.0068749;
    let want = (-0.0006 * dt * (1.0 + 0.8 * 0.0006 * (dt + d))).exp();
    close(ctl_60f(g, 800.0, 100.0).unwrap(), want, 1e-15, "CTL");
}

// ---- Table mode -----------------------------------------------------------------------------

#[test]
fn table_mode_rounds_inputs_and_factors() {
    // Inputs are rounded first: 865.64 → 865.6 kg/m³, 87.33 °C → 87.35 °C, 77 kPa → 75 kPa.
    let t = correct_from_base(Group::Refined, Base::C15, 865.64, 87.33, 77.0, Mode::Table).unwrap();
    let e = correct_from_base(Group::Refined, Base::C15, 865.6, 87.35, 75.0, Mode::Exact).unwrap();
    close(t.ctl, round_step(e.ctl, 1e5), 0.0, "CTL");
    close(t.cpl, round_step(e.cpl, 1e5), 0.0, "CPL");
    close(t.ctpl, round_step(e.ctl * e.cpl, 1e5), 0.0, "CTPL");
    assert_eq!(t.ctl, (t.ctl * 1e5).round() / 1e5);
    // The published example in table mode: 87.32 °C → 87.30, 75 kPa.
    let t = correct_from_base(Group::Refined, Base::C15, 865.6, 87.32, 75.0, Mode::Table).unwrap();
    let e = correct_from_base(Group::Refined, Base::C15, 865.6, 87.30, 75.0, Mode::Exact).unwrap();
    assert_eq!(t.ctl, round_step(e.ctl, 1e5));
    assert_eq!(t.cpl, 1.00008);
    // °F to 0.1, psi to 1, API to 0.1, relative density to 0.0001.
    let table = |d, t, p| {
        correct(&Request {
            mode: Mode::Table,
            ..req(Group::Refined, Base::F60, DensityAt::Base(d), t, p)
        })
        .unwrap()
    };
    let exact =
        |d, t, p| correct(&req(Group::Refined, Base::F60, DensityAt::Base(d), t, p)).unwrap();
    let a = table(
        Density::Relative(0.79434),
        Temperature::F(85.04),
        Pressure::Psi(247.3),
    );
    let b = exact(
        Density::Relative(0.7943),
        Temperature::F(85.0),
        Pressure::Psi(247.0),
    );
    assert_eq!(
        (a.ctl, a.cpl),
        (round_step(b.ctl, 1e5), round_step(b.cpl, 1e5))
    );
    let a = table(
        Density::Api(35.04),
        Temperature::F(99.95),
        Pressure::Psi(0.4),
    );
    let b = exact(
        Density::Api(35.0),
        Temperature::F(100.0),
        Pressure::Psi(0.0),
    );
    assert_eq!(a.ctl, round_step(b.ctl, 1e5));
    assert_eq!(a.density_60f, round_step(b.density_60f, 10.0));
    // Bar to 0.05 (5 kPa).
    let a = correct(&Request {
        mode: Mode::Table,
        ..req(
            Group::Crude,
            Base::C15,
            DensityAt::Observed(Density::KgM3(865.62)),
            Temperature::C(20.02),
            Pressure::Bar(11.27),
        )
    })
    .unwrap();
    let b = correct(&req(
        Group::Crude,
        Base::C15,
        DensityAt::Observed(Density::KgM3(865.6)),
        Temperature::C(20.0),
        Pressure::Bar(11.25),
    ))
    .unwrap();
    assert_eq!(a.ctl, round_step(b.ctl, 1e5));
    assert_eq!(a.density_base, round_step(b.density_base, 10.0));
}

#[test]
fn table_mode_checks_the_limits_on_the_given_inputs() {
    let e = correct(&Request {
        mode: Mode::Table,
        temperature: Temperature::F(-58.04),
        ..base_req()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "temperature -58.04 °F is below the limit -58 °F"
    );
    let e = correct(&Request {
        mode: Mode::Table,
        pressure: Pressure::Psi(1500.4),
        ..base_req()
    })
    .unwrap_err();
    assert_eq!(e.input(), Input::Pressure);
}

#[test]
fn rounding_is_half_up_on_decimal_ties() {
    assert_eq!(round_step(87.325, 20.0), 87.35);
    assert_eq!(round_step(-0.025, 20.0), -0.05);
    assert_eq!(round_step(998.1195, 1000.0), 998.12);
    assert_eq!(round_step(0.987155, 1e5), 0.98716);
    assert_eq!(round_step(0.9871549999, 1e5), 0.98715);
    assert_eq!(round_step(862.5, 0.2), 865.0);
}

// ---- Rejected inputs ------------------------------------------------------------------------

fn base_req() -> Request {
    req(
        Group::Crude,
        Base::F60,
        DensityAt::Base(Density::KgM3(850.0)),
        Temperature::F(80.0),
        Pressure::Psi(100.0),
    )
}

fn rejected(r: Request) -> MeasureError {
    correct(&r).expect_err("must be rejected")
}

#[test]
fn rejects_temperature_outside_limits() {
    for (t, msg) in [
        (
            Temperature::F(-58.05),
            "temperature -58.05 °F is below the limit -58 °F",
        ),
        (
            Temperature::F(302.01),
            "temperature 302.01 °F is above the limit 302 °F",
        ),
        (
            Temperature::C(-50.01),
            "temperature -50.01 °C is below the limit -50 °C",
        ),
        (
            Temperature::C(150.5),
            "temperature 150.5 °C is above the limit 150 °C",
        ),
        (
            Temperature::C(f64::NAN),
            "temperature is not a finite number (NaN)",
        ),
        (
            Temperature::F(f64::INFINITY),
            "temperature is not a finite number (inf)",
        ),
    ] {
        let e = rejected(Request {
            temperature: t,
            ..base_req()
        });
        assert_eq!(e.input(), Input::Temperature);
        assert_eq!(e.to_string(), msg);
    }
    assert!(matches!(
        ctl_60f(Group::Crude, 850.0, 302.1),
        Err(MeasureError::AboveLimit {
            input: Input::Temperature,
            ..
        })
    ));
    // Limits themselves are accepted.
    for t in [
        Temperature::F(-58.0),
        Temperature::F(302.0),
        Temperature::C(-50.0),
        Temperature::C(150.0),
    ] {
        correct(&Request {
            temperature: t,
            ..base_req()
        })
        .unwrap();
    }
}

#[test]
fn rejects_pressure_outside_limits() {
    for (p, msg) in [
        (
            Pressure::Psi(1500.5),
            "pressure 1500.5 psig is above the limit 1500 psig",
        ),
        (
            Pressure::KPa(10_400.0),
            "pressure 10400 kPa is above the limit 10342.1 kPa",
        ),
        (
            Pressure::Bar(104.0),
            "pressure 104 bar is above the limit 103.421 bar",
        ),
        (
            Pressure::Psi(-15.0),
            "pressure -15 psig is below the limit -14.696 psig",
        ),
        (
            Pressure::KPa(-102.0),
            "pressure -102 kPa is below the limit -101.325 kPa",
        ),
        (
            Pressure::Bar(f64::NAN),
            "pressure is not a finite number (NaN)",
        ),
    ] {
        let e = rejected(Request {
            pressure: p,
            ..base_req()
        });
        assert_eq!(e.input(), Input::Pressure);
        assert_eq!(e.to_string(), msg);
    }
    for p in [
        Pressure::Psi(1500.0),
        Pressure::KPa(10_342.135_5),
        Pressure::Psi(-14.0),
    ] {
        correct(&Request {
            pressure: p,
            ..base_req()
        })
        .unwrap();
    }
}

#[test]
fn rejects_density_outside_group_range() {
    let cases = [
        (Group::Crude, 610.5, "density: 610.5 kg/m³ at 60 °F gives 610.5000 kg/m³ at 60 °F, outside the crude oil range 610.6–1163.5 kg/m³ at 60 °F"),
        (Group::Crude, 1163.6, "density: 1163.6 kg/m³ at 60 °F gives 1163.6000 kg/m³ at 60 °F, outside the crude oil range 610.6–1163.5 kg/m³ at 60 °F"),
        (Group::Refined, 600.0, "density: 600 kg/m³ at 60 °F gives 600.0000 kg/m³ at 60 °F, outside the refined products range 610.6–1163.5 kg/m³ at 60 °F"),
        (Group::Lube, 800.8, "density: 800.8 kg/m³ at 60 °F gives 800.8000 kg/m³ at 60 °F, outside the lubricating oil range 800.9–1163.5 kg/m³ at 60 °F"),
        (Group::Special { alpha60_per_f: 0.0005 }, 1200.0, "density: 1200 kg/m³ at 60 °F gives 1200.0000 kg/m³ at 60 °F, outside the special applications range 610.6–1163.5 kg/m³ at 60 °F"),
    ];
    for (g, rho, msg) in cases {
        let e = rejected(Request {
            group: g,
            density: DensityAt::Base(Density::KgM3(rho)),
            ..base_req()
        });
        assert_eq!(e.input(), Input::Density);
        assert_eq!(e.to_string(), msg);
        assert!(ctl_60f(g, rho, 80.0).is_err());
    }
    // Observed and metric: the range applies to the resulting ρ60.
    let e = rejected(Request {
        density: DensityAt::Observed(Density::KgM3(600.0)),
        temperature: Temperature::F(0.0),
        ..base_req()
    });
    let MeasureError::DensityOutOfRange { rho60, given, .. } = &e else {
        panic!("{e}")
    };
    assert!(*rho60 < 610.6, "{rho60}");
    assert_eq!(given, "observed 600 kg/m³ at 0 °F");
    // 1160 kg/m³ at 15 °C is a ρ60 above 1163.5? No: it is lighter at 60 °F — accepted; 1165 is not.
    correct_from_base(Group::Crude, Base::C15, 1160.0, 20.0, 0.0, Mode::Exact).unwrap();
    let e = correct_from_base(Group::Crude, Base::C15, 1166.0, 20.0, 0.0, Mode::Exact).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("density: 1166 kg/m³ at 15 °C gives 116"),
        "{e}"
    );
    // Not a density at all.
    for d in [
        Density::KgM3(0.0),
        Density::KgM3(-800.0),
        Density::Api(-131.5),
        Density::Api(-200.0),
    ] {
        let e = rejected(Request {
            density: DensityAt::Base(d),
            ..base_req()
        });
        assert_eq!(e.input(), Input::Density, "{d:?}");
    }
    let e = rejected(Request {
        density: DensityAt::Observed(Density::Relative(f64::NAN)),
        ..base_req()
    });
    assert_eq!(e.to_string(), "density is not a finite number (NaN)");
}

#[test]
fn rejects_alpha60_outside_limits() {
    for (a, msg) in [
        (
            0.000229,
            "alpha60 0.000229 1/°F is below the limit 0.00023 1/°F",
        ),
        (
            0.000931,
            "alpha60 0.000931 1/°F is above the limit 0.00093 1/°F",
        ),
        (f64::NAN, "alpha60 is not a finite number (NaN)"),
    ] {
        let g = Group::Special { alpha60_per_f: a };
        let e = rejected(Request {
            group: g,
            ..base_req()
        });
        assert_eq!(e.to_string(), msg);
        assert_eq!(e.input(), Input::Alpha60);
        assert!(ctl_60f(g, 850.0, 80.0).is_err());
    }
}

// ---- Strapping tables and tank quantities ---------------------------------------------------

const TABLE: &str = "# tank T-101, strapped 2026-03-02\nlevel_mm,volume_m3\n0,0\n1000,100.0\n2000,205.5\n\n10000,1000.0\n";

#[test]
fn strapping_table_interpolates() {
    let t = StrappingTable::from_csv(TABLE).unwrap();
    assert_eq!(t.max_level_mm(), 10000.0);
    assert_eq!(t.min_level_mm(), 0.0);
    assert_eq!(t.volume_at(0.0).unwrap(), 0.0);
    assert_eq!(t.volume_at(1000.0).unwrap(), 100.0);
    close(t.volume_at(1500.0).unwrap(), 152.75, 1e-12, "mid");
    close(
        t.volume_at(6000.0).unwrap(),
        205.5 + 794.5 * 0.5,
        1e-12,
        "mid",
    );
    assert_eq!(t.volume_at(10000.0).unwrap(), 1000.0);
    assert_eq!(t.rows().count(), 4);
}

#[test]
fn strapping_table_rejects_bad_csv() {
    for (csv, msg) in [
        ("", "strapping table line 0: empty: expected the header \"level_mm,volume_m3\""),
        ("level,volume\n0,0\n", "strapping table line 1: expected the header \"level_mm,volume_m3\", found \"level,volume\""),
        ("level_mm,volume_m3\n0,0\n", "strapping table line 0: 1 row(s): at least 2 rows are needed"),
        ("level_mm,volume_m3\n0,0\n10,x\n", "strapping table line 3: volume_m3 \"x\" is not a number"),
        ("level_mm,volume_m3\n0,0\n10,1,2\n", "strapping table line 3: expected 2 columns (level_mm,volume_m3), found 3"),
        ("level_mm,volume_m3\n-1,0\n10,1\n", "strapping table line 2: level_mm -1 must be a finite number ≥ 0"),
        ("level_mm,volume_m3\n0,0\n10,1\n10,2\n", "strapping table line 4: level_mm 10 is not above the previous row's 10 (line 3); levels must increase strictly"),
        ("level_mm,volume_m3\n0,0\n\n20,2\n# c\n30,1.5\n", "strapping table line 6: volume_m3 1.5 is not above the previous row's 2 (line 4); volumes must increase strictly"),
        ("level_mm,volume_m3\n0,0\n10,inf\n", "strapping table line 3: volume_m3 inf must be a finite number ≥ 0"),
    ] {
        let e = StrappingTable::from_csv(csv).unwrap_err();
        assert_eq!(e.to_string(), msg);
        assert_eq!(e.input(), Input::StrappingTable);
    }
    let t = StrappingTable::from_csv(TABLE).unwrap();
    assert_eq!(
        t.volume_at(10000.5).unwrap_err().to_string(),
        "level 10000.5 mm is outside the strapping table (0–10000 mm)"
    );
    assert!(t.volume_at(-1.0).is_err());
    assert!(t.volume_at(f64::NAN).is_err());
}

/// The API 12.1.1 example: TOV 1000.000, FW 2.000, CTSh 1.00012, CTL 0.98716, S&W 0.050 % →
/// GOV 998.120, GSV 985.304, NSV 984.811, each step rounded to 3 dp half-up.
#[test]
fn example_12_1_1_volume_chain() {
    let (gov, gsv, nsv) = volume_chain(1000.0, 2.0, 1.00012, 0.0, 0.98716, 0.05, Some(3));
    assert_eq!((gov, gsv, nsv), (998.120, 985.304, 984.811));
    let (gov, gsv, nsv) = volume_chain(1000.0, 2.0, 1.00012, 0.0, 0.98716, 0.05, None);
    close(gov, 998.11976, 1e-9, "GOV");
    close(gsv, 998.11976 * 0.98716, 1e-9, "GSV");
    close(nsv, 998.11976 * 0.98716 * 0.9995, 1e-9, "NSV");
}

fn spec() -> TankSpec {
    TankSpec {
        group: Group::Crude,
        base: Base::C15,
        shell_alpha_per_c: 1.12e-5,
        shell_ref_temp_c: 15.0,
        insulated: false,
        floating_roof_adjust_m3: -0.5,
    }
}

fn gauge() -> TankGauge {
    TankGauge {
        level_mm: 6000.0,
        water_level_mm: 1000.0,
        temp_c: 30.0,
        ambient_c: Some(22.0),
        density_obs_kgm3: 850.0,
        density_obs_temp_c: 25.0,
        sw_pct: 0.2,
    }
}

#[test]
fn tank_quantities_follow_12_1_1() {
    let t = StrappingTable::from_csv(TABLE).unwrap();
    let q = tank_quantities(&t, &spec(), &gauge()).unwrap();
    assert_eq!(q.tov, 602.75);
    assert_eq!(q.fw, 100.0);
    let ts = (7.0 * 30.0 + 22.0) / 8.0;
    close(q.ctsh, ctsh(1.12e-5, ts, 15.0), 0.0, "CTSh");
    close(
        q.ctsh,
        1.0 + 2.0 * 1.12e-5 * (ts - 15.0) + (1.12e-5 * (ts - 15.0)).powi(2),
        1e-15,
        "CTSh formula",
    );
    close(q.gov, 502.75 * q.ctsh - 0.5, 1e-9, "GOV");
    let base =
        correct_from_observed(Group::Crude, Base::C15, 850.0, 25.0, 0.0, Mode::Exact).unwrap();
    close(q.density_base, base.density_base, 0.0, "ρ15");
    let c = correct_from_base(
        Group::Crude,
        Base::C15,
        base.density_base,
        30.0,
        0.0,
        Mode::Exact,
    )
    .unwrap();
    close(q.ctl, c.ctl, 0.0, "CTL");
    close(q.gsv, q.gov * q.ctl, 1e-9, "GSV");
    close(q.nsv, q.gsv * 0.998, 1e-9, "NSV");
    // Insulated: shell at the liquid temperature, ambient not needed; no water.
    let s = TankSpec {
        insulated: true,
        ..spec()
    };
    let g = TankGauge {
        ambient_c: None,
        water_level_mm: 0.0,
        ..gauge()
    };
    let q = tank_quantities(&t, &s, &g).unwrap();
    assert_eq!(q.fw, 0.0);
    close(q.ctsh, ctsh(1.12e-5, 30.0, 15.0), 0.0, "CTSh insulated");
}

#[test]
fn tank_quantities_reject_bad_gauging() {
    let t = StrappingTable::from_csv(TABLE).unwrap();
    let cases: Vec<(TankSpec, TankGauge, Input, &str)> = vec![
        (
            spec(),
            TankGauge {
                level_mm: 12000.0,
                ..gauge()
            },
            Input::Level,
            "level 12000 mm is outside the strapping table (0–10000 mm)",
        ),
        (
            spec(),
            TankGauge {
                water_level_mm: 7000.0,
                ..gauge()
            },
            Input::WaterLevel,
            "water level 7000 mm (the liquid level) is above the limit 6000 mm (the liquid level)",
        ),
        (
            spec(),
            TankGauge {
                water_level_mm: -1.0,
                ..gauge()
            },
            Input::WaterLevel,
            "water level -1 mm is below the limit 0 mm",
        ),
        (
            spec(),
            TankGauge {
                ambient_c: None,
                ..gauge()
            },
            Input::Ambient,
            "ambient temperature is required: an uninsulated shell's temperature is (7·TL + Ta)/8",
        ),
        (
            spec(),
            TankGauge {
                sw_pct: 101.0,
                ..gauge()
            },
            Input::SedimentWater,
            "S&W 101 % is above the limit 100 %",
        ),
        (
            spec(),
            TankGauge {
                sw_pct: -0.1,
                ..gauge()
            },
            Input::SedimentWater,
            "S&W -0.1 % is below the limit 0 %",
        ),
        (
            spec(),
            TankGauge {
                temp_c: 151.0,
                ..gauge()
            },
            Input::Temperature,
            "temperature 151 °C is above the limit 150 °C",
        ),
        (
            spec(),
            TankGauge {
                density_obs_temp_c: -51.0,
                ..gauge()
            },
            Input::DensityTemperature,
            "density observation temperature -51 °C is below the limit -50 °C",
        ),
        (
            spec(),
            TankGauge {
                density_obs_kgm3: 1300.0,
                ..gauge()
            },
            Input::Density,
            "",
        ),
        (
            TankSpec {
                shell_alpha_per_c: -1e-5,
                ..spec()
            },
            gauge(),
            Input::Shell,
            "shell -0.00001 1/°C is below the limit 0 1/°C",
        ),
        (
            TankSpec {
                floating_roof_adjust_m3: f64::NAN,
                ..spec()
            },
            gauge(),
            Input::FloatingRoof,
            "floating-roof adjustment is not a finite number (NaN)",
        ),
    ];
    for (s, g, input, msg) in cases {
        let e = tank_quantities(&t, &s, &g).unwrap_err();
        assert_eq!(e.input(), input, "{e}");
        if !msg.is_empty() {
            assert_eq!(e.to_string(), msg);
        }
    }
}

// ---- Meter factor ---------------------------------------------------------------------------

#[test]
fn meter_factor_and_gross() {
    close(meter_factor(10.012, 10.0).unwrap(), 1.0012, 1e-12, "MF");
    close(gross_from_meter(5000.0, 1.0012), 5006.0, 1e-9, "gross");
    for (p, m, input, msg) in [
        (
            0.0,
            10.0,
            Input::ProverVolume,
            "prover volume must be greater than 0 m³ (got 0)",
        ),
        (
            10.0,
            -1.0,
            Input::MeterVolume,
            "meter volume must be greater than 0 m³ (got -1)",
        ),
        (
            10.0,
            f64::NAN,
            Input::MeterVolume,
            "meter volume is not a finite number (NaN)",
        ),
        (
            13.0,
            10.0,
            Input::MeterFactor,
            "meter factor 1.3 is above the limit 1.2",
        ),
    ] {
        let e = meter_factor(p, m).unwrap_err();
        assert_eq!(e.input(), input);
        assert_eq!(e.to_string(), msg);
    }
}
