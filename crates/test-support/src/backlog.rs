//! [`MemoryBacklog`]: the [`Backlog`] contract kept in memory, for tests of the uplink without
//! the SQLite queue (domain crates do not depend on one another, not even for tests). The real
//! queue behind the real uplink is tested end to end in `crates/fieldlink`.
//!
//! The contract, as `fieldlink-queue` keeps it: monotonic ids never reused; leases in delivery
//! order (higher priority first, then by id); a leased message is not handed out again until
//! nacked; a nacked one comes back in its original place; an acked one is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fieldlink_core::message::Priority;
use fieldlink_core::ports::{
    Backlog, BacklogError, BoxFuture, Outbox, OutboxEntry, OutboxError, StoredMessage,
};
use tokio::sync::Notify;

/// An in-memory backlog; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryBacklog {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    stored: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: i64,
    /// Keyed by delivery order: priority (highest first), then id.
    held: BTreeMap<(std::cmp::Reverse<Priority>, i64), Held>,
}

#[derive(Debug)]
struct Held {
    message: StoredMessage,
    leased: bool,
}

/// Depth of a [`MemoryBacklog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogStats {
    /// Messages held, leased or not.
    pub messages: u64,
    /// Messages leased and neither acked nor nacked.
    pub leased: u64,
}

impl MemoryBacklog {
    /// An empty backlog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `entries` (as the queue's `append` does); returns their ids.
    pub async fn append(&self, entries: Vec<OutboxEntry>) -> Result<Vec<i64>, OutboxError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let ids = {
            let mut state = self.state();
            let mut ids = Vec::with_capacity(entries.len());
            for entry in entries {
                state.next_id += 1;
                let id = state.next_id;
                let message = StoredMessage {
                    id,
                    stream: entry.stream,
                    priority: entry.priority,
                    message: entry.message,
                    properties: entry.properties,
                    enqueued_ms: now_ms,
                };
                let key = (std::cmp::Reverse(message.priority), id);
                state.held.insert(
                    key,
                    Held {
                        message,
                        leased: false,
                    },
                );
                ids.push(id);
            }
            ids
        };
        self.inner.stored.notify_one();
        Ok(ids)
    }

    /// The first `max` messages in delivery order, leased or not, without leasing them.
    pub async fn peek(&self, max: usize) -> Result<Vec<StoredMessage>, BacklogError> {
        let state = self.state();
        Ok(state
            .held
            .values()
            .take(max)
            .map(|h| h.message.clone())
            .collect())
    }

    /// How many messages are held, and how many of them are leased.
    pub async fn stats(&self) -> Result<BacklogStats, BacklogError> {
        let state = self.state();
        Ok(BacklogStats {
            messages: state.held.len() as u64,
            leased: state.held.values().filter(|h| h.leased).count() as u64,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_leased(&self, ids: &[i64], leased: bool) {
        let mut state = self.state();
        for held in state.held.values_mut() {
            if ids.contains(&held.message.id) {
                held.leased = leased;
            }
        }
    }
}

impl Backlog for MemoryBacklog {
    fn lease(&self, max: usize) -> BoxFuture<'_, Result<Vec<StoredMessage>, BacklogError>> {
        let leased = {
            let mut state = self.state();
            state
                .held
                .values_mut()
                .filter(|h| !h.leased)
                .take(max)
                .map(|h| {
                    h.leased = true;
                    h.message.clone()
                })
                .collect()
        };
        Box::pin(async move { Ok(leased) })
    }

    fn ack(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), BacklogError>> {
        self.state()
            .held
            .retain(|_, h| !ids.contains(&h.message.id));
        Box::pin(async { Ok(()) })
    }

    fn nack(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), BacklogError>> {
        self.set_leased(&ids, false);
        Box::pin(async { Ok(()) })
    }

    fn stored(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.stored.notified())
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64, BacklogError>> {
        let depth = self.state().held.len() as u64;
        Box::pin(async move { Ok(depth) })
    }
}

impl Outbox for MemoryBacklog {
    fn append(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), OutboxError>> {
        Box::pin(async move { MemoryBacklog::append(self, entries).await.map(drop) })
    }
}

#[cfg(test)]
mod tests {
    use fieldlink_core::message::{Message, QoS};
    use fieldlink_core::topic::TopicName;

    use super::*;

    fn entry(n: u8, priority: Priority) -> OutboxEntry {
        OutboxEntry {
            stream: "s".into(),
            priority,
            message: Message {
                topic: TopicName::new("t").unwrap(),
                payload: vec![n],
                qos: QoS::AtLeastOnce,
                retain: false,
            },
            properties: None,
        }
    }

    fn payloads(leased: &[StoredMessage]) -> Vec<u8> {
        leased.iter().map(|m| m.message.payload[0]).collect()
    }

    #[tokio::test]
    async fn leases_follow_priority_then_id_and_nacks_come_back_in_place() {
        let backlog = MemoryBacklog::new();
        backlog
            .append(vec![
                entry(1, Priority::Normal),
                entry(2, Priority::High),
                entry(3, Priority::Normal),
            ])
            .await
            .unwrap();
        let first = backlog.lease(2).await.unwrap();
        assert_eq!(payloads(&first), [2, 1]);
        assert_eq!(payloads(&backlog.lease(10).await.unwrap()), [3]);
        backlog.nack(vec![first[1].id]).await.unwrap();
        backlog.ack(vec![first[0].id]).await.unwrap();
        assert_eq!(payloads(&backlog.lease(10).await.unwrap()), [1]);
        let stats = backlog.stats().await.unwrap();
        assert_eq!((stats.messages, stats.leased), (2, 2));
        let next = backlog.append(vec![entry(4, Priority::Low)]).await.unwrap();
        assert!(next[0] > first[0].id, "ids are never reused");
    }
}
