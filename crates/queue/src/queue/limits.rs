//! The queue's limits on an append: what a full queue or stream refuses, drops or makes room
//! for, per policy.

use std::collections::HashMap;

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
            let (policy, scope, max_messages) = match (stream_over, global_over) {
                (false, false) => break,
                (true, _) => (
                    stream_policy,
                    Some(entry.stream.as_str()),
                    stream_limits.max_messages,
                ),
                (false, true) => (
                    limits.queue.when_full,
                    None,
                    Some(limits.queue.max_messages),
                ),
            };
            match policy {
                FullPolicy::Reject => {
                    *stats.refused_total.entry("full").or_default() += entries.len() as u64;
                    let full = scope.map_or(Full::Queue, |s| Full::Stream(s.to_owned()));
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
