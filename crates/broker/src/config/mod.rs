//! `[broker]`: the local broker's section of the configuration, owned here.
//!
//! Two layers, as everywhere in fieldlink: [`file::BrokerFile`] is the section as written
//! (every value optional, with its place in the file), [`BrokerSettings`] what the broker runs
//! on, every value checked and every default filled in. [`settings`] goes from one to the other,
//! recording every mistake in the shared [`Collector`]; `crates/fieldlink` assembles the
//! sections into the whole file. Each default is a named constant below, used by `Default`, by
//! validation and by the annotated `configs/fieldlink.toml` test alike.

mod access;
pub mod file;
mod listener;
mod validate;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use access::{AccessSettings, AclPattern, AclPatternError, AclRule};
use fieldlink_core::config::{Collector, ConfigErrors, MqttVersion, Origin};
use fieldlink_core::tls::MinTlsVersion;
pub use validate::settings;

/// Reads a document holding only a `[broker]` section (tests and tools that start a broker
/// alone; the gateway reads the whole file in `crates/fieldlink`).
pub fn parse(text: &str, origin: Origin) -> Result<BrokerSettings, ConfigErrors> {
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Document {
        #[serde(default)]
        broker: file::BrokerFile,
    }
    fieldlink_core::config::parse_document(text, origin, |doc: &Document, c: &mut Collector<'_>| {
        settings(&doc.broker, c)
    })
}

/// Most client connections at once: a site has tens of clients, not thousands.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Largest MQTT packet accepted: ample for telemetry and small files.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;
/// Most unacknowledged QoS 1/2 messages per client.
pub const DEFAULT_MAX_INFLIGHT: u16 = 100;
/// 256 KiB × 8 per filter: a few MiB for a typical site, not rumqttd's server-class 1 GiB.
pub const DEFAULT_SEGMENT_SIZE: usize = 256 * 1024;
/// Segments kept per filter (see [`DEFAULT_SEGMENT_SIZE`]).
pub const DEFAULT_SEGMENT_COUNT: usize = 8;
/// How long a new connection may take to send CONNECT.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most messages per second one client may publish: far above a sensor's rate, well below
/// what floods the queue.
pub const DEFAULT_MAX_MESSAGE_RATE: u32 = 1000;
/// Most distinct subscription filters (each holds its own log in the router).
pub const DEFAULT_MAX_FILTERS: usize = 128;
/// Most new filters one identity may add: half the pool, so no single client can use it up.
pub const DEFAULT_MAX_FILTERS_PER_IDENTITY: usize = 64;
/// Largest CONNECT accepted: what a connection may make the broker buffer before it has
/// authenticated (a CONNECT with a will is rarely more than a few KiB).
pub const DEFAULT_MAX_CONNECT_SIZE: usize = 64 * 1024;
/// Most connections not yet authenticated at once.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 128;
/// Most connections not yet authenticated from one source address.
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 32;
/// How long a write to a client may stay blocked before its connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a subscriber may hold publishers back (see `slow_subscriber_timeout`).
pub const DEFAULT_SLOW_SUBSCRIBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most MQTT 5 delayed wills kept at once.
pub const DEFAULT_MAX_DELAYED_WILLS: usize = 256;
/// Most bytes of delayed wills kept at once.
pub const DEFAULT_MAX_DELAYED_WILL_BYTES: usize = 1024 * 1024;
/// Longest will delay honoured.
pub const DEFAULT_MAX_WILL_DELAY: Duration = Duration::from_secs(3600);
/// Longest keep-alive granted to an MQTT 5 client (its CONNACK's Server Keep Alive).
pub const DEFAULT_MAX_KEEP_ALIVE: Duration = Duration::from_secs(600);
/// Longest MQTT 5 Session Expiry Interval granted.
pub const DEFAULT_MAX_SESSION_EXPIRY: Duration = Duration::from_secs(86_400);
/// Most MQTT 5 sessions stored at once for clients that went away.
pub const DEFAULT_MAX_STORED_SESSIONS: usize = 256;
/// Most stored MQTT 5 sessions of one identity.
pub const DEFAULT_MAX_STORED_SESSIONS_PER_IDENTITY: usize = 16;
/// Most server topic aliases per MQTT 5 connection (each holds one topic name): enough for
/// a subscriber's usual set of topics, a few kilobytes per connection at most for common
/// topic lengths.
pub const DEFAULT_MAX_TOPIC_ALIASES: u16 = 32;
/// How long a TLS handshake may take before the connection is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes in progress at once per listener.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// The listener used when the file names none: plain MQTT on loopback.
pub const DEFAULT_LISTENER_PORT: u16 = 1883;

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
    /// How long a subscriber that lags too far behind may hold back the publishers of what it
    /// subscribed to before it is disconnected.
    pub slow_subscriber_timeout: Duration,
    /// Most MQTT 5 delayed wills kept at once; past it a will is published at once.
    pub max_delayed_wills: usize,
    /// Most bytes (topics and payloads) of delayed wills kept at once.
    pub max_delayed_will_bytes: usize,
    /// Longest will delay honoured.
    pub max_will_delay: Duration,
    /// Longest keep-alive granted: an MQTT 5 client that asks for a longer one, or for none,
    /// is given this one in its CONNACK (Server Keep Alive) and held to it. 3.1.1 has no way
    /// to say so: those clients keep theirs (none: ten silent minutes at most).
    pub max_keep_alive: Duration,
    /// Longest MQTT 5 Session Expiry Interval granted: a longer one (or "never") is shortened
    /// to it, and the CONNACK says so.
    pub max_session_expiry: Duration,
    /// Most MQTT 5 sessions stored at once for clients that went away; past it, a session
    /// ends with its connection.
    pub max_stored_sessions: usize,
    /// Most stored MQTT 5 sessions of one identity (anonymous clients together are one).
    pub max_stored_sessions_per_identity: usize,
    /// Most server topic aliases given to one MQTT 5 connection (fewer if the client's Topic
    /// Alias Maximum says so; none if it says 0 or this is 0).
    pub max_topic_aliases: u16,
    /// Who may connect, and what each client may publish and subscribe to.
    pub access: AccessSettings,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerSettings::default()],
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            segment_size: DEFAULT_SEGMENT_SIZE,
            segment_count: DEFAULT_SEGMENT_COUNT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message_rate: DEFAULT_MAX_MESSAGE_RATE,
            max_filters: DEFAULT_MAX_FILTERS,
            max_filters_per_identity: DEFAULT_MAX_FILTERS_PER_IDENTITY,
            max_connect_size: DEFAULT_MAX_CONNECT_SIZE,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_address: DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            slow_subscriber_timeout: DEFAULT_SLOW_SUBSCRIBER_TIMEOUT,
            max_delayed_wills: DEFAULT_MAX_DELAYED_WILLS,
            max_delayed_will_bytes: DEFAULT_MAX_DELAYED_WILL_BYTES,
            max_will_delay: DEFAULT_MAX_WILL_DELAY,
            max_keep_alive: DEFAULT_MAX_KEEP_ALIVE,
            max_session_expiry: DEFAULT_MAX_SESSION_EXPIRY,
            max_stored_sessions: DEFAULT_MAX_STORED_SESSIONS,
            max_stored_sessions_per_identity: DEFAULT_MAX_STORED_SESSIONS_PER_IDENTITY,
            max_topic_aliases: DEFAULT_MAX_TOPIC_ALIASES,
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
    pub min_tls_version: MinTlsVersion,
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
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_LISTENER_PORT),
            mqtt: None,
            tls: ListenerTls::None,
            min_tls_version: MinTlsVersion::Tls12,
            anonymous: true,
            client_id: ClientIdRule::Equal,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
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
        /// Its key: a PEM file or a key in a PKCS#11 token.
        key: fieldlink_core::tls::KeyRef,
    },
    /// TLS with a client certificate required; it names the device.
    Mutual {
        /// Our chain.
        cert_file: PathBuf,
        /// Its key: a PEM file or a key in a PKCS#11 token.
        key: fieldlink_core::tls::KeyRef,
        /// The CAs trusted for client certificates (all of them).
        ca_file: PathBuf,
        /// Revocation lists, reloaded when they change.
        crl_files: Vec<PathBuf>,
        /// What a CRL past its nextUpdate means.
        stale_crl: fieldlink_core::crl::StaleCrl,
        /// Which certificate field names the device.
        identity: CertIdentity,
    },
    /// TLS-PSK (openssl): the PSK identity names the device.
    Psk {
        /// `identity:hexkey` lines, mode 0600.
        psk_file: PathBuf,
        /// Whether suites without forward secrecy (plain PSK key exchange) are accepted too.
        allow_plain_psk: bool,
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
