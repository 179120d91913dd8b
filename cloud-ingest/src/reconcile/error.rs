//! Errors of the reconciliation stage.

/// Reconciliation errors.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The site model cannot be used (every problem, one per line).
    #[error("[reconcile]: {0}")]
    Config(String),
    /// A strapping table could not be read or parsed.
    #[error("tank {tank}: strapping table {path}: {message}")]
    Table {
        /// Tank id.
        tank: String,
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}
