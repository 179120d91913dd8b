//! Parts of the live-shape bench (`live_shape.rs`): simulated agents, the ingest process, the
//! bench database, CPU from `/proc`, and histogram quantiles.

pub mod cpu;
pub mod db;
pub mod fleet;
pub mod hist;
pub mod procs;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
