//! `[queue]` and `[[routes]]`: the queue's sections of the configuration, owned here.
//!
//! A route names a stream of the queue, the local topics it takes, their priority and the
//! stream's own limits, so the routes live with the queue. [`file`] is the sections as written;
//! [`QueueSettings`] and [`Route`] what the gateway runs on, every value checked and every
//! default filled in; [`settings`] and [`routes`] go from one to the other, recording every
//! mistake in the shared collector (`crates/fieldlink` assembles the sections). Each default is
//! a named constant below, used by `Default`, by validation and by the annotated
//! `configs/fieldlink.toml` test alike.

pub mod file;
mod validate;

use std::time::Duration;

use fieldlink_core::message::Priority;
use fieldlink_core::topic::TopicFilter;
pub use validate::{routes, settings};

/// Half a GiB: days of telemetry for a typical site, and room to spare on an 8 GB card.
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Most messages held, over all streams.
pub const DEFAULT_MAX_MESSAGES: u64 = 5_000_000;
/// A week: longer than any outage worth buffering for; older readings are rarely wanted.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most ten append commits (journal syncs) a second, whatever the rate: SD cards wear by
/// the commits they take; a PUBACK waits at most this long for company.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Keep 64 MiB free so that the system (logs, updates) never runs out of disk because of us.
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;

/// `[queue]`: limits of the store-and-forward queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most bytes (payloads and topics) held, over all streams.
    pub max_bytes: u64,
    /// Most messages held, over all streams.
    pub max_messages: u64,
    /// Messages older than this are dropped; `None` keeps them for ever.
    pub max_age: Option<Duration>,
    /// What to do with a message that does not fit.
    pub when_full: FullPolicy,
    /// Free disk space to keep: intake stops before the file system has less.
    pub disk_reserve: u64,
    /// Appends are committed at most once per interval (one fsync for all that arrived
    /// meanwhile); zero commits each round at once.
    pub commit_interval: Duration,
    /// What a commit survives.
    pub durability: Durability,
}

/// What a committed message survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A power cut: every journal commit is synced before producers get their
    /// acknowledgement, and every fold of the database.
    #[default]
    PowerSafe,
    /// A crash of the process, not a power cut: nothing is synced per commit or fold (the WAL
    /// is synced at checkpoints). For boards on a UPS.
    ProcessCrash,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_messages: DEFAULT_MAX_MESSAGES,
            max_age: Some(DEFAULT_MAX_AGE),
            when_full: FullPolicy::default(),
            disk_reserve: DEFAULT_DISK_RESERVE,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            durability: Durability::default(),
        }
    }
}

/// What the queue does with a message that does not fit within a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullPolicy {
    /// Refuse it: the producer is told (the broker withholds its PUBACK or answers "quota
    /// exceeded"), so nothing is dropped silently. The default.
    #[default]
    Reject,
    /// Make room by dropping the oldest messages (of the stream, or of the whole queue).
    DropOldest,
    /// Drop the new message, keep the backlog.
    DropNewest,
}

/// Limits of one stream, on top of the queue's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamLimits {
    /// Most messages the stream may hold.
    pub max_messages: Option<u64>,
    /// Most bytes the stream may hold.
    pub max_bytes: Option<u64>,
    /// What to do when the stream is full; the queue's policy when `None`.
    pub when_full: Option<FullPolicy>,
}

/// A route: local messages matching `filter` go to the cloud, in the stream `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The stream name; order is kept within a stream.
    pub name: String,
    /// The local topics it takes.
    pub filter: TopicFilter,
    /// How urgent its messages are.
    pub priority: Priority,
    /// Its limits in the queue.
    pub limits: StreamLimits,
}
