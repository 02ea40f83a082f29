//! The whole configuration file, assembled from the sections the components own.
//!
//! Each domain crate owns its section (file layer, validation, named defaults):
//! `[broker]` is `fieldlink_broker::config`, `[queue]` and `[[routes]]`
//! `fieldlink_queue::config`, `[uplink]` `fieldlink_uplink::config`, `[bridge]` and
//! `[[devices]]` `fieldlink_serial::config`, `[ota]` `fieldlink_ota::config`. This module owns `[gateway]` (process-wide
//! settings), puts the sections side by side in one file layer ([`FileConfig`]) and one
//! [`Settings`], and reads the file with `fieldlink_core::config`'s reader and error collector,
//! so that `check-config` reports every mistake of the whole file at once.

pub mod gateway;

use fieldlink_broker::config::{BrokerSettings, file::BrokerFile};
use fieldlink_core::config::{Collector, ConfigErrors, ConfigSource, Origin};
use fieldlink_core::tls::KeyRef;
use fieldlink_keys::config::{KeysSettings, file::KeysFile};
use fieldlink_ota::config::{OtaSettings, file::OtaFile};
use fieldlink_queue::config::file::{QueueFile, RouteFile};
use fieldlink_queue::config::{QueueSettings, Route};
use fieldlink_serial::config::file::{BridgeFile, DeviceFile};
use fieldlink_serial::config::{BridgeSettings, DeviceSettings};
use fieldlink_uplink::config::{UplinkSettings, file::UplinkFile};
use serde::Deserialize;
use toml::Spanned;

pub use fieldlink_core::config::{ConfigError, DEFAULT_CONFIG_PATH};
pub use gateway::{GatewaySettings, is_root};

/// The whole file as written: one section per component, each section's file layer owned by
/// its component.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[gateway]`: process-wide settings.
    #[serde(default)]
    pub gateway: gateway::GatewayFile,
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
    /// `[keys]`: the PKCS#11 module and PIN for keys in a token.
    pub keys: Option<Spanned<KeysFile>>,
    /// `[ota]`: the OTA update agent; none when absent.
    pub ota: Option<Spanned<OtaFile>>,
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
    pub bridge: BridgeSettings,
    /// `[[devices]]`, in file order: the field devices.
    pub devices: Vec<DeviceSettings>,
    /// `[keys]`.
    pub keys: KeysSettings,
    /// `[ota]`, if the gateway takes updates from the cloud.
    pub ota: Option<OtaSettings>,
}

/// Reads and validates the configuration.
pub fn load(source: &ConfigSource) -> Result<(Settings, Origin), ConfigErrors> {
    match fieldlink_core::config::read_source(source)? {
        Some((text, origin)) => parse(&text, origin.clone()).map(|s| (s, origin)),
        None => Ok((Settings::default(), Origin::BuiltIn)),
    }
}

/// Parses and validates configuration text; `origin` is used in error messages.
pub fn parse(text: &str, origin: Origin) -> Result<Settings, ConfigErrors> {
    fieldlink_core::config::parse_document(text, origin, settings)
}

/// Every section validated into the one collector.
fn settings(file: &FileConfig, c: &mut Collector<'_>) -> Settings {
    let settings = Settings {
        gateway: gateway::settings(&file.gateway, c),
        broker: fieldlink_broker::config::settings(&file.broker, c),
        queue: fieldlink_queue::config::settings(&file.queue, c),
        uplink: file
            .uplink
            .as_ref()
            .and_then(|u| fieldlink_uplink::config::settings(u, c)),
        routes: fieldlink_queue::config::routes(&file.routes, c),
        bridge: fieldlink_serial::config::bridge(&file.bridge, c),
        devices: fieldlink_serial::config::devices(&file.devices, c),
        keys: file
            .keys
            .as_ref()
            .map(|k| fieldlink_keys::config::settings(k, c))
            .unwrap_or_default(),
        ota: file
            .ota
            .as_ref()
            .and_then(|o| fieldlink_ota::config::settings(o, c)),
    };
    check_key_uris(&settings, c);
    settings
}

impl Settings {
    /// Every private key the configuration names, with the key that names it.
    pub fn key_refs(&self) -> Vec<(String, &KeyRef, &std::path::Path)> {
        use fieldlink_broker::config::ListenerTls;
        let mut out = Vec::new();
        if let Some(fieldlink_uplink::config::UplinkTls::Mutual { key, cert_file, .. }) =
            self.uplink.as_ref().map(|u| &u.tls)
        {
            out.push(("uplink".to_owned(), key, cert_file.as_path()));
        }
        for (i, listener) in self.broker.listeners.iter().enumerate() {
            if let ListenerTls::ServerAuth { key, cert_file }
            | ListenerTls::Mutual { key, cert_file, .. } = &listener.tls
            {
                out.push((format!("broker.listeners[{i}]"), key, cert_file.as_path()));
            }
        }
        out
    }
}

/// Each `key_uri` must name one key, and `[keys]` must say how to reach the token. Whether the
/// token, the PIN and the key are there is `check-config`'s to find out (they can change).
fn check_key_uris(settings: &Settings, c: &mut Collector<'_>) {
    for (section, key, _) in settings.key_refs() {
        let KeyRef::Pkcs11(uri) = key else { continue };
        let name = format!("{section}.key_uri");
        if let Err(e) = fieldlink_keys::uri::KeyUri::parse(uri) {
            c.without_value(
                &name,
                None,
                e.to_string(),
                "see RFC 7512; e.g. pkcs11:token=gw-token;object=uplink",
            );
        } else if settings.keys.pkcs11.is_none() {
            c.without_value(
                &name,
                None,
                "a key in a token needs [keys] module and pin_file (or pin_credential)",
                "add [keys] with module = \"/usr/lib/softhsm/libsofthsm2.so\" (or the TPM's \
                 libtpm2_pkcs11.so) and pin_file = \"/etc/fieldlink/token.pin\" (mode 0600)",
            );
        }
    }
}

#[cfg(test)]
mod tests;
