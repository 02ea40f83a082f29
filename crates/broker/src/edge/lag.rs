//! Slow subscribers: the edge measures how far each one lags and holds publishers back
//! instead of letting the router drop what they were acknowledged for.
//!
//! rumqttd keeps one in-memory log per subscription filter, at most `segment_count` segments
//! of `segment_size` bytes (a segment is full once it holds `segment_size` bytes, and a new
//! one pushes the oldest out), and moves a subscriber whose cursor fell off the log to its
//! head: whatever it had not read yet is gone, QoS 1 or not. A message is therefore safe as
//! long as fewer than `(segment_count - 1) × segment_size` bytes were appended after it.
//!
//! The edge sees both ends: every publish a session hands to the router, and every message
//! the router forwards to a subscriber (with its offset in the filter's log). So for each
//! (subscriber, filter) it keeps the bytes and messages appended but not yet forwarded: the
//! lag. A session hands a batch of publishes to the router only once it is **admitted**:
//! every live subscriber with a QoS 1/2 subscription the batch matches must have room for it
//! within [`LagTracker::limit`] (three quarters of the safe size: the gateway's own
//! in-process publishes are not counted). Until then the publishing session stops reading its
//! socket, as the rate limit does, so its client's PUBACKs (and TCP) slow it down.
//!
//! - **Fairness.** Only publishes that match a lagging subscriber's filter wait; publishers
//!   to other topics go on.
//! - **Gone subscribers hold nobody back:** a session that ended is forgotten (clean session)
//!   or kept offline (persistent session: still measured, never waited for).
//! - **Stuck subscribers:** one that has held publishers back for `slow_subscriber_timeout`
//!   without draining below half the limit is disconnected (counted in
//!   `fieldlink_broker_refused_total{reason="slow_subscriber"}`, logged with its client id).
//!   So a client that reads slowly on purpose stalls its filter's publishers for that long at
//!   most.
//! - **Drops are counted.** QoS 0 subscriptions are never waited for; whatever the router
//!   skips for any subscriber (QoS 0, an offline persistent session whose log rolled over,
//!   a disconnected stuck one) shows as a jump in the forwarded offsets:
//!   `fieldlink_broker_dropped_for_lag_total{qos}`, and a log line naming the client.
//! - **Not measured:** shared subscriptions (`$share/...`: the router hands each message to
//!   one member only) are neither measured nor waited for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use fieldlink_core::topic::{TopicFilter, TopicName};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metric;
use super::pkid::PkidMap;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Subscribers whose lag the metrics show, the largest first.
pub(crate) const TOP_LAGGING: usize = 5;

/// What a batch of publishes adds to the logs: per distinct topic, its bytes (as rumqttd
/// counts them: 4 + topic + payload) and messages.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    topics: Vec<(TopicName, u64, u64)>,
    total: u64,
}

impl Demand {
    /// What one publish takes in a log.
    pub(crate) fn bytes(topic: &[u8], payload_len: usize) -> u64 {
        (4 + topic.len() + payload_len) as u64
    }

    /// Bytes in all.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Adds one publish on `topic` (a valid topic name: the session checked it).
    pub(crate) fn add(&mut self, topic: &[u8], payload_len: usize) {
        let bytes = Self::bytes(topic, payload_len);
        // A batch mostly repeats a few topics: parsed once each.
        match self
            .topics
            .iter_mut()
            .find(|(t, ..)| t.as_str().as_bytes() == topic)
        {
            Some((_, b, m)) => {
                *b += bytes;
                *m += 1;
            }
            None => {
                let Some(name) = std::str::from_utf8(topic)
                    .ok()
                    .and_then(|t| TopicName::new(t).ok())
                else {
                    return;
                };
                self.topics.push((name, bytes, 1));
            }
        }
        self.total += bytes;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// One message the router forwarded to a subscriber.
pub(crate) struct Forwarded {
    pub(crate) topic: bytes::Bytes,
    /// Its (segment, offset) in the filter's log; `None` for a retained message.
    pub(crate) cursor: Option<(u64, u64)>,
    pub(crate) bytes: u64,
    /// Its packet id at QoS 1/2 (it stays in flight until the client acknowledges it).
    pub(crate) pkid: Option<u16>,
}

/// Whether a batch may go to the router now.
pub(crate) enum Admission {
    Admitted,
    /// `key`'s lag has no room for it; `key` counts as stuck at `stuck_at`.
    Held {
        key: String,
        stuck_at: Instant,
    },
}

/// One subscription of one subscriber.
struct Track {
    /// Names the track in `Subscriber::unacked` (indices move when a filter goes).
    id: u64,
    filter: String,
    matcher: TopicFilter,
    qos: u8,
    lag_bytes: u64,
    lag_messages: u64,
    /// One past the highest log offset forwarded so far.
    seen: Option<u64>,
}

struct Subscriber {
    client_id: String,
    /// The connection now serving the session (a takeover replaces it).
    conn: u64,
    connected: bool,
    persistent: bool,
    tracks: Vec<Track>,
    /// Since when it holds publishers back (cleared once it drains below half the limit).
    holding_since: Option<Instant>,
    /// Cancelled to disconnect it.
    kick: CancellationToken,
    /// Forwards the client has not acknowledged, by packet id: (track id, offset, bytes).
    /// The router sends a persistent session's again from the first of them when it comes
    /// back.
    unacked: PkidMap<(u64, u64, u64)>,
    next_track_id: u64,
}

impl Subscriber {
    fn lag_messages(&self) -> u64 {
        self.tracks.iter().map(|t| t.lag_messages).sum()
    }
}

/// The lag of every subscriber, shared by every session of the edge.
pub(crate) struct LagTracker {
    subscribers: Mutex<HashMap<String, Subscriber>>,
    /// Woken whenever some lag shrinks or a subscriber stops counting.
    room: Notify,
    limit: u64,
    /// `slow_subscriber_timeout` in milliseconds: the tracker lives as long as the router,
    /// across restarts of the components that may change it (see [`Self::set_stuck_after`]).
    stuck_after_ms: AtomicU64,
    /// The labels the lag gauge was last set for (zeroed once they leave the top).
    shown: Mutex<Vec<String>>,
}

/// A client's lag, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lagging {
    pub(crate) client_id: String,
    pub(crate) messages: u64,
}

impl LagTracker {
    pub(crate) fn new(settings: &crate::config::BrokerSettings) -> Self {
        let safe = settings.segment_count.saturating_sub(1) as u64 * settings.segment_size as u64;
        Self {
            subscribers: Mutex::default(),
            room: Notify::new(),
            limit: safe / 4 * 3,
            stuck_after_ms: AtomicU64::new(millis(settings.slow_subscriber_timeout)),
            shown: Mutex::default(),
        }
    }

    /// From now on a subscriber holding publishers back for `timeout` is disconnected.
    pub(crate) fn set_stuck_after(&self, timeout: Duration) {
        self.stuck_after_ms
            .store(millis(timeout), std::sync::atomic::Ordering::Relaxed);
    }

    fn stuck_after(&self) -> Duration {
        Duration::from_millis(
            self.stuck_after_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Bytes a subscriber may lag behind on one filter.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The most bytes of publishes handed to the router at once: a lag of zero admits one
    /// part whatever its size, so a part must fit the limit (a quarter of it, so that a few
    /// publishers waiting on one subscriber take turns).
    pub(crate) fn part_bytes(&self) -> u64 {
        (self.limit / 4).max(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscriber>> {
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A session (`key`) is served by connection `conn`. Its subscriptions and lag carry over
    /// only when the router kept its session (`session_present`). Returns the token that
    /// disconnects it when it is stuck.
    pub(crate) fn connected(
        &self,
        key: &str,
        client_id: &str,
        conn: u64,
        persistent: bool,
        session_present: bool,
    ) -> CancellationToken {
        let mut subscribers = self.lock();
        let kick = CancellationToken::new();
        match subscribers.get_mut(key) {
            Some(sub) if session_present => {
                sub.conn = conn;
                sub.connected = true;
                sub.persistent = persistent;
                sub.holding_since = None;
                sub.kick = kick.clone();
            }
            _ => {
                subscribers.insert(
                    key.to_owned(),
                    Subscriber {
                        client_id: client_id.to_owned(),
                        conn,
                        connected: true,
                        persistent,
                        tracks: Vec::new(),
                        holding_since: None,
                        kick: kick.clone(),
                        unacked: PkidMap::default(),
                        next_track_id: 0,
                    },
                );
            }
        }
        kick
    }

    /// Connection `conn` of session `key` ended: the session holds nobody back from now on,
    /// and is forgotten unless persistent.
    pub(crate) fn disconnected(&self, key: &str, conn: u64) {
        let mut subscribers = self.lock();
        if let Some(sub) = subscribers.get_mut(key)
            && sub.conn == conn
        {
            if sub.persistent && !sub.tracks.is_empty() {
                sub.connected = false;
                sub.holding_since = None;
                // What was in flight is sent again from the first unacknowledged message of
                // each filter: it counts as lag again, and a jump is measured from there.
                for (track_id, offset, bytes) in std::mem::take(&mut sub.unacked).into_values() {
                    if let Some(track) = sub.tracks.iter_mut().find(|t| t.id == track_id) {
                        track.seen = Some(track.seen.map_or(offset, |seen| seen.min(offset)));
                        track.lag_messages += 1;
                        track.lag_bytes += bytes;
                    }
                }
            } else {
                subscribers.remove(key);
            }
        }
        drop(subscribers);
        self.room.notify_waiters();
    }

    /// The router granted `filter` at `qos` to session `key`.
    pub(crate) fn subscribed(&self, key: &str, conn: u64, filter: &str, qos: u8) {
        if filter.starts_with("$share/") {
            return;
        }
        let Ok(matcher) = TopicFilter::new(filter) else {
            return;
        };
        let mut subscribers = self.lock();
        let Some(sub) = subscribers.get_mut(key).filter(|s| s.conn == conn) else {
            return;
        };
        match sub.tracks.iter_mut().find(|t| t.filter == filter) {
            // A new SUBSCRIBE of the same filter only changes its QoS.
            Some(track) => track.qos = qos,
            None => sub.tracks.push(Track {
                id: {
                    sub.next_track_id += 1;
                    sub.next_track_id
                },
                filter: filter.to_owned(),
                matcher,
                qos,
                lag_bytes: 0,
                lag_messages: 0,
                seen: None,
            }),
        }
    }

    /// Session `key` ended for good (its MQTT 5 session expired): nothing of it is kept.
    pub(crate) fn forget(&self, key: &str) {
        let mut subscribers = self.lock();
        if subscribers.get(key).is_some_and(|sub| !sub.connected) {
            subscribers.remove(key);
        }
        drop(subscribers);
        self.room.notify_waiters();
    }

    /// Whether session `key` holds a subscription to `filter` (MQTT 5's Retain Handling 1
    /// sends retained messages only for a new one). Shared subscriptions are not tracked:
    /// for them, `false`.
    pub(crate) fn is_subscribed(&self, key: &str, filter: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|sub| sub.tracks.iter().any(|t| t.filter == filter))
    }

    /// Session `key` unsubscribed `filter`.
    pub(crate) fn unsubscribed(&self, key: &str, conn: u64, filter: &str) {
        let mut subscribers = self.lock();
        if let Some(sub) = subscribers.get_mut(key).filter(|s| s.conn == conn) {
            sub.tracks.retain(|t| t.filter != filter);
        }
        drop(subscribers);
        self.room.notify_waiters();
    }

    /// Whether a batch adding `demand` may go to the router now; if so its bytes count
    /// against every subscriber it matches.
    pub(crate) fn try_admit(&self, demand: &Demand) -> Admission {
        if demand.is_empty() {
            return Admission::Admitted;
        }
        let mut subscribers = self.lock();
        if subscribers.is_empty() {
            return Admission::Admitted;
        }
        // What each matching track would get: (key, track index, bytes, messages).
        let mut adds: Vec<(String, usize, u64, u64)> = Vec::new();
        let mut blocked: Option<String> = None;
        'subscribers: for (key, sub) in subscribers.iter() {
            for (i, track) in sub.tracks.iter().enumerate() {
                let (mut bytes, mut messages) = (0, 0);
                for (topic, b, m) in &demand.topics {
                    if track.matcher.matches(topic) {
                        bytes += b;
                        messages += m;
                    }
                }
                if messages == 0 {
                    continue;
                }
                // A lag of zero always takes one batch, however large: progress first.
                let waits = sub.connected
                    && track.qos > 0
                    && track.lag_bytes > 0
                    && track.lag_bytes + bytes > self.limit;
                if waits {
                    blocked = Some(key.clone());
                    break 'subscribers;
                }
                adds.push((key.clone(), i, bytes, messages));
            }
        }
        if let Some(key) = blocked {
            let since = subscribers.get_mut(&key).map_or_else(Instant::now, |sub| {
                *sub.holding_since.get_or_insert_with(Instant::now)
            });
            return Admission::Held {
                key,
                stuck_at: since + self.stuck_after(),
            };
        }
        for (key, i, bytes, messages) in adds {
            if let Some(track) = subscribers.get_mut(&key).and_then(|s| s.tracks.get_mut(i)) {
                track.lag_bytes += bytes;
                track.lag_messages += messages;
            }
        }
        Admission::Admitted
    }

    /// Waits until `demand` is admitted (see [`Self::try_admit`]), disconnecting a subscriber
    /// that holds it back past `slow_subscriber_timeout`. Cancel-safe: once admitted it
    /// returns without another await.
    pub(crate) async fn admit(&self, demand: &Demand) {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            match self.try_admit(demand) {
                Admission::Admitted => return,
                Admission::Held { key, stuck_at } => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(stuck_at.into()) => self.kick_if_stuck(&key),
                    }
                }
            }
        }
    }

    /// Disconnects `key` if it has held publishers back for `slow_subscriber_timeout`.
    fn kick_if_stuck(&self, key: &str) {
        let mut subscribers = self.lock();
        let Some(sub) = subscribers.get_mut(key) else {
            return;
        };
        let stuck = sub.connected
            && sub
                .holding_since
                .is_some_and(|since| since.elapsed() >= self.stuck_after());
        if !stuck {
            return;
        }
        tracing::warn!(
            client_id = %sub.client_id,
            lag_messages = sub.lag_messages(),
            "A subscriber held publishers back for longer than broker.slow_subscriber_timeout ({:?}): disconnected; what its session cannot keep is dropped",
            self.stuck_after()
        );
        metrics::counter!(metric::REFUSED_TOTAL, "reason" => "slow_subscriber").increment(1);
        sub.connected = false;
        sub.holding_since = None;
        sub.kick.cancel();
        drop(subscribers);
        self.room.notify_waiters();
    }

    /// The client of session `key` acknowledged these forwards (PUBACK, or PUBREC at QoS 2).
    pub(crate) fn acked(&self, key: &str, conn: u64, pkids: &[u16]) {
        let mut subscribers = self.lock();
        if let Some(sub) = subscribers.get_mut(key).filter(|s| s.conn == conn) {
            for pkid in pkids {
                sub.unacked.remove(pkid);
            }
        }
    }

    /// The router forwarded these to session `key`: their lag is taken off, and any jump in
    /// a filter's offsets (messages the router skipped) is counted and logged.
    pub(crate) fn forwarded(&self, key: &str, conn: u64, forwards: &[Forwarded]) {
        if forwards.is_empty() {
            return;
        }
        let mut subscribers = self.lock();
        let Some(sub) = subscribers.get_mut(key).filter(|s| s.conn == conn) else {
            return;
        };
        let mut dropped_by_qos = [0u64; 3];
        // Forwards mostly repeat a topic: parsed once each time it changes.
        let mut last: Option<(&bytes::Bytes, TopicName)> = None;
        for forward in forwards {
            let Some((_, offset)) = forward.cursor else {
                // A retained message: it was never counted.
                continue;
            };
            if last.as_ref().is_none_or(|(t, _)| **t != forward.topic) {
                last = std::str::from_utf8(&forward.topic)
                    .ok()
                    .and_then(|t| TopicName::new(t).ok())
                    .map(|name| (&forward.topic, name));
            }
            let Some((_, topic)) = &last else {
                continue;
            };
            let Some(track) = attribute(&mut sub.tracks, topic, offset) else {
                continue;
            };
            if let Some(pkid) = forward.pkid {
                sub.unacked.insert(pkid, (track.id, offset, forward.bytes));
            }
            match track.seen {
                // Sent again (a persistent session back): taken off the first time.
                Some(seen) if offset < seen => continue,
                Some(seen) if offset > seen => {
                    let skipped = offset - seen;
                    let average = track.lag_bytes / track.lag_messages.max(1);
                    track.lag_messages = track.lag_messages.saturating_sub(skipped);
                    track.lag_bytes = track.lag_bytes.saturating_sub(skipped * average);
                    dropped_by_qos[usize::from(track.qos.min(2))] += skipped;
                    tracing::warn!(
                        client_id = %sub.client_id,
                        filter = %track.filter,
                        dropped = skipped,
                        "Messages for a subscriber that lagged too far behind were dropped (the broker keeps segment_size x segment_count bytes per filter)"
                    );
                }
                _ => {}
            }
            track.seen = Some(offset + 1);
            track.lag_messages = track.lag_messages.saturating_sub(1);
            track.lag_bytes = if track.lag_messages == 0 {
                0
            } else {
                track.lag_bytes.saturating_sub(forward.bytes)
            };
        }
        if sub.holding_since.is_some() && sub.tracks.iter().all(|t| t.lag_bytes <= self.limit / 2) {
            sub.holding_since = None;
        }
        drop(subscribers);
        for (qos, dropped) in dropped_by_qos.into_iter().enumerate() {
            if dropped > 0 {
                metrics::counter!(metric::DROPPED_FOR_LAG_TOTAL, "qos" => qos.to_string())
                    .increment(dropped);
            }
        }
        self.room.notify_waiters();
    }

    /// The subscribers lagging most, in messages, the largest first.
    pub(crate) fn top(&self, n: usize) -> Vec<Lagging> {
        let subscribers = self.lock();
        let mut all: Vec<Lagging> = subscribers
            .values()
            .map(|s| Lagging {
                client_id: s.client_id.clone(),
                messages: s.lag_messages(),
            })
            .filter(|l| l.messages > 0)
            .collect();
        drop(subscribers);
        all.sort_by_key(|l| std::cmp::Reverse(l.messages));
        all.truncate(n);
        all
    }

    /// Sets the lag gauge for the top subscribers (and back to 0 for those that left it).
    pub(crate) fn publish_metrics(&self) {
        let top = self.top(TOP_LAGGING);
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in shown
            .iter()
            .filter(|c| !top.iter().any(|l| &l.client_id == *c))
        {
            metrics::gauge!(metric::SUBSCRIBER_LAG_MESSAGES, "client_id" => gone.clone()).set(0.0);
        }
        for lagging in &top {
            metrics::gauge!(metric::SUBSCRIBER_LAG_MESSAGES, "client_id" => lagging.client_id.clone())
                .set(lagging.messages as f64);
        }
        *shown = top.into_iter().map(|l| l.client_id).collect();
    }
}

/// Which of a subscriber's filters a forward at `offset` came through: the one whose log it
/// continues, else one not yet read, else one it was sent again on, else the one it jumped
/// ahead on (overlapping filters each have a log of their own).
fn attribute<'a>(tracks: &'a mut [Track], topic: &TopicName, offset: u64) -> Option<&'a mut Track> {
    let rank = |track: &Track| match track.seen {
        Some(seen) if seen == offset => 0,
        None => 1,
        Some(seen) if offset < seen => 2,
        Some(_) => 3,
    };
    tracks
        .iter_mut()
        .filter(|t| t.matcher.matches(topic))
        .min_by_key(|t| rank(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(limit_segments: usize) -> LagTracker {
        let settings = crate::config::BrokerSettings {
            segment_size: 1024,
            segment_count: limit_segments,
            slow_subscriber_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        LagTracker::new(&settings)
    }

    fn demand(topic: &str, messages: usize, payload: usize) -> Demand {
        let mut d = Demand::default();
        for _ in 0..messages {
            d.add(topic.as_bytes(), payload);
        }
        d
    }

    fn forwards(topic: &str, offsets: std::ops::Range<u64>, bytes: u64) -> Vec<Forwarded> {
        offsets
            .map(|o| Forwarded {
                topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
                cursor: Some((0, o)),
                bytes,
                pkid: None,
            })
            .collect()
    }

    #[test]
    fn a_lagging_qos1_subscriber_holds_back_only_matching_publishes() {
        // 4 segments of 1 KiB: 3 KiB safe, 2304 bytes the limit.
        let lag = tracker(4);
        assert_eq!(lag.limit(), 2304);
        let _kick = lag.connected("s", "slow", 1, false, false);
        lag.subscribed("s", 1, "a/#", 1);
        // 100 bytes a message (4 + 3 + 93).
        assert!(matches!(
            lag.try_admit(&demand("a/b", 20, 93)),
            Admission::Admitted
        ));
        assert!(matches!(
            lag.try_admit(&demand("a/b", 3, 93)),
            Admission::Admitted
        ));
        assert!(matches!(
            lag.try_admit(&demand("a/b", 2, 93)),
            Admission::Held { .. }
        ));
        // Other topics go on.
        assert!(matches!(
            lag.try_admit(&demand("b/c", 50, 93)),
            Admission::Admitted
        ));
        // Forwarded: room again.
        lag.forwarded("s", 1, &forwards("a/b", 0..10, 100));
        assert!(matches!(
            lag.try_admit(&demand("a/b", 2, 93)),
            Admission::Admitted
        ));
        assert_eq!(lag.top(5)[0].messages, 15);
    }

    #[test]
    fn qos0_subscribers_and_gone_sessions_hold_nobody_back() {
        let lag = tracker(4);
        let _q0 = lag.connected("q0", "zero", 1, false, false);
        lag.subscribed("q0", 1, "a/#", 0);
        let _p = lag.connected("p", "persistent", 2, true, false);
        lag.subscribed("p", 2, "a/#", 1);
        lag.disconnected("p", 2);
        for _ in 0..10 {
            assert!(matches!(
                lag.try_admit(&demand("a/b", 20, 93)),
                Admission::Admitted
            ));
        }
        // The persistent session is still measured, the clean one forgotten once gone.
        lag.disconnected("q0", 1);
        assert_eq!(
            lag.top(5),
            vec![Lagging {
                client_id: "persistent".into(),
                messages: 200
            }]
        );
    }

    #[test]
    fn skipped_offsets_are_counted_as_dropped_and_taken_off_the_lag() {
        let lag = tracker(4);
        let _kick = lag.connected("s", "s", 1, true, false);
        lag.subscribed("s", 1, "a/#", 0);
        assert!(matches!(
            lag.try_admit(&demand("a/b", 20, 93)),
            Admission::Admitted
        ));
        lag.forwarded("s", 1, &forwards("a/b", 0..2, 100));
        // 2..15 skipped by the router.
        lag.forwarded("s", 1, &forwards("a/b", 15..20, 100));
        assert!(lag.top(5).is_empty());
        // Sent again after a reconnect: not taken off twice.
        assert!(matches!(
            lag.try_admit(&demand("a/b", 1, 93)),
            Admission::Admitted
        ));
        lag.forwarded("s", 1, &forwards("a/b", 18..20, 100));
        assert_eq!(lag.top(5)[0].messages, 1);
    }

    #[test]
    fn a_takeover_is_not_undone_by_the_old_connection_ending() {
        let lag = tracker(4);
        let _old = lag.connected("s", "s", 1, false, false);
        let _new = lag.connected("s", "s", 2, false, false);
        lag.subscribed("s", 2, "a/#", 1);
        lag.disconnected("s", 1);
        assert!(matches!(
            lag.try_admit(&demand("a/b", 20, 93)),
            Admission::Admitted
        ));
        assert_eq!(lag.top(5)[0].messages, 20);
    }
}
