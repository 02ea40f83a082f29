//! `[gateway]`: process-wide settings (where state lives, how long shutdown may take).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fieldlink_core::config::{Collector, duration, non_empty_path};
use serde::Deserialize;
use toml::Spanned;

/// How long a shutdown may take before the process exits anyway: enough for the queue's last
/// commit and the sessions' last batches, short of systemd's own stop timeout.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `[gateway]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Where state (the queue database) lives.
    pub data_dir: Option<Spanned<PathBuf>>,
    /// How long shutdown may take, e.g. `"10s"`.
    pub shutdown_grace: Option<Spanned<String>>,
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
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Validates `[gateway]`, recording every mistake in `c`.
pub fn settings(file: &GatewayFile, c: &mut Collector<'_>) -> GatewaySettings {
    GatewaySettings {
        data_dir: non_empty_path(
            c,
            "gateway.data_dir",
            file.data_dir.as_ref(),
            "give a directory, or leave the key out to use the default",
        ),
        shutdown_grace: duration(
            c,
            "gateway.shutdown_grace",
            &file.shutdown_grace,
            Duration::from_millis(100)..=Duration::from_secs(600),
            DEFAULT_SHUTDOWN_GRACE,
        ),
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
