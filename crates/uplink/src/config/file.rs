//! `[uplink]` as written: every field optional, every value with its place in the file.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

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
    /// A CRL past its nextUpdate: `"refuse"` (the default) or `"warn"`.
    pub stale_crl: Option<Spanned<String>>,
    /// ALPN protocols to offer, e.g. `["x-amzn-mqtt-ca"]`.
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    /// PEM chain presented in mutual TLS.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key for mutual TLS.
    pub key_file: Option<Spanned<PathBuf>>,
    /// Or the key in a PKCS#11 token: `pkcs11:token=…;object=…` (module and PIN in `[keys]`).
    pub key_uri: Option<Spanned<String>>,
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
    /// MQTT 5: the user property that carries each message's queue id ("" for none).
    pub message_id_property: Option<Spanned<String>>,
    /// The MQTT user name (with `password_file` or `[uplink.jwt]`).
    pub username: Option<Spanned<String>>,
    /// A file (mode 0600, or a systemd credential) holding the MQTT password on its first line.
    pub password_file: Option<Spanned<PathBuf>>,
    /// `[uplink.jwt]`: a JWT signed by a token key of our own as the MQTT password.
    pub jwt: Option<Spanned<JwtFile>>,
    /// `[uplink.azure_sas]`: an Azure IoT Hub SAS token as the MQTT password.
    pub azure_sas: Option<Spanned<AzureSasFile>>,
}

/// `[uplink.jwt]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    /// PEM private key (P-256: ES256; RSA: RS256), mode 0600.
    pub key_file: Option<Spanned<PathBuf>>,
    /// Or a P-256 key in a PKCS#11 token (RFC 7512 URI).
    pub key_uri: Option<Spanned<String>>,
    /// The `aud` claim.
    pub audience: Option<Spanned<String>>,
    /// The `sub` claim; the device id when absent.
    pub subject: Option<Spanned<String>>,
    /// How long each token is valid, e.g. `"1h"`.
    pub lifetime: Option<Spanned<String>>,
    /// The `kid` header, when the cloud picks the key by it.
    pub key_id: Option<Spanned<String>>,
    /// More claims, e.g. `{ scope = ["fieldlink.write:*/*/*"] }`.
    pub claims: Option<Spanned<toml::Table>>,
}

/// `[uplink.azure_sas]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureSasFile {
    /// The device's symmetric key (base64, as the Azure portal shows it), mode 0600.
    pub key_file: Option<Spanned<PathBuf>>,
    /// How long each token is valid, e.g. `"1h"`.
    pub lifetime: Option<Spanned<String>>,
}
