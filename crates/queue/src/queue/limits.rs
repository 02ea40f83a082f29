//! The queue's limits on an append: what a full queue or stream refuses, drops or makes room
//! for, per policy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use fieldlink_core::ports::OutboxEntry;
use sqlx::SqliteConnection;

use super::{Depth, Stats, StreamStats};
use crate::config::{FullPolicy, QueueSettings, StreamLimits};
use crate::store::{self, Removed, entry_bytes};
use crate::{Full, QueueError};

/// The limits that apply to an append.
#[derive(Clone, Copy)]
pub(super) struct Limits<'a> {
    pub(super) queue: &'a QueueSettings,
    pub(super) streams: &'a HashMap<String, StreamLimits>,
    /// The file system's room, when this round appends anything.
    pub(super) disk: Option<&'a DiskRoom>,
}

/// The file system's room for messages, as a ceiling on the bytes held (see [`disk_room`]).
pub(super) struct DiskRoom {
    pub(super) path: PathBuf,
    /// The file system's free space, as it says.
    pub(super) available: u64,
    /// `queue.disk_reserve`.
    pub(super) reserve: u64,
    /// Kept free above the reserve for the commit journal's next fold (0 without a journal).
    pub(super) headroom: u64,
    /// Bytes of messages the queue may hold before the file system's free space would fall
    /// below the reserve.
    pub(super) cap: u64,
    /// Whether an append of this round met that ceiling.
    pub(super) hit: AtomicBool,
}

impl DiskRoom {
    fn alarm_key(&self) -> String {
        format!("queue-disk:{}", self.path.display())
    }

    /// Raises the alarm (logged once) when this round met the ceiling, clears it otherwise.
    pub(super) fn report(&self, policy: FullPolicy) {
        let key = self.alarm_key();
        if !self.hit.load(Ordering::Relaxed) {
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
            "The file system of the queue {} is full: {} MB free, queue.disk_reserve is {} MB{}; \
             {effect}. Free disk space or lower queue.max_bytes",
            self.path.display(),
            self.available / 1_000_000,
            self.reserve / 1_000_000,
            if self.headroom == 0 {
                String::new()
            } else {
                format!(
                    " and {} MB more stay free for the queue's own commits",
                    self.headroom / 1_000_000
                )
            },
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
pub(super) fn disk_room(available: u64, reserve: u64, file: store::FileSpace, held: u64) -> u64 {
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
pub(super) async fn make_room(
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
                disk.hit.store(true, Ordering::Relaxed);
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
