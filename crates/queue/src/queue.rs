//! The queue's API and its writer task (see the crate documentation for the design).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fieldlink_core::ports::{
    Backlog, BacklogError, BoxFuture, Outbox, OutboxEntry, OutboxError, StorageCause,
    StorageFailure, StoredMessage,
};
use sqlx::{Connection as _, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::clock::QueueClock;
use crate::config::{FullPolicy, QueueSettings, StreamLimits};
pub use crate::store::Leased;
use crate::store::{self, Removed, entry_bytes};
use crate::{DB_FILE, DiskSpace, Full, QueueError};

/// Requests waiting for the writer; producers wait (backpressure) once it is full.
const REQUEST_CAPACITY: usize = 4096;
/// Messages (appended or acknowledged) that are committed at once rather than wait for the
/// commit interval: bounds the memory pending writes hold.
const MAX_PENDING_MESSAGES: usize = 10_000;
/// Delivered messages are deleted at most this often (or when [`MAX_PENDING_MESSAGES`] wait):
/// a batch of deletions touches each page once. A crash before the deletion sends them
/// again: at least once, recognisable by id.
const DELETE_EVERY: Duration = Duration::from_secs(5);
/// Free pages are given back and the WAL folded into the file once writes have paused this
/// long, not between every burst of a steady trickle.
const QUIET_AFTER: Duration = Duration::from_secs(5);
/// How often age expiry and space reclaim run.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

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
    Close(oneshot::Sender<()>),
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, with the queue's limits and each stream's own.
    pub async fn open(
        dir: &Path,
        settings: QueueSettings,
        streams: HashMap<String, StreamLimits>,
        disk: Arc<dyn DiskSpace>,
    ) -> Result<Self, QueueError> {
        let path = dir.join(DB_FILE);
        store::make_private(dir, &path)?;
        let store::OpenStore {
            mut conn,
            corrupt_moved_to: corrupt,
            clean_depth,
        } = store::open(&path, settings.durability).await?;
        let db = |source| QueueError::Database {
            path: path.clone(),
            source,
        };
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
            delivered: HashSet::new(),
            last_delete: None,
            clock,
            cursor: None,
            stats: Stats {
                corrupt_file_moved_to: corrupt,
                opened_after_clean_close,
                ..Stats::default()
            },
            unchecked_writes: true,
            last_commit: None,
            last_write: None,
            exported: Exported::default(),
        };
        tokio::spawn(writer.run(rx));
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

struct Writer {
    stored: Arc<tokio::sync::Notify>,
    conn: SqliteConnection,
    path: PathBuf,
    settings: QueueSettings,
    streams: HashMap<String, StreamLimits>,
    disk: Arc<dyn DiskSpace>,
    depth: Depth,
    leased: HashSet<i64>,
    /// Acknowledged by the cloud and not deleted yet: never leased, peeked or counted again.
    /// Deleting them costs a commit's pages, so it is done for many at once.
    delivered: HashSet<i64>,
    /// When delivered messages were last deleted.
    last_delete: Option<std::time::Instant>,
    /// Queue time, which ages are measured in (see `clock.rs`).
    clock: QueueClock,
    /// The last row leased, in lease order (priority, id), while every row before it is
    /// leased: the next lease starts after it instead of skipping every leased row. Reset by
    /// a nack, a purge, and an append to a higher priority lane.
    cursor: Option<(i64, i64)>,
    stats: Stats,
    /// Writes since the last checkpoint.
    unchecked_writes: bool,
    /// When the last commit (of anything) and the last write were made.
    last_commit: Option<std::time::Instant>,
    last_write: Option<std::time::Instant>,
    /// What was last handed to the metrics facade.
    exported: Exported,
}

/// The counters and stream gauges last exported, so that each export adds only the change.
#[derive(Default)]
struct Exported {
    appended: u64,
    acked: u64,
    dropped: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    streams: HashSet<String>,
}

/// Writes waiting for their commit.
#[derive(Default)]
struct Pending {
    appends: Vec<AppendRequest>,
    /// Messages in them.
    messages: usize,
}

impl Pending {
    fn append(&mut self, entries: Vec<OutboxEntry>, reply: AppendReply) {
        self.messages += entries.len();
        self.appends.push((entries, reply));
    }
}

/// One append request's outcome within a round.
enum Planned {
    /// Refused whole.
    Refused(QueueError),
    /// This many of its entries are in the round's insert (before the commit).
    Stored(usize),
    /// Committed, with these ids (after the commit).
    Ids(Vec<i64>),
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = Pending::default();
        loop {
            let due = self.commit_due(&pending);
            // With nothing pending the timer is disabled; any instant will do.
            let at = due.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                op = rx.recv() => {
                    let Some(first) = op else { break };
                    let mut round = vec![first];
                    while round.len() < REQUEST_CAPACITY {
                        match rx.try_recv() {
                            Ok(op) => round.push(op),
                            Err(_) => break,
                        }
                    }
                    if let Some(closers) = self.take(round, &mut pending).await {
                        self.commit(&mut pending).await;
                        self.shut().await;
                        for reply in closers {
                            let _ = reply.send(());
                        }
                        return;
                    }
                }
                () = sleep_until(at), if due.is_some() => {
                    self.commit(&mut pending).await;
                    self.export();
                }
                _ = maintenance.tick() => {
                    self.maintain().await;
                    self.export();
                }
            }
        }
        // Every handle is gone.
        self.commit(&mut pending).await;
        self.shut().await;
    }

    /// Sorts a round of requests: writes wait in `pending` for their commit, the rest is
    /// served at once. On a close, returns its replies; requests behind it see `Closed` when
    /// their reply is dropped.
    async fn take(
        &mut self,
        round: Vec<Op>,
        pending: &mut Pending,
    ) -> Option<Vec<oneshot::Sender<()>>> {
        let mut round = round.into_iter();
        for op in round.by_ref() {
            match op {
                Op::Append(entries, reply) => pending.append(entries, reply),
                Op::Ack(ids, reply) => {
                    self.delivered(ids);
                    let _ = reply.send(Ok(()));
                }
                Op::Nack(ids, reply) => {
                    for id in &ids {
                        self.leased.remove(id);
                    }
                    // They are before the cursor again.
                    self.cursor = None;
                    let _ = reply.send(());
                }
                // Delivered rows are skipped until they are deleted; uncommitted appends
                // are not there yet.
                Op::Lease(..) | Op::Peek(..) | Op::Stats(_) => self.read(op).await,
                Op::Purge(_) => {
                    self.commit(pending).await;
                    self.read(op).await;
                }
                Op::Close(reply) => {
                    let mut closers = vec![reply];
                    closers.extend(round.filter_map(|op| match op {
                        Op::Close(reply) => Some(reply),
                        _ => None,
                    }));
                    return Some(closers);
                }
            }
        }
        None
    }

    /// When the pending writes are to be committed: once `commit_interval` has passed since
    /// the last commit, so that commits (and fsyncs) are bounded whatever the rate while a
    /// message after a quiet spell goes at once; at once when many are waiting. Deletions of
    /// delivered messages ride along: they need no commit of their own, and a crash before
    /// their commit only sends them again (at least once; their ids let the cloud drop them).
    fn commit_due(&self, pending: &Pending) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if pending.messages >= MAX_PENDING_MESSAGES || self.delivered.len() >= MAX_PENDING_MESSAGES
        {
            return Some(now);
        }
        if !pending.appends.is_empty() {
            let after = self.settings.commit_interval;
            return Some(self.last_commit.map_or(now, |at| (at + after).into()));
        }
        (!self.delivered.is_empty()).then(|| {
            self.last_delete
                .map_or(now, |at| (at + DELETE_EVERY).into())
        })
    }

    /// The cloud has these: they are never leased again, and deleted in a later commit.
    fn delivered(&mut self, ids: Vec<i64>) {
        for id in ids {
            if self.leased.remove(&id) && self.delivered.insert(id) {
                self.stats.acked_total += 1;
            }
        }
    }

    /// Commits every pending append in one transaction, then answers; delivered messages are
    /// deleted in it when their turn has come (every [`DELETE_EVERY`], or when many wait).
    async fn commit(&mut self, pending: &mut Pending) {
        let Pending { appends, .. } = std::mem::take(pending);
        let delete_due = self
            .last_delete
            .is_none_or(|at| at.elapsed() >= DELETE_EVERY)
            || self.delivered.len() >= MAX_PENDING_MESSAGES
            || appends.is_empty();
        let delete: Vec<i64> = if delete_due {
            self.delivered.iter().copied().collect()
        } else {
            Vec::new()
        };
        if appends.is_empty() && delete.is_empty() {
            return;
        }
        self.unchecked_writes = true;
        let now = std::time::Instant::now();
        if !delete.is_empty() {
            self.last_delete = Some(now);
        }
        self.write(appends, delete).await;
        self.last_commit = Some(now);
        self.last_write = Some(now);
    }

    /// Saves the queue clock, checkpoints, so that the WAL is folded into the database, and
    /// closes the connection.
    async fn shut(mut self) {
        self.save_clock().await;
        let depth: Vec<store::StreamDepth> = self
            .depth
            .streams
            .iter()
            .filter(|(_, s)| s.messages > 0)
            .map(|(name, s)| (name.clone(), s.messages, s.bytes))
            .collect();
        if let Err(e) = store::save_clean_close(&mut self.conn, &depth).await {
            tracing::warn!(error = %e, "Cannot record the clean close: the next start checks the whole queue");
        }
        let mut conn = self.conn;
        let _ = store::checkpoint_and_truncate(&mut conn).await;
        let _ = conn.close().await;
    }

    async fn write(&mut self, appends: Vec<AppendRequest>, delete: Vec<i64>) {
        let before = (self.depth.clone(), self.stats.clone());
        let mut appends = appends;
        let result = self.write_transaction(&mut appends, &delete).await;
        match result {
            Ok(planned) => {
                if fieldlink_core::alarms::clear(&format!("queue-full:{}", self.path.display())) {
                    tracing::info!(path = %self.path.display(), "The queue can write again");
                }
                for ((_, reply), outcome) in appends.into_iter().zip(planned) {
                    let _ = reply.send(match outcome {
                        Planned::Ids(ids) => Ok(ids),
                        Planned::Refused(e) => Err(e),
                        Planned::Stored(_) => unreachable!("write_transaction returns ids"),
                    });
                }
                for id in &delete {
                    self.delivered.remove(id);
                }
            }
            Err(e) => {
                // Nothing was committed: the counters go back to what is on disk.
                (self.depth, self.stats) = before;
                if is_disk_full(&e) {
                    // The reserve was not enough (another process filled the disk): one alarm
                    // and one log line, not one per commit; refused appends are counted.
                    *self.stats.refused_total.entry("disk_full").or_default() +=
                        appends.iter().map(|(e, _)| e.len() as u64).sum::<u64>();
                    let text = format!(
                        "The file system of the queue {} is full (SQLite could not write): new \
                         messages are refused. Free disk space, or raise queue.disk_reserve so \
                         that the queue stops before the disk does",
                        self.path.display()
                    );
                    if fieldlink_core::alarms::raise(
                        &format!("queue-full:{}", self.path.display()),
                        text.clone(),
                    ) {
                        tracing::error!("{text}");
                    }
                } else {
                    tracing::error!(path = %self.path.display(), error = %e, "Queue write failed; nothing stored");
                }
                for (_, reply) in appends {
                    let _ = reply.send(Err(self.db_error(clone_err(&e))));
                }
                // Delivered rows stay marked; the next commit tries again.
            }
        }
    }

    /// One transaction for the whole round: acks first, then every append's limits (which
    /// may delete old rows), then one multi-row insert of everything kept.
    async fn write_transaction(
        &mut self,
        appends: &mut [AppendRequest],
        delete: &[i64],
    ) -> Result<Vec<Planned>, sqlx::Error> {
        let wall_ms = fieldlink_core::clock::wall_ms();
        let queue_ms = self.clock.now_ms();
        let available = if appends.is_empty() {
            u64::MAX
        } else {
            self.disk.available(&self.path).unwrap_or(u64::MAX)
        };
        let Self {
            conn,
            depth,
            stats,
            settings,
            streams,
            path,
            ..
        } = self;
        let mut tx = conn.begin().await?;
        if !delete.is_empty() {
            let removed = store::delete_ids(&mut tx, delete).await?;
            depth.remove(&removed);
        }
        // What the file system can still take above the reserve, as a ceiling on the bytes of
        // messages held: the queue's policy applies to it like to max_bytes.
        let disk = if appends.is_empty() {
            None
        } else {
            let file = store::file_space(&mut tx).await?;
            Some(DiskRoom {
                path: path.clone(),
                available,
                reserve: settings.disk_reserve,
                cap: depth.bytes.saturating_add(disk_room(
                    available,
                    settings.disk_reserve,
                    file,
                    depth.bytes,
                )),
                hit: std::sync::atomic::AtomicBool::new(false),
            })
        };
        let mut planned = Vec::with_capacity(appends.len());
        let mut batch: Vec<OutboxEntry> = Vec::new();
        // Rows that drop-oldest deleted: forgotten once the transaction is committed.
        let mut dropped: Vec<Removed> = Vec::new();
        // What this round adds, on top of what is stored.
        let mut round = Depth::default();
        for (entries, _) in appends.iter_mut() {
            let limits = Limits {
                queue: settings,
                streams,
                disk: disk.as_ref(),
            };
            match make_room(&mut tx, depth, &round, stats, limits, entries, &mut dropped).await? {
                Err(e) => planned.push(Planned::Refused(e)),
                Ok(keep) => {
                    let before = batch.len();
                    for (entry, keep) in std::mem::take(entries).into_iter().zip(keep) {
                        if keep {
                            round.add(&entry.stream, 1, entry_bytes(&entry));
                            batch.push(entry);
                        }
                    }
                    planned.push(Planned::Stored(batch.len() - before));
                }
            }
        }
        let mut ids = store::insert(&mut tx, &batch, wall_ms, queue_ms)
            .await?
            .into_iter();
        tx.commit().await?;
        if let Some(disk) = &disk {
            disk.report(settings.when_full);
        }
        for entry in &batch {
            depth.add(&entry.stream, 1, entry_bytes(entry));
        }
        // A message in a higher lane than the cursor's goes before it: lease from the start.
        if batch
            .iter()
            .any(|e| self.cursor.is_some_and(|(p, _)| e.priority as i64 > p))
        {
            self.cursor = None;
        }
        stats.appended_total += batch.len() as u64;
        self.forget(&dropped);
        if !batch.is_empty() {
            // A permit is kept if nobody waits now: the next waiter returns at once.
            self.stored.notify_one();
        }
        Ok(planned
            .into_iter()
            .map(|p| match p {
                Planned::Stored(n) => Planned::Ids(ids.by_ref().take(n).collect()),
                other => other,
            })
            .collect())
    }

    async fn read(&mut self, op: Op) {
        match op {
            Op::Lease(max, reply) => {
                let result = self.next(max, true).await;
                let _ = reply.send(result);
            }
            Op::Peek(max, reply) => {
                let result = self.next(max, false).await;
                let _ = reply.send(result);
            }
            Op::Stats(reply) => {
                let result = self.current_stats().await;
                let _ = reply.send(result);
            }
            Op::Purge(reply) => {
                let result = self.purge().await;
                let _ = reply.send(result);
            }
            Op::Append(..) | Op::Ack(..) | Op::Nack(..) | Op::Close(_) => {
                unreachable!("writes are sorted out by take()")
            }
        }
    }

    /// Rows deleted by a limit or by age are neither leased nor waiting for deletion any more.
    fn forget(&mut self, removed: &[Removed]) {
        for r in removed {
            self.leased.remove(&r.id);
            self.delivered.remove(&r.id);
        }
    }

    async fn next(&mut self, max: usize, lease: bool) -> Result<Vec<Leased>, QueueError> {
        let rows = match self.cursor.filter(|_| lease) {
            // Everything before the cursor is leased: start after it.
            Some(after) => {
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                store::select_after(&mut self.conn, after, limit).await
            }
            // Leased rows are skipped in memory; asking for that many more keeps it one query.
            None => {
                let skip = self.delivered.len() + if lease { self.leased.len() } else { 0 };
                let limit = i64::try_from(max.saturating_add(skip)).unwrap_or(i64::MAX);
                store::select_next(&mut self.conn, limit).await
            }
        }
        .map_err(|e| self.db_error(e))?;
        let mut out = Vec::with_capacity(max.min(rows.len()));
        for row in rows {
            if out.len() == max {
                break;
            }
            if self.delivered.contains(&row.id) || (lease && !self.leased.insert(row.id)) {
                continue;
            }
            out.push(row);
        }
        // A cursor is only worth what its invariant is: after a scan from the start it holds
        // only when nothing else was leased (a row leased earlier may lie after this lease's
        // last one); after the cursor it holds by induction.
        let from_cursor = self.cursor.is_some();
        if let Some(last) = out.last().filter(|_| lease)
            && (from_cursor || (self.leased.len() == out.len() && self.delivered.is_empty()))
        {
            self.cursor = Some((last.priority as i64, last.id));
        }
        Ok(out)
    }

    async fn current_stats(&mut self) -> Result<Stats, QueueError> {
        let oldest = store::oldest_queue_ms(&mut self.conn)
            .await
            .map_err(|e| self.db_error(e))?;
        let mut stats = self.stats.clone();
        stats.messages = self.depth.messages;
        stats.bytes = self.depth.bytes;
        stats.streams = self
            .depth
            .streams
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        stats.leased = self.leased.len() as u64;
        // Delivered and not deleted yet: gone as far as anyone asking is concerned. (Bytes and
        // per-stream counts follow at the deletion, within seconds.)
        stats.messages = stats.messages.saturating_sub(self.delivered.len() as u64);
        stats.oldest_age = oldest.map(|ms| self.age(ms));
        Ok(stats)
    }

    async fn purge(&mut self) -> Result<u64, QueueError> {
        let removed = sqlx::query("DELETE FROM messages")
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        self.depth = Depth::default();
        self.leased.clear();
        self.delivered.clear();
        self.cursor = None;
        self.last_write = Some(std::time::Instant::now());
        self.unchecked_writes = true;
        let _ = store::reclaim(&mut self.conn).await;
        Ok(removed)
    }

    /// Queue time, age expiry and, once writes pause, space reclaim and a checkpoint. Writes
    /// nothing when there is nothing to do: an idle gateway does not wear its SD card.
    async fn maintain(&mut self) {
        self.tend_clock().await;
        let oldest = store::oldest_queue_ms(&mut self.conn).await.ok().flatten();
        if let (Some(max_age), Some(oldest)) = (self.settings.max_age, oldest) {
            let cutoff = self
                .clock
                .now_ms()
                .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
            if oldest < cutoff {
                self.expire(cutoff, max_age).await;
            }
        }
        let oldest = store::oldest_queue_ms(&mut self.conn).await.ok().flatten();
        let age = oldest.map_or(Duration::ZERO, |ms| self.age(ms));
        metrics::gauge!(fieldlink_core::metrics::QUEUE_OLDEST_AGE_SECONDS).set(age.as_secs_f64());

        // Under a steady load free pages are reused by the next inserts and SQLite's own
        // checkpoints fold the WAL in: giving pages back and checkpointing between bursts
        // would only rewrite them. Once writes pause, do both, so that what was drained
        // leaves the disk too.
        let quiet = self.last_write.is_none_or(|at| at.elapsed() >= QUIET_AFTER);
        if quiet && std::mem::take(&mut self.unchecked_writes) {
            if let Err(e) = store::reclaim(&mut self.conn).await {
                tracing::warn!(error = %e, "Queue space reclaim failed");
            }
            if let Err(e) = store::checkpoint(&mut self.conn).await {
                tracing::warn!(error = %e, "Queue checkpoint failed");
                self.unchecked_writes = true;
            }
        }
    }

    /// Deletes (and counts) what has been queued longer than `max_age`.
    async fn expire(&mut self, cutoff: i64, max_age: Duration) {
        loop {
            match store::delete_expired(&mut self.conn, cutoff).await {
                Ok(removed) if removed.is_empty() => break,
                Ok(removed) => {
                    tracing::warn!(
                        count = removed.len(),
                        ?max_age,
                        "Dropped messages held in the queue longer than queue.max_age"
                    );
                    *self.stats.dropped_total.entry("age").or_default() += removed.len() as u64;
                    self.depth.remove(&removed);
                    self.forget(&removed);
                    self.last_write = Some(std::time::Instant::now());
                    self.unchecked_writes = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "Queue age expiry failed");
                    break;
                }
            }
        }
    }

    /// Hands the change since the last export to the metrics facade.
    fn export(&mut self) {
        use fieldlink_core::metrics as m;
        let (stats, done) = (&self.stats, &mut self.exported);
        metrics::counter!(m::QUEUE_APPENDED_TOTAL).increment(stats.appended_total - done.appended);
        metrics::counter!(m::QUEUE_ACKED_TOTAL).increment(stats.acked_total - done.acked);
        done.appended = stats.appended_total;
        done.acked = stats.acked_total;
        for (now, before, name) in [
            (
                &stats.dropped_total,
                &mut done.dropped,
                m::QUEUE_DROPPED_TOTAL,
            ),
            (
                &stats.refused_total,
                &mut done.refused,
                m::QUEUE_REFUSED_TOTAL,
            ),
        ] {
            for (reason, n) in now {
                let seen = before.entry(reason).or_default();
                metrics::counter!(name, "reason" => *reason).increment(n - *seen);
                *seen = *n;
            }
        }
        for (stream, depth) in &self.depth.streams {
            metrics::gauge!(m::QUEUE_DEPTH_MESSAGES, "stream" => stream.clone())
                .set(depth.messages as f64);
            metrics::gauge!(m::QUEUE_DEPTH_BYTES, "stream" => stream.clone())
                .set(depth.bytes as f64);
            done.streams.insert(stream.clone());
        }
        // A drained stream leaves the depth map: its gauges go to zero.
        let depth = &self.depth;
        done.streams.retain(|stream| {
            let held = depth.streams.contains_key(stream);
            if !held {
                metrics::gauge!(m::QUEUE_DEPTH_MESSAGES, "stream" => stream.clone()).set(0.0);
                metrics::gauge!(m::QUEUE_DEPTH_BYTES, "stream" => stream.clone()).set(0.0);
            }
            held
        });
    }

    /// How long a message appended at queue time `queue_ms` has been held.
    fn age(&self, queue_ms: i64) -> Duration {
        Duration::from_millis(
            u64::try_from(self.clock.now_ms().saturating_sub(queue_ms)).unwrap_or(0),
        )
    }

    /// Looks at the wall clock's state (time switched off is added once it is synchronized)
    /// and saves the queue clock when it is due.
    async fn tend_clock(&mut self) {
        let was = self.clock.synchronized();
        let synchronized = fieldlink_core::clock::synchronized();
        let added = self
            .clock
            .observe(fieldlink_core::clock::wall_ms(), synchronized);
        if synchronized != was {
            tracing::info!(synchronized, "Wall clock synchronization changed");
        }
        if !added.is_zero() {
            tracing::info!(
                off = ?added,
                "The clock is synchronized: the time the gateway was switched off counts \
                 towards the age of queued messages"
            );
        }
        if !added.is_zero() || self.clock.save_due() {
            self.save_clock().await;
        }
    }

    async fn save_clock(&mut self) {
        if let Err(e) = store::save_clock(&mut self.conn, self.clock.snapshot_for_save()).await {
            tracing::warn!(error = %e, "Queue clock could not be saved");
        }
    }

    fn db_error(&self, source: sqlx::Error) -> QueueError {
        QueueError::Database {
            path: self.path.clone(),
            source,
        }
    }
}

/// The limits that apply to an append.
#[derive(Clone, Copy)]
struct Limits<'a> {
    queue: &'a QueueSettings,
    streams: &'a HashMap<String, StreamLimits>,
    /// The file system's room, when this round appends anything.
    disk: Option<&'a DiskRoom>,
}

/// The file system's room for messages, as a ceiling on the bytes held (see [`disk_room`]).
struct DiskRoom {
    path: PathBuf,
    available: u64,
    reserve: u64,
    /// Bytes of messages the queue may hold before the file system's free space would fall
    /// below the reserve.
    cap: u64,
    /// Whether an append of this round met that ceiling.
    hit: std::sync::atomic::AtomicBool,
}

impl DiskRoom {
    fn alarm_key(&self) -> String {
        format!("queue-disk:{}", self.path.display())
    }

    /// Raises the alarm (logged once) when this round met the ceiling, clears it otherwise.
    fn report(&self, policy: FullPolicy) {
        let key = self.alarm_key();
        if !self.hit.load(std::sync::atomic::Ordering::Relaxed) {
            if fieldlink_core::alarms::clear(&key) {
                tracing::info!(path = %self.path.display(), "The queue has room on disk again");
            }
            return;
        }
        let effect = match policy {
            FullPolicy::Reject => "new messages are refused (when_full = \"reject\")",
            FullPolicy::DropOldest => {
                "the oldest messages make way for new ones (when_full = \"drop_oldest\")"
            }
            FullPolicy::DropNewest => "new messages are dropped (when_full = \"drop_newest\")",
        };
        let text = format!(
            "The file system of the queue {} is full: {} MB free, queue.disk_reserve is {} MB; \
             {effect}. Free disk space or lower queue.max_bytes",
            self.path.display(),
            self.available / 1_000_000,
            self.reserve / 1_000_000,
        );
        if fieldlink_core::alarms::raise(&key, text.clone()) {
            tracing::warn!("{text}");
        }
    }
}

/// What a byte of message costs on disk before the file says (rows, two indexes, pages not
/// quite full): about three, measured with 1 KiB pages and sensor-sized rows.
const DEFAULT_DISK_COST: f64 = 3.0;

/// Bytes of messages (as the queue counts them) that still fit above the reserve: the free
/// space of the file system plus the free pages inside the file, over what a message byte
/// costs on disk (from the file itself once it holds enough to say).
fn disk_room(available: u64, reserve: u64, file: store::FileSpace, held: u64) -> u64 {
    let room = available.saturating_add(file.free).saturating_sub(reserve);
    let cost = if held >= 64 * 1024 {
        (file.used as f64 / held as f64).clamp(1.0, 16.0)
    } else {
        DEFAULT_DISK_COST
    };
    (room as f64 / cost) as u64
}

/// Applies the limits to one append request: `Err` refuses it whole; `Ok` says which of
/// its entries to store (drop-newest may leave some out; drop-oldest deletes old rows).
async fn make_room(
    conn: &mut SqliteConnection,
    depth: &mut Depth,
    round: &Depth,
    stats: &mut Stats,
    limits: Limits<'_>,
    entries: &[OutboxEntry],
    dropped: &mut Vec<Removed>,
) -> Result<Result<Vec<bool>, QueueError>, sqlx::Error> {
    let mut keep = vec![true; entries.len()];
    // This request's earlier entries; with the round's and what is stored, what is held.
    let mut pending = Depth::default();
    let held = |depth: &Depth, pending: &Depth, scope: Option<&str>| {
        let (d, r, p) = (depth.held(scope), round.held(scope), pending.held(scope));
        StreamStats {
            messages: d.messages + r.messages + p.messages,
            bytes: d.bytes + r.bytes + p.bytes,
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let bytes = entry_bytes(entry);
        let stream_limits = limits
            .streams
            .get(&entry.stream)
            .copied()
            .unwrap_or_default();
        let stream_policy = stream_limits.when_full.unwrap_or(limits.queue.when_full);
        loop {
            let stream = held(depth, &pending, Some(&entry.stream));
            let all = held(depth, &pending, None);
            let stream_over = stream_limits
                .max_messages
                .is_some_and(|m| stream.messages + 1 > m)
                || stream_limits
                    .max_bytes
                    .is_some_and(|m| stream.bytes + bytes > m);
            let global_over = all.messages + 1 > limits.queue.max_messages
                || all.bytes + bytes > limits.queue.max_bytes;
            let disk_over = limits.disk.is_some_and(|d| all.bytes + bytes > d.cap);
            if let (true, Some(disk)) = (disk_over, limits.disk) {
                disk.hit.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let (policy, scope, max_messages) = match (stream_over, global_over, disk_over) {
                (false, false, false) => break,
                (true, _, _) => (
                    stream_policy,
                    Some(entry.stream.as_str()),
                    stream_limits.max_messages,
                ),
                (false, true, _) => (
                    limits.queue.when_full,
                    None,
                    Some(limits.queue.max_messages),
                ),
                // The disk is a byte limit on the whole queue, under the queue's policy.
                (false, false, true) => (limits.queue.when_full, None, None),
            };
            match policy {
                FullPolicy::Reject => {
                    let (reason, full) = match (disk_over && !global_over, scope, limits.disk) {
                        (true, None, Some(disk)) => (
                            "disk_reserve",
                            Full::DiskReserve {
                                path: disk.path.clone(),
                                available: disk.available,
                                reserve: disk.reserve,
                            },
                        ),
                        (_, Some(s), _) => ("full", Full::Stream(s.to_owned())),
                        _ => ("full", Full::Queue),
                    };
                    *stats.refused_total.entry(reason).or_default() += entries.len() as u64;
                    return Ok(Err(QueueError::Full(full)));
                }
                FullPolicy::DropNewest => {
                    keep[i] = false;
                    *stats.dropped_total.entry("drop_newest").or_default() += 1;
                    break;
                }
                FullPolicy::DropOldest => {
                    // Exactly the rows a message-count limit needs; for a byte limit one at a
                    // time, since a row's size is known only once it is deleted.
                    let messages = held(depth, &pending, scope).messages;
                    let excess =
                        max_messages.map_or(1, |max| (messages + 1).saturating_sub(max).max(1));
                    let removed =
                        store::delete_oldest(conn, scope, i64::try_from(excess).unwrap_or(1))
                            .await?;
                    if removed.is_empty() {
                        // Nothing stored is left to drop: the entry itself cannot fit.
                        keep[i] = false;
                        *stats.dropped_total.entry("drop_oldest").or_default() += 1;
                        break;
                    }
                    *stats.dropped_total.entry("drop_oldest").or_default() += removed.len() as u64;
                    depth.remove(&removed);
                    dropped.extend(removed);
                }
            }
        }
        if keep[i] {
            pending.add(&entry.stream, 1, bytes);
        }
    }
    Ok(Ok(keep))
}

/// The queue clock, continued from the database: its saved row, the newest message, and the
/// wall clock's state now. Rows without a queue time are given this moment's.
async fn resume_clock(conn: &mut SqliteConnection) -> Result<QueueClock, sqlx::Error> {
    let saved = store::load_clock(conn).await?;
    let newest = store::newest_queue_ms(conn).await?;
    let mut clock = QueueClock::resume(saved, newest);
    clock.observe(
        fieldlink_core::clock::wall_ms(),
        fieldlink_core::clock::synchronized(),
    );
    let stamped = store::stamp_unclocked(conn, clock.now_ms()).await?;
    if stamped > 0 {
        tracing::info!(
            messages = stamped,
            "Queued messages written by an earlier release: their age counts from now"
        );
    }
    store::save_clock(conn, clock.snapshot_for_save()).await?;
    Ok(clock)
}

/// sqlx errors are not `Clone`; every waiter of a failed round gets the same words.
fn clone_err(e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(e.to_string())
}

/// SQLITE_FULL (13), with or without an extended code.
fn is_disk_full(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 13)
}
