//! Errors of the buffer stage.

use std::path::PathBuf;

/// Buffer errors.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// SQLite failed.
    #[error("buffer database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database failed its integrity check.
    #[error("buffer database is corrupt: {0}")]
    Corrupt(String),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A stored segment could not be decoded.
    #[error("stored segment {id} cannot be decoded: {reason}")]
    Segment {
        /// Segment row id.
        id: i64,
        /// Why.
        reason: String,
    },
    /// The buffer task is gone (the agent is shutting down).
    #[error("buffer task stopped")]
    Stopped,
}

impl BufferError {
    /// Does the error mean the database file itself is damaged?
    pub fn is_corruption(&self) -> bool {
        match self {
            BufferError::Corrupt(_) => true,
            BufferError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ),
            _ => false,
        }
    }
}
