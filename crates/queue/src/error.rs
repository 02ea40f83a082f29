//! Queue errors.

use std::path::PathBuf;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A limit is reached and the policy is to refuse: nothing was stored.
    #[error("the queue is full ({0}); nothing was stored")]
    Full(String),
    /// Free disk space is below the reserve: nothing was stored.
    #[error(
        "only {available} bytes free on the file system of {path:?}, below the reserve of \
         {reserve}; nothing was stored. Hint: free disk space or lower queue.disk_reserve"
    )]
    DiskReserve {
        /// The database file.
        path: PathBuf,
        /// Free bytes now.
        available: u64,
        /// The configured reserve.
        reserve: u64,
    },
    /// SQLite failed.
    #[error("queue database {path:?}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("queue database {path:?}: migration failed: {source}")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// What failed.
        source: sqlx::migrate::MigrateError,
    },
    /// A file operation (creating the directory, moving a corrupt file aside) failed.
    #[error("queue file {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The queue's directory or files could not be made private (0700 / 0600).
    #[error("queue files: {0}")]
    NotPrivate(#[from] fieldlink_core::private_fs::PrivateError),
    /// The queue's writer has stopped (shutdown).
    #[error("the queue is closed")]
    Closed,
}
