//! What the uplink reports: its state, last error, rates and counters.

use std::time::{Duration, SystemTime};

pub use fieldlink_core::uplink_state::UplinkState;

/// The uplink as the CLI and the web UI see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UplinkStatus {
    /// Where the uplink stands: connected, connecting, stalled, refused, disconnected.
    pub state: UplinkState,
    /// The last failure, in plain words (kept after a reconnect, so a past stall or refusal
    /// stays visible).
    pub last_error: Option<String>,
    /// When the cloud last acknowledged one of our messages (PUBACK).
    pub last_ack: Option<SystemTime>,
    /// When the last byte from the cloud arrived (to the second).
    pub last_heard: Option<SystemTime>,
    /// Connection attempts that failed or ended.
    pub reconnects: u64,
    /// Connections given up because nothing came back from the cloud.
    pub stalls: u64,
    /// Messages acknowledged by the cloud.
    pub acked_total: u64,
    /// Messages the cloud refused (MQTT 5 negative PUBACK).
    pub rejected_total: u64,
    /// Messages published and not yet acknowledged.
    pub inflight: usize,
    /// Messages per second acknowledged, smoothed.
    pub drain_rate: f64,
    /// Messages waiting in the queue.
    pub backlog: u64,
    /// Time to empty the backlog at the current drain rate (`None` while nothing drains).
    pub time_to_empty: Option<Duration>,
    /// Certificates in use and when they expire (Unix seconds).
    pub certificates: Vec<(String, i64)>,
    /// Command filters the cloud refused to subscribe us to, with its reason.
    pub refused_subscriptions: Vec<String>,
    /// Commands from the cloud published on the local broker.
    pub commands_total: u64,
    /// How the uplink logs in inside MQTT (never the secret itself).
    pub credentials: Option<CredentialStatus>,
    /// Sessions ended cleanly to renew a token (not counted as reconnects).
    pub renewals: u64,
}

/// The MQTT login, as the status may show it: no password, no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialStatus {
    /// `password`, `jwt ES256`, `jwt RS256` or `azure-sas`.
    pub kind: String,
    /// The user name the cloud sees.
    pub username: String,
    /// When the token in use expires; `None` for a password.
    pub expires: Option<SystemTime>,
}
