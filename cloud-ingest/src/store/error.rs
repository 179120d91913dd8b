//! Errors of the store stage.

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed (connection, query, COPY).
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database is not reachable (retry later).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A blocking task failed.
    #[error("store task: {0}")]
    Task(String),
    /// Bad input to a query.
    #[error("{0}")]
    Invalid(String),
    /// A birth refused by the tag registry limit (`[ingest] max_tags_per_agent`).
    #[error("{}", .0.message)]
    TagLimit(Box<TagLimitRefusal>),
}

/// A birth refused because its agent would have more registered tags than the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagLimitRefusal {
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// The refused birth's config hash (its batches wait for it).
    pub config_hash: String,
    /// Tags the agent would have registered with it.
    pub total: usize,
    /// The limit.
    pub limit: usize,
    /// The whole reason, naming the agent and the counts.
    pub message: String,
}

impl StoreError {
    /// Is this worth retrying (connection lost, database down) rather than a bad message?
    pub fn is_transient(&self) -> bool {
        match self {
            // No SQLSTATE: the connection failed. With one: connection exceptions (08), the
            // transaction was rolled back (40: serialization, deadlock), insufficient resources
            // (53: disk full, out of memory), object not in prerequisite state (55: database not
            // accepting connections), operator intervention (57: shutdown), system errors
            // (58: I/O). All of these say nothing about the batch, so it must not be rejected.
            StoreError::Postgres(e) => match e.code() {
                Some(c) => ["08", "40", "53", "55", "57", "58"]
                    .iter()
                    .any(|k| c.code().starts_with(k)),
                // Without a SQLSTATE: transient only if the connection itself failed (closed, or
                // an I/O error underneath); encoding or protocol errors are not worth retrying.
                None => {
                    e.is_closed()
                        || std::error::Error::source(e)
                            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
                        || e.to_string().contains("error connecting")
                }
            },
            StoreError::Unavailable(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                )
            }
            _ => false,
        }
    }
}
