//! Meter factor (API MPMS ch. 4/12.2 practice): MF = prover volume / meter indicated volume,
//! gross volume = indicated × MF.

use super::error::{positive, within, Input, MeasureError};

/// Lowest meter factor accepted by [`meter_factor`] (a factor outside 0.8…1.2 is a broken meter
/// or a mismatched proving, not a correction).
pub const MF_MIN: f64 = 0.8;
/// Highest meter factor accepted by [`meter_factor`].
pub const MF_MAX: f64 = 1.2;

/// Meter factor from a proving: both volumes corrected to the same conditions, > 0; the factor
/// must be within [`MF_MIN`]…[`MF_MAX`].
pub fn meter_factor(prover_volume: f64, meter_volume: f64) -> Result<f64, MeasureError> {
    positive(Input::ProverVolume, prover_volume, "m³")?;
    positive(Input::MeterVolume, meter_volume, "m³")?;
    within(
        Input::MeterFactor,
        prover_volume / meter_volume,
        MF_MIN,
        MF_MAX,
        "",
    )
}

/// Gross volume from the meter's indicated volume and its factor.
pub fn gross_from_meter(indicated: f64, meter_factor: f64) -> f64 {
    indicated * meter_factor
}
