//! [`TerminalError`]: what can go wrong building or running the simulated terminal.

use std::path::PathBuf;

/// Errors of the terminal stage.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// The terminal file is malformed or inconsistent (toml positions are `line N, column M`).
    #[error("{}: {message}", file.display())]
    Config {
        /// File.
        file: PathBuf,
        /// Every problem, one per line.
        message: String,
    },
    /// A strapping table cannot be used.
    #[error("strapping table {}: {message}", file.display())]
    Table {
        /// File.
        file: PathBuf,
        /// Why.
        message: String,
    },
    /// An I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A simulated server failed to start.
    #[error("{what}: {message}")]
    Server {
        /// Which server.
        what: String,
        /// Why.
        message: String,
    },
}
