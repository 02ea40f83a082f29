//! The gateway's status as operators see it: one snapshot of every component's health, the
//! queue, the uplink and the disk. The binary takes it every few seconds, writes it as
//! `status.json` for `fieldlink status`, and hands it to the web UI.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One snapshot of the whole gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// The gateway's version.
    pub version: String,
    /// When the snapshot was taken, in Unix milliseconds.
    pub written_ms: u64,
    /// Whether the wall clock is synchronized to a time source (see `fieldlink_core::clock`):
    /// until it is, message ages count running time only and certificate dates are not judged.
    #[serde(default)]
    pub clock_synchronized: bool,
    /// Each component and its health in words ("up", "degraded: ...").
    pub components: Vec<(String, String)>,
    /// The store-and-forward queue.
    pub queue: QueueView,
    /// The uplink, when one is configured.
    pub uplink: Option<UplinkView>,
    /// What the gateway writes to storage: its wear on an SD card.
    #[serde(default)]
    pub disk: DiskView,
    /// Problems the operator must fix, in words (a CRL past its nextUpdate, ...).
    #[serde(default)]
    pub alarms: Vec<String>,
    /// The data directory of the gateway that wrote it: which instance this is.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The OTA agent's view of the slots and the last update, when `[ota]` is on.
    #[serde(default)]
    pub ota: Option<OtaView>,
}

/// Updates, as the status shows them (from the OTA agent's state, as it last saw RAUC).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OtaView {
    /// The booted slot's bootname.
    pub booted: Option<String>,
    /// The version running in it.
    pub version: Option<String>,
    /// The last update's id and version, e.g. `"u-42 (2.1.0)"`.
    pub last: Option<String>,
    /// Where it is: `downloading`, `installing`, … `done`, `failed`, `rolled-back`.
    pub phase: Option<String>,
    /// Its outcome in words.
    pub result: Option<String>,
}

/// Bytes written to storage, as the kernel counts them for this process (`write_bytes` in
/// `/proc/self/io`: what reached the block layer, the file system's journal aside).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskView {
    /// Since the gateway started.
    pub written_bytes: u64,
    /// A day's worth at the rate of the last minutes.
    pub bytes_per_day: u64,
}

/// The queue, as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueView {
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Age of the oldest message, in seconds.
    pub oldest_age_s: Option<u64>,
    /// Messages dropped since start, all reasons.
    pub dropped_total: u64,
    /// Appends refused since start, all reasons.
    pub refused_total: u64,
    /// Messages recovered from the queue's commit journal at start, after an unclean stop
    /// (a kill, a power cut): those the cloud acknowledged just before it go again.
    #[serde(default)]
    pub recovered_at_start: u64,
}

/// The uplink, as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkView {
    /// The state's stable name (`UplinkState::name`): `connected`, `connecting`,
    /// `disconnected`, `refused`, `stalled`, and whatever later versions add.
    pub state: String,
    /// The state in words: "stalled: nothing from the cloud for 12 s".
    pub state_text: String,
    /// `state == "connected"` (kept for readers of older files).
    pub connected: bool,
    /// The last failure, in plain words.
    pub last_error: Option<String>,
    /// When the cloud last acknowledged one of our messages, in Unix milliseconds.
    pub last_ack_ms: Option<u64>,
    /// When the last byte from the cloud arrived, in Unix milliseconds.
    pub last_heard_ms: Option<u64>,
    /// Connection attempts that failed or ended.
    pub reconnects: u64,
    /// Connections given up because nothing came back from the cloud.
    #[serde(default)]
    pub stalls: u64,
    /// Messages acknowledged by the cloud since start.
    pub acked_total: u64,
    /// Messages refused by the cloud since start.
    pub rejected_total: u64,
    /// Messages per second acknowledged, smoothed.
    pub drain_rate: f64,
    /// Messages waiting.
    pub backlog: u64,
    /// Estimated seconds until the backlog is empty.
    pub time_to_empty_s: Option<u64>,
    /// Certificates in use: name and days left.
    pub certificates: Vec<(String, i64)>,
    /// Command subscriptions the cloud refused.
    pub refused_subscriptions: Vec<String>,
    /// Commands from the cloud published locally since start.
    pub commands_total: u64,
    /// How the uplink logs in inside MQTT (never the secret).
    #[serde(default)]
    pub login: Option<LoginView>,
    /// Sessions ended cleanly to renew a token since start.
    #[serde(default)]
    pub renewals: u64,
}

/// The uplink's MQTT login, as the status shows it: its kind, user name and the token's expiry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginView {
    /// `password`, `jwt ES256`, `jwt RS256` or `azure-sas`.
    pub kind: String,
    /// The MQTT user name.
    pub username: String,
    /// When the token in use expires, in Unix milliseconds (`None` for a password).
    pub expires_ms: Option<u64>,
}
