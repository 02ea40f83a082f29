//! The fieldlink gateway, built and wired from its configuration.
//!
//! [`Gateway::start`] builds every component from [`Settings`] and starts it; [`Gateway::stop`]
//! stops them in data-path order within the configured grace period. The CLI ([`cli`]) is a
//! thin layer over this, so tests can run the whole gateway in-process.

pub mod cli;
pub mod config;
mod credentials_cli;
mod ingress;
mod keys_cli;
pub mod service;
pub mod status;
mod systemd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Settings;
use anyhow::Context as _;
use fieldlink_broker::{BrokerBus, RunningBroker};
use fieldlink_core::ports::{Health, Ingress, LocalBus, StatusBoard};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_queue::{Queue, StatvfsDisk};
use fieldlink_uplink::Uplink;

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
        create_private_dir(&data_dir).context("the data directory")?;
        tracing::info!(data_dir = %data_dir.display(), "State directory ready");

        let runtime_dir = runtime_dir(&data_dir);
        tracing::info!(runtime_dir = %runtime_dir.display(), "Runtime directory ready");
        create_private_dir(&runtime_dir).context("the runtime directory")?;

        let shutdown = Shutdown::new();
        let queue_status = status.register("queue");
        let queue = open_queue(&settings, &data_dir).await?;
        queue_status.set(Health::Up);

        // Key files and keys in PKCS#11 tokens, for the broker's listeners and the uplink.
        let keys: Arc<dyn fieldlink_core::tls::KeyResolver> =
            Arc::new(fieldlink_keys::Pkcs11Keys::new(&settings.keys));
        let broker_status = status.register("broker");
        let mut broker = RunningBroker::start_with_keys(&settings.broker, keys.clone())
            .context("cannot start the local broker")?;
        let bus = Arc::new(
            broker
                .bus(shutdown.clone())
                .context("cannot connect to the local broker")?,
        );
        let ingress = Arc::new(ingress::RoutedIngress {
            routes: settings.routes.clone().into(),
            outbox: Arc::new(queue.clone()),
            bus: bus.clone(),
        });
        let access = Arc::new(
            fieldlink_broker::access::Access::new(&settings.broker.access)
                .context("cannot read the local broker's credentials")?,
        );
        broker
            .serve(ingress.clone(), access, shutdown.clone())
            .context("cannot start the local broker's listeners")?;
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
                let uplink = Uplink::start_with_keys(
                    uplink.clone(),
                    Arc::new(queue.clone()),
                    bus.clone(),
                    &runtime_dir,
                    shutdown.clone(),
                    Arc::new(fieldlink_uplink::SystemResolver),
                    keys.clone(),
                )
                .context("cannot start the uplink")?;
                shutdown.spawn(mirror_uplink_health(
                    uplink.watch(),
                    status.register("uplink"),
                ));
                Some(uplink)
            }
        };

        shutdown.spawn(status::publish(
            runtime_dir,
            status.clone(),
            queue.clone(),
            uplink.as_ref().map(Uplink::watch),
            shutdown.clone(),
        ));

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
        // The broker's listeners and sessions end on the signal, as every other task does;
        // sessions finish what they were storing before they close.
        let drained = self.shutdown.drain(grace).await;
        drop(self.broker);
        // Last, once ingress has handed over everything: fold the WAL in and close the file.
        let queue_closed = tokio::time::timeout(grace, self.queue.close())
            .await
            .is_ok();
        drained && queue_closed
    }
}

/// The uplink's health follows its state: up when connected, else degraded (not down) with
/// the state in words, since messages are kept meanwhile.
async fn mirror_uplink_health(
    mut uplink: tokio::sync::watch::Receiver<fieldlink_uplink::UplinkStatus>,
    reporter: fieldlink_core::ports::StatusReporter,
) {
    // The status changes with every acknowledgement; the health only when the state does,
    // so compare before building anything.
    let mut shown: Option<fieldlink_uplink::UplinkState> = None;
    loop {
        let now = {
            let s = uplink.borrow_and_update();
            (shown.as_ref() != Some(&s.state)).then(|| s.state.clone())
        };
        if let Some(state) = now {
            reporter.set(if state.is_connected() {
                Health::Up
            } else {
                Health::Degraded(state.to_string())
            });
            shown = Some(state);
        }
        if uplink.changed().await.is_err() {
            break;
        }
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
    let after_clean_close = queue
        .stats()
        .await
        .is_ok_and(|s| s.opened_after_clean_close);
    tracing::info!(
        path = %queue.path().display(),
        after_clean_close,
        "Queue open ({})",
        if after_clean_close {
            "closed cleanly last time: depth as saved, no full integrity check"
        } else {
            "first start or after an unclean stop: every row checked and counted"
        }
    );
    Ok(queue)
}

/// Where private sockets and the status file live: on tmpfs, so that the status rewritten
/// every few seconds never wears the SD card. systemd's `$RUNTIME_DIRECTORY`; else, for a
/// gateway started by hand, `/run/fieldlink/<instance>` as root or
/// `$XDG_RUNTIME_DIR/fieldlink/<instance>` otherwise, where the instance is named after the
/// data directory (so that `fieldlink status --config X` finds X's gateway and several gateways
/// never share one), except that root's default data directory is the installed unit's, whose
/// runtime directory is `/run/fieldlink`; only without any of these, `run/` in the data
/// directory.
pub fn runtime_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    runtime_dir_from_env().unwrap_or_else(|| instance_runtime_dir(data_dir))
}

/// [`runtime_dir`] without `$RUNTIME_DIRECTORY`: where the gateway of `data_dir` keeps its
/// runtime files when it is not run by systemd.
pub fn instance_runtime_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    let root = config::is_root();
    // Root with the unit's data directory: the unit's runtime directory, where the service
    // writes its status (a gateway started by hand with it is the same instance).
    if let Some(dir) = service::runtime_dir_of(data_dir).filter(|_| root) {
        return dir;
    }
    let base = if root {
        Some(std::path::PathBuf::from("/run"))
    } else {
        std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
    };
    match base.filter(|b| b.is_dir()) {
        Some(base) => base.join("fieldlink").join(instance_name(data_dir)),
        None => data_dir.join("run"),
    }
}

/// A stable, file-name-safe name for the gateway that keeps its state in `data_dir`.
fn instance_name(data_dir: &std::path::Path) -> String {
    // FNV-1a: stable across releases and platforms (std's hasher is neither promised).
    let hash = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    let tail: String = data_dir
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(24)
        .collect();
    format!("{tail}-{hash:016x}")
}

/// systemd's `$RUNTIME_DIRECTORY` (its first entry), when set.
fn runtime_dir_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os("RUNTIME_DIRECTORY")
        .map(|d| {
            d.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
}

/// Creates `dir` (and its parents) readable by the service user only, or tightens it if
/// others can read it (a data directory made 0755 by hand, a umask of 022).
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use fieldlink_core::private_fs::{Outcome, private_dir};
    if let Outcome::Tightened { from } = private_dir(dir)? {
        tracing::warn!(
            dir = %dir.display(),
            "Other users could read this directory (mode {from:o}): made it 0700"
        );
    }
    Ok(())
}
