//! The local web UI: see and manage the gateway from a browser, HTTPS only.
//!
//! - [`config`]: `[web]` (where it listens, its certificate, session lifetimes);
//! - [`identity`]: the certificate (the operator's, a key in a token included, or a
//!   self-signed one made at first start, its fingerprint logged);
//! - [`users`]: accounts (admin, viewer) with argon2id hashes in a 0600 file; no default
//!   password: with no account yet, a one-time setup token printed to the log makes the first
//!   admin;
//! - [`sessions`], [`throttle`]: cookie sessions with idle and absolute timeouts and a CSRF
//!   token each; logins throttled per address and overall;
//! - `routes`: every route with the access it needs, declared in one table, enforced by one
//!   middleware (a route cannot be added without saying who may use it);
//! - `live`: the local broker's messages on a topic filter, streamed to the page (ACL-checked,
//!   rate-bounded, ended with the page);
//! - [`editing`], `pages::config`: the site configuration edited, checked (every mistake at
//!   its line), diffed against the running one and applied with automatic rollback;
//! - `pages`, `api`: server-rendered HTML (escaped by construction), our own small script for
//!   the live dashboard (server-sent events), and the same data as JSON under `/api/v1`.
//!
//! What the UI shows and changes comes through the [`Gateway`] port, which the binary
//! implements; this crate depends on `core` only.

pub mod config;
pub mod identity;
pub mod sessions;
pub mod throttle;
pub mod users;

mod api;
mod app;
mod assets;
pub mod devices;
pub mod editing;
mod live;
mod pages;
mod routes;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fieldlink_core::message::Message;
use fieldlink_core::ports::BoxFuture;
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::status::GatewayStatus;
use fieldlink_core::tls::KeyResolver;
use fieldlink_core::topic::TopicFilter;
use tokio::sync::watch;

pub use routes::{Access, route_table};
pub use server::WebUi;

/// The shortest password accepted for an account (characters).
pub const MIN_PASSWORD: usize = 10;

/// The latest status snapshot; `None` until the first one is taken.
pub type StatusFeed = watch::Receiver<Option<Arc<GatewayStatus>>>;

/// The queue as its page shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueueDetail {
    /// Messages held, all streams.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Messages handed to the uplink and not yet acknowledged.
    pub leased: u64,
    /// Per stream (route): name, messages, bytes.
    pub streams: Vec<StreamDetail>,
    /// The next messages to go, oldest first.
    pub next: Vec<QueuedMessage>,
}

/// One stream of the queue.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StreamDetail {
    /// The route's name.
    pub name: String,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// One queued message, without its payload (which may be anything a device sent).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueuedMessage {
    /// Its id in the queue.
    pub id: i64,
    /// Its stream.
    pub stream: String,
    /// Its topic.
    pub topic: String,
    /// Its payload's size in bytes.
    pub bytes: usize,
    /// How long it has waited, in seconds.
    pub age_s: u64,
}

/// What the web UI needs from the rest of the gateway. The binary implements it.
pub trait Gateway: Send + Sync + 'static {
    /// The status snapshot, renewed every couple of seconds.
    fn status(&self) -> StatusFeed;
    /// The queue in detail.
    fn queue(&self) -> BoxFuture<'_, Result<QueueDetail, String>>;
    /// Deletes every queued message; how many there were.
    fn purge_queue(&self) -> BoxFuture<'_, Result<u64, String>>;
    /// Every metric, in Prometheus' text format.
    fn metrics(&self) -> String;
    /// The field devices, their points' last values, their errors.
    fn devices(&self) -> Vec<devices::DeviceView>;
    /// Writes `value` to `device`'s `point` through the field bridge and waits for the
    /// device's answer: `Ok` with it in words, `Err` with why the write failed.
    fn write_point(
        &self,
        device: &str,
        point: &str,
        value: devices::WriteValue,
    ) -> BoxFuture<'_, Result<String, String>>;
    /// The local broker's messages on `filter`, as the web account `user` would get them as an
    /// MQTT client of the local broker (its ACLs apply); `Err`, in words, when it may not
    /// subscribe. The subscription ends when the receiver is dropped.
    fn watch_topics(
        &self,
        user: &str,
        filter: &TopicFilter,
    ) -> Result<tokio::sync::mpsc::Receiver<Message>, String>;
    /// The site configuration, its kept versions and the last apply.
    fn site_config(&self) -> Result<editing::SiteConfig, String> {
        Err(editing::NOT_EDITABLE.into())
    }
    /// `text` as the site layer, read on top of the shipped file by the same reader as
    /// `check-config`: every mistake, else what it changes against the running configuration.
    fn check_config(&self, text: &str) -> Result<editing::Checked, String> {
        let _ = text;
        Err(editing::NOT_EDITABLE.into())
    }
    /// A certificate request (PEM) for the uplink's key, its subject the uplink's client id.
    fn uplink_csr(&self) -> Result<String, String> {
        Err(editing::NOT_EDITABLE.into())
    }
    /// Checks `pem` as the uplink's new certificate (parses, its key, chains to the configured
    /// CA, valid now), writes it where the configuration points and applies it like a
    /// configuration: restart, health check, kept or the previous file back.
    fn upload_uplink_cert(&self, pem: &str, user: &str) -> Result<(), editing::ApplyRefusal> {
        let _ = (pem, user);
        Err(editing::ApplyRefusal::Refused(editing::NOT_EDITABLE.into()))
    }
    /// The text of kept version `number`.
    fn kept_config(&self, number: u64) -> Result<String, String> {
        let _ = number;
        Err(editing::NOT_EDITABLE.into())
    }
    /// Starts applying `text` as the site layer on behalf of `user`: the gateway restarts on it
    /// in process (the UI keeps running), is health-checked, then keeps it or rolls back. Its
    /// progress is [`editing::SiteConfig::apply`].
    fn apply_config(&self, text: &str, user: &str) -> Result<(), editing::ApplyRefusal> {
        let _ = (text, user);
        Err(editing::ApplyRefusal::Refused(editing::NOT_EDITABLE.into()))
    }
}

/// Why the web UI cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// Its certificate.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// Its accounts file.
    #[error(transparent)]
    Users(#[from] users::UsersError),
    /// Its address.
    #[error(
        "cannot listen on {addr} for the web UI: {source}. Hint: choose another web.port, or stop what uses it"
    )]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Where the UI keeps its files in the data directory: accounts, self-signed certificate.
pub fn web_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("web")
}

/// The accounts file in the data directory.
pub fn users_file(data_dir: &Path) -> PathBuf {
    web_dir(data_dir).join("users")
}

/// Builds the UI (its certificate, its accounts, its socket) and serves it on `tasks` until
/// they stop.
pub fn start(
    settings: &config::WebSettings,
    data_dir: &Path,
    keys: &dyn KeyResolver,
    gateway: Arc<dyn Gateway>,
    tasks: &Shutdown,
) -> Result<WebUi, WebError> {
    WebUi::start(settings, data_dir, keys, gateway, tasks)
}
