//! `[queue]` and `[[routes]]` as written: every field optional, every value with its place in
//! the file.

use serde::Deserialize;
use toml::Spanned;

/// `[queue]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Most bytes (payloads and topics) held, over all streams.
    pub max_bytes: Option<Spanned<i64>>,
    /// Most messages held, over all streams.
    pub max_messages: Option<Spanned<i64>>,
    /// Messages older than this are dropped, e.g. `"168h"`; `"0s"` keeps them for ever.
    pub max_age: Option<Spanned<String>>,
    /// `"reject"`, `"drop_oldest"` or `"drop_newest"`.
    pub when_full: Option<Spanned<String>>,
    /// Free disk space to keep: intake stops before the file system has less.
    pub disk_reserve: Option<Spanned<i64>>,
    /// Appends are committed at most once per interval, e.g. `"100ms"`; `"0s"` at once.
    pub commit_interval: Option<Spanned<String>>,
    /// `"power-safe"` or `"process-crash"`.
    pub durability: Option<Spanned<String>>,
}

/// `[[routes]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The stream name; order is kept within a stream.
    pub name: Option<Spanned<String>>,
    /// The local topic filter whose messages this route takes.
    pub filter: Option<Spanned<String>>,
    /// `"low"`, `"normal"` or `"high"`.
    pub priority: Option<Spanned<String>>,
    /// Most messages this stream may hold in the queue.
    pub max_messages: Option<Spanned<i64>>,
    /// Most bytes this stream may hold in the queue.
    pub max_bytes: Option<Spanned<i64>>,
    /// What to do when this stream is full; the queue's `when_full` when left out.
    pub when_full: Option<Spanned<String>>,
}
