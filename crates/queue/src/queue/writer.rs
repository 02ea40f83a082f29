//! The writer task: the one connection to SQLite, group commit, leases, deletions, expiry and
//! the queue clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldlink_core::ports::OutboxEntry;
use sqlx::{Connection as _, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use super::lease::Lessor;
use super::limits::{DiskRoom, Limits, disk_room, make_room};
use super::telemetry::Exported;
use super::{AppendReply, AppendRequest, Depth, Leased, Op, REQUEST_CAPACITY, Stats};
use crate::clock::QueueClock;
use crate::config::{QueueSettings, StreamLimits};
use crate::journal::{self, Journal};
use crate::store::{self, Removed, entry_bytes};
use crate::{DiskSpace, QueueError};

/// Messages (appended or acknowledged) that are committed at once rather than wait for the
/// commit interval: bounds the memory pending writes hold.
const MAX_PENDING_MESSAGES: usize = 10_000;
/// Delivered messages with no append to ride along with are deleted this long after (or when
/// [`MAX_PENDING_MESSAGES`] wait). A crash before the next journal commit or fold sends them
/// again: at least once, recognisable by id.
const DELETE_EVERY: Duration = Duration::from_secs(1);
/// Free pages are given back and the WAL folded into the file once writes have paused this
/// long, not between every burst of a steady trickle.
const QUIET_AFTER: Duration = Duration::from_secs(5);
/// How often age expiry and space reclaim run.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// The open transaction is committed (one fsync, and the journal starts over) at least this
/// often. Longer folds write a page changed by many commits once, and most messages are
/// delivered and deleted before their fold, so they never reach the database file at all;
/// other processes reading the queue (`fieldlink queue stats`) see it this late at most.
const FOLD_EVERY: Duration = Duration::from_secs(5);
/// ... and once the rows inserted and deleted since the last fold come to this many bytes
/// (with [`ROW_OVERHEAD`] each): what a fold writes to the WAL stays well within the WAL's
/// working size (written at open, so a fold never needs new disk space) and within SQLite's
/// page cache (`store.rs`, `cache_size`), so pages are never spilled one at a time. A drain
/// of a backlog folds a few times a second.
const FOLD_BYTES: u64 = 1 << 20;
/// What a row costs beyond its bytes: its header and two index entries, about.
const ROW_OVERHEAD: u64 = 64;
/// Delivered messages deleted in one round at most, so that one round stays within a fold.
const MAX_DELETE_PER_ROUND: usize = 2_000;
/// Disk space kept free above `disk_reserve` when the journal is used: a fold can take a few
/// MiB of WAL beyond the WAL's working size (rows with overflow pages, a checkpoint not yet
/// due), and a fold that finds the disk full fails whole.
const FOLD_HEADROOM: u64 = 4 << 20;

pub(super) struct Writer {
    pub(super) stored: Arc<tokio::sync::Notify>,
    pub(super) conn: SqliteConnection,
    pub(super) path: PathBuf,
    pub(super) settings: QueueSettings,
    pub(super) streams: HashMap<String, StreamLimits>,
    pub(super) disk: Arc<dyn DiskSpace>,
    pub(super) depth: Depth,
    pub(super) leased: HashSet<i64>,
    /// Acknowledged by the cloud and not deleted yet: never leased, peeked or counted again.
    /// Deleting them costs a commit's pages, so it is done for many at once, oldest first
    /// (ordered): consecutive ids are deleted by range and touch few pages, where a random
    /// pick of them touched a page or two each, written again at every fold.
    pub(super) delivered: BTreeSet<i64>,
    /// When delivered messages were last deleted.
    pub(super) last_delete: Option<std::time::Instant>,
    /// Queue time, which ages are measured in (see `clock.rs`).
    pub(super) clock: QueueClock,
    /// Per stream, the last row known leased or delivered with every row of the stream before
    /// it: the next lease reads after it (see `lease.rs`). Forgotten at a nack and a purge.
    pub(super) cursors: HashMap<String, i64>,
    pub(super) stats: Stats,
    /// Writes since the last checkpoint.
    pub(super) unchecked_writes: bool,
    /// When the last commit (of anything) and the last write were made.
    pub(super) last_commit: Option<std::time::Instant>,
    pub(super) last_write: Option<std::time::Instant>,
    /// What was last handed to the metrics facade.
    pub(super) exported: Exported,
    /// What makes each commit durable until the next fold (see `journal.rs`).
    pub(super) journal: Journal,
    /// When the open SQLite transaction (everything since the last fold) began; `None`
    /// when none is open.
    pub(super) tx_began: Option<std::time::Instant>,
    /// Ids deleted in the open transaction that no journal commit names yet: they go with
    /// the next one (a crash before it sends them again: at least once).
    pub(super) unjournaled: Vec<i64>,
    /// The open transaction was lost to an error: the database is rebuilt from the journal
    /// before anything else is done.
    pub(super) broken: bool,
    /// Each round is a SQLite commit of its own and the journal is not written: on a disk
    /// short of room above the reserve at open, where the WAL of a fold could not be given
    /// its room in advance (`Queue::open`). Correct, but it wears the card as before.
    pub(super) direct: bool,
    /// Bytes of rows inserted or deleted since the last fold (see [`FOLD_BYTES`]).
    pub(super) changed: u64,
}

/// Writes waiting for their commit.
#[derive(Default)]
pub(super) struct Pending {
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
pub(super) enum Planned {
    /// Refused whole.
    Refused(QueueError),
    /// This many of its entries are in the round's insert (before the commit).
    Stored(usize),
    /// Committed, with these ids (after the commit).
    Ids(Vec<i64>),
}

impl Writer {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
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
        self.heal().await;
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
                    // They are before the cursors again.
                    self.cursors.clear();
                    let _ = reply.send(());
                }
                // Delivered rows are skipped until they are deleted; uncommitted appends
                // are not there yet.
                Op::Lease(..) | Op::Peek(..) | Op::Stats(_) => self.read(op).await,
                Op::Purge(_) => {
                    self.commit(pending).await;
                    self.read(op).await;
                }
                Op::Ping(reply) => {
                    let _ = reply.send(());
                }
                #[cfg(feature = "fault-injection")]
                Op::Crash => panic!("fault injected into the queue writer"),
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
        // Deleting costs no write of its own (the open transaction's pages are in memory):
        // every round deletes what was delivered, oldest first, and its journal commit
        // records it.
        let delete: Vec<i64> = self
            .delivered
            .iter()
            .copied()
            .take(MAX_DELETE_PER_ROUND)
            .collect();
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
        self.heal().await;
        self.save_clock().await;
        if let Err(e) = self.fold().await {
            tracing::error!(error = %e, "Queue fold at close failed: the next start applies the journal");
        }
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

    /// One round in the open transaction (within a savepoint, undone whole if it fails):
    /// acks first, then every append's limits (which may delete old rows), then one
    /// multi-row insert of everything kept; then the journal commit that makes it durable.
    async fn write_transaction(
        &mut self,
        appends: &mut [AppendRequest],
        delete: &[i64],
    ) -> Result<Vec<Planned>, sqlx::Error> {
        self.make_journal_room(appends, delete).await?;
        self.begin().await?;
        store::control(&mut self.conn, "SAVEPOINT round").await?;
        match self.round(appends, delete).await {
            Ok(planned) => {
                store::control(&mut self.conn, "RELEASE round").await?;
                if self.direct || self.changed >= FOLD_BYTES {
                    self.fold().await?;
                }
                Ok(planned)
            }
            Err(e) => {
                let undone = match store::control(&mut self.conn, "ROLLBACK TO round").await {
                    Ok(()) => store::control(&mut self.conn, "RELEASE round").await,
                    Err(e) => Err(e),
                };
                if undone.is_err() {
                    // SQLite ended the transaction itself (a full disk or an I/O error can):
                    // what it held since the fold is rebuilt from the journal.
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    async fn round(
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
        let headroom = if self.direct { 0 } else { FOLD_HEADROOM };
        let Self {
            conn,
            depth,
            stats,
            settings,
            streams,
            path,
            ..
        } = self;
        let mut deleted = 0;
        if !delete.is_empty() {
            let removed = store::delete_ids(conn, delete).await?;
            depth.remove_counted(&removed);
            deleted = removed
                .iter()
                .map(|r| r.bytes + r.messages * ROW_OVERHEAD)
                .sum();
        }
        // What the file system can still take above the reserve, as a ceiling on the bytes of
        // messages held: the queue's policy applies to it like to max_bytes.
        let disk = if appends.is_empty() {
            None
        } else {
            let file = store::file_space(conn).await?;
            Some(DiskRoom {
                path: path.clone(),
                available,
                reserve: settings.disk_reserve,
                headroom,
                cap: depth.bytes.saturating_add(disk_room(
                    available,
                    settings.disk_reserve.saturating_add(headroom),
                    file,
                    depth.bytes,
                )),
                hit: std::sync::atomic::AtomicBool::new(false),
            })
        };
        let mut planned = Vec::with_capacity(appends.len());
        let mut batch: Vec<OutboxEntry> = Vec::new();
        // Rows that drop-oldest deleted: forgotten once the round is durable.
        let mut dropped: Vec<Removed> = Vec::new();
        // What this round adds, on top of what is stored.
        let mut round = Depth::default();
        for (entries, _) in appends.iter_mut() {
            let limits = Limits {
                queue: settings,
                streams,
                disk: disk.as_ref(),
            };
            match make_room(conn, depth, &round, stats, limits, entries, &mut dropped).await? {
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
        let ids = store::insert(conn, &batch, wall_ms, queue_ms).await?;
        self.changed += deleted
            + batch
                .iter()
                .map(|e| entry_bytes(e) + ROW_OVERHEAD)
                .sum::<u64>()
            + dropped.iter().map(|r| r.bytes + ROW_OVERHEAD).sum::<u64>();
        self.unjournaled.extend_from_slice(delete);
        self.unjournaled.extend(dropped.iter().map(|r| r.id));
        if !batch.is_empty() && !self.direct {
            // The round is durable once its journal commit is: then producers are answered.
            let messages: Vec<(i64, &OutboxEntry)> = ids.iter().copied().zip(&batch).collect();
            let removed = store::ranges_of(&self.unjournaled);
            self.journal
                .append(wall_ms, queue_ms, &messages, &removed)
                .await
                .map_err(sqlx::Error::Io)?;
            self.unjournaled.clear();
        }
        if let Some(disk) = &disk {
            disk.report(self.settings.when_full);
        }
        for entry in &batch {
            self.depth.add(&entry.stream, 1, entry_bytes(entry));
        }
        self.stats.appended_total += batch.len() as u64;
        self.forget(&dropped);
        if !batch.is_empty() {
            // A permit is kept if nobody waits now: the next waiter returns at once.
            self.stored.notify_one();
        }
        let mut ids = ids.into_iter();
        Ok(planned
            .into_iter()
            .map(|p| match p {
                Planned::Stored(n) => Planned::Ids(ids.by_ref().take(n).collect()),
                other => other,
            })
            .collect())
    }

    /// Folds first when this round's journal commit would not fit in the journal's working
    /// size (a commit that does not fit after a fold either grows the file).
    async fn make_journal_room(
        &mut self,
        appends: &[AppendRequest],
        delete: &[i64],
    ) -> Result<(), sqlx::Error> {
        let entries = appends.iter().map(|(e, _)| e.len()).sum();
        let bytes = appends
            .iter()
            .flat_map(|(e, _)| e)
            .map(|e| entry_bytes(e) + e.stream.len() as u64)
            .sum();
        let estimate = journal::estimate(entries, bytes, delete.len() + self.unjournaled.len());
        if self.journal.holds_commits() && !self.journal.has_room_for(estimate) {
            self.fold().await?;
        }
        Ok(())
    }

    /// Opens the transaction that holds everything until the next fold.
    async fn begin(&mut self) -> Result<(), sqlx::Error> {
        if self.tx_began.is_none() {
            store::control(&mut self.conn, "BEGIN IMMEDIATE").await?;
            self.tx_began = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Commits the open transaction (with `synchronous=FULL`, one fsync of the WAL), saying in
    /// it that the journal's commits are in, then starts the journal over.
    async fn fold(&mut self) -> Result<(), sqlx::Error> {
        if self.tx_began.is_none() {
            return Ok(());
        }
        let generation = self.journal.generation();
        let committed = match store::set_folded_generation(&mut self.conn, generation).await {
            Ok(()) => store::control(&mut self.conn, "COMMIT").await,
            Err(e) => Err(e),
        };
        if let Err(e) = committed {
            self.broken = true;
            return Err(e);
        }
        self.tx_began = None;
        self.unjournaled.clear();
        self.changed = 0;
        if !self.journal.holds_commits() {
            return Ok(());
        }
        // Should the reset fail, the journal writes it before its next commit.
        if let Err(e) = self.journal.reset().await {
            tracing::warn!(path = %self.journal.path().display(), error = %e, "Queue journal reset failed; retried before the next commit");
        }
        Ok(())
    }

    /// After the open transaction was lost: the database as of the last fold, plus the
    /// journal's commits since, again.
    async fn heal(&mut self) {
        if !self.broken {
            return;
        }
        let _ = store::control(&mut self.conn, "ROLLBACK").await;
        self.tx_began = None;
        self.unjournaled.clear();
        let found = match self.journal.reread() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(path = %self.journal.path().display(), error = %e, "Cannot read the queue journal; retried");
                return;
            }
        };
        match super::replay::apply(&mut self.conn, &self.path, &mut self.journal, found).await {
            Ok(replayed) => {
                tracing::warn!(
                    messages = replayed.messages,
                    "The queue's open transaction was lost to an error; rebuilt from its journal"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot rebuild the queue from its journal; retried");
                return;
            }
        }
        match store::depth_by_stream(&mut self.conn).await {
            Ok(rows) => {
                self.depth = Depth::default();
                for (stream, messages, bytes) in rows {
                    self.depth.add(&stream, messages, bytes);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot count the queue after rebuilding it; retried");
                return;
            }
        }
        self.cursors.clear();
        self.broken = false;
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
            Op::Append(..) | Op::Ack(..) | Op::Nack(..) | Op::Close(_) | Op::Ping(_) => {
                unreachable!("writes are sorted out by take()")
            }
            #[cfg(feature = "fault-injection")]
            Op::Crash => unreachable!("sorted out by take()"),
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
        let Self {
            conn,
            leased,
            delivered,
            cursors,
            depth,
            ..
        } = self;
        let mut lessor = Lessor {
            conn,
            leased,
            delivered,
            cursors,
        };
        let result = lessor.next(depth.streams.keys(), max, lease).await;
        result.map_err(|e| self.db_error(e))
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
        self.begin().await.map_err(|e| self.db_error(e))?;
        let removed = sqlx::query("DELETE FROM messages")
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
        // Durable at once, and the journal (which holds some of them) starts over.
        self.fold().await.map_err(|e| self.db_error(e))?;
        self.depth = Depth::default();
        self.leased.clear();
        self.delivered.clear();
        self.cursors.clear();
        self.last_write = Some(std::time::Instant::now());
        self.unchecked_writes = true;
        let _ = store::reclaim(&mut self.conn).await;
        Ok(removed)
    }

    /// Queue time, age expiry and, once writes pause, space reclaim and a checkpoint. Writes
    /// nothing when there is nothing to do: an idle gateway does not wear its SD card.
    async fn maintain(&mut self) {
        self.heal().await;
        self.tend_clock().await;
        let oldest = store::oldest_queue_ms(&mut self.conn).await.ok().flatten();
        if let (Some(max_age), Some(oldest)) = (self.settings.max_age, oldest) {
            let cutoff = self
                .clock
                .now_ms()
                .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
            if oldest < cutoff && self.begin().await.is_ok() {
                self.expire(cutoff, max_age).await;
            }
        }
        let fold_due = self
            .tx_began
            .is_some_and(|began| began.elapsed() >= FOLD_EVERY);
        if fold_due && let Err(e) = self.fold().await {
            tracing::error!(error = %e, "Queue fold failed");
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
            // VACUUM and a checkpoint need the transaction committed.
            if let Err(e) = self.fold().await {
                tracing::error!(error = %e, "Queue fold failed");
                self.unchecked_writes = true;
                return;
            }
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

/// The queue clock, continued from the database: its saved row, the newest message, and the
/// wall clock's state now. Rows without a queue time are given this moment's.
pub(super) async fn resume_clock(conn: &mut SqliteConnection) -> Result<QueueClock, sqlx::Error> {
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
pub(super) fn clone_err(e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(e.to_string())
}

/// SQLITE_FULL (13), with or without an extended code, or ENOSPC from the journal.
fn is_disk_full(e: &sqlx::Error) -> bool {
    if let sqlx::Error::Io(io) = e {
        return io.raw_os_error() == Some(nix::libc::ENOSPC);
    }
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 13)
}
