//! The uplink's state: one model for `status.json`, `fieldlink status`, the web UI, the
//! component health and the metrics.
//!
//! Every view derives from [`UplinkState`] through [`UplinkState::name`] (a stable word for
//! machines: the JSON `state` field and the `state` label of the
//! `fieldlink_uplink_state` gauge) and its `Display` (the sentence for people). A new state
//! (other issues add "renewing credentials" and "clock not synchronized") is one variant and its
//! arm in [`UplinkState::describe`]; nothing else lists the states.
//!
//! ```
//! use std::time::Duration;
//! use fieldlink_core::uplink_state::UplinkState;
//! let stalled = UplinkState::Stalled { silent_for: Duration::from_secs(12) };
//! assert_eq!(stalled.name(), "stalled");
//! assert_eq!(stalled.to_string(), "stalled: nothing from the cloud for 12 s");
//! assert!(!stalled.is_connected());
//! ```

use std::fmt;
use std::time::Duration;

/// Where the uplink stands with the cloud broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UplinkState {
    /// The cloud accepted the session and answers.
    Connected,
    /// The first connection is being made (resolving, TCP, TLS, waiting for the CONNACK).
    /// After a failure its state stays while the next attempt is made, until it connects or
    /// fails anew.
    #[default]
    Connecting,
    /// Lost or unreachable (closed, reset, timed out, not resolvable); reconnecting with
    /// backoff.
    Disconnected {
        /// Why, in plain words.
        reason: String,
    },
    /// The cloud said no (TLS alert, certificate, CONNACK refusal): retried with backoff, but
    /// someone probably has to fix something.
    Refused {
        /// Why, in plain words.
        reason: String,
    },
    /// Connected, something awaits the cloud's answer, and nothing at all came back for
    /// `silent_for`: the connection is given up and made again.
    Stalled {
        /// Time since the last byte from the cloud (or since we started waiting, if later).
        silent_for: Duration,
    },
    /// A token (JWT, SAS) is near its expiry: what is in flight is acknowledged, then the
    /// session ends cleanly and starts again with a fresh token. Not an outage.
    RenewingCredentials,
    /// The wall clock is not synchronized and the cloud's certificate reads as expired or not
    /// yet valid by it (or the clock is before this release): the certificate cannot be judged
    /// until time sync. Retried calmly; not the cloud's fault, nor the certificate's.
    ClockUnsynchronized {
        /// What the clock made of the certificate, in plain words.
        reason: String,
    },
}

impl UplinkState {
    /// A stable word for machines: `connected`, `connecting`, `disconnected`, `refused`,
    /// `stalled`, `clock_unsynchronized`, `renewing_credentials`.
    pub fn name(&self) -> &'static str {
        self.describe().0
    }

    /// Whether the session is up and answering.
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected)
    }

    /// The name and, when there is one, the detail: the only place that lists the states.
    fn describe(&self) -> (&'static str, Option<String>) {
        match self {
            Self::Connected => ("connected", None),
            Self::Connecting => ("connecting", None),
            Self::Disconnected { reason } => ("disconnected", Some(reason.clone())),
            Self::Refused { reason } => ("refused", Some(reason.clone())),
            Self::RenewingCredentials => (
                "renewing_credentials",
                Some("renewing credentials (a fresh token before this one expires)".into()),
            ),
            Self::ClockUnsynchronized { reason } => ("clock_unsynchronized", Some(reason.clone())),
            Self::Stalled { silent_for } => (
                "stalled",
                Some(format!(
                    "nothing from the cloud for {} s",
                    silent_for.as_secs()
                )),
            ),
        }
    }
}

impl fmt::Display for UplinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.describe() {
            (name, None) => f.write_str(name),
            (name, Some(detail)) => write!(f, "{name}: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_a_name_and_a_sentence() {
        let states = [
            (UplinkState::Connecting, "connecting", "connecting"),
            (UplinkState::Connected, "connected", "connected"),
            (
                UplinkState::Disconnected {
                    reason: "connection reset".into(),
                },
                "disconnected",
                "disconnected: connection reset",
            ),
            (
                UplinkState::Refused {
                    reason: "bad user name or password".into(),
                },
                "refused",
                "refused: bad user name or password",
            ),
            (
                UplinkState::RenewingCredentials,
                "renewing_credentials",
                "renewing_credentials: renewing credentials (a fresh token before this one expires)",
            ),
            (
                UplinkState::ClockUnsynchronized {
                    reason: "waiting for time sync".into(),
                },
                "clock_unsynchronized",
                "clock_unsynchronized: waiting for time sync",
            ),
            (
                UplinkState::Stalled {
                    silent_for: Duration::from_millis(12_900),
                },
                "stalled",
                "stalled: nothing from the cloud for 12 s",
            ),
        ];
        for (state, name, text) in states {
            assert_eq!(state.name(), name);
            assert_eq!(state.to_string(), text);
            assert_eq!(state.is_connected(), name == "connected");
        }
    }
}
