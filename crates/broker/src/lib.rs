//! fieldlink's local MQTT broker: our own network edge in front of rumqttd's router.
//!
//! rumqttd routes (sessions, QoS, retained messages); it cannot face a LAN as it is (no ACLs,
//! TLS only from files and without policy, a handshake in the accept loop that one idle socket
//! blocks, client ids not bound to identities, no CONNACK for a bad password, PUBACK before
//! anything is durable). So every client-facing listener is ours ([`edge`]) and the router is
//! reached only through in-process links: rumqttd opens no socket at all.
//!
//! - **Sizing.** rumqttd keeps an in-memory commit log per subscription filter; we translate
//!   `[broker]` into a log of `segment_size × segment_count` per filter and a bounded
//!   connection count, so memory stays small on a board.
//! - **Lifecycle.** The router runs on its own thread, one for the process ([`BrokerRouter`]):
//!   rumqttd has no stop for it (the thread holds a sender to its own channel), so the
//!   gateway starts it once and its components, restarted on an applied configuration, find
//!   it again with its retained messages and sessions. Listeners and sessions run on the
//!   gateway's runtime and end with its shutdown token.
//! - **Slow subscribers** cost no acknowledged message: the edge measures each one's lag
//!   against that log and holds back the publishers that would overrun it (`edge::lag`).
//! - **Bind and file errors** are reported at start, before anything is served.
//!
//! rumqttd types stay inside this crate.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use fieldlink_core::fault::Fault;
use fieldlink_core::ports::{BusError, Ingress};
use fieldlink_core::shutdown::Shutdown;
use rumqttd::local::{LinkBuilder, LinkError};
use rumqttd::{Router, RouterConfig};

pub mod access;
mod bus;
pub mod config;
mod edge;

pub use bus::BrokerBus;
#[doc(hidden)]
pub use edge::fuzz_frames;
pub use edge::transport::SecurityError;

/// Client ids of the gateway's own links to the router. The edge refuses them to clients: a
/// client with such an id would take the link's session over (rumqttd ends the older session
/// with the same id) and cut the gateway off its own broker.
pub(crate) const INTERNAL_CLIENT_PREFIX: &str = "fieldlink-internal-";

use edge::SessionLinks;
use edge::transport::Security;

use crate::config::{BrokerSettings, ListenerSettings};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A listener's address could not be bound.
    #[error("listener `{name}`: cannot listen on {addr}: {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A listener's certificate, key, CA, CRL or PSK file is missing or unusable.
    #[error("listener `{name}`: {problem}")]
    Security {
        /// The listener's name.
        name: String,
        /// What is wrong.
        problem: SecurityError,
    },
    /// Settings the running router was built with differ (see [`router_keys_changed`]).
    #[error(
        "{} cannot change while the gateway runs (they size the broker's router): restart the service for them (systemctl restart fieldlink)",
        keys.join(", ")
    )]
    RouterSizing {
        /// The `[broker]` keys, as the configuration names them.
        keys: Vec<&'static str>,
    },
}

impl BrokerError {
    /// Whose fault it is: an address in use or not ours is the environment's (or the
    /// configuration's: see the OS error); the security files are as [`SecurityError::fault`]
    /// says.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Bind { .. } => Fault::Environment,
            Self::Security { problem, .. } => problem.fault(),
            Self::RouterSizing { .. } => Fault::Config,
        }
    }
}

/// rumqttd's router, started once for the process, and what the edge keeps of its state
/// (filters, stored MQTT 5 sessions, subscribers' lag). Cloned handles share it.
#[derive(Clone)]
pub struct BrokerRouter {
    sizing: RouterSizing,
    state: Arc<edge::RouterState>,
    alive: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl BrokerRouter {
    /// Starts the router for `settings`. Stored sessions' clocks run on `lifetime`: trigger
    /// it when the gateway stops for good.
    pub fn start(settings: &BrokerSettings, lifetime: Shutdown) -> Self {
        let sizing = RouterSizing::of(settings);
        let router_tx = Router::new(0, sizing.router_config()).spawn();
        let router = router_tx.clone();
        // The router's thread holds the receiving end: gone, the thread has ended.
        let alive = Arc::new(move || !router.is_disconnected());
        let links: SessionLinks = Arc::new(move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                // Clients may subscribe to any filter, not only pre-declared ones.
                .dynamic_filters(true)
                .build()
                .map_err(|e: LinkError| e.to_string())
        });
        Self {
            sizing,
            state: Arc::new(edge::RouterState::new(links, settings, lifetime)),
            alive,
        }
    }
}

impl std::fmt::Debug for BrokerRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerRouter")
            .field("sizing", &self.sizing)
            .finish_non_exhaustive()
    }
}

/// The `[broker]` keys whose values differ between `running` and `proposed` and that size
/// the router: they take a new router, so a restart of the service (see [`BrokerRouter`]).
pub fn router_keys_changed(
    running: &BrokerSettings,
    proposed: &BrokerSettings,
) -> Vec<&'static str> {
    RouterSizing::of(running).differing(&RouterSizing::of(proposed))
}

/// What the router is built with, from `[broker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouterSizing {
    max_connections: usize,
    max_inflight: u16,
    segment_size: usize,
    segment_count: usize,
}

impl RouterSizing {
    fn of(settings: &BrokerSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            max_inflight: settings.max_inflight,
            segment_size: settings.segment_size,
            segment_count: settings.segment_count,
        }
    }

    fn differing(&self, other: &Self) -> Vec<&'static str> {
        [
            (
                "broker.max_connections",
                self.max_connections != other.max_connections,
            ),
            (
                "broker.max_inflight",
                self.max_inflight != other.max_inflight,
            ),
            (
                "broker.segment_size",
                self.segment_size != other.segment_size,
            ),
            (
                "broker.segment_count",
                self.segment_count != other.segment_count,
            ),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
    }

    fn router_config(&self) -> RouterConfig {
        RouterConfig {
            // The edge's clients, plus the gateway's own links (bus, subscriptions).
            max_connections: self.max_connections + 64,
            // Deliveries a slow subscriber may have outstanding before rumqttd holds back.
            max_outgoing_packet_count: u64::from(self.max_inflight).max(16),
            max_segment_size: self.segment_size,
            max_segment_count: self.segment_count,
            ..RouterConfig::default()
        }
    }
}

/// The local broker: every listener bound, not yet serving, in front of the router.
pub struct RunningBroker {
    settings: BrokerSettings,
    listeners: Vec<(Arc<ListenerSettings>, TcpListener, Security)>,
    addrs: Vec<SocketAddr>,
    router: BrokerRouter,
    /// A broker started on its own ([`RunningBroker::start`]): its router's lifetime, ended
    /// with it.
    own_router: Option<Shutdown>,
}

impl RunningBroker {
    /// Starts a router of its own, binds every listener of `settings` and loads their TLS
    /// files.
    pub fn start(settings: &BrokerSettings) -> Result<Self, BrokerError> {
        let lifetime = Shutdown::new();
        let router = BrokerRouter::start(settings, lifetime.clone());
        let mut broker =
            Self::start_on(&router, settings, Arc::new(fieldlink_core::tls::FileKeys))?;
        broker.own_router = Some(lifetime);
        Ok(broker)
    }

    /// Binds every listener of `settings` in front of `router` (started on the same sizing
    /// keys, else [`BrokerError::RouterSizing`]), with the listeners' keys (`key_file` or
    /// `key_uri`) resolved by `keys`: the binary passes one that reaches PKCS#11 tokens.
    pub fn start_on(
        router: &BrokerRouter,
        settings: &BrokerSettings,
        keys: Arc<dyn fieldlink_core::tls::KeyResolver>,
    ) -> Result<Self, BrokerError> {
        let keys_changed = router.sizing.differing(&RouterSizing::of(settings));
        if !keys_changed.is_empty() {
            return Err(BrokerError::RouterSizing { keys: keys_changed });
        }
        let mut listeners = Vec::with_capacity(settings.listeners.len());
        let mut addrs = Vec::with_capacity(settings.listeners.len());
        for listener in &settings.listeners {
            let security = Security::prepare(listener, keys.clone()).map_err(|problem| {
                BrokerError::Security {
                    name: listener.name.clone(),
                    problem,
                }
            })?;
            let bind = |source| BrokerError::Bind {
                name: listener.name.clone(),
                addr: listener.addr,
                source,
            };
            let tcp = TcpListener::bind(listener.addr).map_err(bind)?;
            tcp.set_nonblocking(true).map_err(bind)?;
            // Port 0 asks for any free port: keep the one the OS gave.
            addrs.push(tcp.local_addr().unwrap_or(listener.addr));
            if listener.anonymous && !listener.addr.ip().is_loopback() {
                tracing::warn!(listener = %listener.name, addr = %listener.addr, "Clients without credentials may connect from the network");
            }
            listeners.push((Arc::new(listener.clone()), tcp, security));
        }
        Ok(Self {
            settings: settings.clone(),
            listeners,
            addrs,
            router: router.clone(),
            own_router: None,
        })
    }

    /// Tells whether rumqttd's router thread still runs (it ends only by a panic).
    pub fn router_liveness(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        self.router.alive.clone()
    }

    /// The address each listener is bound to, in configuration order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The local broker seen from inside the process. Its links end when `shutdown` is
    /// cancelled. Blocks briefly while the router registers the link.
    pub fn bus(&self, shutdown: Shutdown) -> Result<BrokerBus, BusError> {
        BrokerBus::new(self.router.state.links.clone(), shutdown)
    }

    /// Serves every listener on the current tokio runtime until `shutdown`: client publishes
    /// go through `ingress`, clients are checked by `access`.
    pub fn serve(
        &mut self,
        ingress: Arc<dyn Ingress>,
        access: Arc<access::Access>,
        shutdown: Shutdown,
    ) -> Result<(), BrokerError> {
        for (listener, _, _) in &self.listeners {
            if !access.has_rules() && !listener.addr.ip().is_loopback() {
                tracing::warn!(listener = %listener.name, "No [[broker.acl]] rules: every client of this network listener may publish and subscribe everywhere");
            }
        }
        let ctx = Arc::new(edge::EdgeContext::new(
            self.router.state.clone(),
            ingress,
            access,
            &self.settings,
            shutdown.clone(),
        ));
        shutdown.spawn(publish_lag(ctx.lag.clone(), shutdown.clone()));
        for (listener, tcp, security) in self.listeners.drain(..) {
            let bind = |source| BrokerError::Bind {
                name: listener.name.clone(),
                addr: listener.addr,
                source,
            };
            let tcp = tokio::net::TcpListener::from_std(tcp).map_err(bind)?;
            tracing::info!(listener = %listener.name, addr = %tcp.local_addr().map_err(bind)?, tls = ?security, "Broker listening");
            let task = format!("the accept loop of listener `{}`", listener.name);
            shutdown.spawn_vital(
                "broker",
                task,
                edge::transport::accept_loop(tcp, listener, security, ctx.clone()),
            );
        }
        Ok(())
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        if let Some(lifetime) = &self.own_router {
            lifetime.trigger();
        }
    }
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker")
            .field("listeners", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Keeps the subscriber lag gauges current.
async fn publish_lag(lag: Arc<edge::lag::LagTracker>, shutdown: Shutdown) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => lag.publish_metrics(),
            () = shutdown.cancelled() => return,
        }
    }
}
