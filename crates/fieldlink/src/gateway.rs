//! The running gateway: the components (`Core`), which an apply from the web UI restarts in
//! process, and the web UI, which is started once and outlives those restarts.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use fieldlink_core::ports::{Ingress, LocalBus, StatusBoard};
use fieldlink_core::shutdown::{Shutdown, TaskFailure};
use fieldlink_queue::Queue;
use fieldlink_uplink::Uplink;

use crate::config::Settings;
use crate::reconfigure::{ApplyRequest, Editable, Editor};
use crate::{Core, Ended, Shared, supervisor, web};

/// A running gateway.
pub struct Gateway {
    /// `None` only while `run_until` restarts the components (it holds `&mut self` then), or
    /// after a restart on the previous configuration failed too (`run_until` then returns
    /// [`Ended::Failed`]).
    core: Option<Core>,
    shared: Shared,
    front: Option<Front>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("web", &self.front.as_ref().map(|f| f.ui.addr()))
            .finish_non_exhaustive()
    }
}

/// The web UI and what it holds across restarts of the components.
pub(crate) struct Front {
    ui: fieldlink_web::WebUi,
    /// Its own tasks: not stopped by a restart of the components.
    tasks: Shutdown,
    pub(crate) port: Arc<web::UiGateway>,
    pub(crate) editor: Option<Arc<Editor>>,
    applies: Option<tokio::sync::mpsc::Receiver<Box<ApplyRequest>>>,
}

/// What `run_until` waits for.
enum Event {
    Stop(&'static str),
    Failed(TaskFailure),
    /// Boxed: settings are large, and events are many.
    Apply(Box<ApplyRequest>),
    Tick,
}

impl Gateway {
    /// Builds and starts every component, and the web UI when configured (its configuration
    /// page then has nothing to edit: see [`Self::start_editable`]).
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        Self::start_with(settings, None).await
    }

    /// [`Self::start`] for a gateway read from its files, whose web UI may then edit and apply
    /// the site configuration.
    pub async fn start_editable(settings: Settings, editable: Editable) -> anyhow::Result<Self> {
        Self::start_with(settings, Some(editable)).await
    }

    async fn start_with(settings: Settings, editable: Option<Editable>) -> anyhow::Result<Self> {
        fieldlink_core::tls::install_default_provider();
        if settings.web.is_some() {
            // Before any component emits: metrics recorded earlier would go nowhere.
            web::prometheus();
        }
        let (status_tx, status_feed) = web::status_feed();
        // Key files and keys in PKCS#11 tokens, for the listeners, the uplink and the UI.
        let pkcs11 = Arc::new(fieldlink_keys::Pkcs11Keys::new(&settings.keys));
        let router_tasks = Shutdown::new();
        let shared = Shared {
            router: fieldlink_broker::BrokerRouter::start(&settings.broker, router_tasks.clone()),
            router_tasks,
            keys: pkcs11.clone(),
            pkcs11,
            status_tx,
            status_feed,
        };
        let core = Core::start(settings, &shared).await?;
        let front = match &core.settings.web {
            None => None,
            Some(web_settings) => {
                let tasks = Shutdown::new();
                let (requests, applies) = tokio::sync::mpsc::channel(1);
                let editor = editable.map(|e| {
                    Arc::new(Editor::new(
                        e,
                        core.settings.clone(),
                        requests,
                        shared.pkcs11.clone(),
                    ))
                });
                let port = Arc::new(web::UiGateway::new(
                    shared.status_feed.clone(),
                    editor.clone(),
                ));
                port.attach(core.view.clone());
                let ui = fieldlink_web::start(
                    web_settings,
                    &core.settings.gateway.resolved_data_dir(),
                    shared.keys.as_ref(),
                    port.clone(),
                    &tasks,
                )
                .context("cannot start the web UI")?;
                tasks.spawn(web::upkeep_metrics(tasks.clone()));
                Some(Front {
                    ui,
                    tasks,
                    port,
                    editor,
                    applies: Some(applies),
                })
            }
        };
        Ok(Self {
            core: Some(core),
            shared,
            front,
        })
    }

    fn core(&self) -> &Core {
        // Only `run_until` takes it out, and it holds `&mut self` while it does.
        self.core
            .as_ref()
            .expect("the components run outside a restart")
    }

    /// The SHA-256 fingerprint of the web UI's certificate, when it runs.
    pub fn web_fingerprint(&self) -> Option<&str> {
        self.front.as_ref().map(|f| f.ui.fingerprint())
    }

    /// Where the web UI listens, when it runs.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.front.as_ref().map(|f| f.ui.addr())
    }

    /// Where the local broker's listeners are bound, in configuration order.
    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.core().broker.listen_addrs()
    }

    /// The way in for messages produced inside the gateway (routed, stored, then published).
    pub fn ingress(&self) -> Arc<dyn Ingress> {
        self.core().ingress.clone()
    }

    /// The local broker, seen from inside the process.
    pub fn bus(&self) -> Arc<dyn LocalBus> {
        self.core().bus.clone()
    }

    /// The store-and-forward queue.
    pub fn queue(&self) -> &Queue {
        &self.core().queue
    }

    /// The uplink, when one is configured.
    pub fn uplink(&self) -> Option<&Uplink> {
        self.core().uplink.as_ref()
    }

    /// Every component's health.
    pub fn status(&self) -> &StatusBoard {
        &self.core().status
    }

    /// The configuration the components run on.
    pub fn settings(&self) -> &Settings {
        &self.core().settings
    }

    /// Serves until `stop` resolves or a component fails, pinging `watchdog` meanwhile while
    /// every component works (if degraded, as in a cloud outage); a component down stops the
    /// pings at once, before anything else. A configuration applied from the web UI is tried
    /// here: the components restart on it and are checked, then it is kept or rolled back
    /// (the watchdog is fed meanwhile; a stop signal is heard once the apply has ended).
    pub async fn run_until(
        &mut self,
        stop: impl std::future::Future<Output = &'static str>,
        watchdog: Option<supervisor::Watchdog>,
    ) -> Ended {
        tokio::pin!(stop);
        let mut watchdog = watchdog.map(|w| (tokio::time::interval(w.every), w.ping));
        let mut applies = self.front.as_mut().and_then(|f| f.applies.take());
        let ended = loop {
            let event = {
                let tick = async {
                    match watchdog.as_mut() {
                        Some((interval, _)) => drop(interval.tick().await),
                        None => std::future::pending().await,
                    }
                };
                let apply = async {
                    match applies.as_mut() {
                        Some(applies) => applies.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    signal = &mut stop => Event::Stop(signal),
                    failure = self.failed() => Event::Failed(failure),
                    Some(request) = apply => Event::Apply(request),
                    () = tick => Event::Tick,
                }
            };
            match event {
                Event::Stop(signal) => break Ended::Asked(signal),
                Event::Failed(failure) => {
                    // Shown down by the time the caller hears of it.
                    if let Some(core) = &self.core {
                        core.status.fail(failure.component, failure.to_string());
                    }
                    break Ended::Failed(failure);
                }
                Event::Tick => {
                    if let Some((_, ping)) =
                        watchdog.as_mut().filter(|_| self.core().status.serving())
                    {
                        ping();
                    }
                }
                Event::Apply(request) => {
                    let restarted = {
                        let apply = crate::restart::apply(self, *request);
                        tokio::pin!(apply);
                        loop {
                            let tick = async {
                                match watchdog.as_mut() {
                                    Some((interval, _)) => drop(interval.tick().await),
                                    None => std::future::pending().await,
                                }
                            };
                            tokio::select! {
                                done = &mut apply => break done,
                                // Restarting on purpose, the UI serving: alive.
                                () = tick => if let Some((_, ping)) = watchdog.as_mut() { ping() },
                            }
                        }
                    };
                    if let Err(failure) = restarted {
                        break Ended::Failed(failure);
                    }
                }
            }
        };
        if let Some(front) = self.front.as_mut() {
            front.applies = applies;
        }
        ended
    }

    /// Resolves with the first failure of a component or of the web UI: it is then down, and
    /// the gateway must be stopped and started again.
    pub async fn failed(&self) -> TaskFailure {
        let web = async {
            match &self.front {
                Some(front) => first_failure(&front.tasks).await,
                None => std::future::pending().await,
            }
        };
        let core = async {
            match &self.core {
                Some(core) => core.failed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            failure = core => failure,
            failure = web => failure,
        }
    }

    /// Stops the web UI, then the components in data-path order within the grace period (see
    /// `Core::stop`). Returns `false` when the grace period ran out before everything finished.
    pub async fn stop(self) -> bool {
        let grace = self
            .core
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |c| {
                c.settings.gateway.shutdown_grace
            });
        let web = match &self.front {
            // Its connections end within 2 s (see the web crate's server).
            Some(front) => front.tasks.drain(grace).await,
            None => true,
        };
        if !web {
            tracing::warn!(
                phase = "web",
                "The grace period ran out before this part stopped"
            );
        }
        let core = match self.core {
            Some(core) => core.stop().await,
            None => true,
        };
        // Only clocks of stored sessions: they end at once.
        self.shared.router_tasks.trigger();
        let router = self.shared.router_tasks.drain(grace).await;
        web && core && router
    }

    /// Takes the components out to restart them (see `crate::restart`).
    pub(crate) fn take_core(&mut self) -> Option<Core> {
        self.core.take()
    }

    /// Starts the components on `settings` and points the web UI at them.
    pub(crate) async fn start_core(&mut self, settings: Settings) -> anyhow::Result<()> {
        let core = Core::start(settings, &self.shared).await?;
        if let Some(front) = &self.front {
            front.port.attach(core.view.clone());
        }
        self.core = Some(core);
        Ok(())
    }

    /// The running components (`None` after a failed restart).
    pub(crate) fn running(&self) -> Option<&Core> {
        self.core.as_ref()
    }

    pub(crate) fn front(&self) -> Option<&Front> {
        self.front.as_ref()
    }
}

async fn first_failure(tasks: &Shutdown) -> TaskFailure {
    let mut failures = tasks.failures();
    match failures.wait_for(|all| !all.is_empty()).await {
        Ok(all) => all[0].clone(),
        // The sender lives in `tasks`: never closed while it is borrowed.
        Err(_) => std::future::pending().await,
    }
}
