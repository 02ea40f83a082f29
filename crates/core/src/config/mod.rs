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
//! - The sections: `[broker]` in `fieldlink-broker`, and the whole file assembled in
//!   `crates/fieldlink` (`fieldlink::config`).
//!
//! Secrets are never written into this file: keys that need one take a path to a 0600 file (or,
//! later, a PKCS#11 URI).

mod device_rules;
pub mod devices;
mod error;
pub mod file;
mod reader;
mod validate;
pub mod values;

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;

pub use error::{Collector, ConfigError, ConfigErrors, Origin, is_secret};
pub use values::{
    MqttVersion, choice, choice_or, duration, int, min_tls_version, mqtt_version, non_empty_path,
    parse_duration, paths, port,
};

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

/// Validates `[queue]` (moves to `fieldlink-queue`).
pub fn queue_settings(file: &file::QueueFile, c: &mut Collector<'_>) -> QueueSettings {
    validate::queue(file, c)
}

/// Validates `[[routes]]` (moves to `fieldlink-queue`).
pub fn route_settings(
    file: &[toml::Spanned<file::RouteFile>],
    c: &mut Collector<'_>,
) -> Vec<Route> {
    validate::routes(file, c)
}

/// Validates `[bridge]` (moves to `fieldlink-serial`).
pub fn bridge_settings(file: &file::BridgeFile, c: &mut Collector<'_>) -> devices::BridgeSettings {
    device_rules::bridge(file, c)
}

/// Validates `[[devices]]` (moves to `fieldlink-serial`).
pub fn device_settings(
    file: &[toml::Spanned<file::DeviceFile>],
    c: &mut Collector<'_>,
) -> Vec<devices::DeviceSettings> {
    device_rules::devices(file, c)
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
