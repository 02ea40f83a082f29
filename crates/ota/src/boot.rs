//! Which boot this is, and how long it has run: what tells the agent, after a restart of
//! fieldlink, whether the machine rebooted meanwhile, and how much of the health check's deadline
//! is left.
//!
//! The boot's id is the kernel's (`/proc/sys/kernel/random/boot_id`, new at every boot); the
//! time since the boot is `/proc/uptime` (CLOCK_BOOTTIME: not moved by the wall clock's step
//! when time sync arrives on a board without a real-time clock, and not reset by a restart of
//! fieldlink).
//!
//! One seam for tests, whose "reboot" restarts RAUC's service and the gateway but not the
//! kernel: when `FIELDLINK_OTA_BOOT_ID_FILE` names a file, its content is the boot's id.

use std::path::PathBuf;
use std::time::Duration;

/// The test seam's environment variable.
pub const BOOT_ID_FILE_ENV: &str = "FIELDLINK_OTA_BOOT_ID_FILE";

/// Where the kernel says which boot this is.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id; `None` when it cannot be read (then every restart looks like a new boot,
/// as before the id was kept).
pub fn id() -> Option<String> {
    let path = std::env::var_os(BOOT_ID_FILE_ENV)
        .map_or_else(|| PathBuf::from(KERNEL_BOOT_ID), PathBuf::from);
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// How long the machine has been up; `None` when `/proc/uptime` cannot be read.
pub fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime(&text)
}

fn parse_uptime(text: &str) -> Option<Duration> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_the_first_field_of_proc_uptime() {
        assert_eq!(
            parse_uptime("12345.67 2345.01\n"),
            Some(Duration::from_millis(12_345_670))
        );
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("x 1"), None);
        assert_eq!(parse_uptime("-1 1"), None);
        assert!(uptime().is_some(), "this machine has a /proc/uptime");
        assert!(id().is_some_and(|id| id.len() >= 32), "and a boot id");
    }
}
