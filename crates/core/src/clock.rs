//! Is the wall clock right? Boards without a battery-backed clock boot with whatever time
//! fake-hwclock saved, the image's build date or 1970, and step to the right time when time
//! sync arrives (if the network is up at all). Whatever judges time by the wall clock (message
//! ages, certificate validity, expiry alarms, the `ts` in payloads) asks here first.
//!
//! The answer comes from the kernel (`adjtimex(2)`, read only: the `STA_UNSYNC` flag and the
//! estimated error, the same test as `timedatectl`'s "System clock synchronized"). Under a
//! seccomp filter that denies `adjtimex` (systemd's `ProtectClock=`), systemd-timesyncd's flag
//! file `/run/systemd/timesync/synchronized` answers instead.
//!
//! One seam for tests: when `FIELDLINK_CLOCK_SYNC_FILE` names a file, its content (`synced` or
//! anything else) is the answer, read at every question, so a test can flip it while the gateway
//! runs; in-process tests call [`use_source`] first. libfaketime moves the wall clock but cannot
//! fake `adjtimex`, and CI machines report an unsynchronized clock.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The test seam's environment variable.
pub const SYNC_FILE_ENV: &str = "FIELDLINK_CLOCK_SYNC_FILE";

/// Where systemd-timesyncd says that it has synchronized the clock.
const TIMESYNCD_FLAG: &str = "/run/systemd/timesync/synchronized";

/// Where the answer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncSource {
    /// The kernel, with systemd-timesyncd's flag file where `adjtimex` is denied.
    Kernel,
    /// A file whose content is `synced` when the clock counts as synchronized (tests).
    File(PathBuf),
    /// A fixed answer (in-process tests).
    Fixed(bool),
}

impl SyncSource {
    /// Whether the wall clock is synchronized to a time source now. Unknown counts as not.
    pub fn synchronized(&self) -> bool {
        match self {
            Self::Kernel => kernel::synchronized()
                .unwrap_or_else(|| std::path::Path::new(TIMESYNCD_FLAG).exists()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim() == "synced")
                .unwrap_or(false),
            Self::Fixed(answer) => *answer,
        }
    }
}

static SOURCE: OnceLock<SyncSource> = OnceLock::new();

/// Makes `source` the process's source (tests). Returns `false`, changing nothing, when the
/// source was already chosen (it is chosen once, at the first question).
pub fn use_source(source: SyncSource) -> bool {
    SOURCE.set(source).is_ok()
}

/// The process's source: the test seam when its variable is set, else the kernel.
pub fn source() -> &'static SyncSource {
    SOURCE.get_or_init(|| match std::env::var_os(SYNC_FILE_ENV) {
        Some(path) if !path.is_empty() => {
            tracing::warn!(
                file = %PathBuf::from(&path).display(),
                "Clock synchronization is read from {SYNC_FILE_ENV} (a test seam), not the kernel"
            );
            SyncSource::File(path.into())
        }
        _ => SyncSource::Kernel,
    })
}

/// Whether the wall clock is synchronized now (see the module documentation).
pub fn synchronized() -> bool {
    source().synchronized()
}

/// Milliseconds since the Unix epoch on the wall clock (0 before 1970).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[allow(unsafe_code)]
mod kernel {
    /// The kernel's word, or `None` when it cannot be asked (a seccomp filter, say).
    pub(super) fn synchronized() -> Option<bool> {
        // SAFETY: `timex` is plain old data, so all zeroes is a valid value; with `modes` 0,
        // adjtimex only reads the kernel's state into the struct we own, changing nothing.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return None;
        }
        // systemd's ntp_synced(): not flagged unsynchronized, and an estimated error of less
        // than 16 s (the kernel's ceiling, which it reaches when nobody disciplines it).
        Some(
            state != libc::TIME_ERROR
                && tx.status & libc::STA_UNSYNC == 0
                && tx.maxerror < 16_000_000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_seam_says_synced_only_when_it_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync");
        let source = SyncSource::File(path.clone());
        assert!(!source.synchronized(), "a missing file is not synchronized");
        std::fs::write(&path, "synced\n").unwrap();
        assert!(source.synchronized());
        std::fs::write(&path, "unsynced").unwrap();
        assert!(!source.synchronized());
    }

    #[test]
    fn the_kernel_answers() {
        // Whatever this machine's state, the read-only call itself works outside seccomp.
        assert!(kernel::synchronized().is_some());
    }
}
