//! The writer task: the one connection to SQLite, group commit, leases, deletions, expiry and
//! the queue clock.

use std::collections::{HashMap, HashSet};
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
use crate::store::{self, Removed, entry_bytes};
use crate::{DiskSpace, QueueError};

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
    /// Deleting them costs a commit's pages, so it is done for many at once.
    pub(super) delivered: HashSet<i64>,
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
        let removed = sqlx::query("DELETE FROM messages")
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.db_error(e))?
            .rows_affected();
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

/// SQLITE_FULL (13), with or without an extended code.
fn is_disk_full(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 13)
}
