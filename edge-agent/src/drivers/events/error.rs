//! Errors of an event binding, on two levels like the drivers: the link failed, or the device
//! answered and refused (Modbus exception, OPC UA bad status).

/// Why an event read or write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// No usable answer (connect, timeout, broken connection, undecodable frame).
    #[error("link: {0}")]
    Link(String),
    /// The device answered with an error.
    #[error("device: {0}")]
    Device(String),
}
