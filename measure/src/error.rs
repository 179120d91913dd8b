//! Errors of the measurement library: every variant names the input that is wrong and the limit
//! it broke, so a ticket checker can tell the user what to fix.

use std::fmt;

/// Which input of a calculation an error is about (for callers that map it to their own field
/// names, e.g. `cloud-ingest calc` maps [`Input::Temperature`] to `temp_c` or `temp_f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The observation (or tank liquid) temperature.
    Temperature,
    /// The gauge pressure.
    Pressure,
    /// The density (at the base, or observed).
    Density,
    /// The user-given thermal expansion coefficient α60 (special applications).
    Alpha60,
    /// The gauged liquid level.
    Level,
    /// The free-water level.
    WaterLevel,
    /// The ambient air temperature (uninsulated tank shell).
    Ambient,
    /// The temperature at which the tank density sample was observed.
    DensityTemperature,
    /// Sediment and water in per cent.
    SedimentWater,
    /// The tank shell's expansion coefficient or reference temperature.
    Shell,
    /// The floating-roof adjustment.
    FloatingRoof,
    /// A strapping (capacity) table.
    StrappingTable,
    /// The prover volume of a meter proving.
    ProverVolume,
    /// The meter's indicated volume.
    MeterVolume,
    /// A meter factor.
    MeterFactor,
}

impl Input {
    /// A short English name of the input.
    pub fn as_str(self) -> &'static str {
        match self {
            Input::Temperature => "temperature",
            Input::Pressure => "pressure",
            Input::Density => "density",
            Input::Alpha60 => "alpha60",
            Input::Level => "level",
            Input::WaterLevel => "water level",
            Input::Ambient => "ambient temperature",
            Input::DensityTemperature => "density observation temperature",
            Input::SedimentWater => "S&W",
            Input::Shell => "shell",
            Input::FloatingRoof => "floating-roof adjustment",
            Input::StrappingTable => "strapping table",
            Input::ProverVolume => "prover volume",
            Input::MeterVolume => "meter volume",
            Input::MeterFactor => "meter factor",
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A measurement calculation that cannot be done. The messages name the input and the limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeasureError {
    /// An input is NaN or infinite.
    #[error("{input} is not a finite number ({value})")]
    NotFinite {
        /// The input.
        input: Input,
        /// Its value.
        value: f64,
    },
    /// A value is below its lower limit (e.g. temperature below −58.0 °F).
    #[error("{input} {value}{u} is below the limit {limit}{u}", u = sp(unit))]
    BelowLimit {
        /// The input.
        input: Input,
        /// Its value (in `unit`).
        value: f64,
        /// The limit (in `unit`).
        limit: f64,
        /// The unit of value and limit, e.g. `°F`, `psig`, `kg/m³ at 60 °F`.
        unit: &'static str,
    },
    /// A value is above its upper limit (e.g. pressure above 1500 psig).
    #[error("{input} {value}{u} is above the limit {limit}{u}", u = sp(unit))]
    AboveLimit {
        /// The input.
        input: Input,
        /// Its value (in `unit`).
        value: f64,
        /// The limit (in `unit`).
        limit: f64,
        /// The unit of value and limit.
        unit: &'static str,
    },
    /// The density (converted to 60 °F) is outside the range of the commodity group.
    #[error(
        "{input}: {given} gives {rho60:.4} kg/m³ at 60 °F, outside the {group} range \
         {min}–{max} kg/m³ at 60 °F"
    )]
    DensityOutOfRange {
        /// Always [`Input::Density`]; kept for uniform access.
        input: Input,
        /// The density as given by the caller, described (e.g. `observed 1200 kg/m³ at 15 °C`).
        given: String,
        /// The density at 60 °F it corresponds to (possibly extrapolated).
        rho60: f64,
        /// The commodity group whose range applies.
        group: &'static str,
        /// Lower limit, kg/m³ at 60 °F.
        min: f64,
        /// Upper limit, kg/m³ at 60 °F.
        max: f64,
    },
    /// A value that must be greater than zero is not.
    #[error("{input} must be greater than 0 {unit} (got {value})")]
    NotPositive {
        /// The input.
        input: Input,
        /// Its value.
        value: f64,
        /// The unit.
        unit: &'static str,
    },
    /// A required input is missing (e.g. the ambient temperature for an uninsulated tank).
    #[error("{input} is required: {why}")]
    Missing {
        /// The input.
        input: Input,
        /// Why it is needed.
        why: &'static str,
    },
    /// The base density could not be found from the observed density.
    #[error("{input}: no base density found for {given} (iteration did not converge)")]
    NoConvergence {
        /// Always [`Input::Density`].
        input: Input,
        /// The density as given, described.
        given: String,
    },
    /// A strapping table CSV is invalid; `line` is 1-based.
    #[error("strapping table line {line}: {message}")]
    StrappingTable {
        /// 1-based line of the CSV text (0: the table as a whole).
        line: usize,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A level is outside the strapping table.
    #[error("{input} {value} mm is outside the strapping table ({min}–{max} mm)")]
    OutsideTable {
        /// [`Input::Level`] or [`Input::WaterLevel`].
        input: Input,
        /// The level, mm.
        value: f64,
        /// The lowest level of the table, mm.
        min: f64,
        /// The highest level of the table, mm.
        max: f64,
    },
}

impl MeasureError {
    /// The input the error is about.
    pub fn input(&self) -> Input {
        match self {
            MeasureError::NotFinite { input, .. }
            | MeasureError::BelowLimit { input, .. }
            | MeasureError::AboveLimit { input, .. }
            | MeasureError::DensityOutOfRange { input, .. }
            | MeasureError::Missing { input, .. }
            | MeasureError::NotPositive { input, .. }
            | MeasureError::NoConvergence { input, .. }
            | MeasureError::OutsideTable { input, .. } => *input,
            MeasureError::StrappingTable { .. } => Input::StrappingTable,
        }
    }
}

/// " unit", or nothing for a dimensionless value.
fn sp(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    }
}

/// `Err(NotFinite)` unless `value` is finite.
pub(crate) fn finite(input: Input, value: f64) -> Result<f64, MeasureError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(MeasureError::NotFinite { input, value })
    }
}

/// `Err(NotPositive)` unless `value` is finite and > 0.
pub(crate) fn positive(input: Input, value: f64, unit: &'static str) -> Result<f64, MeasureError> {
    finite(input, value)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(MeasureError::NotPositive { input, value, unit })
    }
}

/// Check `min <= value <= max` (after [`finite`]).
pub(crate) fn within(
    input: Input,
    value: f64,
    min: f64,
    max: f64,
    unit: &'static str,
) -> Result<f64, MeasureError> {
    finite(input, value)?;
    if value < min {
        Err(MeasureError::BelowLimit {
            input,
            value,
            limit: min,
            unit,
        })
    } else if value > max {
        Err(MeasureError::AboveLimit {
            input,
            value,
            limit: max,
            unit,
        })
    } else {
        Ok(value)
    }
}
