//! Static tank quantities (API MPMS 12.1.1): strapping (capacity) tables, TOV → GOV → GSV → NSV.
//!
//! - TOV: the table volume at the gauged level, linear interpolation between rows;
//! - FW: the table volume at the free-water level (0 when the water level is 0);
//! - GOV = (TOV − FW) × CTSh + FRA, with CTSh = 1 + 2αΔT + α²ΔT², ΔT = Ts − Tref, and
//!   Ts = TL (insulated) or (7·TL + Ta)/8 (uninsulated); FRA is signed (negative deducts);
//! - GSV = GOV × CTL (CPL = 1 for an atmospheric tank), CTL from the sample density corrected
//!   to the base;
//! - NSV = GSV × (1 − S&W/100).
//!
//! [`tank_quantities`] uses unrounded factors and volumes (Addendum 2). [`volume_chain`] with
//! `Some(dp)` rounds each step half-up like printed tickets (the 12.1.1 example uses 3 dp).

use super::error::{finite, within, Input, MeasureError};
use super::vcf::{correct_from_base, correct_from_observed, round_step, Base, Group, Mode};

/// A tank's capacity table: level (mm) → volume (m³), strictly increasing in both.
#[derive(Debug, Clone, PartialEq)]
pub struct StrappingTable {
    levels: Vec<f64>,
    volumes: Vec<f64>,
}

impl StrappingTable {
    /// Parse the CSV form of a capacity table.
    ///
    /// Format: a header line `level_mm,volume_m3`, then one `level,volume` row per line (level
    /// in mm, volume in m³, decimal point, no thousands separators). Blank lines and lines
    /// starting with `#` are ignored. At least two rows; levels ≥ 0 and strictly increasing;
    /// volumes ≥ 0 and strictly increasing. Errors give the 1-based line number.
    pub fn from_csv(text: &str) -> Result<StrappingTable, MeasureError> {
        let err = |line: usize, message: String| MeasureError::StrappingTable { line, message };
        let mut header = false;
        let (mut levels, mut volumes) = (Vec::new(), Vec::new());
        let mut prev_line = 0;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if !header {
                if cols.len() == 2
                    && cols[0].eq_ignore_ascii_case("level_mm")
                    && cols[1].eq_ignore_ascii_case("volume_m3")
                {
                    header = true;
                    continue;
                }
                return Err(err(
                    n,
                    format!("expected the header \"level_mm,volume_m3\", found {line:?}"),
                ));
            }
            if cols.len() != 2 {
                return Err(err(
                    n,
                    format!(
                        "expected 2 columns (level_mm,volume_m3), found {}",
                        cols.len()
                    ),
                ));
            }
            let num = |col: &str, name: &str| -> Result<f64, MeasureError> {
                match col.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                    Ok(v) => Err(err(n, format!("{name} {v} must be a finite number ≥ 0"))),
                    Err(_) => Err(err(n, format!("{name} {col:?} is not a number"))),
                }
            };
            let level = num(cols[0], "level_mm")?;
            let volume = num(cols[1], "volume_m3")?;
            if let (Some(&pl), Some(&pv)) = (levels.last(), volumes.last()) {
                if level <= pl {
                    return Err(err(
                        n,
                        format!(
                            "level_mm {level} is not above the previous row's {pl} (line \
                             {prev_line}); levels must increase strictly"
                        ),
                    ));
                }
                if volume <= pv {
                    return Err(err(
                        n,
                        format!(
                            "volume_m3 {volume} is not above the previous row's {pv} (line \
                             {prev_line}); volumes must increase strictly"
                        ),
                    ));
                }
            }
            levels.push(level);
            volumes.push(volume);
            prev_line = n;
        }
        if !header {
            return Err(err(
                0,
                "empty: expected the header \"level_mm,volume_m3\"".into(),
            ));
        }
        if levels.len() < 2 {
            return Err(err(
                0,
                format!("{} row(s): at least 2 rows are needed", levels.len()),
            ));
        }
        Ok(StrappingTable { levels, volumes })
    }

    /// Volume (m³) at `level_mm`, linearly interpolated; outside the table → error.
    pub fn volume_at(&self, level_mm: f64) -> Result<f64, MeasureError> {
        self.volume_for(Input::Level, level_mm)
    }

    fn volume_for(&self, input: Input, level_mm: f64) -> Result<f64, MeasureError> {
        finite(input, level_mm)?;
        let (min, max) = (self.min_level_mm(), self.max_level_mm());
        if !(level_mm >= min && level_mm <= max) {
            return Err(MeasureError::OutsideTable {
                input,
                value: level_mm,
                min,
                max,
            });
        }
        // First row with level ≥ level_mm (exists: level_mm ≤ max).
        let i = self.levels.partition_point(|&l| l < level_mm);
        if i == 0 || self.levels[i] == level_mm {
            return Ok(self.volumes[i]);
        }
        let (l0, l1) = (self.levels[i - 1], self.levels[i]);
        let (v0, v1) = (self.volumes[i - 1], self.volumes[i]);
        Ok(v0 + (v1 - v0) * (level_mm - l0) / (l1 - l0))
    }

    /// The highest level of the table, mm.
    pub fn max_level_mm(&self) -> f64 {
        // Non-empty: from_csv demands two rows.
        self.levels.last().copied().unwrap_or(0.0)
    }

    /// The lowest level of the table, mm.
    pub fn min_level_mm(&self) -> f64 {
        self.levels.first().copied().unwrap_or(0.0)
    }

    /// The rows (level mm, volume m³).
    pub fn rows(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.levels
            .iter()
            .copied()
            .zip(self.volumes.iter().copied())
    }
}

/// One tank gauging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TankGauge {
    /// Liquid level (innage), mm.
    pub level_mm: f64,
    /// Free-water level, mm (0: no free water).
    pub water_level_mm: f64,
    /// Average liquid temperature TL, °C.
    pub temp_c: f64,
    /// Ambient air temperature Ta, °C (required for an uninsulated tank).
    pub ambient_c: Option<f64>,
    /// Sample density, kg/m³, observed at `density_obs_temp_c` and atmospheric pressure.
    pub density_obs_kgm3: f64,
    /// Temperature of the density observation, °C.
    pub density_obs_temp_c: f64,
    /// Sediment and water, per cent of GSV (0…100).
    pub sw_pct: f64,
}

/// What is known about the tank and its product.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TankSpec {
    /// Commodity group of the product.
    pub group: Group,
    /// Base temperature of the standard volumes.
    pub base: Base,
    /// Linear expansion coefficient of the shell, 1/°C (mild steel ≈ 1.12e-5).
    pub shell_alpha_per_c: f64,
    /// Temperature at which the strapping table is valid, °C.
    pub shell_ref_temp_c: f64,
    /// Insulated shell (shell temperature = liquid temperature).
    pub insulated: bool,
    /// Floating-roof adjustment, m³, signed (negative deducts the roof displacement).
    pub floating_roof_adjust_m3: f64,
}

/// Quantities of one gauging, m³ (unrounded) and factors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TankQuantities {
    /// Total observed volume.
    pub tov: f64,
    /// Free water.
    pub fw: f64,
    /// Correction for the temperature of the shell.
    pub ctsh: f64,
    /// Gross observed volume.
    pub gov: f64,
    /// Correction for the temperature of the liquid (base → tank temperature).
    pub ctl: f64,
    /// Gross standard volume.
    pub gsv: f64,
    /// Net standard volume.
    pub nsv: f64,
    /// Density at the base, kg/m³.
    pub density_base: f64,
}

/// CTSh = 1 + 2αΔT + α²ΔT².
pub fn ctsh(alpha_per_c: f64, shell_temp_c: f64, ref_temp_c: f64) -> f64 {
    let dt = shell_temp_c - ref_temp_c;
    1.0 + 2.0 * alpha_per_c * dt + alpha_per_c * alpha_per_c * dt * dt
}

/// GOV, GSV and NSV from TOV, FW and the factors; with `Some(dp)` every step is rounded
/// half-up to `dp` decimals (printed tickets; the 12.1.1 example uses 3), with `None` the chain
/// is unrounded. Returns (gov, gsv, nsv).
pub fn volume_chain(
    tov: f64,
    fw: f64,
    ctsh: f64,
    fra: f64,
    ctl: f64,
    sw_pct: f64,
    round_dp: Option<i32>,
) -> (f64, f64, f64) {
    let r = |v: f64| match round_dp {
        Some(dp) => round_step(v, 10f64.powi(dp)),
        None => v,
    };
    let gov = r((tov - fw) * ctsh + fra);
    let gsv = r(gov * ctl);
    let nsv = r(gsv * (1.0 - sw_pct / 100.0));
    (gov, gsv, nsv)
}

/// TOV → GOV → GSV → NSV for one gauging (unrounded).
pub fn tank_quantities(
    table: &StrappingTable,
    spec: &TankSpec,
    g: &TankGauge,
) -> Result<TankQuantities, MeasureError> {
    let tov = table.volume_at(g.level_mm)?;
    finite(Input::WaterLevel, g.water_level_mm)?;
    if g.water_level_mm < 0.0 {
        return Err(MeasureError::BelowLimit {
            input: Input::WaterLevel,
            value: g.water_level_mm,
            limit: 0.0,
            unit: "mm",
        });
    }
    if g.water_level_mm > g.level_mm {
        return Err(MeasureError::AboveLimit {
            input: Input::WaterLevel,
            value: g.water_level_mm,
            limit: g.level_mm,
            unit: "mm (the liquid level)",
        });
    }
    let fw = if g.water_level_mm == 0.0 {
        0.0
    } else {
        table.volume_for(Input::WaterLevel, g.water_level_mm)?
    };
    within(Input::SedimentWater, g.sw_pct, 0.0, 100.0, "%")?;
    within(Input::Shell, spec.shell_alpha_per_c, 0.0, 1e-4, "1/°C")?;
    finite(Input::Shell, spec.shell_ref_temp_c)?;
    finite(Input::FloatingRoof, spec.floating_roof_adjust_m3)?;
    let tl = finite(Input::Temperature, g.temp_c)?;
    let ts = if spec.insulated {
        tl
    } else {
        let ta = g.ambient_c.ok_or(MeasureError::Missing {
            input: Input::Ambient,
            why: "an uninsulated shell's temperature is (7·TL + Ta)/8",
        })?;
        within(Input::Ambient, ta, -60.0, 70.0, "°C")?;
        (7.0 * tl + ta) / 8.0
    };
    let ctsh = ctsh(spec.shell_alpha_per_c, ts, spec.shell_ref_temp_c);
    let base = correct_from_observed(
        spec.group,
        spec.base,
        g.density_obs_kgm3,
        g.density_obs_temp_c,
        0.0,
        Mode::Exact,
    )
    .map_err(|e| match e {
        MeasureError::BelowLimit {
            input: Input::Temperature,
            value,
            limit,
            unit,
        } => MeasureError::BelowLimit {
            input: Input::DensityTemperature,
            value,
            limit,
            unit,
        },
        MeasureError::AboveLimit {
            input: Input::Temperature,
            value,
            limit,
            unit,
        } => MeasureError::AboveLimit {
            input: Input::DensityTemperature,
            value,
            limit,
            unit,
        },
        MeasureError::NotFinite {
            input: Input::Temperature,
            value,
        } => MeasureError::NotFinite {
            input: Input::DensityTemperature,
            value,
        },
        e => e,
    })?;
    let c = correct_from_base(
        spec.group,
        spec.base,
        base.density_base,
        tl,
        0.0,
        Mode::Exact,
    )?;
    let (gov, gsv, nsv) = volume_chain(
        tov,
        fw,
        ctsh,
        spec.floating_roof_adjust_m3,
        c.ctl,
        g.sw_pct,
        None,
    );
    Ok(TankQuantities {
        tov,
        fw,
        ctsh,
        gov,
        ctl: c.ctl,
        gsv,
        nsv,
        density_base: base.density_base,
    })
}
