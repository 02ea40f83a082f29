//! `[ota]` as written: every field optional, every value with its place in the file.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// `[ota]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaFile {
    /// Whether the agent runs (`true` when the section is present and this is absent).
    pub enabled: Option<Spanned<bool>>,
    /// The local topic the install requests arrive on (published there by an
    /// `[[uplink.commands]]` rule).
    pub command_topic: Option<Spanned<String>>,
    /// The local topic of the agent's reports, queued for the cloud in the stream `ota`.
    pub status_topic: Option<Spanned<String>>,
    /// Where bundles are downloaded; `ota/` in the data directory when absent.
    pub download_dir: Option<Spanned<PathBuf>>,
    /// Bytes left free on the download directory's file system after a download.
    pub keep_free: Option<Spanned<i64>>,
    /// The largest bundle accepted, in bytes.
    pub max_bundle_bytes: Option<Spanned<i64>>,
    /// CAs trusted for the bundle server; the uplink's `ca_file`, else the system's, when absent.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// How long one download attempt may go without a byte, e.g. `"30s"`.
    pub download_timeout: Option<Spanned<String>>,
    /// Attempts of one download (each resumes where the last one stopped).
    pub download_attempts: Option<Spanned<i64>>,
    /// The D-Bus bus RAUC is on: `"system"` or a D-Bus address (`"unix:path=…"`).
    pub dbus: Option<Spanned<String>>,
    /// A program run instead of logind's Reboot (tests; boards without logind).
    pub reboot_command: Option<Spanned<Vec<Spanned<String>>>>,
    /// How long the health check after an update may take, e.g. `"5m"`.
    pub health_deadline: Option<Spanned<String>>,
    /// How long every check must hold without a break to pass, e.g. `"30s"`.
    pub health_settle: Option<Spanned<String>>,
    /// What must hold after an update: `"components"`, `"uplink"`, `"devices"`.
    pub health_checks: Option<Spanned<Vec<Spanned<String>>>>,
}
