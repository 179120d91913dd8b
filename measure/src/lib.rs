//! Petroleum measurement: API MPMS 11.1-2004 volume correction factors, API MPMS 12.1.1 static
//! tank quantities and meter factors. Pure functions, no I/O; inputs outside the standards'
//! limits are errors that name the input and the limit ([`MeasureError`]).
//!
//! # Layout
//! - `vcf.rs`: 11.1-2004 CTL/CPL/CTPL — commodity groups, ITS-90 → IPTS-68, shifted density,
//!   observed → base density, 60 °F / 15 °C / 20 °C bases, exact and printed-table modes;
//! - `tank.rs`: strapping tables (CSV), TOV → GOV → GSV → NSV;
//! - `meter.rs`: meter factor and gross volume;
//! - `error.rs`: [`MeasureError`] and [`Input`] (which input an error is about);
//! - `tests.rs`: the published examples, cross-checks, invariants and every rejected input.
//!
//! Factor convention: CTL and CPL convert from the base to the observation conditions in the
//! sense ρ_obs = ρ_base · CTL · CPL, i.e. V_base = V_obs · CTPL.

mod error;
mod meter;
mod tank;
mod vcf;

#[cfg(test)]
mod tests;

pub use error::{Input, MeasureError};
pub use meter::{gross_from_meter, meter_factor, MF_MAX, MF_MIN};
pub use tank::{
    ctsh, tank_quantities, volume_chain, StrappingTable, TankGauge, TankQuantities, TankSpec,
};
pub use vcf::{
    correct, correct_from_base, correct_from_observed, ctl_60f, round_step,
    shifted_density_alpha60, t68_f, Base, Correction, Density, DensityAt, Group, GroupUsed, Mode,
    Pressure, Request, Temperature, ALPHA60_MAX, ALPHA60_MIN, KPA_PER_PSI, P_MAX_PSI, P_MIN_PSI,
    T_MAX_C, T_MAX_F, T_MIN_C, T_MIN_F, WATER_60F_KGM3,
};
