//! The whole configuration file, assembled from the sections the components own.
//!
//! Each domain crate owns its section (file layer, validation, named defaults):
//! `[broker]` is `fieldlink_broker::config`, `[queue]` and `[[routes]]`
//! `fieldlink_queue::config`, `[uplink]` `fieldlink_uplink::config`, `[bridge]` and
//! `[[devices]]` `fieldlink_serial::config`, `[ota]` `fieldlink_ota::config`, `[web]`
//! `fieldlink_web::config`. This module owns `[gateway]` (process-wide
//! settings), puts the sections side by side in one file layer ([`FileConfig`]) and one
//! [`Settings`], and reads the file with `fieldlink_core::config`'s reader and error collector,
//! so that `check-config` reports every mistake of the whole file at once.

pub mod gateway;

use fieldlink_broker::config::{BrokerSettings, file::BrokerFile};
use fieldlink_core::config::site::SiteStore;
use fieldlink_core::config::{Collector, ConfigErrors, ConfigSource, LayerKind, Layers, Origin};
use fieldlink_core::tls::KeyRef;
use fieldlink_keys::config::{KeysSettings, file::KeysFile};
use fieldlink_ota::config::{OtaSettings, file::OtaFile};
use fieldlink_queue::config::file::{QueueFile, RouteFile};
use fieldlink_queue::config::{QueueSettings, Route};
use fieldlink_serial::config::file::{BridgeFile, DeviceFile};
use fieldlink_serial::config::{BridgeSettings, DeviceSettings};
use fieldlink_uplink::config::{UplinkSettings, file::UplinkFile};
use fieldlink_web::config::{WebSettings, file::WebFile};
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
    /// `[web]`: the local web UI; none when absent.
    pub web: Option<Spanned<WebFile>>,
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
    /// `[web]`, if the local web UI runs.
    pub web: Option<WebSettings>,
}

/// Keys the site layer may not set: the data directory decides where the site layer itself
/// lives, so only the shipped file can move it.
pub const SITE_FIXED: &[&str] = &["gateway.data_dir"];

/// A configuration read from its layers.
#[derive(Debug)]
pub struct Loaded {
    /// The merged, validated settings.
    pub settings: Settings,
    /// Where they came from: the shipped file, the site layer, both, or the built-in defaults.
    pub origin: Origin,
    /// Keys of a newer release's site layer that this release ignores.
    pub warnings: Vec<ConfigError>,
    /// The layers read, lowest first (the shipped file, then the site layer).
    pub layers: Layers,
    /// The site layer's store in the data directory (its file may not exist).
    pub site: SiteStore,
}

/// Reads and validates the configuration: the shipped file, then the site layer in its data
/// directory (`<data_dir>/config/site.toml`), merged. Warnings are logged.
pub fn load(source: &ConfigSource) -> Result<(Settings, Origin), ConfigErrors> {
    let loaded = load_layers(source)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok((loaded.settings, loaded.origin))
}

/// Reads the shipped file and the site layer, merges and validates them.
pub fn load_layers(source: &ConfigSource) -> Result<Loaded, ConfigErrors> {
    let shipped = shipped_layer(source)?;
    let site = site_store(&shipped)?;
    let text = site.read().map_err(|e| site_error(&site, &e))?;
    load_with_site(shipped, site, text.as_deref())
}

/// Merges `site_text` (a site layer, proposed or on disk) onto the shipped layer and
/// validates the result.
pub fn load_with_site(
    mut layers: Layers,
    site: SiteStore,
    site_text: Option<&str>,
) -> Result<Loaded, ConfigErrors> {
    if let Some(text) = site_text {
        let kind = LayerKind::Site { fixed: SITE_FIXED };
        layers.push(Origin::File(site.path()), text, kind);
    }
    let (settings, warnings) = fieldlink_core::config::parse_layers(&layers, settings)?;
    let mut origins = layers.origins();
    let origin = match origins.len() {
        0 => Origin::BuiltIn,
        1 => origins.remove(0),
        _ => Origin::Merged(origins),
    };
    Ok(Loaded {
        settings,
        origin,
        warnings,
        layers,
        site,
    })
}

/// The shipped file as the lowest layer (no layer when the default path has no file).
pub fn shipped_layer(source: &ConfigSource) -> Result<Layers, ConfigErrors> {
    let mut layers = Layers::new();
    if let Some((text, origin)) = fieldlink_core::config::read_source(source)? {
        layers.push(origin, &text, LayerKind::Shipped);
    }
    Ok(layers)
}

/// The site layer's store, in the data directory the shipped layer names. Only `[gateway]`
/// is read here: the shipped file alone may well be incomplete (a per-device `client_id`
/// that only the site layer gives), and the merged result is validated whole afterwards.
pub fn site_store(shipped: &Layers) -> Result<SiteStore, ConfigErrors> {
    #[derive(Deserialize)]
    struct GatewayOnly {
        #[serde(default)]
        gateway: gateway::GatewayFile,
    }
    match fieldlink_core::config::parse_layers(shipped, |f: &GatewayOnly, c| {
        gateway::settings(&f.gateway, c)
    }) {
        Ok((gateway, _)) => Ok(SiteStore::new(&gateway.resolved_data_dir())),
        // A mistake in [gateway]: report every mistake of the file, not only those.
        Err(gateway_errors) => Err(fieldlink_core::config::parse_layers(shipped, settings)
            .err()
            .unwrap_or(gateway_errors)),
    }
}

fn site_error(site: &SiteStore, e: &fieldlink_core::config::site::SiteError) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        origin: Origin::File(site.path()),
        position: None,
        key: String::new(),
        value: None,
        problem: format!("the site configuration cannot be read: {e}"),
        hint: "check that the data directory is readable by the user fieldlink runs as".into(),
    }])
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
        web: file
            .web
            .as_ref()
            .and_then(|w| fieldlink_web::config::settings(w, c)),
    };
    check_key_uris(&settings, c);
    settings
}

impl Settings {
    /// Every private key the configuration names, with the key that names it and the
    /// certificate file that goes with it (none for the key that signs the uplink's JWTs).
    pub fn key_refs(&self) -> Vec<(String, &KeyRef, Option<&std::path::Path>)> {
        use fieldlink_broker::config::ListenerTls;
        let mut out = Vec::new();
        if let Some(fieldlink_uplink::config::UplinkTls::Mutual { key, cert_file, .. }) =
            self.uplink.as_ref().map(|u| &u.tls)
        {
            out.push(("uplink".to_owned(), key, Some(cert_file.as_path())));
        }
        if let Some(fieldlink_uplink::config::UplinkCredentials::Jwt(jwt)) =
            self.uplink.as_ref().and_then(|u| u.credentials.as_ref())
        {
            out.push(("uplink.jwt".to_owned(), &jwt.key, None));
        }
        for (i, listener) in self.broker.listeners.iter().enumerate() {
            if let ListenerTls::ServerAuth { key, cert_file }
            | ListenerTls::Mutual { key, cert_file, .. } = &listener.tls
            {
                out.push((
                    format!("broker.listeners[{i}]"),
                    key,
                    Some(cert_file.as_path()),
                ));
            }
        }
        if let Some(fieldlink_web::config::WebIdentity::Configured { cert_file, key }) =
            self.web.as_ref().map(|w| &w.identity)
        {
            out.push(("web".to_owned(), key, Some(cert_file.as_path())));
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
mod layer_tests;
#[cfg(test)]
mod tests;
