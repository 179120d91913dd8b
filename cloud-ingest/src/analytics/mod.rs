//! Analytics that come with the data (pure; the reconciliation run and the service's 5-minute
//! loop feed them from the store):
//!
//! - `stale.rs`: tags whose newest reading is older than a few poll intervals (the expected
//!   interval from the birth catalog);
//! - `drift.rs`: control limits of a meter's meter-vs-tank trend (mean ± k·σ of the in-control
//!   baseline, with a floor);
//! - `stops.rs`: stops of a loaded truck outside known places, from its GPS track.

pub mod drift;
pub mod stale;
pub mod stops;
