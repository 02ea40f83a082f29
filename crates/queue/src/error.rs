//! Queue errors.

use std::path::PathBuf;

use fieldlink_core::fault::Fault;
pub use fieldlink_core::ports::Full;
use fieldlink_core::ports::{StorageCause, StorageFailure};

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A limit is reached and the policy is to refuse, or free disk space is below the
    /// reserve: nothing was stored.
    #[error(transparent)]
    Full(Full),
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
    /// The file was written by a newer release whose format this one cannot read: it is left
    /// as it is, every message in it kept.
    #[error(
        "queue database {path:?} was written by a newer fieldlink (queue format {version}) that \
         releases before queue format {readable_from} cannot read; this release reads format \
         {ours}. The file is left untouched with every message in it: start the release that \
         wrote it (or a later one)"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The format of the newest release that wrote it.
        version: i64,
        /// The oldest format that can read it.
        readable_from: i64,
        /// This release's format.
        ours: i64,
    },
    /// Another process has the queue open (the service, or a second gateway on the same data
    /// directory): two writers would each take the other's journal commits for their own.
    #[error(
        "the queue in {dir:?} is in use by another fieldlink process (the service, or another \
         gateway with the same data directory): stop it first (e.g. `sudo systemctl stop \
         fieldlink`), or give this one its own gateway.data_dir; a running gateway's queue can be \
         purged from its web UI"
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// The queue's directory or files could not be made private (0700 / 0600).
    #[error("queue files: {0}")]
    NotPrivate(#[from] fieldlink_core::private_fs::PrivateError),
    /// The queue's writer has stopped (shutdown).
    #[error("the queue is closed")]
    Closed,
}

impl QueueError {
    /// Whose fault it is: a full queue, the database and the file system are the environment's
    /// (a long outage, a full or failing disk); closing is the gateway's own shutdown.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Full(_)
            | Self::Database { .. }
            | Self::Migration { .. }
            | Self::TooNew { .. }
            | Self::Io { .. }
            | Self::InUse { .. }
            | Self::Closed => Fault::Environment,
            Self::NotPrivate(e) => e.fault(),
        }
    }

    /// The storage failure as the ports carry it; `None` for `Full` and `Closed`, which the
    /// ports name themselves.
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        let cause = match self {
            Self::Database { .. } => StorageCause::Database,
            Self::Migration { .. } | Self::TooNew { .. } => StorageCause::Schema,
            Self::Io { .. } | Self::NotPrivate(_) | Self::InUse { .. } => StorageCause::Io,
            Self::Full(_) | Self::Closed => return None,
        };
        Some(StorageFailure {
            cause,
            detail: self.to_string(),
        })
    }
}
