//! API MPMS 11.1-2004 (ASTM D1250-04, IP 200/04) temperature and pressure volume correction:
//! CTL, CPL and CTPL for crude oils, refined products, lubricating oils and a user-given α60, at
//! 60 °F, 15 °C and 20 °C bases, from a base or an observed density.
//!
//! All arithmetic follows /work/shared/reference/measurement.md §1 step by step: ITS-90 → IPTS-68
//! temperature, shifted density ρ*, α60 from the group constants, CTL, the compressibility
//! factor Fp and CPL, the observed → base root find and metric bases via 60 °F. The exact mode is
//! unrounded; [`Mode::Table`] rounds the inputs and the factors like the printed tables.

use super::error::{finite, within, Input, MeasureError};

/// Density shift between 60 °F ITS-90 and IPTS-68, δ60 (°F).
const DELTA60: f64 = 0.013_749_795_47;
/// 60 °F ITS-90 expressed on IPTS-68 (°F).
const T60_68: f64 = 60.006_874_9;
/// Relative density → kg/m³ (density of water at 60 °F used by the 2004 standard).
pub const WATER_60F_KGM3: f64 = 999.016;
/// kPa per psi, the conversion of the 2004 standard (bar via 1 bar = 100 kPa, i.e.
/// 14.503774 psi). The published 11.1.7 examples (75 kPa, 11.25 bar) are matched with it.
pub const KPA_PER_PSI: f64 = 6.894757;
/// Lowest temperature of the standard, °F (−50 °C).
pub const T_MIN_F: f64 = -58.0;
/// Highest temperature of the standard, °F (150 °C).
pub const T_MAX_F: f64 = 302.0;
/// Lowest temperature of the standard, °C.
pub const T_MIN_C: f64 = -50.0;
/// Highest temperature of the standard, °C.
pub const T_MAX_C: f64 = 150.0;
/// Highest gauge pressure of the standard, psig.
pub const P_MAX_PSI: f64 = 1500.0;
/// Lowest accepted gauge pressure, psig: full vacuum. Gauge pressures between this and 0 are
/// accepted and treated as 0 (as the standard says); anything lower is physically impossible.
pub const P_MIN_PSI: f64 = -14.695_95;
/// α60 range of "special applications", 1/°F (API 11.1-2004 limits).
pub const ALPHA60_MIN: f64 = 230.0e-6;
/// Upper end of the α60 range, 1/°F.
pub const ALPHA60_MAX: f64 = 930.0e-6;

/// Commodity group asked for by the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Group {
    /// Generalized crude oils.
    Crude,
    /// Generalized refined products; the sub-group (gasoline, transition zone, jet, fuel oil) is
    /// chosen from the density at 60 °F.
    Refined,
    /// Lubricating oils.
    Lube,
    /// Special applications: a measured thermal expansion coefficient at 60 °F (1/°F), within
    /// [`ALPHA60_MIN`]…[`ALPHA60_MAX`].
    Special {
        /// α60, 1/°F.
        alpha60_per_f: f64,
    },
}

impl Group {
    /// Parse `crude`, `refined` or `lube` (special needs α60: build [`Group::Special`]).
    pub fn parse(name: &str) -> Option<Group> {
        match name {
            "crude" => Some(Group::Crude),
            "refined" => Some(Group::Refined),
            "lube" => Some(Group::Lube),
            _ => None,
        }
    }

    /// Range of the density at 60 °F accepted for this group, kg/m³.
    pub fn density_range_60f(self) -> (f64, f64) {
        match self {
            Group::Crude | Group::Refined | Group::Special { .. } => (610.6, 1163.5),
            Group::Lube => (800.9, 1163.5),
        }
    }
}

/// The constants actually used (the refined sub-group, or the caller's group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupUsed {
    /// Crude oil.
    Crude,
    /// Refined: gasolines (ρ60 < 770.3520).
    Gasoline,
    /// Refined: transition zone (770.3520 ≤ ρ60 < 787.5195).
    Transition,
    /// Refined: jet fuels and kerosene (787.5195 ≤ ρ60 < 838.3127).
    Jet,
    /// Refined: fuel oils (ρ60 ≥ 838.3127).
    FuelOil,
    /// Lubricating oil.
    Lube,
    /// User-given α60.
    Special,
}

impl GroupUsed {
    /// `crude`, `gasoline`, `transition`, `jet`, `fuel_oil`, `lube` or `special`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupUsed::Crude => "crude",
            GroupUsed::Gasoline => "gasoline",
            GroupUsed::Transition => "transition",
            GroupUsed::Jet => "jet",
            GroupUsed::FuelOil => "fuel_oil",
            GroupUsed::Lube => "lube",
            GroupUsed::Special => "special",
        }
    }
}

impl std::fmt::Display for GroupUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Base (reference) temperature of the density and of the volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Base {
    /// 60 °F.
    F60,
    /// 15 °C.
    C15,
    /// 20 °C.
    C20,
}

impl Base {
    /// The base temperature in °C (60 °F = 15.5556 °C).
    pub fn temp_c(self) -> f64 {
        match self {
            Base::F60 => (60.0 - 32.0) / 1.8,
            Base::C15 => 15.0,
            Base::C20 => 20.0,
        }
    }
}

/// Exact (unrounded) calculation or the printed-table convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Unrounded inputs and results (Addendum 2: volumes use unrounded factors).
    #[default]
    Exact,
    /// Printed tables: inputs rounded (ρ 0.1 kg/m³, 0.1 °API or 0.0001 relative density;
    /// t 0.05 °C or 0.1 °F; P 5 kPa (0.05 bar) or 1 psi), CTL, CPL and CTPL rounded to 5
    /// decimals (CTPL from the unrounded CTL × CPL), densities out rounded to 0.1 kg/m³.
    Table,
}

/// A density with its unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Density {
    /// kg/m³.
    KgM3(f64),
    /// API gravity, °API: ρ = 141.5 · 999.016 / (API + 131.5).
    Api(f64),
    /// Relative density (specific gravity): ρ = RD · 999.016.
    Relative(f64),
}

impl Density {
    /// The density in kg/m³.
    pub fn kgm3(self) -> f64 {
        match self {
            Density::KgM3(v) => v,
            Density::Api(api) => 141.5 * WATER_60F_KGM3 / (api + 131.5),
            Density::Relative(rd) => rd * WATER_60F_KGM3,
        }
    }

    fn rounded(self) -> Density {
        match self {
            Density::KgM3(v) => Density::KgM3(round_step(v, 10.0)),
            Density::Api(v) => Density::Api(round_step(v, 10.0)),
            Density::Relative(v) => Density::Relative(round_step(v, 10_000.0)),
        }
    }

    fn value(self) -> f64 {
        match self {
            Density::KgM3(v) | Density::Api(v) | Density::Relative(v) => v,
        }
    }

    fn describe(self) -> String {
        match self {
            Density::KgM3(v) => format!("{v} kg/m³"),
            Density::Api(v) => format!("{v} °API"),
            Density::Relative(v) => format!("relative density {v}"),
        }
    }
}

/// A temperature (ITS-90) with its unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Temperature {
    /// °C.
    C(f64),
    /// °F.
    F(f64),
}

impl Temperature {
    /// Check the −58…302 °F (−50…150 °C) limits in the caller's unit; returns °C.
    fn checked_c(self) -> Result<f64, MeasureError> {
        match self {
            Temperature::C(c) => within(Input::Temperature, c, T_MIN_C, T_MAX_C, "°C"),
            Temperature::F(f) => {
                within(Input::Temperature, f, T_MIN_F, T_MAX_F, "°F").map(|f| (f - 32.0) / 1.8)
            }
        }
    }

    fn rounded(self) -> Temperature {
        match self {
            Temperature::C(c) => Temperature::C(round_step(c, 20.0)),
            Temperature::F(f) => Temperature::F(round_step(f, 10.0)),
        }
    }

    fn describe(self) -> String {
        match self {
            Temperature::C(c) => format!("{c} °C"),
            Temperature::F(f) => format!("{f} °F"),
        }
    }
}

/// A gauge pressure with its unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pressure {
    /// kPa (gauge).
    KPa(f64),
    /// bar (gauge).
    Bar(f64),
    /// psi (gauge).
    Psi(f64),
}

impl Pressure {
    /// Check the limits (full vacuum … 1500 psig) in the caller's unit; returns psig.
    fn checked_psi(self) -> Result<f64, MeasureError> {
        let (v, per_psi, unit) = match self {
            Pressure::KPa(v) => (v, KPA_PER_PSI, "kPa"),
            Pressure::Bar(v) => (v, KPA_PER_PSI / 100.0, "bar"),
            Pressure::Psi(v) => (v, 1.0, "psig"),
        };
        finite(Input::Pressure, v)?;
        let psi = v / per_psi;
        if psi < P_MIN_PSI {
            return Err(MeasureError::BelowLimit {
                input: Input::Pressure,
                value: v,
                limit: round_sig(P_MIN_PSI * per_psi),
                unit,
            });
        }
        if psi > P_MAX_PSI * (1.0 + 1e-12) {
            return Err(MeasureError::AboveLimit {
                input: Input::Pressure,
                value: v,
                limit: round_sig(P_MAX_PSI * per_psi),
                unit,
            });
        }
        Ok(psi.min(P_MAX_PSI))
    }

    fn rounded(self) -> Pressure {
        match self {
            Pressure::KPa(v) => Pressure::KPa(round_step(v, 0.2)),
            Pressure::Bar(v) => Pressure::Bar(round_step(v, 20.0)),
            Pressure::Psi(v) => Pressure::Psi(round_step(v, 1.0)),
        }
    }
}

/// Is the density given at the base temperature or observed at the observation conditions?
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DensityAt {
    /// At the base temperature (and 0 gauge).
    Base(Density),
    /// At the observation temperature and pressure.
    Observed(Density),
}

/// One correction request with units (what `cloud-ingest calc` reads from a line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Commodity group.
    pub group: Group,
    /// Base temperature.
    pub base: Base,
    /// The density, at the base or observed.
    pub density: DensityAt,
    /// The observation temperature.
    pub temperature: Temperature,
    /// The observation gauge pressure.
    pub pressure: Pressure,
    /// Exact or printed-table mode.
    pub mode: Mode,
}

/// Result of a correction. Factors convert from the base to the observation conditions in the
/// sense ρ_obs = ρ_base · CTPL (so V_base = V_obs · CTPL).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    /// Correction for the temperature of the liquid, base → observation temperature.
    pub ctl: f64,
    /// Correction for the pressure of the liquid at the observation temperature.
    pub cpl: f64,
    /// CTL × CPL.
    pub ctpl: f64,
    /// Density at 60 °F, kg/m³.
    pub density_60f: f64,
    /// Density at the requested base (= `density_60f` for a 60 °F base), kg/m³.
    pub density_base: f64,
    /// The constants used.
    pub group_used: GroupUsed,
}

// ---------------------------------------------------------------------------------------------
// Group constants.

/// Constants of one commodity group, or a given α60.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Coeffs {
    K {
        k0: f64,
        k1: f64,
        k2: f64,
        used: GroupUsed,
    },
    Alpha(f64),
}

const CRUDE: Coeffs = Coeffs::K {
    k0: 341.0957,
    k1: 0.0,
    k2: 0.0,
    used: GroupUsed::Crude,
};
const FUEL_OIL: Coeffs = Coeffs::K {
    k0: 103.8720,
    k1: 0.2701,
    k2: 0.0,
    used: GroupUsed::FuelOil,
};
const JET: Coeffs = Coeffs::K {
    k0: 330.3010,
    k1: 0.0,
    k2: 0.0,
    used: GroupUsed::Jet,
};
const TRANSITION: Coeffs = Coeffs::K {
    k0: 1489.0670,
    k1: 0.0,
    k2: -0.001_868_40,
    used: GroupUsed::Transition,
};
const GASOLINE: Coeffs = Coeffs::K {
    k0: 192.4571,
    k1: 0.2438,
    k2: 0.0,
    used: GroupUsed::Gasoline,
};
const LUBE: Coeffs = Coeffs::K {
    k0: 0.0,
    k1: 0.34878,
    k2: 0.0,
    used: GroupUsed::Lube,
};

/// Refined-product boundaries at 60 °F, kg/m³.
const GASOLINE_MAX: f64 = 770.3520;
const TRANSITION_MAX: f64 = 787.5195;
const JET_MAX: f64 = 838.3127;

fn coeffs(group: Group, rho60: f64) -> Coeffs {
    match group {
        Group::Crude => CRUDE,
        Group::Lube => LUBE,
        Group::Special { alpha60_per_f } => Coeffs::Alpha(alpha60_per_f),
        Group::Refined => {
            if rho60 < GASOLINE_MAX {
                GASOLINE
            } else if rho60 < TRANSITION_MAX {
                TRANSITION
            } else if rho60 < JET_MAX {
                JET
            } else {
                FUEL_OIL
            }
        }
    }
}

impl Coeffs {
    fn used(self) -> GroupUsed {
        match self {
            Coeffs::K { used, .. } => used,
            Coeffs::Alpha(_) => GroupUsed::Special,
        }
    }

    /// Shifted density ρ* and α60 (1/°F) at ρ60.
    #[inline]
    fn rho_star_alpha(self, rho60: f64) -> (f64, f64) {
        match self {
            Coeffs::K { k0, k1, k2, .. } => {
                let a = (DELTA60 / 2.0) * ((k0 / rho60 + k1) / rho60 + k2);
                let b = (2.0 * k0 + k1 * rho60) / (k0 + (k1 + k2 * rho60) * rho60);
                let rho_star = rho60
                    * (1.0 + ((a * (1.0 + 0.8 * a)).exp() - 1.0) / (1.0 + a * (1.0 + 1.6 * a) * b));
                let alpha = (k0 / rho_star + k1) / rho_star + k2;
                (rho_star, alpha)
            }
            Coeffs::Alpha(alpha) => {
                let rho_star =
                    rho60 * (alpha * DELTA60 / 2.0 * (1.0 + 0.4 * alpha * DELTA60)).exp();
                (rho_star, alpha)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formulas.

/// ITS-90 °C → IPTS-68 °F.
#[inline]
pub fn t68_f(t90_c: f64) -> f64 {
    const A: [f64; 8] = [
        -0.148759, -0.267408, 1.080760, 1.269056, -4.089591, -1.871251, 7.438081, -3.536296,
    ];
    let tau = t90_c / 630.0;
    let mut d = A[7];
    for a in A[..7].iter().rev() {
        d = a + d * tau;
    }
    let dt = d * tau;
    (t90_c - dt) * 1.8 + 32.0
}

/// CTL from 60 °F to the IPTS-68 temperature `t68f`, for α60.
#[inline]
fn ctl(alpha: f64, t68f: f64) -> f64 {
    let dt = t68f - T60_68;
    (-alpha * dt * (1.0 + 0.8 * alpha * (dt + DELTA60))).exp()
}

/// Scaled compressibility factor Fp (units of 1e-5 /psi).
#[inline]
fn fp(rho_star: f64, t68f: f64) -> f64 {
    (-1.9947 + 0.00013427 * t68f + (793920.0 + 2326.0 * t68f) / (rho_star * rho_star)).exp()
}

/// CPL at `p_psi` (negative treated as 0).
#[inline]
fn cpl(rho_star: f64, t68f: f64, p_psi: f64) -> f64 {
    let p = p_psi.max(0.0);
    if p == 0.0 {
        return 1.0;
    }
    1.0 / (1.0 - 1e-5 * fp(rho_star, t68f) * p)
}

/// CTL, CPL at 60 °F density `rho60` with given constants.
#[inline]
fn factors(c: Coeffs, rho60: f64, t68f: f64, p_psi: f64) -> (f64, f64) {
    let (rho_star, alpha) = c.rho_star_alpha(rho60);
    (ctl(alpha, t68f), cpl(rho_star, t68f, p_psi))
}

fn check_group(group: Group) -> Result<(), MeasureError> {
    if let Group::Special { alpha60_per_f } = group {
        within(
            Input::Alpha60,
            alpha60_per_f,
            ALPHA60_MIN,
            ALPHA60_MAX,
            "1/°F",
        )?;
    }
    Ok(())
}

fn group_name(group: Group) -> &'static str {
    match group {
        Group::Crude => "crude oil",
        Group::Refined => "refined products",
        Group::Lube => "lubricating oil",
        Group::Special { .. } => "special applications",
    }
}

fn check_rho60(
    group: Group,
    rho60: f64,
    given: impl FnOnce() -> String,
) -> Result<(), MeasureError> {
    let (min, max) = group.density_range_60f();
    if rho60 >= min && rho60 <= max {
        Ok(())
    } else {
        Err(MeasureError::DensityOutOfRange {
            input: Input::Density,
            given: given(),
            rho60,
            group: group_name(group),
            min,
            max,
        })
    }
}

/// Find ρ60 with ρ60 · CTL · CPL = `rho_obs` at (`t68f`, `p_psi`): a Newton iteration kept
/// inside a bracket (bisection whenever a step leaves the bracket or crosses into another
/// refined sub-group), to 1e-10 kg/m³. Outside the group's range → error.
fn solve_rho60(
    group: Group,
    rho_obs: f64,
    t68f: f64,
    p_psi: f64,
    given: &dyn Fn() -> String,
) -> Result<f64, MeasureError> {
    let f = |rho: f64| {
        let (ctl, cpl) = factors(coeffs(group, rho), rho, t68f, p_psi);
        rho * ctl * cpl - rho_obs
    };
    let (min, max) = group.density_range_60f();
    let out = |rho60: f64| MeasureError::DensityOutOfRange {
        input: Input::Density,
        given: given(),
        rho60,
        group: group_name(group),
        min,
        max,
    };
    let (fa, fb) = (f(min), f(max));
    if !(fa.is_finite() && fb.is_finite()) {
        return Err(MeasureError::NoConvergence {
            input: Input::Density,
            given: given(),
        });
    }
    // Estimates of the out-of-range ρ60 for the message (one fixed-point step).
    if fa > 0.0 {
        return Err(out(min - fa));
    }
    if fb < 0.0 {
        return Err(out(max - fb));
    }
    let (mut a, mut b) = (min, max);
    if fa == 0.0 {
        return Ok(a);
    }
    if fb == 0.0 {
        return Ok(b);
    }
    let mut x = rho_obs.clamp(a, b);
    for _ in 0..200 {
        let c = coeffs(group, x);
        let (ctl, cpl) = factors(c, x, t68f, p_psi);
        let fx = x * ctl * cpl - rho_obs;
        if fx == 0.0 {
            return Ok(x);
        }
        if fx < 0.0 {
            a = x;
        } else {
            b = x;
        }
        // Derivative with the constants of x (smooth inside a group).
        let h = 1e-3;
        let g = |r: f64| {
            let (ctl, cpl) = factors(c, r, t68f, p_psi);
            r * ctl * cpl
        };
        let d = (g(x + h) - g(x - h)) / (2.0 * h);
        let mut next = x - fx / d;
        if !(next > a && next < b) || coeffs(group, next).used() != c.used() || !d.is_finite() {
            next = 0.5 * (a + b);
        }
        if (next - x).abs() < 1e-10 || b - a < 1e-10 {
            return Ok(next);
        }
        x = next;
    }
    Err(MeasureError::NoConvergence {
        input: Input::Density,
        given: given(),
    })
}

// ---------------------------------------------------------------------------------------------
// Public entry points.

/// CTL/CPL from the base to (`temp_c`, `pressure_kpa` gauge), density given at the base (kg/m³).
pub fn correct_from_base(
    group: Group,
    base: Base,
    density_base_kgm3: f64,
    temp_c: f64,
    pressure_kpa: f64,
    mode: Mode,
) -> Result<Correction, MeasureError> {
    correct(&Request {
        group,
        base,
        density: DensityAt::Base(Density::KgM3(density_base_kgm3)),
        temperature: Temperature::C(temp_c),
        pressure: Pressure::KPa(pressure_kpa),
        mode,
    })
}

/// Same as [`correct_from_base`], the density (kg/m³) observed at (`temp_c`, `pressure_kpa`).
pub fn correct_from_observed(
    group: Group,
    base: Base,
    density_obs_kgm3: f64,
    temp_c: f64,
    pressure_kpa: f64,
    mode: Mode,
) -> Result<Correction, MeasureError> {
    correct(&Request {
        group,
        base,
        density: DensityAt::Observed(Density::KgM3(density_obs_kgm3)),
        temperature: Temperature::C(temp_c),
        pressure: Pressure::KPa(pressure_kpa),
        mode,
    })
}

/// Hot path: CTL only, from a 60 °F base density (kg/m³) to `temp_f` (°F), exact mode.
#[inline]
pub fn ctl_60f(group: Group, density_60f_kgm3: f64, temp_f: f64) -> Result<f64, MeasureError> {
    let t_c =
        within(Input::Temperature, temp_f, T_MIN_F, T_MAX_F, "°F").map(|f| (f - 32.0) / 1.8)?;
    finite(Input::Density, density_60f_kgm3)?;
    check_group(group)?;
    check_rho60(group, density_60f_kgm3, || {
        format!("{density_60f_kgm3} kg/m³ at 60 °F")
    })?;
    let (_, alpha) = coeffs(group, density_60f_kgm3).rho_star_alpha(density_60f_kgm3);
    Ok(ctl(alpha, t68_f(t_c)))
}

/// Shifted density ρ* (kg/m³), α60 (1/°F) and the constants used, at the 60 °F density
/// `rho60` (no range check: for inspection and tests).
pub fn shifted_density_alpha60(group: Group, rho60: f64) -> (f64, f64, GroupUsed) {
    let c = coeffs(group, rho60);
    let (rho_star, alpha) = c.rho_star_alpha(rho60);
    (rho_star, alpha, c.used())
}

/// The full correction for a [`Request`] (units as given; see [`Mode`] for the rounding).
pub fn correct(req: &Request) -> Result<Correction, MeasureError> {
    // Limits apply to the inputs as given, in both modes (−58.04 °F is rejected even though the
    // table would round it to −58.0).
    req.temperature.checked_c()?;
    req.pressure.checked_psi()?;
    let (density, temperature, pressure) = match req.mode {
        Mode::Exact => (req.density, req.temperature, req.pressure),
        Mode::Table => (
            match req.density {
                DensityAt::Base(d) => DensityAt::Base(d.rounded()),
                DensityAt::Observed(d) => DensityAt::Observed(d.rounded()),
            },
            req.temperature.rounded(),
            req.pressure.rounded(),
        ),
    };
    let group = req.group;
    check_group(group)?;
    let t_c = temperature.checked_c()?;
    let p_psi = pressure.checked_psi()?;
    let t68 = t68_f(t_c);
    let (d, observed) = match density {
        DensityAt::Base(d) => (d, false),
        DensityAt::Observed(d) => (d, true),
    };
    finite(Input::Density, d.value())?;
    match d {
        Density::Api(api) if api <= -131.5 => {
            return Err(MeasureError::BelowLimit {
                input: Input::Density,
                value: api,
                limit: -131.5,
                unit: "°API",
            })
        }
        Density::KgM3(v) | Density::Relative(v) if v <= 0.0 => {
            return Err(MeasureError::NotPositive {
                input: Input::Density,
                value: v,
                unit: if matches!(d, Density::KgM3(_)) {
                    "kg/m³"
                } else {
                    ""
                },
            })
        }
        _ => {}
    }
    let rho = d.kgm3();
    let base_t68 = t68_f(req.base.temp_c());
    let given = || {
        if observed {
            format!("observed {} at {}", d.describe(), temperature.describe())
        } else {
            match req.base {
                Base::F60 => format!("{} at 60 °F", d.describe()),
                Base::C15 => format!("{} at 15 °C", d.describe()),
                Base::C20 => format!("{} at 20 °C", d.describe()),
            }
        }
    };
    let rho60 = match (observed, req.base) {
        (false, Base::F60) => {
            check_rho60(group, rho, given)?;
            rho
        }
        (false, _) => solve_rho60(group, rho, base_t68, 0.0, &given)?,
        (true, _) => solve_rho60(group, rho, t68, p_psi, &given)?,
    };
    let c = coeffs(group, rho60);
    let (rho_star, alpha) = c.rho_star_alpha(rho60);
    let ctl_t = ctl(alpha, t68);
    let cpl_t = cpl(rho_star, t68, p_psi);
    let (ctl_b, density_base) = match req.base {
        Base::F60 => (ctl_t, rho60),
        _ => {
            let to_base = ctl(alpha, base_t68);
            let rho_b = if observed { rho60 * to_base } else { rho };
            (ctl_t / to_base, rho_b)
        }
    };
    let mut out = Correction {
        ctl: ctl_b,
        cpl: cpl_t,
        ctpl: ctl_b * cpl_t,
        density_60f: rho60,
        density_base,
        group_used: c.used(),
    };
    if req.mode == Mode::Table {
        out.ctl = round_step(out.ctl, 1e5);
        out.cpl = round_step(out.cpl, 1e5);
        out.ctpl = round_step(out.ctpl, 1e5);
        out.density_60f = round_step(out.density_60f, 10.0);
        out.density_base = round_step(out.density_base, 10.0);
    }
    Ok(out)
}

/// Round `x` to the nearest multiple of `1/per_unit`, ties away from zero ("half-up" on
/// magnitudes). Decimal inputs that are meant to be ties (87.325 °C → 87.35) may be a few ulps
/// below the tie in binary; a relative 1e-12 nudge treats them as ties.
pub fn round_step(x: f64, per_unit: f64) -> f64 {
    let y = x * per_unit;
    let nudged = y + y.signum() * 1e-12 * y.abs().max(1.0);
    nudged.round() / per_unit
}

/// Round to 6 significant digits (for limits converted between units).
fn round_sig(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let mag = 10f64.powi(5 - x.abs().log10().floor() as i32);
    (x * mag).round() / mag
}
