//! `[uplink]`: the uplink's section of the configuration, owned here.
//!
//! [`file::UplinkFile`] is the section as written; [`UplinkSettings`] what the uplink runs on,
//! every value checked and every default filled in; [`settings`] goes from one to the other,
//! recording every mistake in the shared collector (`crates/fieldlink` assembles the sections).
//! Each default is a named constant below, used by validation and by the annotated
//! `configs/fieldlink.toml` test alike.

pub mod file;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::config::MqttVersion;
use fieldlink_core::tls::{KeyRef, MinTlsVersion};
use fieldlink_core::topic::TopicName;
use fieldlink_core::topic_map::TopicRewrite;
pub use validate::settings;

/// Nothing from the cloud for this long, while an answer is awaited, is a stalled link. A
/// cellular round trip is well under a second even on a weak signal; 10 s leaves room for a
/// handover and retransmissions without keeping a dead link for a minute.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A TCP connect or TLS handshake that takes longer than this is given up (the next address
/// is tried meanwhile): a cellular attach's first packets can take a few seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The cloud broker's MQTT-over-TLS port (IANA).
pub const DEFAULT_PORT: u16 = 8883;
/// MQTT keep-alive: a ping every 30 s keeps NAT and cellular bearers open without being chatty.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// A clean session on every connect: the queue, not the cloud broker's session, is the
/// source of truth for what is still to send.
pub const DEFAULT_CLEAN_SESSION: bool = true;
/// Messages sent and not yet acknowledged: enough to fill a cellular link's round trip.
pub const DEFAULT_INFLIGHT: u16 = 100;
/// First reconnect delay ceiling.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
/// Largest reconnect delay: an outage is noticed within two minutes of its end.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(120);
/// A token is valid this long unless `lifetime` says otherwise: short enough that a leaked
/// token soon stops working, long enough that renewing it (one reconnect) is rare.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The MQTT 5 user property that carries each message's queue id to the cloud.
pub const DEFAULT_MESSAGE_ID_PROPERTY: &str = "fieldlink-id";

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
    pub rewrites: Vec<TopicRewrite>,
    /// Cloud → local: each rule's filter is subscribed on the cloud; what arrives is published
    /// locally on the rule's template.
    pub commands: Vec<TopicRewrite>,
    /// How the connection is secured.
    pub tls: UplinkTls,
    /// Lowest TLS version.
    pub min_tls_version: MinTlsVersion,
    /// CRL files checked against the server's chain.
    pub crl_files: Vec<PathBuf>,
    /// What a CRL past its nextUpdate means.
    pub stale_crl: fieldlink_core::crl::StaleCrl,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// First reconnect delay ceiling.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// What to do with a message the cloud refuses.
    pub on_rejected: OnRejected,
    /// Where certificate-expiry alarms go on the cloud broker.
    pub alarm_topic: Option<TopicName>,
    /// MQTT 5: the name of the user property that carries each message's queue id (strictly
    /// increasing per stream, the same on a resend), so the cloud side can drop duplicates;
    /// `None` with MQTT 3.1.1, which has no properties, or when turned off.
    pub message_id_property: Option<String>,
    /// How the uplink logs in inside MQTT (beside the TLS mode); `None`: no user name.
    pub credentials: Option<UplinkCredentials>,
}

/// How the uplink logs in inside MQTT. Secrets are referenced by path, never held here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkCredentials {
    /// An Azure IoT Hub SAS token: the user name Azure expects, the client id as device id.
    AzureSas {
        /// The device's symmetric key (base64), mode 0600.
        key_file: PathBuf,
        /// How long each token is valid.
        lifetime: Duration,
    },
    /// A JWT signed with our token key as the password.
    Jwt(JwtSettings),
    /// A user name and the password on the first line of a file.
    Password {
        /// The MQTT user name.
        username: String,
        /// Mode 0600 (or a systemd credential); re-read at each connection.
        password_file: PathBuf,
    },
}

/// `[uplink.jwt]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The MQTT user name sent with the token (the client id unless `uplink.username` is set).
    pub username: String,
    /// The token key: P-256 (ES256) or RSA (RS256), a PEM file or a key in a PKCS#11 token.
    pub key: KeyRef,
    /// `aud`.
    pub audience: String,
    /// `sub`.
    pub subject: String,
    /// `exp - iat`.
    pub lifetime: Duration,
    /// The `kid` header.
    pub key_id: Option<String>,
    /// More claims: a JSON object (`{}` for none), merged over the standard ones.
    pub claims: String,
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
        /// Our key: a PEM file or a key in a PKCS#11 token.
        key: KeyRef,
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
