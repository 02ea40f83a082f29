//! fieldlink's configuration: one TOML file, one section per component.
//!
//! Two layers ("parse, don't validate"): [`file::FileConfig`] is the file as written, every
//! value optional and carrying its place in the file; [`Settings`] is what the components get,
//! with every value checked and every default filled in. [`load`] goes from a path to
//! [`Settings`], and reports *all* mistakes at once, each with file, line, key, value (redacted
//! when secret) and a hint.
//!
//! Secrets are never written into this file: keys that need one take a path to a 0600 file (or,
//! later, a PKCS#11 URI).

mod access;
mod device_rules;
pub mod devices;
mod error;
pub mod file;
mod listener;
mod reader;
mod uplink;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use access::{AccessSettings, AclPattern, AclPatternError, AclRule};
pub use error::{ConfigError, ConfigErrors, Origin};
pub use uplink::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_STALL_TIMEOUT};

use crate::message::Priority;
use crate::topic::TopicFilter;

/// Where `fieldlink` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fieldlink/fieldlink.toml";

/// Which file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A path the user named: it must exist.
    Explicit(PathBuf),
    /// The default path: when no file is there, the built-in defaults apply.
    DefaultPath(PathBuf),
}

/// Reads and validates the configuration.
pub fn load(source: &ConfigSource) -> Result<(Settings, Origin), ConfigErrors> {
    let path = match source {
        ConfigSource::Explicit(path) | ConfigSource::DefaultPath(path) => path,
    };
    let origin = Origin::File(path.clone());
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, origin.clone()).map(|s| (s, origin)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match source {
            ConfigSource::DefaultPath(_) => Ok((Settings::default(), Origin::BuiltIn)),
            ConfigSource::Explicit(_) => Err(file_error(
                origin,
                "the file does not exist",
                "create it (configs/fieldlink.toml in the source tree is a fully annotated \
                 example) or name another file with --config PATH",
            )),
        },
        Err(e) => Err(file_error(
            origin,
            &format!("the file cannot be read: {e}"),
            "check that it is a regular file readable by the user fieldlink runs as",
        )),
    }
}

/// Parses and validates configuration text; `origin` is used in error messages.
pub fn parse(text: &str, origin: Origin) -> Result<Settings, ConfigErrors> {
    let mut errors = error::Collector::new(origin, text);
    let file: Option<file::FileConfig> = reader::read(text, &mut errors);
    let settings = file.map(|file| validate::settings(&file, &mut errors));
    errors.finish()?;
    // `finish` returned Ok, so nothing failed and `read` returned the file.
    Ok(settings.unwrap_or_default())
}

fn file_error(origin: Origin, problem: &str, hint: &str) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        origin,
        position: None,
        key: String::new(),
        value: None,
        problem: problem.to_owned(),
        hint: hint.to_owned(),
    }])
}

/// The validated configuration of the whole gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// `[gateway]`.
    pub gateway: GatewaySettings,
    /// `[broker]`.
    pub broker: BrokerSettings,
    /// `[queue]`.
    pub queue: QueueSettings,
    /// `[uplink]`, if the gateway forwards to a cloud broker.
    pub uplink: Option<UplinkSettings>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
    /// `[bridge]`: how field-device values become MQTT messages.
    pub bridge: devices::BridgeSettings,
    /// `[[devices]]`, in file order: the field devices.
    pub devices: Vec<devices::DeviceSettings>,
}

/// `[gateway]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Where state lives. `None`: `$STATE_DIRECTORY` (set by systemd), else
    /// `/var/lib/fieldlink` for root, else `$HOME/.local/state/fieldlink`.
    pub data_dir: Option<PathBuf>,
    /// How long a shutdown may take before the process exits anyway.
    pub shutdown_grace: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            data_dir: None,
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

impl GatewaySettings {
    /// The state directory this run uses (see [`GatewaySettings::data_dir`]).
    pub fn resolved_data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
            // systemd may list several, separated by ':'; the first is ours.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            if !first.is_empty() {
                return PathBuf::from(first);
            }
        }
        let root = Path::new("/var/lib");
        if is_root() && root.is_dir() {
            return root.join("fieldlink");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/state/fieldlink")
    }
}

/// Whether this process runs as root (where the system's directories are its own).
pub fn is_root() -> bool {
    // /proc/self is owned by the effective user; no libc call needed for that.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `[broker]`: the local MQTT broker, sized for a small board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Where clients connect.
    pub listeners: Vec<ListenerSettings>,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_size: usize,
    /// Most unacknowledged QoS 1/2 messages per client.
    pub max_inflight: u16,
    /// Bytes in one in-memory log segment per subscription filter.
    pub segment_size: usize,
    /// Segments kept per filter: memory per filter is at most `segment_size × segment_count`.
    pub segment_count: usize,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// Most messages per second one client may publish; the edge stops reading beyond it.
    pub max_message_rate: u32,
    /// Most distinct subscription filters: the router keeps a log of up to
    /// `segment_size × segment_count` per filter, so this bounds its memory.
    pub max_filters: usize,
    /// Most new filters one identity may add to `max_filters` (anonymous clients together
    /// are one identity): no single client can use the pool up.
    pub max_filters_per_identity: usize,
    /// Largest CONNECT accepted (at most `max_packet_size`): what a connection may make the
    /// broker buffer before it has authenticated.
    pub max_connect_size: usize,
    /// Most connections not yet authenticated (TLS handshake or CONNECT in progress); a new
    /// one pushes out the oldest.
    pub max_unauthenticated: usize,
    /// Most connections not yet authenticated from one source address; past it, that
    /// address's oldest gives way.
    pub max_unauthenticated_per_address: usize,
    /// How long a write to a client may stay blocked (a client that stops reading) before
    /// its connection is dropped.
    pub write_timeout: Duration,
    /// Most MQTT 5 delayed wills kept at once; past it a will is published at once.
    pub max_delayed_wills: usize,
    /// Most bytes (topics and payloads) of delayed wills kept at once.
    pub max_delayed_will_bytes: usize,
    /// Longest will delay honoured.
    pub max_will_delay: Duration,
    /// Who may connect, and what each client may publish and subscribe to.
    pub access: AccessSettings,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerSettings::default()],
            max_connections: default_max_connections(),
            max_packet_size: default_max_packet_size(),
            max_inflight: default_max_inflight(),
            segment_size: default_segment_size(),
            segment_count: default_segment_count(),
            connect_timeout: default_connect_timeout(),
            max_message_rate: 1000,
            max_filters: 128,
            max_filters_per_identity: 64,
            max_connect_size: 64 * 1024,
            max_unauthenticated: 128,
            max_unauthenticated_per_address: 32,
            write_timeout: Duration::from_secs(30),
            max_delayed_wills: 256,
            max_delayed_will_bytes: 1024 * 1024,
            max_will_delay: Duration::from_secs(3600),
            access: AccessSettings::default(),
        }
    }
}

/// One listener of the local broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// A name for logs and metrics.
    pub name: String,
    /// The address and port to bind.
    pub addr: SocketAddr,
    /// The MQTT version accepted; `None`: 3.1.1 and 5.
    pub mqtt: Option<MqttVersion>,
    /// Transport security.
    pub tls: ListenerTls,
    /// Lowest TLS version accepted.
    pub min_tls_version: crate::tls::MinTlsVersion,
    /// Whether clients without credentials may connect.
    pub anonymous: bool,
    /// How a client id must relate to the authenticated identity.
    pub client_id: ClientIdRule,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Most TLS handshakes in progress at once; the oldest gives way to a new one.
    pub max_handshakes: usize,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            name: "loopback".into(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883),
            mqtt: None,
            tls: ListenerTls::None,
            min_tls_version: crate::tls::MinTlsVersion::Tls12,
            anonymous: true,
            client_id: ClientIdRule::Equal,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
        }
    }
}

/// A listener's transport security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain TCP (meant for loopback).
    None,
    /// TLS; clients authenticate with username and password.
    ServerAuth {
        /// Our chain.
        cert_file: PathBuf,
        /// Its key.
        key_file: PathBuf,
    },
    /// TLS with a client certificate required; it names the device.
    Mutual {
        /// Our chain.
        cert_file: PathBuf,
        /// Its key.
        key_file: PathBuf,
        /// The CAs trusted for client certificates (all of them).
        ca_file: PathBuf,
        /// Revocation lists, reloaded when they change.
        crl_files: Vec<PathBuf>,
        /// Which certificate field names the device.
        identity: CertIdentity,
    },
    /// TLS-PSK (openssl): the PSK identity names the device.
    Psk {
        /// `identity:hexkey` lines, mode 0600.
        psk_file: PathBuf,
    },
}

/// Which field of a client certificate names the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdentity {
    /// The subject's common name.
    CommonName,
    /// The first DNS name in the subject alternative names.
    SubjectAltName,
}

/// How a client id must relate to the authenticated identity (anonymous clients aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdRule {
    /// The client id is the identity.
    Equal,
    /// The client id is the identity, or starts with the identity and ':'.
    Prefix,
    /// Any client id (the identity still decides the ACLs).
    Any,
}

/// An MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

/// `[uplink]`: the cloud broker and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// Host name (also the name its certificate must carry).
    pub host: String,
    /// TLS port.
    pub port: u16,
    /// Our MQTT client id.
    pub client_id: String,
    /// MQTT version.
    pub mqtt: MqttVersion,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// While a publish or ping awaits the cloud's answer, this long without a single byte
    /// from the cloud means the link is stalled: it is given up and made again.
    pub stall_timeout: Duration,
    /// Each TCP connection attempt (one per address) and the TLS handshake.
    pub connect_timeout: Duration,
    /// Start a clean session on every connect.
    pub clean_session: bool,
    /// Most messages sent and not yet acknowledged.
    pub inflight: u16,
    /// Prepended to every local topic on the way to the cloud.
    pub topic_prefix: String,
    /// This gateway's name in cloud topics (`{device_id}` in topic rules).
    pub device_id: String,
    /// Local → cloud topic rules, tried in order before the prefix.
    pub rewrites: Vec<crate::topic_map::TopicRewrite>,
    /// Cloud → local: each rule's filter is subscribed on the cloud; what arrives is published
    /// locally on the rule's template.
    pub commands: Vec<crate::topic_map::TopicRewrite>,
    /// How the connection is secured.
    pub tls: UplinkTls,
    /// Lowest TLS version.
    pub min_tls_version: crate::tls::MinTlsVersion,
    /// CRL files checked against the server's chain.
    pub crl_files: Vec<PathBuf>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// First reconnect delay ceiling.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// What to do with a message the cloud refuses.
    pub on_rejected: OnRejected,
    /// Where certificate-expiry alarms go on the cloud broker.
    pub alarm_topic: Option<crate::topic::TopicName>,
}

/// How the uplink is secured. There is no plaintext mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkTls {
    /// The server proves itself with a certificate.
    ServerAuth {
        /// CAs trusted for the server; the system's when `None`.
        ca_file: Option<PathBuf>,
    },
    /// Both sides prove themselves with certificates.
    Mutual {
        /// CAs trusted for the server; the system's when `None`.
        ca_file: Option<PathBuf>,
        /// Our chain.
        cert_file: PathBuf,
        /// Our key (a file today; a PKCS#11 URI later, through the key-source port).
        key_file: PathBuf,
    },
    /// A pre-shared key (through openssl: rustls has no PSK).
    Psk {
        /// `identity:hexkey`, mode 0600.
        psk_file: PathBuf,
    },
}

/// What the uplink does with a message the cloud refuses (a negative MQTT 5 PUBACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRejected {
    /// Keep it and send it again after the reconnect delay (the default: nothing is lost).
    #[default]
    Retry,
    /// Delete it, log it at ERROR and count it.
    Drop,
}

/// `[queue]`: limits of the store-and-forward queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most bytes (payloads and topics) held, over all streams.
    pub max_bytes: u64,
    /// Most messages held, over all streams.
    pub max_messages: u64,
    /// Messages older than this are dropped; `None` keeps them for ever.
    pub max_age: Option<Duration>,
    /// What to do with a message that does not fit.
    pub when_full: FullPolicy,
    /// Free disk space to keep: intake stops before the file system has less.
    pub disk_reserve: u64,
    /// Appends are committed at most once per interval (one fsync for all that arrived
    /// meanwhile); zero commits each round at once.
    pub commit_interval: Duration,
    /// What a commit survives.
    pub durability: Durability,
}

/// What a committed message survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A power cut: every commit is fsynced before producers get their acknowledgement.
    #[default]
    PowerSafe,
    /// A crash of the process, not a power cut: no fsync per commit (the WAL is synced at
    /// checkpoints). For boards on a UPS.
    ProcessCrash,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_bytes: default_queue_max_bytes(),
            max_messages: default_queue_max_messages(),
            max_age: Some(default_queue_max_age()),
            when_full: FullPolicy::default(),
            disk_reserve: default_disk_reserve(),
            commit_interval: default_commit_interval(),
            durability: Durability::default(),
        }
    }
}

/// What the queue does with a message that does not fit within a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Refuse it: the producer is told (the broker withholds its PUBACK or answers "quota
    /// exceeded"), so nothing is dropped silently. The default.
    #[default]
    Reject,
    /// Make room by dropping the oldest messages (of the stream, or of the whole queue).
    DropOldest,
    /// Drop the new message, keep the backlog.
    DropNewest,
}

/// Limits of one stream, on top of the queue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamLimits {
    /// Most messages the stream may hold.
    pub max_messages: Option<u64>,
    /// Most bytes the stream may hold.
    pub max_bytes: Option<u64>,
    /// What to do when the stream is full; the queue's policy when `None`.
    pub when_full: Option<FullPolicy>,
}

/// A route: local messages matching `filter` go to the cloud, in the stream `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The stream name; order is kept within a stream.
    pub name: String,
    /// The local topics it takes.
    pub filter: TopicFilter,
    /// How urgent its messages are.
    pub priority: Priority,
    /// Its limits in the queue.
    pub limits: StreamLimits,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    256
}
fn default_max_packet_size() -> usize {
    256 * 1024
}
fn default_max_inflight() -> u16 {
    100
}
/// 256 KiB × 8 per filter: a few MiB for a typical site, not rumqttd's server-class 1 GiB.
fn default_segment_size() -> usize {
    256 * 1024
}
fn default_segment_count() -> usize {
    8
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
/// Half a GiB: days of telemetry for a typical site, and room to spare on an 8 GB card.
fn default_queue_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_queue_max_messages() -> u64 {
    5_000_000
}
/// A week: longer than any outage worth buffering for; older readings are rarely wanted.
fn default_queue_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
/// At most ten append commits (fsyncs) a second, whatever the rate: SD cards wear by the
/// commits they take; a PUBACK waits at most this long for company.
fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}
/// Keep 64 MiB free so that the system (logs, updates) never runs out of disk because of us.
fn default_disk_reserve() -> u64 {
    64 * 1024 * 1024
}

#[cfg(test)]
mod tests;
