//! Errors of the OPC UA driver. A whole service call that fails (no session, timeout, closed
//! channel) is a link error; a node the server answers with a bad status is not an error here —
//! it becomes a reading with that status (see `status.rs`).

use opcua::types::StatusCode;

/// Errors of the OPC UA driver.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaError {
    /// The server could not be reached or the session could not be created.
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect {
        /// Endpoint URL.
        endpoint: String,
        /// What went wrong (with a hint for certificate problems).
        detail: String,
        /// The status code, when the server or the library gave one.
        status: Option<StatusCode>,
    },
    /// A service call failed as a whole (the link or the session is broken).
    #[error("{service} failed: {status}")]
    Service {
        /// Service name (`Read`, `CreateMonitoredItems`, …).
        service: &'static str,
        /// Why.
        status: StatusCode,
    },
    /// The session was lost (connection closed, keep-alive failed, subscription expired).
    #[error("session lost: {0}")]
    Lost(String),
    /// The password file / credential could not be read.
    #[error("cannot read the password: {0}")]
    Credentials(String),
    /// The PKI directory or a certificate file is unusable.
    #[error("PKI: {0}")]
    Pki(String),
}

impl OpcUaError {
    /// Wrap a library error from service `service`.
    pub fn service(service: &'static str, e: opcua::types::Error) -> Self {
        OpcUaError::Service {
            service,
            status: e.status(),
        }
    }
}

/// Result of the OPC UA driver.
pub type OpcUaResult<T> = Result<T, OpcUaError>;
