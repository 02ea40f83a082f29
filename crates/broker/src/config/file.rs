//! `[broker]` as written: every field optional, every value with its place in the file.
//!
//! Integers are read as `i64` and checked in validation, so that "70000 is not a port" gets a
//! message of ours rather than serde's.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

pub use super::access::AclRuleFile;

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
    /// How long a lagging subscriber may hold publishers back before it is disconnected.
    pub slow_subscriber_timeout: Option<Spanned<String>>,
    /// Most MQTT 5 delayed wills kept for clients that went away.
    pub max_delayed_wills: Option<Spanned<i64>>,
    /// Most bytes of MQTT 5 delayed wills kept, topics and payloads together.
    pub max_delayed_will_bytes: Option<Spanned<i64>>,
    /// Longest will delay honoured; a longer one is shortened to it.
    pub max_will_delay: Option<Spanned<String>>,
    /// Longest keep-alive granted; MQTT 5 clients asking for more (or none) are told this one.
    pub max_keep_alive: Option<Spanned<String>>,
    /// Longest MQTT 5 Session Expiry Interval granted.
    pub max_session_expiry: Option<Spanned<String>>,
    /// Most MQTT 5 sessions stored for clients that went away.
    pub max_stored_sessions: Option<Spanned<i64>>,
    /// Most of those of one identity.
    pub max_stored_sessions_per_identity: Option<Spanned<i64>>,
    /// Most server topic aliases per MQTT 5 connection (0: none).
    pub max_topic_aliases: Option<Spanned<i64>>,
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
    /// Or that key in a PKCS#11 token: `pkcs11:token=…;object=…` (module and PIN in `[keys]`).
    pub key_uri: Option<Spanned<String>>,
    /// PEM file of the CAs trusted for client certificates (every one in it).
    pub ca_file: Option<Spanned<PathBuf>>,
    /// PEM CRL files checked against client certificates, reloaded when they change.
    pub crl_files: Option<Spanned<Vec<Spanned<PathBuf>>>>,
    /// A CRL past its nextUpdate: `"refuse"` (the default) or `"warn"`.
    pub stale_crl: Option<Spanned<String>>,
    /// TLS-PSK: also accept suites without forward secrecy (plain PSK key exchange).
    pub allow_plain_psk: Option<Spanned<bool>>,
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
