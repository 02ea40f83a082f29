//! The file layer: the TOML file as written, every field optional, every value with its place in
//! the file. [`super::validate`] turns it into [`super::Settings`].
//!
//! Integers are read as `i64` and checked in validation, so that "70000 is not a port" gets a
//! message of ours rather than serde's.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

pub use super::access::AclRuleFile;

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
    /// `[uplink]`: the cloud broker; no uplink when absent.
    pub uplink: Option<Spanned<UplinkFile>>,
    /// `[[routes]]`: which local topics go to the cloud.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    /// `[bridge]`: how field-device values become MQTT messages.
    #[serde(default)]
    pub bridge: BridgeFile,
    /// `[[devices]]`: the field devices read (and written) by the bridge.
    #[serde(default)]
    pub devices: Vec<Spanned<DeviceFile>>,
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
    /// Most messages per second one client may publish; reading pauses beyond it.
    pub max_message_rate: Option<Spanned<i64>>,
    /// Most distinct subscription filters the broker keeps (each holds its own log).
    pub max_filters: Option<Spanned<i64>>,
    /// Most new subscription filters one identity may add to `max_filters`.
    pub max_filters_per_identity: Option<Spanned<i64>>,
    /// Largest CONNECT packet accepted, in bytes (also capped by `max_packet_size`).
    pub max_connect_size: Option<Spanned<i64>>,
    /// Most connections not yet authenticated; the oldest gives way to a new one.
    pub max_unauthenticated: Option<Spanned<i64>>,
    /// Most connections not yet authenticated from one source address.
    pub max_unauthenticated_per_address: Option<Spanned<i64>>,
    /// How long a write to a client may stay blocked before the connection is dropped.
    pub write_timeout: Option<Spanned<String>>,
    /// Most MQTT 5 delayed wills kept for clients that went away.
    pub max_delayed_wills: Option<Spanned<i64>>,
    /// Most bytes of MQTT 5 delayed wills kept, topics and payloads together.
    pub max_delayed_will_bytes: Option<Spanned<i64>>,
    /// Longest will delay honoured; a longer one is shortened to it.
    pub max_will_delay: Option<Spanned<String>>,
    /// `[[broker.listeners]]`.
    pub listeners: Option<Spanned<Vec<Spanned<ListenerFile>>>>,
    /// The credentials file (`name:<argon2 PHC string>[:groups]` lines, mode 0600).
    pub credentials_file: Option<Spanned<PathBuf>>,
    /// `[[broker.acl]]`: what clients may publish and subscribe to.
    #[serde(default)]
    pub acl: Vec<Spanned<AclRuleFile>>,
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
    /// `"3.1.1"`, `"5"` or `"any"`.
    pub mqtt: Option<Spanned<String>>,
    /// `"none"`, `"server-auth"`, `"mutual"` or `"psk"`.
    pub tls: Option<Spanned<String>>,
    /// `"1.2"` or `"1.3"`.
    pub min_tls_version: Option<Spanned<String>>,
    /// PEM chain the listener presents.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key of that chain.
    pub key_file: Option<Spanned<PathBuf>>,
    /// PEM file of the CAs trusted for client certificates (every one in it).
    pub ca_file: Option<Spanned<PathBuf>>,
    /// PEM CRL files checked against client certificates, reloaded when they change.
    pub crl_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    /// `identity:hexkey` lines (mode 0600), one per device, for TLS-PSK.
    pub psk_file: Option<Spanned<PathBuf>>,
    /// Which certificate field names the device: `"cn"` or `"san"`.
    pub identity: Option<Spanned<String>>,
    /// Whether clients without credentials may connect.
    pub anonymous: Option<Spanned<bool>>,
    /// How a client id must relate to the identity: `"equal"`, `"prefix"` or `"any"`.
    pub client_id: Option<Spanned<String>>,
    /// How long a TLS handshake may take, e.g. `"10s"`.
    pub handshake_timeout: Option<Spanned<String>>,
    /// Most TLS handshakes in progress at once; the oldest gives way to a new one.
    pub max_handshakes: Option<Spanned<i64>>,
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
    /// Appends are committed at most once per interval, e.g. `"100ms"`; `"0s"` at once.
    pub commit_interval: Option<Spanned<String>>,
    /// `"power-safe"` or `"process-crash"`.
    pub durability: Option<Spanned<String>>,
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

/// One `[[uplink.rewrite]]` or `[[uplink.commands]]` rule: a filter on one side, a template
/// on the other.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRuleFile {
    /// The local side: a filter for rewrites, a template for commands.
    pub local: Option<Spanned<String>>,
    /// The cloud side: a template for rewrites, a filter for commands.
    pub cloud: Option<Spanned<String>>,
}

/// `[uplink]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkFile {
    /// The cloud broker's host name (also the name its certificate must carry).
    pub host: Option<Spanned<String>>,
    /// Its TLS port.
    pub port: Option<Spanned<i64>>,
    /// Our MQTT client id.
    pub client_id: Option<Spanned<String>>,
    /// `"3.1.1"` or `"5"`.
    pub mqtt: Option<Spanned<String>>,
    /// MQTT keep-alive, e.g. `"30s"`.
    pub keep_alive: Option<Spanned<String>>,
    /// With an answer awaited, this long without a byte from the cloud means stalled, e.g.
    /// `"10s"`.
    pub stall_timeout: Option<Spanned<String>>,
    /// Each TCP connection attempt (per address) and the TLS handshake, e.g. `"5s"`.
    pub connect_timeout: Option<Spanned<String>>,
    /// Start a clean session on every connect.
    pub clean_session: Option<Spanned<bool>>,
    /// Most messages sent and not yet acknowledged.
    pub inflight: Option<Spanned<i64>>,
    /// This gateway's name in cloud topics (`{device_id}`); the client id when absent.
    pub device_id: Option<Spanned<String>>,
    /// Prepended to every local topic on the way to the cloud that no rewrite takes.
    pub topic_prefix: Option<Spanned<String>>,
    /// `[[uplink.rewrite]]`: local topics given another cloud topic; first match wins.
    #[serde(default)]
    pub rewrite: Vec<Spanned<TopicRuleFile>>,
    /// `[[uplink.commands]]`: cloud topics subscribed to and published locally.
    #[serde(default)]
    pub commands: Vec<Spanned<TopicRuleFile>>,
    /// `"server-auth"`, `"mutual"` or `"psk"`.
    pub tls: Option<Spanned<String>>,
    /// `"1.2"` or `"1.3"`.
    pub min_tls_version: Option<Spanned<String>>,
    /// PEM file of the CAs trusted for the server; the system's roots when absent.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// PEM CRL files checked against the server's chain, reloaded when they change.
    pub crl_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    /// ALPN protocols to offer, e.g. `["x-amzn-mqtt-ca"]`.
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    /// PEM chain presented in mutual TLS.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key for mutual TLS.
    pub key_file: Option<Spanned<PathBuf>>,
    /// `identity:hexkey` file (mode 0600) for TLS-PSK.
    pub psk_file: Option<Spanned<PathBuf>>,
    /// First reconnect delay ceiling, e.g. `"1s"`.
    pub reconnect_min: Option<Spanned<String>>,
    /// Largest reconnect delay, e.g. `"2m"`.
    pub reconnect_max: Option<Spanned<String>>,
    /// What to do with a message the cloud refuses (MQTT 5): `"retry"` or `"drop"`.
    pub on_rejected: Option<Spanned<String>>,
    /// Where to publish certificate-expiry alarms on the cloud broker.
    pub alarm_topic: Option<Spanned<String>>,
}

/// `[bridge]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeFile {
    /// The site name, `{site}` in topic templates.
    pub site: Option<Spanned<String>>,
    /// Topic of each value, e.g. `"{site}/{device}/{point}"`.
    pub value_topic: Option<Spanned<String>>,
    /// Topic of a device's snapshot (all values of one poll in one message); none when absent.
    pub snapshot_topic: Option<Spanned<String>>,
    /// Topic of write commands, e.g. `"{site}/{device}/{point}/set"`.
    pub command_topic: Option<Spanned<String>>,
    /// Topic of the results of write commands.
    pub response_topic: Option<Spanned<String>>,
    /// Topic of a device's retained `online`/`offline` status.
    pub status_topic: Option<Spanned<String>>,
    /// QoS of value messages: 0, 1 or 2.
    pub qos: Option<Spanned<i64>>,
    /// Whether value messages are retained.
    pub retain: Option<Spanned<bool>>,
}

/// `[[devices]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// The device's name, `{device}` in topic templates.
    pub name: Option<Spanned<String>>,
    /// `"modbus-rtu"`, `"modbus-tcp"` or `"lines"`.
    pub protocol: Option<Spanned<String>>,
    /// Serial port path (RTU and lines).
    pub port: Option<Spanned<PathBuf>>,
    /// Baud rate.
    pub baud: Option<Spanned<i64>>,
    /// `"none"`, `"even"` or `"odd"`.
    pub parity: Option<Spanned<String>>,
    /// 5 to 8.
    pub data_bits: Option<Spanned<i64>>,
    /// 1 or 2.
    pub stop_bits: Option<Spanned<i64>>,
    /// Kernel RS-485 mode (not supported: rejected with a hint).
    pub rs485: Option<Spanned<bool>>,
    /// `host:port` of a Modbus TCP server.
    pub address: Option<Spanned<String>>,
    /// Modbus unit (slave) id.
    pub unit: Option<Spanned<i64>>,
    /// How long one request may take (Modbus), or one silence window (lines).
    pub timeout: Option<Spanned<String>>,
    /// Retries of a failed request.
    pub retries: Option<Spanned<i64>>,
    /// Failed polls in a row before the device is offline.
    pub offline_after: Option<Spanned<i64>>,
    /// Poll interval while offline.
    pub offline_interval: Option<Spanned<String>>,
    /// Default poll interval of the device's points.
    pub interval: Option<Spanned<String>>,
    /// Default "publish at least this often" of the device's points.
    pub heartbeat: Option<Spanned<String>>,
    /// Largest gap of unused registers read to join two ranges into one request.
    pub max_gap: Option<Spanned<i64>>,
    /// Also publish one snapshot message per poll.
    pub snapshot: Option<Spanned<bool>>,
    /// Line format: `"regex"`, `"json"` or `"nmea"`.
    pub format: Option<Spanned<String>>,
    /// Regular expression with named captures (`regex`, `nmea`).
    pub pattern: Option<Spanned<String>>,
    /// The line delimiter, one byte, e.g. `"\n"`.
    pub delimiter: Option<Spanned<String>>,
    /// Longest line in bytes; longer ones are counted and discarded.
    pub max_line: Option<Spanned<i64>>,
    /// `[[devices.points]]`.
    #[serde(default)]
    pub points: Vec<Spanned<PointFile>>,
}

/// `[[devices.points]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointFile {
    /// The point's name, `{point}` in topic templates.
    pub name: Option<Spanned<String>>,
    /// `"holding"`, `"input"`, `"coil"` or `"discrete"`.
    pub table: Option<Spanned<String>>,
    /// 0-based register or bit address.
    pub address: Option<Spanned<i64>>,
    /// Data type, e.g. `"f32"`.
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
    /// String length in bytes.
    pub length: Option<Spanned<i64>>,
    /// `"big"` (high word first) or `"little"`.
    pub word_order: Option<Spanned<String>>,
    /// `"big"` (high byte first) or `"little"`.
    pub byte_order: Option<Spanned<String>>,
    /// Multiplier applied to the raw value.
    pub scale: Option<Spanned<f64>>,
    /// Added after scaling.
    pub offset: Option<Spanned<f64>>,
    /// Unit shown in payloads.
    pub unit: Option<Spanned<String>>,
    /// Smallest change that is published.
    pub deadband: Option<Spanned<f64>>,
    /// Poll interval.
    pub interval: Option<Spanned<String>>,
    /// Publish at least this often.
    pub heartbeat: Option<Spanned<String>>,
    /// Accept write commands.
    pub writable: Option<Spanned<bool>>,
    /// Lowest value a write may set.
    pub min: Option<Spanned<f64>>,
    /// Highest value a write may set.
    pub max: Option<Spanned<f64>>,
    /// JSON field (dotted path) of a `json` line device; the point's name when absent.
    pub field: Option<Spanned<String>>,
}
