//! fieldlink's store-and-forward queue: everything bound for the cloud, on SQLite, until the
//! cloud broker has acknowledged it.
//!
//! # Guarantee
//! At least once. [`Queue::append`] returns only after its messages are durable: written to
//! the commit journal (`journal.rs`) and synced with `fdatasync` (with the default
//! `durability = "power-safe"`): they survive a crash or a power cut (a cut that loses the
//! drive's volatile cache despite the flush is outside any software's reach). A message is
//! deleted only by [`Queue::ack`] (the cloud's PUBACK), by a limit whose policy drops it, or by
//! age; every such drop is counted by reason.
//!
//! # Invariants
//! - Ids are assigned by SQLite `AUTOINCREMENT`: strictly increasing, never reused, so the cloud
//!   can drop duplicates by id.
//! - Within a stream, messages are leased in id order (all of a stream's messages share its
//!   route's priority). Across streams, higher priority is leased first; streams of the same
//!   priority take turns, one message each (the oldest head first), so that a live message on
//!   one route is not held behind another route's backlog.
//! - A message is leased to at most one holder at a time; leases live in memory only, so after
//!   a restart every unacknowledged message is leasable again (in order).
//! - Ages are measured in queue time (`clock.rs`), which wall-clock steps do not move: a board
//!   without an RTC that boots days behind and steps at time sync neither expires nor keeps
//!   forever what it holds. `queue_ms` never decreases with id, so age expiry only ever looks
//!   at the oldest rows. `enqueued_ms` is the wall clock's word, kept for display only.
//! - The in-memory depth counters (messages and bytes, per stream and in total) are loaded from
//!   the table at open and changed only from the rows a statement actually inserted or deleted
//!   (`RETURNING`), so they cannot drift.
//!
//! # Group commit, the journal and folds
//! One writer task owns the connection. Requests (appends, acks, nacks, leases) wait in a
//! bounded channel. Appends wait for the next round, which comes once `queue.commit_interval`
//! (100 ms) has passed since the previous one: everything waiting then is inserted with one
//! multi-row insert, the messages acknowledged since the last round are deleted, and one
//! journal commit records both (whole 4 KiB blocks, one `fdatasync`); only then are the
//! producers answered. A message after a quiet spell goes at once; under load the barriers
//! are bounded whatever the rate, which is what wears an SD card.
//!
//! The rows are inserted and deleted in one SQLite transaction that stays open between
//! *folds*: every 5 s (sooner when the journal's 1 MiB is full, at once for a purge), the
//! transaction is committed (one fsync of the WAL) with the journal's generation recorded in
//! it, and the journal starts over. A page changed by fifty rounds is written once, and a
//! message delivered before its fold never reaches the database file: on the device a round
//! costs about one block. After an unclean stop the journal's commits since the last fold are
//! applied at open (`queue/replay.rs`); messages acknowledged after the last journal commit
//! are sent again (at least once, recognisable by id) and counted in [`Stats`]. On a disk too
//! short of room above the reserve to give the WAL and the journal their working size at open,
//! every round is a SQLite commit of its own instead (correct, but it wears the card as
//! before). Reads (leases, stats, peeks) see the open transaction; another process reading the
//! file (`fieldlink queue stats`) sees it as of the last fold.
//!
//! Free pages are given back and the WAL folded into the file only once writes pause for a
//! few seconds; under load SQLite reuses free pages and checkpoints by itself, every 4 MiB of
//! WAL. New databases use 1 KiB pages. The WAL is given its working size in zeros at open, and
//! SQLite syncs with `fdatasync` (the bundled build is told it may, in `.cargo/config.toml`):
//! a fold then costs the file system no journal commit of its own. Leasing continues after the
//! last row leased (a cursor per stream), so a large set of leased rows costs nothing per lease.
//!
//! # Schema
//! `migrations/`: one table `messages` (id, stream, priority, topic, payload, qos, retain,
//! properties, enqueued_ms, queue_ms), indexed by (stream, id) for leasing (streams take
//! turns, see `queue/lease.rs`) and per-stream drop-oldest, and by (priority DESC, id) (kept:
//! the schema is unchanged, so earlier releases read the file as before), and the one-row
//! `queue_clock`, and `journal_folded` (the journal generation the file holds). Embedded with
//! `sqlx::migrate!`. A release older than a file's newest migration refuses the file with a
//! migration error (sqlx's check): nothing is moved aside or lost.
//!
//! # Crash recovery and corruption
//! SQLite's WAL recovery restores the last committed state on open. A file SQLite cannot open or
//! whose `quick_check` fails is renamed aside (`queue.db.corrupt-<unix time>`, kept for
//! inspection), a fresh one is created, and an error is logged and reported in [`Stats`]; the
//! gateway goes on instead of crash-looping.
//!
//! # Inspection
//! [`QueueReader`] reads a queue that the service owns (`fieldlink queue stats`, `peek`):
//! read-only, SELECTs only, no migration, clock save, expiry or checkpoint (`inspect.rs`).
//!
//! # Space
//! Free pages are reused by new rows; a drained queue is compacted once writes pause (files of
//! earlier releases keep incremental auto-vacuum). The WAL keeps its working size (6 MiB)
//! while the queue is open and is truncated at a clean close. Before each
//! batch of appends the free space of the file system is checked; below the configured reserve,
//! appends are refused.

mod clock;
pub mod config;
mod disk;
mod error;
pub mod format;
mod inspect;
mod journal;
mod queue;
mod store;

pub use disk::{DiskSpace, StatvfsDisk};
pub use error::{Full, QueueError};
pub use inspect::QueueReader;
pub use journal::JOURNAL_FILE;
pub use queue::{Leased, Queue, Stats, StreamStats};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "queue.db";
