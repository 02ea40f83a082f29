//! `[bridge]` and `[[devices]]` as written: every field optional, every value with its place in
//! the file.
//!
//! Integers are read as `i64` and checked in validation, so that "70000 is not a port" gets a
//! message of ours rather than serde's.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

/// `[bridge]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeFile {
    /// The site name, `{site}` in topic templates.
    pub site: Option<Spanned<String>>,
    /// Topic of each value, e.g. `"{site}/{device}/{point}"`.
    pub value_topic: Option<Spanned<String>>,
    /// Topic of a device's snapshot (all values of one poll in one message); none when absent.
    pub snapshot_topic: Option<Spanned<String>>,
    /// Topic of write commands, e.g. `"{site}/{device}/{point}/set"`.
    pub command_topic: Option<Spanned<String>>,
    /// Topic of the results of write commands.
    pub response_topic: Option<Spanned<String>>,
    /// Topic of a device's retained `online`/`offline` status.
    pub status_topic: Option<Spanned<String>>,
    /// QoS of value messages: 0, 1 or 2.
    pub qos: Option<Spanned<i64>>,
    /// Whether value messages are retained.
    pub retain: Option<Spanned<bool>>,
}

/// `[[devices]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// The device's name, `{device}` in topic templates.
    pub name: Option<Spanned<String>>,
    /// `"modbus-rtu"`, `"modbus-tcp"` or `"lines"`.
    pub protocol: Option<Spanned<String>>,
    /// Serial port path (RTU and lines).
    pub port: Option<Spanned<PathBuf>>,
    /// Baud rate.
    pub baud: Option<Spanned<i64>>,
    /// `"none"`, `"even"` or `"odd"`.
    pub parity: Option<Spanned<String>>,
    /// 5 to 8.
    pub data_bits: Option<Spanned<i64>>,
    /// 1 or 2.
    pub stop_bits: Option<Spanned<i64>>,
    /// Kernel RS-485 mode (not supported: rejected with a hint).
    pub rs485: Option<Spanned<bool>>,
    /// `host:port` of a Modbus TCP server.
    pub address: Option<Spanned<String>>,
    /// Modbus unit (slave) id.
    pub unit: Option<Spanned<i64>>,
    /// How long one request may take (Modbus), or one silence window (lines).
    pub timeout: Option<Spanned<String>>,
    /// Retries of a failed request.
    pub retries: Option<Spanned<i64>>,
    /// Failed polls in a row before the device is offline.
    pub offline_after: Option<Spanned<i64>>,
    /// Poll interval while offline.
    pub offline_interval: Option<Spanned<String>>,
    /// Default poll interval of the device's points.
    pub interval: Option<Spanned<String>>,
    /// Default "publish at least this often" of the device's points.
    pub heartbeat: Option<Spanned<String>>,
    /// Largest gap of unused registers read to join two ranges into one request.
    pub max_gap: Option<Spanned<i64>>,
    /// Also publish one snapshot message per poll.
    pub snapshot: Option<Spanned<bool>>,
    /// Line format: `"regex"`, `"json"` or `"nmea"`.
    pub format: Option<Spanned<String>>,
    /// Regular expression with named captures (`regex`, `nmea`).
    pub pattern: Option<Spanned<String>>,
    /// The line delimiter, one byte, e.g. `"\n"`.
    pub delimiter: Option<Spanned<String>>,
    /// Longest line in bytes; longer ones are counted and discarded.
    pub max_line: Option<Spanned<i64>>,
    /// `[[devices.points]]`.
    #[serde(default)]
    pub points: Vec<Spanned<PointFile>>,
}

/// `[[devices.points]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointFile {
    /// The point's name, `{point}` in topic templates.
    pub name: Option<Spanned<String>>,
    /// `"holding"`, `"input"`, `"coil"` or `"discrete"`.
    pub table: Option<Spanned<String>>,
    /// 0-based register or bit address.
    pub address: Option<Spanned<i64>>,
    /// Data type, e.g. `"f32"`.
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
    /// String length in bytes.
    pub length: Option<Spanned<i64>>,
    /// `"big"` (high word first) or `"little"`.
    pub word_order: Option<Spanned<String>>,
    /// `"big"` (high byte first) or `"little"`.
    pub byte_order: Option<Spanned<String>>,
    /// Multiplier applied to the raw value.
    pub scale: Option<Spanned<f64>>,
    /// Added after scaling.
    pub offset: Option<Spanned<f64>>,
    /// Unit shown in payloads.
    pub unit: Option<Spanned<String>>,
    /// Smallest change that is published.
    pub deadband: Option<Spanned<f64>>,
    /// Poll interval.
    pub interval: Option<Spanned<String>>,
    /// Publish at least this often.
    pub heartbeat: Option<Spanned<String>>,
    /// Accept write commands.
    pub writable: Option<Spanned<bool>>,
    /// Lowest value a write may set.
    pub min: Option<Spanned<f64>>,
    /// Highest value a write may set.
    pub max: Option<Spanned<f64>>,
    /// JSON field (dotted path) of a `json` line device; the point's name when absent.
    pub field: Option<Spanned<String>>,
}
