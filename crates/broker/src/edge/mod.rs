//! The broker's network edge: every client-facing listener is ours, and rumqttd's router sits
//! behind it, reachable only through in-process links (no socket of rumqttd's is open, so no
//! local process can go around the edge).
//!
//! - [`transport`]: plain TCP, TLS and mutual TLS (rustls, built by core's TLS policy; CRLs
//!   reloaded when they change), TLS-PSK (openssl); a handshake timeout and a cap on
//!   handshakes in progress, the oldest giving way, so idle sockets cannot starve real clients.
//! - [`admission`]: every accepted socket is counted until it authenticates (a cap, the
//!   oldest giving way, and a share per source address), and password checks wait in a
//!   bounded line.
//! - [`handshake`]: the CONNECT, read whole within its size cap and timeout, then its checks
//!   (credentials, client id bound to the identity, the will's ACL): a [`session::Session`],
//!   or a refusal in the client's own protocol version. The router knows each session by the
//!   identity and the client id together, so identities never share a session.
//! - [`session`]: every packet between the client and the router, with the ACLs applied,
//!   publishes made durable by ingress before the router (and so the PUBACK) sees them,
//!   inbound QoS 2 ended at the edge and writes under a timeout.
//! - [`rate`]: the per-client message rate.
//! - [`lag`]: each subscriber's lag; publishes that would overrun a lagging QoS 1/2
//!   subscriber wait instead of being dropped by the router, and a stuck subscriber is
//!   disconnected.

mod admission;
mod alias;
mod codec;
mod expiry;
pub(crate) mod handshake;
pub(crate) mod lag;
mod pkid;
mod rate;
pub(crate) mod session;
pub(crate) mod transport;
pub(crate) mod v5;

pub use codec::fuzz_frames;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fieldlink_core::message::Message;
use fieldlink_core::ports::Ingress;
use fieldlink_core::shutdown::Shutdown;
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::access::Access;

/// A client connection, whatever its transport.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Opens a router link for (client id, clean session): blocks briefly.
pub(crate) type SessionLinks =
    Arc<dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// What every session shares.
pub(crate) struct EdgeContext {
    pub(crate) links: SessionLinks,
    pub(crate) ingress: Arc<dyn Ingress>,
    pub(crate) access: Arc<Access>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) max_packet_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_message_rate: u32,
    pub(crate) max_inflight: u16,
    /// The largest CONNECT read (at most `max_packet_size`).
    pub(crate) max_connect_size: usize,
    pub(crate) write_timeout: Duration,
    /// Longest keep-alive granted to an MQTT 5 client, in seconds (Server Keep Alive).
    pub(crate) max_keep_alive: u16,
    /// Most server topic aliases per MQTT 5 connection (see [`alias`]).
    pub(crate) max_topic_aliases: u16,
    /// Connections not yet authenticated.
    pub(crate) admission: Arc<admission::Admission>,
    /// Password checks waiting or running.
    pub(crate) logins: Arc<admission::Turns>,
    max_filters: usize,
    max_filters_per_identity: usize,
    /// Delayed wills (MQTT 5), by session key: cancelled when the client comes back.
    pending_wills: std::sync::Mutex<PendingWills>,
    max_delayed_wills: usize,
    max_delayed_will_bytes: usize,
    max_will_delay: Duration,
    pub(crate) shutdown: Shutdown,
    /// Every subscriber's lag: publishes wait for room in it (the router's, see
    /// [`RouterState`]).
    pub(crate) lag: Arc<lag::LagTracker>,
    /// The router link MQTT 5 wills are published through (opened on first use; its
    /// receiving half is kept so the router keeps the link).
    will_link: tokio::sync::Mutex<Option<(LinkTx, LinkRx)>>,
    pub(crate) session_limits: expiry::Limits,
    /// MQTT 5 message expiry's clock (the router's, see [`RouterState`]).
    pub(crate) clock: v5::Clock,
    /// What the edge keeps of the router's state.
    router: Arc<RouterState>,
}

/// What the edge knows of the state rumqttd's router keeps, and so must keep as long as the
/// router: the components restart on an applied configuration, the router does not (rumqttd
/// has no stop for it), and its retained messages, persistent sessions and filter logs stay.
/// So do, here: the filters it holds a log for (counted against their identities), the MQTT 5
/// sessions stored for clients away (their clocks run on `lifetime`, not on one start's
/// shutdown), the subscribers' lag, and the clock and key its messages were stamped with.
pub(crate) struct RouterState {
    pub(crate) links: SessionLinks,
    /// Every distinct filter subscribed since start (rumqttd keeps a log for each, for good),
    /// with the identity that added it, and how many each identity added.
    filters: std::sync::Mutex<Filters>,
    /// MQTT 5 sessions stored for clients that went away, and their bounds.
    stored_sessions: std::sync::Mutex<expiry::Stored>,
    /// Told when a session being ended has reached the router (see [`expiry`]).
    session_gone: tokio::sync::Notify,
    /// MQTT 5 sessions' filters, by session key: each with its internal subscription id and
    /// QoS, put back into the router when the session is resumed (see [`expiry`]).
    subscriptions: std::sync::Mutex<expiry::Subscriptions>,
    lag: Arc<lag::LagTracker>,
    clock: v5::Clock,
    /// Keys the hash that names a publish's session (see [`EdgeContext::origin`]).
    origins: std::hash::RandomState,
    auto_ids: AtomicU64,
    /// Numbers the connections (a session taken over keeps its key, not its number).
    connection_ids: AtomicU64,
    /// What outlives one start of the components: stored sessions' clocks.
    lifetime: Shutdown,
}

impl RouterState {
    pub(crate) fn new(
        links: SessionLinks,
        settings: &crate::config::BrokerSettings,
        lifetime: Shutdown,
    ) -> Self {
        Self {
            links,
            filters: std::sync::Mutex::default(),
            stored_sessions: std::sync::Mutex::default(),
            session_gone: tokio::sync::Notify::new(),
            subscriptions: std::sync::Mutex::default(),
            lag: Arc::new(lag::LagTracker::new(settings)),
            clock: v5::Clock::new(),
            origins: std::hash::RandomState::new(),
            auto_ids: AtomicU64::new(1),
            connection_ids: AtomicU64::new(1),
            lifetime,
        }
    }
}

impl EdgeContext {
    pub(crate) fn new(
        router: Arc<RouterState>,
        ingress: Arc<dyn Ingress>,
        access: Arc<Access>,
        settings: &crate::config::BrokerSettings,
        shutdown: Shutdown,
    ) -> Self {
        router.lag.set_stuck_after(settings.slow_subscriber_timeout);
        Self {
            links: router.links.clone(),
            ingress,
            access,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            max_packet_size: settings.max_packet_size,
            connect_timeout: settings.connect_timeout,
            max_message_rate: settings.max_message_rate,
            max_inflight: settings.max_inflight,
            max_connect_size: settings.max_connect_size.min(settings.max_packet_size),
            write_timeout: settings.write_timeout,
            max_keep_alive: u16::try_from(settings.max_keep_alive.as_secs())
                .unwrap_or(u16::MAX)
                .max(1),
            max_topic_aliases: settings.max_topic_aliases,
            admission: admission::Admission::new(
                settings.max_unauthenticated,
                settings.max_unauthenticated_per_address,
            ),
            logins: admission::Turns::new(LOGINS_PER_ADDRESS, LOGINS_WAITING),
            max_filters: settings.max_filters,
            max_filters_per_identity: settings.max_filters_per_identity,
            pending_wills: std::sync::Mutex::default(),
            max_delayed_wills: settings.max_delayed_wills,
            max_delayed_will_bytes: settings.max_delayed_will_bytes,
            max_will_delay: settings.max_will_delay,
            shutdown,
            lag: router.lag.clone(),
            will_link: tokio::sync::Mutex::new(None),
            session_limits: expiry::Limits {
                max_expiry: settings.max_session_expiry,
                max_stored: settings.max_stored_sessions,
                max_per_identity: settings.max_stored_sessions_per_identity,
            },
            clock: router.clock,
            router,
        }
    }

    /// Whether `filter` may be subscribed by a session of `identity`: a filter already known,
    /// or a new one within the pool and the identity's share of it (then it is known from now
    /// on, and counts against that identity).
    pub(crate) fn admit_filter(&self, filter: &str, identity: &str) -> Result<(), FilterRefused> {
        let mut filters = self
            .router
            .filters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if filters.known.contains(filter) {
            return Ok(());
        }
        if filters.known.len() >= self.max_filters {
            return Err(FilterRefused::Pool);
        }
        let added = filters.per_identity.entry(identity.to_owned()).or_default();
        if *added >= self.max_filters_per_identity {
            return Err(FilterRefused::Identity);
        }
        *added += 1;
        filters.known.insert(filter.to_owned());
        Ok(())
    }

    /// Publishes a lost client's will through ingress (routed like any publish, then to local
    /// subscribers), at once or after `delay` (at most `max_will_delay`) unless the client
    /// reconnects first. Delayed wills are bounded in count and bytes: past either, the will
    /// is published at once. An MQTT 5 will (with `properties`) is stored by ingress and
    /// handed to the router by the edge itself, its properties intact.
    pub(crate) fn publish_will(
        self: &Arc<Self>,
        key: String,
        will: Message,
        properties: Option<PublishProperties>,
        delay: Duration,
    ) {
        let ctx = self.clone();
        let delay = delay.min(self.max_will_delay);
        let size = will.topic.as_str().len() + will.payload.len();
        let token = tokio_util::sync::CancellationToken::new();
        let delayed = !delay.is_zero()
            && {
                let mut wills = self.lock_wills();
                if let Some((old, old_size)) = wills.by_key.remove(&key) {
                    old.cancel();
                    wills.bytes -= old_size;
                }
                let fits = wills.by_key.len() < self.max_delayed_wills
                    && wills.bytes + size <= self.max_delayed_will_bytes;
                if fits {
                    wills.bytes += size;
                    wills.by_key.insert(key.clone(), (token.clone(), size));
                } else {
                    metrics::counter!(metric::REFUSED_TOTAL, "reason" => "delayed_wills_full")
                        .increment(1);
                    tracing::warn!(
                        "A delayed will is published at once: broker.max_delayed_wills or max_delayed_will_bytes reached"
                    );
                }
                fits
            };
        self.shutdown.spawn(async move {
            if delayed {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = token.cancelled() => return,
                    // Stopping: a delayed will is not sent (the client may well come back).
                    () = ctx.shutdown.cancelled() => return,
                }
                ctx.forget_will(&key, &token);
            }
            let published = match properties {
                None => ctx
                    .ingress
                    .publish(vec![will])
                    .await
                    .map_err(|e| e.to_string()),
                Some(properties) => ctx.publish_v5_will(will, properties).await,
            };
            if let Err(e) = published {
                tracing::warn!(error = %e, "The will could not be published");
            }
        });
    }

    /// Stores an MQTT 5 will (if a route takes it), then hands it to the router with its
    /// properties, stamped like a client's publish (see [`v5`]).
    async fn publish_v5_will(
        &self,
        will: Message,
        properties: PublishProperties,
    ) -> Result<(), String> {
        if self.ingress.takes(&will.topic) {
            self.ingress
                .store(vec![will.clone()])
                .await
                .map_err(|e| e.to_string())?;
        }
        let properties = v5::stamp(Some(properties), will.qos as u8, will.retain, 0, || {
            self.clock.now()
        });
        let publish = Publish::new(
            bytes::Bytes::from(will.topic.as_str().to_owned()),
            bytes::Bytes::from(will.payload),
            will.retain,
        );
        let mut link = self.will_link.lock().await;
        if link.is_none() {
            let links = self.links.clone();
            let name = format!("{}wills", crate::INTERNAL_CLIENT_PREFIX);
            let (tx, rx, _) = tokio::task::spawn_blocking(move || links(&name, true))
                .await
                .map_err(|e| e.to_string())??;
            *link = Some((tx, rx));
        }
        let Some((tx, _)) = link.as_mut() else {
            return Err("no router link for wills".into());
        };
        tx.send(Packet::Publish(publish, Some(properties)))
            .await
            .map(drop)
            .map_err(|e| format!("router link: {e}"))
    }

    /// The client (this session key) is back: a will it left behind with a delay is dropped.
    pub(crate) fn returned(&self, key: &str) {
        let mut wills = self.lock_wills();
        if let Some((token, size)) = wills.by_key.remove(key) {
            token.cancel();
            wills.bytes -= size;
        }
    }

    fn forget_will(&self, key: &str, token: &tokio_util::sync::CancellationToken) {
        let mut wills = self.lock_wills();
        // Only this will: a newer one for the same key may have replaced it.
        if wills.by_key.get(key).is_some_and(|(t, _)| t == token)
            && let Some((_, size)) = wills.by_key.remove(key)
        {
            wills.bytes -= size;
        }
    }

    fn lock_wills(&self) -> std::sync::MutexGuard<'_, PendingWills> {
        self.pending_wills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Names session `key` as the origin of its publishes (MQTT 5 No Local): a hash keyed
    /// at start, so no client can pick an id that poses as another's; never 0, which is the
    /// gateway's own.
    pub(crate) fn origin(&self, key: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.router.origins.hash_one(key) | 1
    }

    /// A number for this connection.
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.router.connection_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// A number for a client id the broker assigns.
    pub(crate) fn next_auto_id(&self) -> u64 {
        self.router.auto_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Password checks one source address may have waiting or running: a flood from one place
/// cannot queue up in front of everyone else's logins.
const LOGINS_PER_ADDRESS: usize = 2;
/// Password checks waiting or running in all (two run at once, see
/// `access::MAX_CONCURRENT_VERIFICATIONS`): past it a login is told the server is busy
/// rather than kept waiting.
const LOGINS_WAITING: usize = 16;

/// The filters known to the router.
#[derive(Default)]
struct Filters {
    known: std::collections::HashSet<String>,
    per_identity: std::collections::HashMap<String, usize>,
}

/// Why a new subscription filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterRefused {
    /// `max_filters_per_identity`: this identity added its share.
    Identity,
    /// `max_filters`: the pool is full.
    Pool,
}

/// Delayed wills waiting, by session key, with their size; and their bytes in all.
#[derive(Default)]
struct PendingWills {
    by_key: std::collections::HashMap<String, (tokio_util::sync::CancellationToken, usize)>,
    bytes: usize,
}

/// Metric names of the edge.
pub(crate) mod metric {
    pub(crate) use fieldlink_core::metrics::{
        BROKER_ACL_DENIED_TOTAL as ACL_DENIED_TOTAL, BROKER_CONNECTIONS as CONNECTIONS,
        BROKER_CONNECTIONS_TOTAL as CONNECTIONS_TOTAL,
        BROKER_DROPPED_FOR_LAG_TOTAL as DROPPED_FOR_LAG_TOTAL,
        BROKER_MESSAGES_IN_TOTAL as MESSAGES_IN_TOTAL,
        BROKER_MESSAGES_OUT_TOTAL as MESSAGES_OUT_TOTAL,
        BROKER_NOT_DELIVERED_TOTAL as NOT_DELIVERED_TOTAL, BROKER_REFUSED_TOTAL as REFUSED_TOTAL,
        BROKER_SUBSCRIBER_LAG_MESSAGES as SUBSCRIBER_LAG_MESSAGES,
    };
}
