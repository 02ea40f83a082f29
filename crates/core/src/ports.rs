//! The ports through which the domain crates meet. Each crate depends on `core`, never on a
//! sibling; the binary plugs the real implementations together.
//!
//! - [`Outbox`]: durable storage for everything bound for the cloud (the queue implements it);
//! - [`Ingress`]: the one way in for every message produced at the site (the broker edge's
//!   client publishes, the field bridge's values): routed messages are made durable in the
//!   outbox first, then everything is published locally (the binary implements it);
//! - [`LocalBus`]: publish onto and subscribe to the local broker from inside the process (the
//!   broker implements it; the uplink's command path and the field bridge's writes use it);
//! - [`StatusBoard`]: each component's health, for the CLI, the web UI and the watchdog.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::fault::Fault;
use crate::message::{Message, Priority};
use crate::topic::TopicFilter;

/// A boxed future, so that the ports stay usable as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message on its way to the outbox, with the stream (route) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The stream, i.e. the route's name: order is kept within a stream.
    pub stream: String,
    /// How urgent it is.
    pub priority: Priority,
    /// The message itself.
    pub message: Message,
    /// Its MQTT 5 properties as received (user properties, content type, ...), kept opaque.
    pub properties: Option<Vec<u8>>,
}

/// Why the outbox did not take a message. The producer decides what to tell its client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The outbox is full and its policy is to refuse: apply backpressure (withhold the
    /// PUBACK, or answer "quota exceeded" in MQTT 5).
    #[error("the outbox is full: {0}")]
    Full(Full),
    /// The storage failed; the message is not stored.
    #[error("the outbox could not store the message: {0}")]
    Storage(StorageFailure),
    /// The gateway is shutting down and takes no more messages.
    #[error("the outbox is closed")]
    Closed,
}

impl OutboxError {
    /// Whose fault it is: a full outbox or failing storage is the environment's (a long outage,
    /// a full or failing disk); closing is the gateway's own shutdown, nobody's fault to fix.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Full(_) | Self::Closed => Fault::Environment,
            Self::Storage(failure) => failure.fault(),
        }
    }
}

/// Which limit refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Full {
    /// Free disk space is below the reserve.
    #[error(
        "only {available} bytes free on the file system of {path:?}, below the reserve of \
         {reserve}; nothing was stored. Hint: free disk space or lower queue.disk_reserve"
    )]
    DiskReserve {
        /// The database file.
        path: std::path::PathBuf,
        /// Free bytes now.
        available: u64,
        /// The configured reserve.
        reserve: u64,
    },
    /// The whole queue is at its message or byte limit.
    #[error("the queue is full (the queue is at its limit); nothing was stored")]
    Queue,
    /// One stream (route) is at its own limit.
    #[error("the queue is full (stream {0:?} is at its limit); nothing was stored")]
    Stream(String),
}

/// Why storage failed: the cause, typed, and what the storage said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct StorageFailure {
    /// What failed.
    pub cause: StorageCause,
    /// What the storage said, for the log (never a message's content).
    pub detail: String,
}

impl StorageFailure {
    /// Whose fault it is: the database and the file system are the environment's; a schema
    /// that cannot be brought up to date is a database from a newer fieldlink (environment)
    /// or a bug in a migration.
    pub fn fault(&self) -> Fault {
        match self.cause {
            StorageCause::Database | StorageCause::Io | StorageCause::Schema => Fault::Environment,
        }
    }
}

/// What part of the storage failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageCause {
    /// The database (SQLite) failed: a full or failing disk, a corrupt file.
    Database,
    /// A file operation failed (the directory, moving a corrupt file aside).
    Io,
    /// The schema could not be brought up to date.
    Schema,
}

/// Durable storage for messages bound for the cloud.
///
/// `append` resolves only once every entry is durable (it survives a crash or a power cut), so
/// the caller may then acknowledge the message to its producer.
pub trait Outbox: Send + Sync {
    /// Stores `entries`, all or none, and resolves when they are durable.
    fn append(&self, entries: Vec<OutboxEntry>) -> BoxFuture<'_, Result<(), OutboxError>>;
}

/// A message held by the durable queue, as handed to whoever forwards it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The monotonic id: never reused, so the cloud side can drop duplicates by it.
    pub id: i64,
    /// The stream (route) it belongs to.
    pub stream: String,
    /// Its priority lane.
    pub priority: Priority,
    /// The message.
    pub message: Message,
    /// Encoded MQTT 5 properties, if the producer gave any.
    pub properties: Option<Vec<u8>>,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub enqueued_ms: i64,
}

/// Why the backlog could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BacklogError {
    /// The storage failed.
    #[error("the queue failed: {0}")]
    Storage(StorageFailure),
    /// The queue is closed (shutdown).
    #[error("the queue is closed")]
    Closed,
}

impl BacklogError {
    /// Whose fault it is (see [`StorageFailure::fault`]); closing is the gateway's shutdown.
    pub fn fault(&self) -> Fault {
        match self {
            Self::Storage(failure) => failure.fault(),
            Self::Closed => Fault::Environment,
        }
    }
}

/// The durable backlog that the uplink drains: lease, then ack what the cloud acknowledged
/// or nack what it did not.
pub trait Backlog: Send + Sync {
    /// Up to `max` messages in delivery order, not handed out again until nacked (or after a
    /// restart).
    fn lease(&self, max: usize) -> BoxFuture<'_, Result<Vec<StoredMessage>, BacklogError>>;
    /// Delivered: delete them.
    fn ack(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), BacklogError>>;
    /// Not delivered: leasable again, in their original order.
    fn nack(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), BacklogError>>;
    /// Resolves when messages were stored since the last call (or at once, if some were).
    fn stored(&self) -> BoxFuture<'_, ()>;
    /// How many messages are held.
    fn depth(&self) -> BoxFuture<'_, Result<u64, BacklogError>>;
}

/// Why a message could not be published on, or read from, the local bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The local broker is not running (stopped or shutting down).
    #[error("the local broker is not running")]
    Closed,
    /// The broker refused an in-process link or subscription.
    #[error("the local broker refused the link: {0}")]
    Refused(String),
}

/// The local broker, seen from inside the process.
///
/// What is published here reaches local subscribers only: it is never routed to the cloud
/// (that is [`Ingress`]'s job), so a cloud command published locally cannot loop back.
pub trait LocalBus: Send + Sync {
    /// Publishes `message` to the local subscribers (QoS 0 inside the process; the broker
    /// delivers it to each subscriber at the QoS it asked for, up to the message's).
    fn publish(&self, message: Message) -> BoxFuture<'_, Result<(), BusError>>;

    /// Every message published locally on topics matching `filter`, until the gateway shuts
    /// down or the receiver is dropped. A subscriber that falls more than `capacity`
    /// messages behind slows the broker's delivery to it; it never blocks other clients.
    fn subscribe(
        &self,
        filter: &TopicFilter,
        capacity: usize,
    ) -> Result<tokio::sync::mpsc::Receiver<Message>, BusError>;
}

/// Why ingress did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngressError {
    /// A route took the message but the outbox refused it (full, failed or closed): it is not
    /// stored, and the producer must keep it or report it.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The message is stored (if routed) but could not be published locally.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The one way in for every message produced at the site.
///
/// The messages that a route takes are appended to the outbox, all or none, and `publish`
/// resolves only once they are durable; then every message is published on the local bus for
/// local subscribers. Give a batch (e.g. one poll's values) rather than one call per message:
/// one batch costs one fsync.
pub trait Ingress: Send + Sync {
    /// Routes, stores and publishes `messages`; see the trait documentation.
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>>;

    /// Whether a route takes `topic` (so that a producer copies only what will be stored).
    fn takes(&self, topic: &crate::topic::TopicName) -> bool;

    /// Routes and stores `messages`, resolving once the routed ones are durable, without
    /// publishing them locally: for the broker's edge, which hands each publish to the local
    /// broker itself, in the client's own session.
    fn store(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>>;
}

/// The health of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Starting up, not serving yet.
    Starting,
    /// Working.
    Up,
    /// Working partly or retrying; the text says what is wrong, in plain words.
    Degraded(String),
    /// Not working; the text says why.
    Down(String),
    /// Stopped on purpose (shutdown).
    Stopped,
}

/// One component's handle on its own health entry.
#[derive(Debug, Clone)]
pub struct StatusReporter {
    name: &'static str,
    tx: Arc<watch::Sender<BTreeMap<&'static str, Health>>>,
}

impl StatusReporter {
    /// Records the component's current health, unless it is down: a component found dead by
    /// the supervisor ([`StatusBoard::fail`]) stays down until the process restarts. Watchers
    /// (the status file) hear only of a change.
    pub fn set(&self, health: Health) {
        self.tx.send_if_modified(|all| {
            match all.get(self.name) {
                Some(Health::Down(_)) => return false,
                Some(current) if *current == health => return false,
                _ => {}
            }
            all.insert(self.name, health);
            true
        });
    }
}

/// The health of every component, watched by the CLI, the web UI and the systemd watchdog.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    tx: Arc<watch::Sender<BTreeMap<&'static str, Health>>>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(BTreeMap::new())),
        }
    }
}

impl StatusBoard {
    /// Registers a component, starting in [`Health::Starting`].
    pub fn register(&self, name: &'static str) -> StatusReporter {
        let reporter = StatusReporter {
            name,
            tx: self.tx.clone(),
        };
        reporter.set(Health::Starting);
        reporter
    }

    /// Marks `name` down for good (a vital task died): the watchdog stops being fed.
    pub fn fail(&self, name: &'static str, why: String) {
        self.tx.send_modify(|all| {
            all.insert(name, Health::Down(why));
        });
    }

    /// The health of every component now.
    pub fn snapshot(&self) -> BTreeMap<&'static str, Health> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn watch(&self) -> watch::Receiver<BTreeMap<&'static str, Health>> {
        self.tx.subscribe()
    }

    /// Whether every registered component is up.
    pub fn all_up(&self) -> bool {
        let all = self.tx.borrow();
        !all.is_empty() && all.values().all(|h| *h == Health::Up)
    }

    /// Whether every registered component is working, if only partly (up or degraded): what
    /// the systemd watchdog asks. A cloud outage degrades the uplink, an unplugged meter the
    /// field bridge; neither is a reason for systemd to restart the gateway.
    pub fn serving(&self) -> bool {
        let all = self.tx.borrow();
        !all.is_empty()
            && all
                .values()
                .all(|h| matches!(h, Health::Up | Health::Degraded(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_is_up_only_when_every_component_is() {
        let board = StatusBoard::default();
        assert!(!board.all_up(), "an empty board is not up");
        let a = board.register("a");
        let b = board.register("b");
        a.set(Health::Up);
        assert!(!board.all_up());
        b.set(Health::Up);
        assert!(board.all_up());
        b.set(Health::Degraded("retrying".into()));
        assert!(!board.all_up());
        assert!(board.serving(), "degraded still serves");
        assert_eq!(board.snapshot()["b"], Health::Degraded("retrying".into()));
        b.set(Health::Down("broken".into()));
        assert!(!board.serving());
    }

    #[test]
    fn a_failed_component_stays_down() {
        let board = StatusBoard::default();
        let a = board.register("a");
        let mut watch = board.watch();
        a.set(Health::Up);
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        a.set(Health::Up);
        assert!(
            !watch.has_changed().unwrap(),
            "the same health is no change"
        );
        board.fail("a", "its task panicked".into());
        a.set(Health::Up);
        assert_eq!(
            board.snapshot()["a"],
            Health::Down("its task panicked".into())
        );
        assert!(!board.serving());
    }
}
