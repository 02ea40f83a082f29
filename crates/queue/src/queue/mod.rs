//! The queue's handle and its ports (see the crate documentation for the design): every call
//! is a request to the one writer task ([`writer`]), which applies the limits ([`limits`])
//! and exports its counters ([`telemetry`]).

mod lease;
mod limits;
mod replay;
mod telemetry;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldlink_core::ports::{
    Backlog, BacklogError, BoxFuture, Outbox, OutboxEntry, OutboxError, StorageCause,
    StorageFailure, StoredMessage,
};
use fieldlink_core::shutdown::Shutdown;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Durability, QueueSettings, StreamLimits};
use crate::journal::Journal;
pub use crate::store::Leased;
use crate::store::{self, Removed, StreamRemoval};
use crate::{DB_FILE, DiskSpace, QueueError};

pub(crate) use self::lease::Lessor;
use self::telemetry::Exported;
use self::writer::{Writer, resume_clock};

/// Requests waiting for the writer; producers wait (backpressure) once it is full.
pub(super) const REQUEST_CAPACITY: usize = 4096;

/// The durable store-and-forward queue. Cheap to clone; every clone talks to one writer.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: mpsc::Sender<Op>,
    path: Arc<PathBuf>,
    /// Signalled after every commit that stored messages.
    stored: Arc<tokio::sync::Notify>,
}

/// Depth and counters of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Messages held.
    pub messages: u64,
    /// Bytes held (payloads, topics, properties).
    pub bytes: u64,
}

/// What the queue holds and what it has done since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Per stream.
    pub streams: BTreeMap<String, StreamStats>,
    /// Messages leased and not yet acknowledged.
    pub leased: u64,
    /// Age of the oldest message held.
    pub oldest_age: Option<Duration>,
    /// Messages appended since open.
    pub appended_total: u64,
    /// Messages acknowledged (and deleted) since open.
    pub acked_total: u64,
    /// Messages dropped since open, by reason: `age`, `drop_oldest`, `drop_newest`.
    pub dropped_total: BTreeMap<&'static str, u64>,
    /// Appends refused since open, by reason: `full`, `disk_reserve`.
    pub refused_total: BTreeMap<&'static str, u64>,
    /// Where a corrupt database was moved at open, if it was.
    pub corrupt_file_moved_to: Option<PathBuf>,
    /// Whether the last close was clean: then the start took the depth saved at that close and
    /// skipped the full integrity check (which reads the whole file); after a power cut or a
    /// kill it checks and counts every row.
    pub opened_after_clean_close: bool,
    /// Messages put back from the commit journal at open, after an unclean stop. Those the
    /// cloud had acknowledged in the last commit interval before the stop are among them and
    /// go again (at least once; the cloud recognises them by id).
    pub replayed_at_open: u64,
}

type AppendReply = oneshot::Sender<Result<Vec<i64>, QueueError>>;
type AppendRequest = (Vec<OutboxEntry>, AppendReply);

enum Op {
    Append(
        Vec<OutboxEntry>,
        oneshot::Sender<Result<Vec<i64>, QueueError>>,
    ),
    Ack(Vec<i64>, oneshot::Sender<Result<(), QueueError>>),
    Nack(Vec<i64>, oneshot::Sender<()>),
    Lease(usize, oneshot::Sender<Result<Vec<Leased>, QueueError>>),
    Peek(usize, oneshot::Sender<Result<Vec<Leased>, QueueError>>),
    Stats(oneshot::Sender<Result<Stats, QueueError>>),
    Purge(oneshot::Sender<Result<u64, QueueError>>),
    /// Answered between two commits: the writer is alive.
    Ping(oneshot::Sender<()>),
    /// Makes the writer panic, for the supervision tests.
    #[cfg(feature = "fault-injection")]
    Crash,
    Close(oneshot::Sender<()>),
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, with the queue's limits and each stream's own.
    /// The writer runs as a vital task of `tasks` (component `queue`) until [`Queue::close`].
    pub async fn open(
        dir: &Path,
        settings: QueueSettings,
        streams: HashMap<String, StreamLimits>,
        disk: Arc<dyn DiskSpace>,
        tasks: &Shutdown,
    ) -> Result<Self, QueueError> {
        let path = dir.join(DB_FILE);
        store::make_private(dir, &path)?;
        // This process is the queue's only writer from here on (the lock is the journal's).
        let journal_path = dir.join(crate::JOURNAL_FILE);
        let io = |source| QueueError::Io {
            path: journal_path.clone(),
            source,
        };
        fieldlink_core::private_fs::private_file(&journal_path)?;
        let Some(journal_file) = crate::journal::lock(&journal_path).map_err(io)? else {
            return Err(QueueError::InUse {
                dir: dir.to_owned(),
            });
        };
        let store::OpenStore {
            mut conn,
            corrupt_moved_to: corrupt,
            clean_depth,
        } = store::open(&path, settings.durability).await?;
        // The WAL's working size is written at once, unless the disk is short of room above
        // the reserve (the queue's messages have the better claim on it; the WAL then grows
        // as it needs).
        let room = disk
            .available(&path)
            .map_or(0, |free| free.saturating_sub(settings.disk_reserve));
        let prefill = room >= 4 * store::WAL_WORKING_SIZE;
        if let Err(e) = store::size_wal(&mut conn, &path, prefill).await {
            tracing::warn!(path = %path.display(), error = %e, "Could not give the queue's WAL its working size: it grows while the queue runs");
        }
        let db = |source| QueueError::Database {
            path: path.clone(),
            source,
        };
        // The journal (see `journal.rs`): what was committed since the last fold before an
        // unclean stop is applied now.
        let (mut journal, found) = Journal::open(
            journal_file,
            &journal_path,
            settings.durability == Durability::PowerSafe,
            prefill,
        )
        .map_err(io)?;
        let replayed = replay::apply(&mut conn, &path, &mut journal, found).await?;
        if replayed.messages > 0 {
            tracing::warn!(
                messages = replayed.messages,
                renumbered = replayed.renumbered,
                "Applied the queue journal after an unclean stop: messages the cloud had \
                 acknowledged just before it may be sent again (at least once)"
            );
        }
        let clean_depth = clean_depth.filter(|_| replayed.messages == 0);
        let opened_after_clean_close = clean_depth.is_some();
        // After a clean close the saved depth; else a scan of every row.
        let streams_depth = match clean_depth {
            Some(saved) => saved,
            None => store::depth_by_stream(&mut conn).await.map_err(db)?,
        };
        let mut depth = Depth::default();
        for (stream, messages, bytes) in streams_depth {
            depth.add(&stream, messages, bytes);
        }
        let clock = resume_clock(&mut conn).await.map_err(db)?;
        let (tx, rx) = mpsc::channel(REQUEST_CAPACITY);
        let stored = Arc::new(tokio::sync::Notify::new());
        let writer = Writer {
            stored: stored.clone(),
            conn,
            path: path.clone(),
            settings,
            streams,
            disk,
            depth,
            leased: HashSet::new(),
            delivered: BTreeSet::new(),
            last_delete: None,
            clock,
            cursors: HashMap::new(),
            stats: Stats {
                corrupt_file_moved_to: corrupt,
                opened_after_clean_close,
                replayed_at_open: replayed.messages,
                ..Stats::default()
            },
            unchecked_writes: true,
            last_commit: None,
            last_write: None,
            exported: Exported::default(),
            journal,
            tx_began: None,
            unjournaled: Vec::new(),
            broken: false,
            direct: !prefill,
            changed: 0,
        };
        tasks.spawn_vital("queue", "the queue writer", writer.run(rx));
        Ok(Self {
            tx,
            path: Arc::new(path),
            stored,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `entries`, all or none, and returns their ids once they are fsync-durable.
    /// A message dropped by a `drop_newest` policy gets no id and is counted.
    pub async fn append(&self, entries: Vec<OutboxEntry>) -> Result<Vec<i64>, QueueError> {
        self.call(|reply| Op::Append(entries, reply)).await?
    }

    /// Leases up to `max` messages in delivery order; they are not handed out again until
    /// nacked, or after a restart.
    pub async fn lease(&self, max: usize) -> Result<Vec<Leased>, QueueError> {
        self.call(|reply| Op::Lease(max, reply)).await?
    }

    /// The cloud has them: deletes them.
    pub async fn ack(&self, ids: Vec<i64>) -> Result<(), QueueError> {
        self.call(|reply| Op::Ack(ids, reply)).await?
    }

    /// Not delivered: makes them leasable again, in their original order.
    pub async fn nack(&self, ids: Vec<i64>) -> Result<(), QueueError> {
        self.call(|reply| Op::Nack(ids, reply)).await
    }

    /// The first `max` messages in delivery order, without leasing them.
    pub async fn peek(&self, max: usize) -> Result<Vec<Leased>, QueueError> {
        self.call(|reply| Op::Peek(max, reply)).await?
    }

    /// Depth and counters.
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        self.call(Op::Stats).await?
    }

    /// Deletes every message; returns how many there were.
    pub async fn purge(&self) -> Result<u64, QueueError> {
        self.call(Op::Purge).await?
    }

    /// Resolves once the writer has finished what was asked before: it is alive and not stuck
    /// in a commit.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.call(Op::Ping).await
    }

    /// Makes the writer task panic (a fault for the supervision tests).
    #[cfg(feature = "fault-injection")]
    pub async fn crash_writer(&self) {
        let _ = self.tx.send(Op::Crash).await;
    }

    /// Finishes what was asked before, folds the WAL into the database file and closes it.
    /// Later calls on any clone fail with [`QueueError::Closed`].
    pub async fn close(&self) {
        let _ = self.call(Op::Close).await;
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)
    }
}

impl Outbox for Queue {
    fn append(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move {
            Queue::append(self, entries)
                .await
                .map(drop)
                .map_err(|e| match e {
                    QueueError::Full(full) => OutboxError::Full(full),
                    QueueError::Closed => OutboxError::Closed,
                    other => OutboxError::Storage(storage_failure(&other)),
                })
        })
    }
}

impl Backlog for Queue {
    fn lease(&self, max: usize) -> BoxFuture<'_, Result<Vec<StoredMessage>, BacklogError>> {
        Box::pin(async move { Queue::lease(self, max).await.map_err(backlog_error) })
    }

    fn ack(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), BacklogError>> {
        Box::pin(async move { Queue::ack(self, ids).await.map_err(backlog_error) })
    }

    fn nack(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), BacklogError>> {
        Box::pin(async move { Queue::nack(self, ids).await.map_err(backlog_error) })
    }

    fn stored(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stored.notified())
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64, BacklogError>> {
        Box::pin(async move { Ok(self.stats().await.map_err(backlog_error)?.messages) })
    }
}

fn backlog_error(e: QueueError) -> BacklogError {
    match e {
        QueueError::Closed => BacklogError::Closed,
        other => BacklogError::Storage(storage_failure(&other)),
    }
}

/// A failure of the database or the file system, as the ports carry it.
fn storage_failure(e: &QueueError) -> StorageFailure {
    e.storage_failure().unwrap_or_else(|| StorageFailure {
        // Full and Closed have variants of their own in the ports; not reached.
        cause: StorageCause::Database,
        detail: e.to_string(),
    })
}

/// Messages and bytes held, per stream and in total.
#[derive(Debug, Clone, Default)]
struct Depth {
    messages: u64,
    bytes: u64,
    streams: HashMap<String, StreamStats>,
}

impl Depth {
    fn add(&mut self, stream: &str, messages: u64, bytes: u64) {
        self.messages += messages;
        self.bytes += bytes;
        // Look up before inserting: the key is allocated only for a stream seen the first time.
        let s = match self.streams.get_mut(stream) {
            Some(s) => s,
            None => self.streams.entry(stream.to_owned()).or_default(),
        };
        s.messages += messages;
        s.bytes += bytes;
    }

    fn remove(&mut self, removed: &[Removed]) {
        for r in removed {
            self.messages = self.messages.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(r.bytes);
            if let Some(s) = self.streams.get_mut(&r.stream) {
                s.messages = s.messages.saturating_sub(1);
                s.bytes = s.bytes.saturating_sub(r.bytes);
                if s.messages == 0 {
                    self.streams.remove(&r.stream);
                }
            }
        }
    }

    fn remove_counted(&mut self, removed: &[StreamRemoval]) {
        for r in removed {
            self.messages = self.messages.saturating_sub(r.messages);
            self.bytes = self.bytes.saturating_sub(r.bytes);
            if let Some(s) = self.streams.get_mut(&r.stream) {
                s.messages = s.messages.saturating_sub(r.messages);
                s.bytes = s.bytes.saturating_sub(r.bytes);
                if s.messages == 0 {
                    self.streams.remove(&r.stream);
                }
            }
        }
    }

    fn stream(&self, stream: &str) -> StreamStats {
        self.streams.get(stream).copied().unwrap_or_default()
    }

    /// What one stream (or, for `None`, the whole queue) holds.
    fn held(&self, stream: Option<&str>) -> StreamStats {
        match stream {
            Some(stream) => self.stream(stream),
            None => StreamStats {
                messages: self.messages,
                bytes: self.bytes,
            },
        }
    }
}
