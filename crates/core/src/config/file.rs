//! The file layer: the TOML file as written, every field optional, every value with its place in
//! the file. [`super::validate`] turns it into [`super::Settings`].
//!
//! Integers are read as `i64` and checked in validation, so that "70000 is not a port" gets a
//! message of ours rather than serde's.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// The whole file: one section per component.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[gateway]`: process-wide settings.
    #[serde(default)]
    pub gateway: GatewayFile,
    /// `[broker]`: the local MQTT broker.
    #[serde(default)]
    pub broker: BrokerFile,
    /// `[queue]`: the store-and-forward queue.
    #[serde(default)]
    pub queue: QueueFile,
    /// `[[routes]]`: which local topics go to the cloud.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Where state (the queue database) lives.
    pub data_dir: Option<Spanned<PathBuf>>,
    /// How long shutdown may take, e.g. `"10s"`.
    pub shutdown_grace: Option<Spanned<String>>,
}

/// `[broker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFile {
    /// Most client connections at once.
    pub max_connections: Option<Spanned<i64>>,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_size: Option<Spanned<i64>>,
    /// Most unacknowledged QoS 1/2 messages per client.
    pub max_inflight: Option<Spanned<i64>>,
    /// Size of one in-memory log segment per subscription filter, in bytes.
    pub segment_size: Option<Spanned<i64>>,
    /// Segments kept per filter.
    pub segment_count: Option<Spanned<i64>>,
    /// How long a new connection may take to send CONNECT, e.g. `"5s"`.
    pub connect_timeout: Option<Spanned<String>>,
    /// `[[broker.listeners]]`.
    pub listeners: Option<Spanned<Vec<Spanned<ListenerFile>>>>,
}

/// `[[broker.listeners]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// A name for logs and metrics.
    pub name: Option<Spanned<String>>,
    /// The IP address to bind.
    pub bind: Option<Spanned<String>>,
    /// The TCP port.
    pub port: Option<Spanned<i64>>,
    /// `"3.1.1"` or `"5"`.
    pub mqtt: Option<Spanned<String>>,
}

/// `[queue]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Most bytes (payloads and topics) held, over all streams.
    pub max_bytes: Option<Spanned<i64>>,
    /// Most messages held, over all streams.
    pub max_messages: Option<Spanned<i64>>,
    /// Messages older than this are dropped, e.g. `"168h"`; `"0s"` keeps them for ever.
    pub max_age: Option<Spanned<String>>,
    /// `"reject"`, `"drop_oldest"` or `"drop_newest"`.
    pub when_full: Option<Spanned<String>>,
    /// Free disk space to keep: intake stops before the file system has less.
    pub disk_reserve: Option<Spanned<i64>>,
}

/// `[[routes]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The stream name; order is kept within a stream.
    pub name: Option<Spanned<String>>,
    /// The local topic filter whose messages this route takes.
    pub filter: Option<Spanned<String>>,
    /// `"low"`, `"normal"` or `"high"`.
    pub priority: Option<Spanned<String>>,
    /// Most messages this stream may hold in the queue.
    pub max_messages: Option<Spanned<i64>>,
    /// Most bytes this stream may hold in the queue.
    pub max_bytes: Option<Spanned<i64>>,
    /// What to do when this stream is full; the queue's `when_full` when left out.
    pub when_full: Option<Spanned<String>>,
}
