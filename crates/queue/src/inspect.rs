//! Read-only inspection of a queue that another process (the running service) owns.
//!
//! [`crate::Queue::open`] is the service's way in: it creates the file, migrates it, moves a
//! corrupt one aside, saves the queue clock and starts the writer that expires old messages and
//! checkpoints. None of that may happen from `fieldlink queue stats` next to a running gateway.
//! [`QueueReader`] opens the file with SQLite's read-only flag, runs SELECTs only, and never
//! creates, migrates, moves or expires anything.
//!
//! A read-only SQLite connection to a WAL database still creates the `-wal` and `-shm`
//! companions when they are missing, and leaves them behind. They are missing exactly when no
//! process has the database open (the last connection to close removes them), so then the
//! file is read as `immutable`: no locks, no companions, nothing written. While the service
//! runs they exist and are shared, and the read takes SQLite's ordinary read lock.
//! (A service starting during such a read may make it fail; it never harms the service.)

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection as _, SqliteConnection};

use crate::clock::QueueClock;
use crate::queue::{Stats, StreamStats};
use crate::store::{self, Leased};
use crate::{DB_FILE, QueueError};

/// A read-only view of the queue in a data directory.
#[derive(Debug)]
pub struct QueueReader {
    conn: SqliteConnection,
    path: PathBuf,
}

impl QueueReader {
    /// Opens the queue in `dir` read-only. A missing file is an error (nothing is created).
    pub async fn open(dir: &Path) -> Result<Self, QueueError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(QueueError::Io {
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no queue there: the gateway creates it when it first starts",
                ),
                path,
            });
        }
        let db = |source| QueueError::Database {
            path: path.clone(),
            source,
        };
        let in_use = ["-wal", "-shm"].iter().all(|suffix| {
            let mut companion = path.clone().into_os_string();
            companion.push(suffix);
            Path::new(&companion).exists()
        });
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
            .filename(&path)
            .read_only(true)
            .immutable(!in_use)
            .create_if_missing(false)
            // The service may be committing: wait for it rather than fail.
            .busy_timeout(Duration::from_secs(5));
        let mut conn = SqliteConnection::connect_with(&options).await.map_err(db)?;
        if let Some(found) = crate::format::recorded(&mut conn).await.map_err(db)?
            && found.readable_from > crate::format::FORMAT
        {
            return Err(QueueError::TooNew {
                path,
                version: found.version,
                readable_from: found.readable_from,
                ours: crate::format::FORMAT,
            });
        }
        Ok(Self { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Depth per stream and the oldest message's age. The counters of a running queue
    /// (appended, dropped, refused since open) live in the service and are zero here; a
    /// message delivered in the last seconds is still counted until its deletion is committed.
    pub async fn stats(&mut self) -> Result<Stats, QueueError> {
        let mut stats = Stats::default();
        let depth = store::depth_by_stream(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        for (stream, messages, bytes) in depth {
            stats.messages += messages;
            stats.bytes += bytes;
            stats
                .streams
                .insert(stream, StreamStats { messages, bytes });
        }
        let oldest = store::oldest_queue_ms(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        if let Some(oldest) = oldest {
            let now = self.queue_time_now().await?;
            stats.oldest_age = Some(Duration::from_millis(
                u64::try_from(now.saturating_sub(oldest)).unwrap_or(0),
            ));
        }
        Ok(stats)
    }

    /// The first `max` messages in delivery order (the service's lease order: higher priority
    /// first, streams taking turns, each stream oldest first).
    pub async fn peek(&mut self, max: usize) -> Result<Vec<Leased>, QueueError> {
        let streams = store::streams(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let (mut leased, delivered, mut cursors) = Default::default();
        let mut lessor = crate::queue::Lessor {
            conn: &mut self.conn,
            leased: &mut leased,
            delivered: &delivered,
            cursors: &mut cursors,
        };
        let result = lessor.next(streams.iter(), max, false).await;
        result.map_err(|e| self.error(e))
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }

    /// Queue time now as the service would count it, from the saved clock row and the newest
    /// message (nothing is saved). Before time sync this is the running time last saved, so
    /// an age may read low by up to the clock's save interval; it never reads high.
    async fn queue_time_now(&mut self) -> Result<i64, QueueError> {
        let saved = store::load_clock(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let newest = store::newest_queue_ms(&mut self.conn)
            .await
            .map_err(|e| self.error(e))?;
        let mut clock = QueueClock::resume(saved, newest);
        clock.observe(
            fieldlink_core::clock::wall_ms(),
            fieldlink_core::clock::synchronized(),
        );
        Ok(clock.now_ms())
    }

    fn error(&self, source: sqlx::Error) -> QueueError {
        QueueError::Database {
            path: self.path.clone(),
            source,
        }
    }
}
