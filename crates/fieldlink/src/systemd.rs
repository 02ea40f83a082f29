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
    ping_every(std::env::var("WATCHDOG_USEC").ok().as_deref())
}

/// Half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, so that one late ping is not fatal.
fn ping_every(watchdog_usec: Option<&str>) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_period() {
        assert_eq!(ping_every(Some("200000")), Some(Duration::from_millis(100)));
        assert_eq!(ping_every(Some("0")), None, "0 turns it off");
        assert_eq!(ping_every(Some("soon")), None);
        assert_eq!(ping_every(None), None);
    }
}
