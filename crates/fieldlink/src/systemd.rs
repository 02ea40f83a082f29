//! The systemd notify protocol (`Type=notify`, `WatchdogSec=`), spoken directly: one datagram
//! to `$NOTIFY_SOCKET`, no library needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`) to systemd; does nothing when not run by systemd.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    // Abstract sockets ('@' prefix) are not reachable through std; systemd uses a path.
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(state.as_bytes(), &path));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "Cannot notify systemd");
    }
}

/// How often to ping the watchdog: half the period systemd asked for, if it asked.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
