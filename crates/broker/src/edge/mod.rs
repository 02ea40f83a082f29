//! The broker's network edge: every client-facing listener is ours, and rumqttd's router sits
//! behind it, reachable only through in-process links (no socket of rumqttd's is open, so no
//! local process can go around the edge).
//!
//! - [`transport`]: plain TCP, TLS and mutual TLS (rustls, built by core's TLS policy; CRLs
//!   reloaded when they change), TLS-PSK (openssl); a handshake timeout and a cap on
//!   handshakes in progress, the oldest giving way, so idle sockets cannot starve real clients.
//! - [`session`]: CONNECT checks (credentials, client id bound to the identity, the will's
//!   ACL), then every packet between the client and the router, with the ACLs applied and
//!   publishes made durable by ingress before the router (and so the PUBACK) sees them.

mod codec;
pub(crate) mod session;
pub(crate) mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fieldlink_core::message::Message;
use fieldlink_core::ports::Ingress;
use fieldlink_core::shutdown::Shutdown;
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
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
    /// Every distinct filter subscribed since start (rumqttd keeps a log for each, for good).
    filters: std::sync::Mutex<std::collections::HashSet<String>>,
    max_filters: usize,
    /// Delayed wills (MQTT 5), by client id: cancelled when the client comes back.
    pending_wills:
        std::sync::Mutex<std::collections::HashMap<String, tokio_util::sync::CancellationToken>>,
    pub(crate) shutdown: Shutdown,
    auto_ids: AtomicU64,
}

impl EdgeContext {
    pub(crate) fn new(
        links: SessionLinks,
        ingress: Arc<dyn Ingress>,
        access: Arc<Access>,
        settings: &crate::config::BrokerSettings,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            links,
            ingress,
            access,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            max_packet_size: settings.max_packet_size,
            connect_timeout: settings.connect_timeout,
            max_message_rate: settings.max_message_rate,
            max_inflight: settings.max_inflight,
            filters: std::sync::Mutex::default(),
            max_filters: settings.max_filters,
            pending_wills: std::sync::Mutex::default(),
            shutdown,
            auto_ids: AtomicU64::new(1),
        }
    }

    /// Whether `filter` may be subscribed: a filter already known, or a new one within the
    /// cap (then it is known from now on).
    pub(crate) fn admit_filter(&self, filter: &str) -> bool {
        let mut filters = self
            .filters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if filters.contains(filter) {
            return true;
        }
        if filters.len() >= self.max_filters {
            return false;
        }
        filters.insert(filter.to_owned());
        true
    }

    /// Publishes a lost client's will through ingress (routed like any publish, then to local
    /// subscribers), at once or after `delay` unless the client reconnects first.
    pub(crate) fn publish_will(
        self: &Arc<Self>,
        client_id: String,
        will: Message,
        delay: Duration,
    ) {
        let ctx = self.clone();
        let token = tokio_util::sync::CancellationToken::new();
        if !delay.is_zero() {
            self.lock_wills().insert(client_id.clone(), token.clone());
        }
        self.shutdown.spawn(async move {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = token.cancelled() => return,
                    // Stopping: a delayed will is not sent (the client may well come back).
                    () = ctx.shutdown.cancelled() => return,
                }
                ctx.lock_wills().remove(&client_id);
            }
            if let Err(e) = ctx.ingress.publish(vec![will]).await {
                tracing::warn!(%client_id, error = %e, "The will could not be published");
            }
        });
    }

    /// The client is back: a will it left behind with a delay is dropped.
    pub(crate) fn returned(&self, client_id: &str) {
        if let Some(token) = self.lock_wills().remove(client_id) {
            token.cancel();
        }
    }

    fn lock_wills(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, tokio_util::sync::CancellationToken>,
    > {
        self.pending_wills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A number for a client id the broker assigns.
    pub(crate) fn next_auto_id(&self) -> u64 {
        self.auto_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Metric names of the edge.
pub(crate) mod metric {
    pub(crate) use fieldlink_core::metrics::{
        BROKER_ACL_DENIED_TOTAL as ACL_DENIED_TOTAL, BROKER_CONNECTIONS as CONNECTIONS,
        BROKER_CONNECTIONS_TOTAL as CONNECTIONS_TOTAL,
        BROKER_MESSAGES_IN_TOTAL as MESSAGES_IN_TOTAL,
        BROKER_MESSAGES_OUT_TOTAL as MESSAGES_OUT_TOTAL, BROKER_REFUSED_TOTAL as REFUSED_TOTAL,
    };
}
