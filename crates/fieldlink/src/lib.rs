//! The fieldlink gateway, built and wired from its configuration.
//!
//! [`Gateway::start`] builds every component from [`Settings`] and starts it, each on the
//! [`Shutdown`] phase it stops with, under the [`supervisor`]; [`Gateway::run_until`] serves
//! until asked to stop or until a component fails; [`Gateway::stop`] stops them in data-path
//! order within the configured grace period. The CLI ([`cli`]) is a thin layer over this, so
//! tests can run the whole gateway in-process.
//!
//! Two parts: the components (`Core`: broker, queue, bridge, uplink, OTA, status), which
//! `run_until` may stop and start again in process on a configuration applied from the web UI
//! (`restart`), and the web UI, which is started once and outlives those restarts (its
//! sessions with it): it reaches the components of the moment through `web::UiGateway`.

pub mod cli;
pub mod config;
mod config_cli;
mod credentials_cli;
mod demo;
mod gateway;
mod ingress;
mod keys_cli;
mod ota_cli;
mod reconfigure;
mod restart;
pub mod service;
pub mod status;
pub mod supervisor;
mod systemd;
mod users_cli;
mod web;
mod web_certs;
mod web_devices;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Settings;
use anyhow::Context as _;
use fieldlink_broker::{BrokerBus, RunningBroker};
use fieldlink_core::ports::{Health, StatusBoard};
use fieldlink_core::shutdown::{Shutdown, TaskFailure};
use fieldlink_queue::{Queue, StatvfsDisk};
use fieldlink_uplink::Uplink;

pub use gateway::Gateway;
pub use reconfigure::Editable;

/// The version, as `fieldlink version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The components, all but the web UI: started on one configuration, stopped as a whole.
struct Core {
    settings: Settings,
    phases: Phases,
    status: StatusBoard,
    broker: RunningBroker,
    bus: Arc<BrokerBus>,
    ingress: Arc<ingress::RoutedIngress>,
    queue: Queue,
    uplink: Option<Uplink>,
    /// What the web UI sees of these components, when it runs.
    view: Option<Arc<web::WebGateway>>,
}

/// What every start of the components shares with the one before: the keys (one PKCS#11
/// session for the process), the local broker's router (with its retained messages and
/// sessions: rumqttd's cannot be stopped) and the status feed the web UI follows.
struct Shared {
    router: fieldlink_broker::BrokerRouter,
    /// The router's own tasks (stored sessions' clocks): stopped after the last components.
    router_tasks: Shutdown,
    keys: Arc<dyn fieldlink_core::tls::KeyResolver>,
    /// The same, as the keys crate's own type (certificate requests from the web UI).
    pkcs11: Arc<fieldlink_keys::Pkcs11Keys>,
    status_tx: tokio::sync::watch::Sender<Option<Arc<fieldlink_core::status::GatewayStatus>>>,
    status_feed: fieldlink_web::StatusFeed,
}

/// The order in which the gateway stops, one [`Shutdown`] per step.
#[derive(Debug, Clone)]
struct Phases {
    /// What takes messages in: the broker's listeners and sessions, the field-device bridge.
    intake: Shutdown,
    /// The uplink: stops publishing and writes the acknowledgements it has.
    delivery: Shutdown,
    /// The queue's writer: commits what intake and delivery handed it, then closes the file.
    storage: Shutdown,
    /// The supervisor's probes and the status file: signalled first, waited for last.
    upkeep: Shutdown,
}

/// Why [`Gateway::run_until`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop (the signal's name).
    Asked(&'static str),
    /// A component failed: it is down, and the gateway must be started again.
    Failed(TaskFailure),
}

impl Core {
    /// Builds and starts every component but the web UI. When one cannot start, those
    /// started before it are stopped before this returns: the queue's file is closed, the
    /// ports are free, and a start on another configuration (a rollback) finds them so.
    async fn start(settings: Settings, shared: &Shared) -> anyhow::Result<Self> {
        let upkeep = Shutdown::new();
        let phases = Phases {
            intake: upkeep.phase(),
            delivery: upkeep.phase(),
            storage: upkeep.phase(),
            upkeep,
        };
        let grace = settings.gateway.shutdown_grace;
        match Self::start_on(settings, shared, phases.clone()).await {
            Ok(core) => Ok(core),
            Err(e) => {
                // The queue writer ends once every handle on the queue is gone: those of the
                // tasks first, in every phase, then its own.
                phases.upkeep.trigger();
                phases.intake.trigger();
                phases.delivery.trigger();
                let done = phases.intake.drain(grace).await
                    && phases.delivery.drain(grace).await
                    && phases.upkeep.drain(grace).await
                    && phases.storage.drain(grace).await;
                if !done {
                    tracing::warn!("A component that had started did not stop in time");
                }
                Err(e)
            }
        }
    }

    async fn start_on(settings: Settings, shared: &Shared, phases: Phases) -> anyhow::Result<Self> {
        let status = StatusBoard::default();

        let data_dir = settings.gateway.resolved_data_dir();
        create_private_dir(&data_dir).context("the data directory")?;
        tracing::info!(data_dir = %data_dir.display(), "State directory ready");

        let runtime_dir = runtime_dir(&data_dir);
        tracing::info!(runtime_dir = %runtime_dir.display(), "Runtime directory ready");
        create_private_dir(&runtime_dir).context("the runtime directory")?;

        let queue_status = status.register("queue");
        let queue = open_queue(&settings, &data_dir, &phases.storage).await?;
        queue_status.set(Health::Up);

        let keys = shared.keys.clone();
        let broker_status = status.register("broker");
        let mut broker = RunningBroker::start_on(&shared.router, &settings.broker, keys.clone())
            .context("cannot start the local broker")?;
        supervisor::start(
            &phases.upkeep,
            &status,
            queue.clone(),
            queue_status,
            broker.router_liveness(),
        );
        let bus = Arc::new(
            broker
                .bus(phases.intake.clone())
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
            .serve(ingress.clone(), access.clone(), phases.intake.clone())
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
                phases.intake.clone(),
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
                    phases.delivery.clone(),
                    Arc::new(fieldlink_uplink::SystemResolver),
                    keys.clone(),
                )
                .context("cannot start the uplink")?;
                phases.delivery.spawn(mirror_uplink_health(
                    uplink.watch(),
                    status.register("uplink"),
                ));
                Some(uplink)
            }
        };

        if let Some(ota) = &settings.ota {
            start_ota(
                ota,
                &settings,
                &data_dir,
                &queue,
                &bus,
                &status,
                &phases.intake,
            )?;
        }

        phases.upkeep.spawn(status::publish(
            runtime_dir,
            status.clone(),
            queue.clone(),
            uplink.as_ref().map(Uplink::watch),
            shared.status_tx.clone(),
            settings.ota.as_ref().map(|ota| {
                ota.download_dir
                    .clone()
                    .unwrap_or_else(|| ota_dir(&data_dir))
            }),
            phases.upkeep.clone(),
        ));

        let view = match &settings.web {
            None => None,
            Some(_) => {
                let devices = if settings.devices.is_empty() {
                    None
                } else {
                    Some(
                        web_devices::DeviceWatch::start(
                            settings.bridge.clone(),
                            settings.devices.clone(),
                            bus.clone(),
                            &phases.intake,
                        )
                        .context("cannot follow the field devices for the web UI")?,
                    )
                };
                Some(Arc::new(web::WebGateway {
                    status: shared.status_feed.clone(),
                    queue: queue.clone(),
                    bus: bus.clone(),
                    access: access.clone(),
                    devices,
                }))
            }
        };

        Ok(Self {
            settings,
            phases,
            status,
            broker,
            bus,
            ingress,
            queue,
            uplink,
            view,
        })
    }

    /// Resolves with the first failure of a component: it is then down, and the gateway must
    /// be stopped and started again.
    async fn failed(&self) -> TaskFailure {
        let mut failures = self.phases.upkeep.failures();
        match failures.wait_for(|all| !all.is_empty()).await {
            Ok(all) => all[0].clone(),
            // The sender lives in `self`: never closed while `self` is borrowed.
            Err(_) => std::future::pending().await,
        }
    }

    /// Stops in data-path order within the grace period: intake (listeners, sessions, the
    /// field bridge) first, each finishing what it was storing; then the uplink, which writes
    /// the acknowledgements it has received; then the queue, which commits all of that and
    /// closes its file; the status file last. Returns `false` when the grace period ran out
    /// before everything finished.
    async fn stop(self) -> bool {
        let deadline = tokio::time::Instant::now() + self.settings.gateway.shutdown_grace;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // Probes first: a queue closing on purpose is no failure.
        self.phases.upkeep.trigger();
        let intake = self.phases.intake.drain(left()).await;
        let delivery = self.phases.delivery.drain(left()).await;
        // The cloud's commands reach the broker until the uplink has stopped.
        drop(self.broker);
        self.phases.storage.trigger();
        let queue = tokio::time::timeout(left(), self.queue.close())
            .await
            .is_ok();
        let storage = self.phases.storage.drain(left()).await;
        let upkeep = self.phases.upkeep.drain(left()).await;
        for (phase, done) in [
            ("intake", intake),
            ("delivery", delivery),
            ("queue", queue && storage),
            ("status", upkeep),
        ] {
            if !done {
                tracing::warn!(phase, "The grace period ran out before this part stopped");
            }
        }
        intake && delivery && queue && storage && upkeep
    }
}

/// The OTA agent: its downloads trust `ota.ca_file`, else the uplink's CA, else the system's,
/// under the uplink's TLS policy; its reports go through the queue.
fn start_ota(
    ota: &fieldlink_ota::config::OtaSettings,
    settings: &Settings,
    data_dir: &std::path::Path,
    queue: &Queue,
    bus: &Arc<BrokerBus>,
    status: &StatusBoard,
    tasks: &Shutdown,
) -> anyhow::Result<()> {
    use fieldlink_uplink::config::UplinkTls;
    let uplink_ca = settings.uplink.as_ref().and_then(|u| match &u.tls {
        UplinkTls::ServerAuth { ca_file } | UplinkTls::Mutual { ca_file, .. } => ca_file.clone(),
        UplinkTls::Psk { .. } => None,
    });
    let policy = fieldlink_core::tls::TlsPolicy {
        min_version: settings
            .uplink
            .as_ref()
            .map(|u| u.min_tls_version)
            .unwrap_or_default(),
        ..Default::default()
    };
    let ca_file = ota.ca_file.clone().or(uplink_ca);
    let tls = fieldlink_ota::tls::client_config(&policy, ca_file.as_deref())
        .context("cannot start the OTA agent")?;
    let dir = ota
        .download_dir
        .clone()
        .unwrap_or_else(|| ota_dir(data_dir));
    fieldlink_ota::start(
        ota.clone(),
        dir,
        Arc::new(tls),
        fieldlink_ota::Ports {
            outbox: Arc::new(queue.clone()),
            bus: bus.clone(),
            board: status.clone(),
        },
        tasks,
    )
    .context("cannot start the OTA agent")?;
    tracing::info!(topic = %ota.command_topic, "OTA agent started");
    Ok(())
}

/// The OTA agent's directory when `ota.download_dir` is not set: downloads and its state.
pub fn ota_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("ota")
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

/// Opens the queue in the data directory, with each route's own limits; its writer runs on
/// `tasks`.
pub async fn open_queue(
    settings: &Settings,
    data_dir: &std::path::Path,
    tasks: &Shutdown,
) -> anyhow::Result<Queue> {
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
        tasks,
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
