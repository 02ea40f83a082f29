//! The web UI's view of the gateway: the [`fieldlink_web::Gateway`] port over the status
//! snapshot, the queue and the Prometheus recorder.

use std::sync::{Arc, OnceLock};

use fieldlink_core::message::Message;
use fieldlink_core::ports::{BoxFuture, LocalBus};
use fieldlink_core::topic::TopicFilter;
use fieldlink_queue::Queue;
use fieldlink_web::{QueueDetail, QueuedMessage, StatusFeed, StreamDetail};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Messages the queue page lists.
const PEEK: usize = 20;
/// Messages a live view's subscription holds before the broker slows delivery to it.
const LIVE_BACKLOG: usize = 64;

/// The gateway, as the web UI sees it.
pub(crate) struct WebGateway {
    pub(crate) status: StatusFeed,
    pub(crate) queue: Queue,
    pub(crate) bus: Arc<dyn LocalBus>,
    pub(crate) access: Arc<fieldlink_broker::access::Access>,
    /// The field devices, when there are any.
    pub(crate) devices: Option<Arc<crate::web_devices::DeviceWatch>>,
}

impl fieldlink_web::Gateway for WebGateway {
    fn status(&self) -> StatusFeed {
        self.status.clone()
    }

    fn queue(&self) -> BoxFuture<'_, Result<QueueDetail, String>> {
        Box::pin(async move {
            let stats = self.queue.stats().await.map_err(|e| e.to_string())?;
            let next = self.queue.peek(PEEK).await.map_err(|e| e.to_string())?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Ok(QueueDetail {
                messages: stats.messages,
                bytes: stats.bytes,
                leased: stats.leased,
                streams: stats
                    .streams
                    .into_iter()
                    .map(|(name, s)| StreamDetail {
                        name,
                        messages: s.messages,
                        bytes: s.bytes,
                    })
                    .collect(),
                next: next
                    .into_iter()
                    .map(|m| QueuedMessage {
                        id: m.id,
                        topic: m.message.topic.to_string(),
                        bytes: m.message.payload.len(),
                        age_s: u64::try_from(now_ms - m.enqueued_ms).unwrap_or(0) / 1000,
                        stream: m.stream,
                    })
                    .collect(),
            })
        })
    }

    fn purge_queue(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(async move { self.queue.purge().await.map_err(|e| e.to_string()) })
    }

    fn devices(&self) -> Vec<fieldlink_web::devices::DeviceView> {
        let Some(watch) = &self.devices else {
            return Vec::new();
        };
        let metrics = self.metrics();
        watch.view(&|device| crate::web_devices::errors_of(&metrics, device))
    }

    fn write_point(
        &self,
        device: &str,
        point: &str,
        value: fieldlink_web::devices::WriteValue,
    ) -> BoxFuture<'_, Result<String, String>> {
        let (device, point) = (device.to_owned(), point.to_owned());
        Box::pin(async move {
            match &self.devices {
                Some(watch) => watch.write(&device, &point, value).await,
                None => Err("no field devices are configured".into()),
            }
        })
    }

    fn watch_topics(
        &self,
        user: &str,
        filter: &TopicFilter,
    ) -> Result<tokio::sync::mpsc::Receiver<Message>, String> {
        // As the broker's edge checks a SUBSCRIBE from a local client named `user`.
        let identity = self.access.identity_for(user);
        if !self
            .access
            .may_subscribe(&identity, &format!("fieldlink-web-{user}"), filter)
        {
            return Err(format!(
                "the broker's ACLs do not let {user:?} subscribe to {filter}: add a \
                 [[broker.acl]] rule for this name, or watch a narrower filter"
            ));
        }
        self.bus
            .subscribe(filter, LIVE_BACKLOG)
            .map_err(|e| e.to_string())
    }

    fn metrics(&self) -> String {
        match prometheus() {
            Some(handle) => handle.render(),
            None => "# Another metrics recorder is installed in this process (a test's): \
                     nothing to export.\n"
                .into(),
        }
    }
}

/// The process's Prometheus recorder, installed the first time it is asked for; `None` when
/// another recorder was installed first (a test's).
pub(crate) fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "No Prometheus recorder: /metrics stays empty");
                None
            }
        })
        .as_ref()
}

/// Keeps the recorder's histograms from growing without end: the exporter folds old samples
/// only when asked to.
pub(crate) async fn upkeep_metrics(tasks: fieldlink_core::shutdown::Shutdown) {
    let Some(handle) = prometheus() else { return };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = tasks.cancelled() => return,
        }
    }
}

/// A shared feed for a status that is renewed elsewhere.
pub(crate) fn status_feed() -> (
    tokio::sync::watch::Sender<Option<Arc<fieldlink_core::status::GatewayStatus>>>,
    StatusFeed,
) {
    tokio::sync::watch::channel(None)
}

/// What the web UI holds for the whole life of the process: the status feed (renewed by
/// whichever set of components runs), the components running now (none while they restart
/// on a new configuration), and the configuration editor. The UI and its sessions outlive a
/// restart; each request reaches the components of the moment.
pub(crate) struct UiGateway {
    status: StatusFeed,
    current: std::sync::RwLock<Option<Arc<WebGateway>>>,
    editor: Option<Arc<crate::reconfigure::Editor>>,
}

/// What a request that needs the components hears while they restart.
const RESTARTING: &str = "the gateway is restarting on a new configuration: try again in a moment";

impl UiGateway {
    pub(crate) fn new(status: StatusFeed, editor: Option<Arc<crate::reconfigure::Editor>>) -> Self {
        Self {
            status,
            current: std::sync::RwLock::new(None),
            editor,
        }
    }

    /// Points the UI at `components` (`None` while they restart).
    pub(crate) fn attach(&self, components: Option<Arc<WebGateway>>) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = components;
    }

    fn components(&self) -> Result<Arc<WebGateway>, String> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| RESTARTING.to_owned())
    }

    fn editor(&self) -> Result<&crate::reconfigure::Editor, String> {
        self.editor
            .as_deref()
            .ok_or_else(|| fieldlink_web::editing::NOT_EDITABLE.to_owned())
    }
}

impl fieldlink_web::Gateway for UiGateway {
    fn status(&self) -> StatusFeed {
        self.status.clone()
    }

    fn queue(&self) -> BoxFuture<'_, Result<QueueDetail, String>> {
        let components = self.components();
        Box::pin(async move { components?.queue().await })
    }

    fn purge_queue(&self) -> BoxFuture<'_, Result<u64, String>> {
        let components = self.components();
        Box::pin(async move { components?.purge_queue().await })
    }

    fn devices(&self) -> Vec<fieldlink_web::devices::DeviceView> {
        self.components().map(|c| c.devices()).unwrap_or_default()
    }

    fn write_point(
        &self,
        device: &str,
        point: &str,
        value: fieldlink_web::devices::WriteValue,
    ) -> BoxFuture<'_, Result<String, String>> {
        let components = self.components();
        let (device, point) = (device.to_owned(), point.to_owned());
        Box::pin(async move { components?.write_point(&device, &point, value).await })
    }

    fn watch_topics(
        &self,
        user: &str,
        filter: &TopicFilter,
    ) -> Result<tokio::sync::mpsc::Receiver<Message>, String> {
        self.components()?.watch_topics(user, filter)
    }

    fn metrics(&self) -> String {
        match self.components() {
            Ok(components) => components.metrics(),
            Err(e) => format!("# {e}\n"),
        }
    }

    fn site_config(&self) -> Result<fieldlink_web::editing::SiteConfig, String> {
        self.editor()?.site_config()
    }

    fn uplink_csr(&self) -> Result<String, String> {
        self.editor()?.uplink_csr()
    }

    fn upload_uplink_cert(
        &self,
        pem: &str,
        user: &str,
    ) -> Result<(), fieldlink_web::editing::ApplyRefusal> {
        self.editor()
            .map_err(fieldlink_web::editing::ApplyRefusal::Refused)?
            .upload_uplink_cert(pem, user)
    }

    fn check_config(&self, text: &str) -> Result<fieldlink_web::editing::Checked, String> {
        self.editor()?.check(text).map(|(checked, _)| checked)
    }

    fn kept_config(&self, number: u64) -> Result<String, String> {
        self.editor()?.kept(number)
    }

    fn apply_config(
        &self,
        text: &str,
        user: &str,
    ) -> Result<(), fieldlink_web::editing::ApplyRefusal> {
        self.editor()
            .map_err(fieldlink_web::editing::ApplyRefusal::Refused)?
            .apply(text, user)
    }
}
