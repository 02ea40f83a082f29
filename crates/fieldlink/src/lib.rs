//! The fieldlink gateway, built and wired from its configuration.
//!
//! [`Gateway::start`] builds every component from [`Settings`] and starts it; [`Gateway::stop`]
//! stops them in data-path order within the configured grace period. The CLI ([`cli`]) is a
//! thin layer over this, so tests can run the whole gateway in-process.

pub mod cli;
mod ingress;
mod systemd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use fieldlink_broker::{BrokerBus, RunningBroker};
use fieldlink_core::config::Settings;
use fieldlink_core::ports::{Health, Ingress, LocalBus, StatusBoard};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_queue::{Queue, StatvfsDisk};
use fieldlink_uplink::Uplink;

/// Messages waiting between the broker tap and ingress.
const TAP_CAPACITY: usize = 4096;

/// The version, as `fieldlink version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    settings: Settings,
    shutdown: Shutdown,
    status: StatusBoard,
    broker: RunningBroker,
    bus: Arc<BrokerBus>,
    ingress: Arc<ingress::RoutedIngress>,
    queue: Queue,
    uplink: Option<Uplink>,
}

impl Gateway {
    /// Builds and starts every component.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        fieldlink_core::tls::install_default_provider();
        let status = StatusBoard::default();

        let data_dir = settings.gateway.resolved_data_dir();
        create_private_dir(&data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        tracing::info!(data_dir = %data_dir.display(), "State directory ready");

        let shutdown = Shutdown::new();
        let queue_status = status.register("queue");
        let queue = open_queue(&settings, &data_dir).await?;
        queue_status.set(Health::Up);

        let broker_status = status.register("broker");
        let broker =
            RunningBroker::start(&settings.broker).context("cannot start the local broker")?;
        let bus = Arc::new(
            broker
                .bus(shutdown.clone())
                .context("cannot connect to the local broker")?,
        );
        let routes: Arc<[_]> = settings.routes.clone().into();
        if !routes.is_empty() {
            let tap = bus
                .tap("fieldlink-ingress", TAP_CAPACITY)
                .context("cannot connect ingress to the local broker")?;
            shutdown.spawn(ingress::run_tap(
                tap,
                routes.clone(),
                Arc::new(queue.clone()),
            ));
        }
        let ingress = Arc::new(ingress::RoutedIngress {
            routes,
            outbox: Arc::new(queue.clone()),
            bus: bus.clone(),
        });
        broker_status.set(Health::Up);

        if settings.devices.is_empty() {
            tracing::info!("No [[devices]] configured: the field-device bridge is idle");
        } else {
            fieldlink_serial::Bridge::start(
                settings.bridge.clone(),
                settings.devices.clone(),
                ingress.clone(),
                bus.clone(),
                status.register("devices"),
                shutdown.clone(),
            )
            .context("cannot start the field-device bridge")?;
            tracing::info!(
                devices = settings.devices.len(),
                "Field-device bridge started"
            );
        }

        let uplink = match &settings.uplink {
            None => {
                tracing::info!("No [uplink] configured: messages stay queued");
                None
            }
            Some(uplink) => {
                let runtime_dir = runtime_dir(&data_dir);
                create_private_dir(&runtime_dir).with_context(|| {
                    format!(
                        "cannot create the runtime directory {}",
                        runtime_dir.display()
                    )
                })?;
                let uplink = Uplink::start(
                    uplink.clone(),
                    Arc::new(queue.clone()),
                    &runtime_dir,
                    shutdown.clone(),
                )
                .context("cannot start the uplink")?;
                status.register("uplink").set(Health::Up);
                Some(uplink)
            }
        };

        Ok(Self {
            settings,
            shutdown,
            status,
            broker,
            bus,
            ingress,
            queue,
            uplink,
        })
    }

    /// Where the local broker's listeners are bound, in configuration order.
    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.broker.listen_addrs()
    }

    /// The way in for messages produced inside the gateway (routed, stored, then published).
    pub fn ingress(&self) -> Arc<dyn Ingress> {
        self.ingress.clone()
    }

    /// The local broker, seen from inside the process.
    pub fn bus(&self) -> Arc<dyn LocalBus> {
        self.bus.clone()
    }

    /// The store-and-forward queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The uplink, when one is configured.
    pub fn uplink(&self) -> Option<&Uplink> {
        self.uplink.as_ref()
    }

    /// Every component's health.
    pub fn status(&self) -> &StatusBoard {
        &self.status
    }

    /// Stops intake first, lets the rest drain within the grace period, then stops.
    /// Returns `false` when the grace period ran out before everything finished.
    pub async fn stop(self) -> bool {
        let grace = self.settings.gateway.shutdown_grace;
        // Intake first: the broker stops accepting and closes its clients.
        let broker = self.broker;
        let closed = tokio::task::spawn_blocking(move || broker.stop());
        let drained = self.shutdown.drain(grace).await;
        let closed = tokio::time::timeout(grace, closed).await.is_ok();
        // Last, once ingress has handed over everything: fold the WAL in and close the file.
        let queue_closed = tokio::time::timeout(grace, self.queue.close())
            .await
            .is_ok();
        drained && closed && queue_closed
    }
}

/// Opens the queue in the data directory, with each route's own limits.
pub async fn open_queue(settings: &Settings, data_dir: &std::path::Path) -> anyhow::Result<Queue> {
    let streams: HashMap<String, _> = settings
        .routes
        .iter()
        .map(|r| (r.name.clone(), r.limits))
        .collect();
    let queue = Queue::open(
        data_dir,
        settings.queue.clone(),
        streams,
        Arc::new(StatvfsDisk),
    )
    .await
    .context("cannot open the store-and-forward queue")?;
    tracing::info!(path = %queue.path().display(), "Queue open");
    Ok(queue)
}

/// Where private sockets live: systemd's `$RUNTIME_DIRECTORY`, else `run/` in the data directory.
fn runtime_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .map(|d| {
            d.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .filter(|d| !d.is_empty())
        .map_or_else(|| data_dir.join("run"), std::path::PathBuf::from)
}

/// Creates `dir` (and its parents) readable by the service user only.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
