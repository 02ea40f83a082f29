//! MQTT 5 session expiry, kept by the edge.
//!
//! rumqttd's router keeps a session that did not ask for a clean start for ever, and one that
//! did not for no time at all; it knows no Session Expiry Interval. So the edge keeps the
//! interval: when an MQTT 5 client's connection ends, its session is *stored* (the router
//! keeps it, with what it queues for the client meanwhile) until the interval passes, then
//! ended by the edge (a clean link under the session's name makes the router drop it). An
//! interval of 0 ends it at once. The client coming back in time takes it up again (Session
//! Present 1) and stops the clock.
//!
//! Bounded, and counted against the client: the interval is at most `max_session_expiry` (a
//! longer one is shortened, and the CONNACK says so); at most `max_stored_sessions` sessions
//! are stored at once, and at most `max_stored_sessions_per_identity` of one identity (all
//! anonymous clients together are one). A session past either bound is not stored: it ends
//! with its connection (counted in `fieldlink_broker_refused_total{reason="stored_sessions_full"}`).
//! What the router queues for a stored session is bounded by its per-filter logs (see `lag`).
//!
//! MQTT 3.1.1 persistent sessions are left as rumqttd keeps them.
//!
//! **A resumed session's subscription options.** rumqttd restores a resumed session's filters
//! but not their subscription ids (it keeps those with the connection), and the edge keeps
//! each MQTT 5 filter's options in its id (see `v5`). So the edge remembers every MQTT 5
//! session's filters with their ids (bounded by the filters a session can hold, for the live
//! and stored sessions) and, when the router says a session is present, subscribes them again
//! under the resumed connection: for a filter it has, the router only takes the id (no
//! retained messages sent again, nothing queued lost).
//!
//! **Races with a client coming back.** Each connection is numbered, and the store knows which
//! connection holds each session now: a connection that ends after a newer one took its
//! session up (the client came back before the edge saw the old one go) neither stores nor
//! ends it. A session being ended (its interval just passed, or it ends with its connection)
//! is marked so while the edge's clean link is on its way to the router; a client coming back
//! for it meanwhile waits for that to finish, then gets a fresh session (Session Present 0),
//! rather than being handed the old one and then taken over by the clean link.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use tokio_util::sync::CancellationToken;

use super::{EdgeContext, metric};

/// The stored sessions, by session key: each one's clock and whose share it uses.
#[derive(Default)]
pub(crate) struct Stored {
    by_key: HashMap<String, (CancellationToken, String)>,
    per_identity: HashMap<String, usize>,
    /// The connection serving each session now (bounded by the connections).
    holders: HashMap<String, u64>,
    /// Sessions whose end is on its way to the router (bounded by the stored sessions and
    /// the connections).
    ending: HashSet<String>,
}

impl Stored {
    fn remove(&mut self, key: &str) -> Option<CancellationToken> {
        let (token, identity) = self.by_key.remove(key)?;
        if let Some(count) = self.per_identity.get_mut(&identity) {
            *count -= 1;
            if *count == 0 {
                self.per_identity.remove(&identity);
            }
        }
        Some(token)
    }
}

/// The limits, from `[broker]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_expiry: Duration,
    pub(crate) max_stored: usize,
    pub(crate) max_per_identity: usize,
}

/// The interval the broker grants for `asked` seconds: at most the maximum.
pub(crate) fn granted(asked: u32, limits: &Limits) -> u32 {
    let max = u32::try_from(limits.max_expiry.as_secs()).unwrap_or(u32::MAX);
    asked.min(max)
}

fn lock(stored: &Mutex<Stored>) -> std::sync::MutexGuard<'_, Stored> {
    stored
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every MQTT 5 session's filters: filter → (internal subscription id, granted QoS asked).
pub(crate) type Subscriptions = HashMap<String, HashMap<String, (usize, u8)>>;

fn lock_subscriptions(
    subscriptions: &Mutex<Subscriptions>,
) -> std::sync::MutexGuard<'_, Subscriptions> {
    subscriptions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Longest a returning client waits for its session's end to reach the router (a link
/// opened and closed in-process: milliseconds, unless the router is stuck).
const ENDING_WAIT: Duration = Duration::from_secs(5);

impl EdgeContext {
    /// A client of session `key` is connecting: its session is no longer counting down, and
    /// this connection (the number returned) holds it from now on. If the session is being
    /// ended at this very moment, that is waited for first.
    pub(crate) async fn session_resumed(&self, key: &str) -> u64 {
        let conn = self.next_connection_id();
        let deadline = tokio::time::Instant::now() + ENDING_WAIT;
        loop {
            let gone = self.router.session_gone.notified();
            let mut gone = std::pin::pin!(gone);
            // Registered before the check: an end finishing in between still wakes it.
            gone.as_mut().enable();
            {
                let mut stored = lock(&self.router.stored_sessions);
                if !stored.ending.contains(key) || tokio::time::Instant::now() >= deadline {
                    if let Some(token) = stored.remove(key) {
                        token.cancel();
                    }
                    stored.holders.insert(key.to_owned(), conn);
                    return conn;
                }
            }
            let _ = tokio::time::timeout_at(deadline, gone).await;
        }
    }

    /// Session `key` subscribed `filter` with internal subscription id `id` at `qos`.
    pub(crate) fn remember_subscription(&self, key: &str, filter: &str, id: usize, qos: u8) {
        lock_subscriptions(&self.router.subscriptions)
            .entry(key.to_owned())
            .or_default()
            .insert(filter.to_owned(), (id, qos));
    }

    /// Session `key` unsubscribed `filter`.
    pub(crate) fn forget_subscription(&self, key: &str, filter: &str) {
        let mut subscriptions = lock_subscriptions(&self.router.subscriptions);
        if let Some(filters) = subscriptions.get_mut(key) {
            filters.remove(filter);
            if filters.is_empty() {
                subscriptions.remove(key);
            }
        }
    }

    /// The filters of session `key` (resumed) to subscribe again; all of them forgotten when
    /// the session is new (`present` false).
    pub(crate) fn session_subscriptions(
        &self,
        key: &str,
        present: bool,
    ) -> Vec<(String, usize, u8)> {
        let mut subscriptions = lock_subscriptions(&self.router.subscriptions);
        if !present {
            subscriptions.remove(key);
            return Vec::new();
        }
        subscriptions.get(key).map_or_else(Vec::new, |filters| {
            filters
                .iter()
                .map(|(filter, (id, qos))| (filter.clone(), *id, *qos))
                .collect()
        })
    }

    /// Connection `conn` of session `key` ended: it holds the session no more.
    pub(crate) fn connection_ended(&self, key: &str, conn: u64) {
        let mut stored = lock(&self.router.stored_sessions);
        if stored.holders.get(key) == Some(&conn) {
            stored.holders.remove(key);
        }
    }

    /// An MQTT 5 session's connection ended: the session is stored for `expiry` (granted
    /// already), or ended now (before this returns: a client coming straight back finds it
    /// gone, not ended under it) if that is 0 or the store is full.
    pub(crate) async fn session_ended(
        self: &std::sync::Arc<Self>,
        key: String,
        identity: String,
        expiry: Duration,
        conn: u64,
    ) {
        // Stopping for good: the router's sessions go with the process. (A restart of the
        // components on an applied configuration keeps the router, so its sessions are
        // stored as at any other end of a connection.)
        if self.router.lifetime.is_triggered() {
            return;
        }
        let token = CancellationToken::new();
        let stored = {
            let mut stored = lock(&self.router.stored_sessions);
            // A newer connection took the session up: it is that one's now.
            if stored.holders.get(&key) != Some(&conn) {
                return;
            }
            stored.holders.remove(&key);
            if let Some(old) = stored.remove(&key) {
                old.cancel();
            }
            let kept = !expiry.is_zero()
                && {
                    let mine = stored.per_identity.get(&identity).copied().unwrap_or(0);
                    let fits = stored.by_key.len() < self.session_limits.max_stored
                        && mine < self.session_limits.max_per_identity;
                    if fits {
                        *stored.per_identity.entry(identity.clone()).or_default() += 1;
                        stored.by_key.insert(key.clone(), (token.clone(), identity));
                    } else {
                        metrics::counter!(metric::REFUSED_TOTAL, "reason" => "stored_sessions_full")
                        .increment(1);
                        tracing::warn!(
                            "An MQTT 5 session ends with its connection: broker.max_stored_sessions or max_stored_sessions_per_identity reached"
                        );
                    }
                    fits
                };
            if !kept {
                stored.ending.insert(key.clone());
            }
            kept
        };
        if !stored {
            self.router.end_session(&key).await;
            return;
        }
        // The clock holds the router's state only: not this start's components, which a
        // restart on an applied configuration replaces meanwhile.
        let router = self.router.clone();
        self.router.lifetime.spawn(async move {
            // (A block: the lock is released before the router is asked.)
            {
                tokio::select! {
                    () = tokio::time::sleep(expiry) => {}
                    () = token.cancelled() => return,
                    // Stopping: the router's sessions go with the process.
                    () = router.lifetime.cancelled() => return,
                }
                // Only if it is still this one's clock (the client may have come back).
                let mut store = lock(&router.stored_sessions);
                if store.by_key.get(&key).is_none_or(|(t, _)| *t != token) {
                    return;
                }
                store.remove(&key);
                store.ending.insert(key.clone());
            }
            router.end_session(&key).await;
        });
    }
}

impl super::RouterState {
    /// Makes the router drop session `key` (marked as ending): a clean link under its name,
    /// closed at once; then a client waiting to take it up goes on.
    async fn end_session(&self, key: &str) {
        self.drop_session(key).await;
        lock(&self.stored_sessions).ending.remove(key);
        self.session_gone.notify_waiters();
    }

    async fn drop_session(&self, key: &str) {
        lock_subscriptions(&self.subscriptions).remove(key);
        let links = self.links.clone();
        let name = key.to_owned();
        match tokio::task::spawn_blocking(move || links(&name, true)).await {
            Ok(Ok((mut tx, _rx, _))) => {
                let bye = Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                };
                let _ = tx.send(Packet::Disconnect(bye, None)).await;
                self.lag.forget(key);
                tracing::debug!(session = %key, "MQTT 5 session expired");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "An expired session could not be ended"),
            Err(e) => tracing::warn!(error = %e, "An expired session could not be ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_capped() {
        let limits = Limits {
            max_expiry: Duration::from_secs(3600),
            max_stored: 1,
            max_per_identity: 1,
        };
        assert_eq!(granted(0, &limits), 0);
        assert_eq!(granted(60, &limits), 60);
        assert_eq!(granted(u32::MAX, &limits), 3600);
    }

    #[test]
    fn removing_frees_the_identity_share() {
        let mut stored = Stored::default();
        stored
            .by_key
            .insert("k".into(), (CancellationToken::new(), "id".into()));
        stored.per_identity.insert("id".into(), 1);
        assert!(stored.remove("k").is_some());
        assert!(stored.per_identity.is_empty());
        assert!(stored.remove("k").is_none());
    }
}
