//! `[ota]`: the OTA update agent, owned here.
//!
//! ```toml
//! [ota]
//! command_topic = "fieldlink/ota/install"
//! status_topic = "fieldlink/ota/status"
//! health_deadline = "5m"
//! health_checks = ["components", "uplink", "devices"]
//! ```

pub mod file;

use std::path::PathBuf;
use std::time::Duration;

use fieldlink_core::config::{Collector, duration, int};
use fieldlink_core::topic::TopicName;
use toml::Spanned;

use self::file::OtaFile;

/// The local topic install requests arrive on, by default.
pub const DEFAULT_COMMAND_TOPIC: &str = "fieldlink/ota/install";
/// The local topic of the agent's reports, by default.
pub const DEFAULT_STATUS_TOPIC: &str = "fieldlink/ota/status";
/// Free bytes kept on the download directory's file system: 64 MiB.
pub const DEFAULT_KEEP_FREE: u64 = 64 << 20;
/// The largest bundle accepted: 2 GiB.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 2 << 30;
/// A download attempt with no byte for this long is cut and resumed.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one download before it is reported failed.
pub const DEFAULT_DOWNLOAD_ATTEMPTS: u32 = 10;
/// How long the health check after an update may take.
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(300);
/// How long the checks must hold without a break.
pub const DEFAULT_HEALTH_SETTLE: Duration = Duration::from_secs(30);
/// The stream (of the queue) the agent's reports travel in.
pub const STATUS_STREAM: &str = "ota";

/// Where RAUC's D-Bus service is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DbusBus {
    /// The system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`).
    #[default]
    System,
    /// A bus at this address (`unix:path=…`).
    Address(String),
}

/// One thing the health check after an update waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthCheck {
    /// Every component on the status board serving (up or degraded).
    Components,
    /// The uplink connected to the cloud.
    Uplink,
    /// The field devices polling (the bridge up), when devices are configured.
    Devices,
}

/// How the gateway is rebooted after an install.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Reboot {
    /// `org.freedesktop.login1.Manager.Reboot` on the system bus.
    #[default]
    Logind,
    /// This program and its arguments.
    Command(Vec<String>),
}

/// `[ota]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaSettings {
    /// Where install requests arrive, locally.
    pub command_topic: TopicName,
    /// Where reports go, locally; they are queued for the cloud.
    pub status_topic: TopicName,
    /// Where bundles are downloaded; the binary fills in `<data_dir>/ota` when `None`.
    pub download_dir: Option<PathBuf>,
    /// Bytes left free after a download.
    pub keep_free: u64,
    /// The largest bundle accepted.
    pub max_bundle_bytes: u64,
    /// CAs for the bundle server; the binary falls back to the uplink's, then the system's.
    pub ca_file: Option<PathBuf>,
    /// The longest wait for a byte of a download.
    pub download_timeout: Duration,
    /// Attempts of one download.
    pub download_attempts: u32,
    /// RAUC's bus.
    pub dbus: DbusBus,
    /// How to reboot.
    pub reboot: Reboot,
    /// How long the health check may take.
    pub health_deadline: Duration,
    /// How long every check must hold, without a break, to pass.
    pub health_settle: Duration,
    /// What the health check waits for.
    pub health_checks: Vec<HealthCheck>,
}

impl Default for OtaSettings {
    fn default() -> Self {
        Self {
            command_topic: topic(DEFAULT_COMMAND_TOPIC),
            status_topic: topic(DEFAULT_STATUS_TOPIC),
            download_dir: None,
            keep_free: DEFAULT_KEEP_FREE,
            max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
            ca_file: None,
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            download_attempts: DEFAULT_DOWNLOAD_ATTEMPTS,
            dbus: DbusBus::System,
            reboot: Reboot::Logind,
            health_deadline: DEFAULT_HEALTH_DEADLINE,
            health_settle: DEFAULT_HEALTH_SETTLE,
            health_checks: vec![
                HealthCheck::Components,
                HealthCheck::Uplink,
                HealthCheck::Devices,
            ],
        }
    }
}

fn topic(name: &str) -> TopicName {
    // The defaults above are valid topic names (no wildcard, not empty): the unit test
    // `defaults_are_valid` proves it.
    TopicName::new(name).expect("default topics are valid")
}

/// `[ota]`: `None` when `enabled = false`.
pub fn settings(file: &Spanned<OtaFile>, c: &mut Collector<'_>) -> Option<OtaSettings> {
    let file = file.get_ref();
    if file.enabled.as_ref().is_some_and(|e| !*e.get_ref()) {
        return None;
    }
    let d = OtaSettings::default();
    let topic_at = |c: &mut Collector<'_>, key: &str, value: &Option<Spanned<String>>, default| {
        let Some(value) = value else { return default };
        match TopicName::new(value.get_ref().clone()) {
            Ok(t) => t,
            Err(e) => {
                c.at(
                    key,
                    Some(value.span()),
                    e.to_string(),
                    "write a topic name without '+' or '#', e.g. \"fieldlink/ota/install\"",
                );
                default
            }
        }
    };
    let command_topic = topic_at(c, "ota.command_topic", &file.command_topic, d.command_topic);
    let status_topic = topic_at(c, "ota.status_topic", &file.status_topic, d.status_topic);
    let dbus = match &file.dbus {
        None => DbusBus::System,
        Some(v) if v.get_ref() == "system" => DbusBus::System,
        Some(v) if v.get_ref().contains(':') && v.get_ref().contains('=') => {
            DbusBus::Address(v.get_ref().clone())
        }
        Some(v) => {
            c.at(
                "ota.dbus",
                Some(v.span()),
                "neither \"system\" nor a D-Bus address",
                "write \"system\" (RAUC on the system bus) or an address such as \
                 \"unix:path=/run/rauc-test/bus.sock\"",
            );
            DbusBus::System
        }
    };
    let reboot = match &file.reboot_command {
        None => Reboot::Logind,
        Some(cmd) if cmd.get_ref().is_empty() || cmd.get_ref()[0].get_ref().is_empty() => {
            c.at(
                "ota.reboot_command",
                Some(cmd.span()),
                "an empty command",
                "name a program and its arguments, e.g. [\"/usr/sbin/reboot\"], or remove the \
                 key to reboot through logind",
            );
            Reboot::Logind
        }
        Some(cmd) => Reboot::Command(cmd.get_ref().iter().map(|a| a.get_ref().clone()).collect()),
    };
    let health_checks = match &file.health_checks {
        None => d.health_checks,
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|word| {
                let check = match word.get_ref().as_str() {
                    "components" => HealthCheck::Components,
                    "uplink" => HealthCheck::Uplink,
                    "devices" => HealthCheck::Devices,
                    _ => {
                        c.at(
                            "ota.health_checks",
                            Some(word.span()),
                            "not a health check",
                            "write \"components\", \"uplink\" or \"devices\"",
                        );
                        return None;
                    }
                };
                Some(check)
            })
            .collect(),
    };
    let health_deadline = duration(
        c,
        "ota.health_deadline",
        &file.health_deadline,
        Duration::from_secs(1)..=Duration::from_secs(86_400),
        d.health_deadline,
    );
    let health_settle = duration(
        c,
        "ota.health_settle",
        &file.health_settle,
        Duration::ZERO..=Duration::from_secs(86_400),
        d.health_settle,
    );
    if health_settle >= health_deadline {
        let span = file
            .health_settle
            .as_ref()
            .or(file.health_deadline.as_ref())
            .map(Spanned::span);
        c.at(
            "ota.health_settle",
            span,
            "not shorter than ota.health_deadline: the check could never pass",
            "make health_settle shorter than health_deadline (defaults: 30s and 5m)",
        );
    }
    Some(OtaSettings {
        command_topic,
        status_topic,
        download_dir: file.download_dir.as_ref().map(|p| p.get_ref().clone()),
        keep_free: int(c, "ota.keep_free", &file.keep_free, 0..=i64::MAX).unwrap_or(d.keep_free),
        max_bundle_bytes: int(
            c,
            "ota.max_bundle_bytes",
            &file.max_bundle_bytes,
            1..=i64::MAX,
        )
        .unwrap_or(d.max_bundle_bytes),
        ca_file: file.ca_file.as_ref().map(|p| p.get_ref().clone()),
        download_timeout: duration(
            c,
            "ota.download_timeout",
            &file.download_timeout,
            Duration::from_secs(1)..=Duration::from_secs(3600),
            d.download_timeout,
        ),
        download_attempts: int(
            c,
            "ota.download_attempts",
            &file.download_attempts,
            1..=1000,
        )
        .unwrap_or(d.download_attempts),
        dbus,
        reboot,
        health_deadline,
        health_settle,
        health_checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let d = OtaSettings::default();
        assert_eq!(d.command_topic.as_str(), DEFAULT_COMMAND_TOPIC);
        assert_eq!(d.status_topic.as_str(), DEFAULT_STATUS_TOPIC);
    }
}
