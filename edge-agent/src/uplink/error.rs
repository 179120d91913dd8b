//! Errors of the uplink stage.

/// Uplink errors (configuration problems found when starting; runtime link errors are retried,
/// logged and counted, never returned).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The `[uplink]` configuration cannot be used.
    #[error("uplink: {0}")]
    Config(String),
    /// TLS material could not be loaded.
    #[error("uplink TLS: {0}")]
    Tls(String),
    /// Topic ids are invalid.
    #[error(transparent)]
    Wire(#[from] flowsquare_wire::WireError),
    /// The buffer stopped under the uplink.
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
}
