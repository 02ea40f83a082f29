//! fieldlink's configuration: one TOML file, one section per component.
//!
//! What every section shares lives here; each section lives with its component.
//!
//! - Two layers ("parse, don't validate"): a section's *file layer* is the section as written,
//!   every value optional and carrying its place in the file (`toml::Spanned`); its *settings*
//!   are what the component gets, every value checked and every default filled in.
//! - [`parse_document`] reads a whole document into a file layer with the span-keeping reader
//!   which records every syntax, unknown-key and type mistake (not only the first), then
//!   runs the validation, which records its own mistakes in the same [`Collector`]. So a run
//!   reports *all* mistakes at once, each with file, line, key, value (redacted when secret) and
//!   a hint.
//! - [`values`] checks the small values every section has (ranges, durations, ports, MQTT and
//!   TLS versions, a word from a list).
//! - The sections live with their components (`fieldlink_broker::config`,
//!   `fieldlink_queue::config`, `fieldlink_uplink::config`, `fieldlink_serial::config`); the
//!   whole file is assembled in `crates/fieldlink` (`fieldlink::config`), which also owns
//!   `[gateway]`.
//!
//! Secrets are never written into this file: keys that need one take a path to a 0600 file (or,
//! later, a PKCS#11 URI).

mod error;
mod layers;
mod reader;
mod schema;
pub mod site;
pub mod values;

use std::path::PathBuf;

use serde::de::DeserializeOwned;

pub use error::{Collector, ConfigError, ConfigErrors, Origin, is_secret};
pub use layers::{
    LayerKind, Layers, SITE_FORMAT, SITE_READABLE_FROM, SITE_TABLE, Setting, effective,
    parse_layers,
};
pub use values::{
    MqttVersion, choice, choice_or, duration, int, min_tls_version, mqtt_version, non_empty_path,
    parse_duration, paths, port, stale_crl,
};

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

/// Reads the configuration's text: `Ok(None)` when the default path has no file (the
/// built-in defaults apply), an error naming the file and what to do when it cannot be read.
pub fn read_source(source: &ConfigSource) -> Result<Option<(String, Origin)>, ConfigErrors> {
    let path = match source {
        ConfigSource::Explicit(path) | ConfigSource::DefaultPath(path) => path,
    };
    let origin = Origin::File(path.clone());
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some((text, origin))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match source {
            ConfigSource::DefaultPath(_) => Ok(None),
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

/// Reads `text` into the file layer `F` and validates it with `validate`; every mistake of
/// both steps is returned at once, in file order. `origin` is used in error messages.
pub fn parse_document<F, S>(
    text: &str,
    origin: Origin,
    validate: impl FnOnce(&F, &mut Collector<'_>) -> S,
) -> Result<S, ConfigErrors>
where
    F: DeserializeOwned,
{
    let mut errors = Collector::new(origin.clone(), text);
    let file: Option<F> = reader::read(text, &mut errors);
    let settings = file.map(|file| validate(&file, &mut errors));
    errors.finish()?;
    // `read` records why it read nothing, so this is only reached with settings.
    settings.ok_or_else(|| {
        file_error(
            origin,
            "nothing could be read",
            "check that the file is TOML (see https://toml.io)",
        )
    })
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
