//! fieldlink's local MQTT broker: rumqttd embedded as the routing engine.
//!
//! rumqttd routes (sessions, QoS, retained messages, wills); this crate owns how it runs inside
//! the gateway:
//!
//! - **Sizing.** rumqttd keeps an in-memory commit log per subscription filter. Its sample
//!   configuration (100 MiB × 10 segments, 10 010 connections) is server-class; we translate
//!   `[broker]` into a log of `segment_size × segment_count` per filter and a bounded connection
//!   count, so memory stays small on a board.
//! - **Lifecycle.** rumqttd's `Broker::start` blocks for ever and has no stop call. We use its
//!   public parts instead: the router on its own thread, and each listener's accept loop on a
//!   runtime this crate owns, on one named thread. [`RunningBroker::stop`] drops that runtime,
//!   which closes every listening socket and every client connection. The router thread then
//!   sits idle on an empty channel (rumqttd keeps a sender of its own, so it cannot be ended)
//!   and goes with the process.
//! - **Bind errors** are reported to the caller at start, not logged by a thread that exits.
//!
//! rumqttd types stay inside this crate.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use fieldlink_core::config::{BrokerSettings, ListenerSettings, MqttVersion};
use fieldlink_core::ports::BusError;
use fieldlink_core::shutdown::Shutdown;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::{ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};
use tokio::sync::oneshot;

pub mod access;
mod bus;
pub use bus::BrokerBus;

/// Opens an in-process link to the router (rumqttd's sender type is not nameable from here).
type LinkFactory = Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx), String> + Send + Sync>;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A listener's address cannot be bound (in use, not an address of this machine, or a
    /// privileged port).
    #[error(
        "listener {name:?} cannot listen on {addr}: {source}. \
         Hint: pick a free port, or stop what holds it (ss -ltnp 'sport = :{port}')",
        port = addr.port()
    )]
    Bind {
        /// The listener's name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The broker's thread could not be started.
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
    /// The router refused an in-process link (e.g. its connection limit is reached).
    #[error("cannot open an in-process link to the broker: {0}")]
    Link(String),
}

/// The local broker, running.
pub struct RunningBroker {
    listeners: Vec<SocketAddr>,
    links: LinkFactory,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningBroker {
    /// Starts the router and every listener of `settings`.
    pub fn start(settings: &BrokerSettings) -> Result<Self, BrokerError> {
        // Check every address first, so that a clash is an error here and now. tokio sets
        // SO_REUSEADDR, so the real bind just after cannot trip on this probe.
        let mut listeners = Vec::with_capacity(settings.listeners.len());
        for listener in &settings.listeners {
            let probe = TcpListener::bind(listener.addr).map_err(|source| BrokerError::Bind {
                name: listener.name.clone(),
                addr: listener.addr,
                source,
            })?;
            // Port 0 asks for any free port: keep the one the OS gave.
            listeners.push(probe.local_addr().unwrap_or(listener.addr));
        }

        let router_tx = Router::new(0, router_config(settings)).spawn();
        let link_tx = router_tx.clone();
        let links: LinkFactory = Arc::new(move |client_id: &str| {
            LinkBuilder::new(client_id, link_tx.clone())
                .build()
                .map(|(tx, rx, _ack)| (tx, rx))
                .map_err(|e: LinkError| e.to_string())
        });
        let servers: Vec<(ListenerSettings, ServerSettings)> = settings
            .listeners
            .iter()
            .zip(&listeners)
            .map(|(l, addr)| (l.clone(), server_settings(l, *addr, settings)))
            .collect();

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BrokerError>>();
        let thread = std::thread::Builder::new()
            .name("fieldlink-broker".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "Cannot build the broker runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut tasks = Vec::with_capacity(servers.len());
                    for (listener, server) in servers {
                        let tx = router_tx.clone();
                        let name = listener.name.clone();
                        let addr = server.listen;
                        let task = tokio::spawn(async move {
                            let result = match listener.mqtt {
                                MqttVersion::V311 => {
                                    Server::new(server, tx, V4).start(LinkType::Remote).await
                                }
                                MqttVersion::V5 => {
                                    Server::new(server, tx, V5).start(LinkType::Remote).await
                                }
                            };
                            if let Err(e) = &result {
                                tracing::error!(listener = %listener.name, error = ?e, "Listener stopped");
                            }
                            result
                        });
                        tasks.push((name, addr, task));
                    }
                    // On this single-threaded runtime the spawned accept loops run before we
                    // are polled again, and binding is their first, non-blocking step: after
                    // this yield every listener is bound, or its task has ended with the error.
                    tokio::task::yield_now().await;
                    let mut ready = Ok(());
                    for (name, addr, task) in tasks {
                        if task.is_finished() {
                            // rumqttd's error type is private; its text is what we have.
                            let source = match task.await {
                                Ok(Err(e)) => std::io::Error::other(e.to_string()),
                                Ok(Ok(())) => std::io::Error::other("the listener ended"),
                                Err(e) => std::io::Error::other(e.to_string()),
                            };
                            ready = Err(BrokerError::Bind { name, addr, source });
                            break;
                        }
                    }
                    let failed = ready.is_err();
                    let _ = ready_tx.send(ready);
                    if failed {
                        return;
                    }
                    // Either a stop request or the handle being dropped ends the broker.
                    let _ = stop_rx.await;
                });
                // Dropping the runtime cancels every accept loop and client task, closing their
                // sockets.
                drop(runtime);
            })
            .map_err(BrokerError::Thread)?;
        let mut broker = Self {
            listeners,
            links,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            // The thread ended without a word: its runtime could not be built (logged there).
            Err(_) => {
                broker.shutdown();
                return Err(BrokerError::Thread(std::io::Error::other(
                    "the broker thread ended at start",
                )));
            }
        }

        for (listener, addr) in settings.listeners.iter().zip(&broker.listeners) {
            tracing::info!(listener = %listener.name, %addr, mqtt = ?listener.mqtt, "Broker listening");
        }
        Ok(broker)
    }

    /// The address each listener is bound to, in configuration order.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listeners
    }

    /// The local broker seen from inside the process (publish, subscribe, the ingress tap).
    /// Its links end when `shutdown` is cancelled.
    ///
    /// Must be called from a tokio runtime; blocks briefly while the router registers the link.
    pub fn bus(&self, shutdown: Shutdown) -> Result<BrokerBus, BusError> {
        BrokerBus::new(self.links.clone(), shutdown)
    }

    /// Closes every listener and client connection, and waits until they are closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The thread only drops its runtime after the stop signal; a panic there was
            // already reported by the panic hook.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for RunningBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBroker")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn router_config(settings: &BrokerSettings) -> RouterConfig {
    RouterConfig {
        max_connections: settings.max_connections,
        // Packets a slow subscriber may have queued before rumqttd pauses its reads.
        max_outgoing_packet_count: 200,
        max_segment_size: settings.segment_size,
        max_segment_count: settings.segment_count,
        ..RouterConfig::default()
    }
}

fn server_settings(
    listener: &ListenerSettings,
    addr: SocketAddr,
    settings: &BrokerSettings,
) -> ServerSettings {
    ServerSettings {
        name: listener.name.clone(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            // Validation keeps the timeout within u16 milliseconds.
            connection_timeout_ms: u16::try_from(settings.connect_timeout.as_millis())
                .unwrap_or(u16::MAX),
            max_payload_size: settings.max_packet_size,
            max_inflight_count: usize::from(settings.max_inflight),
            auth: None,
            external_auth: None,
            // Clients may subscribe to any filter, not only pre-declared ones.
            dynamic_filters: true,
        },
    }
}
