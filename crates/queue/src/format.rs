//! The queue file's format version, so that an A/B update and its rollback never lose a queue.
//!
//! Every release knows its [`FORMAT`] (the number of its migrations) and, for what it writes,
//! [`READABLE_FROM`]: the oldest format that can still read the file. The file keeps the
//! highest of each that ever wrote to it (table `format`, migration 0004).
//!
//! - A newer release migrates the file forward. If its change is additive (a new table, a
//!   column an older release never reads), it keeps `readable_from`, and the release before it
//!   still opens the file after a rollback (migrations it does not know are ignored).
//! - Any other change raises `readable_from` to the new format: the release before it then
//!   refuses to open the file, saying which release it needs, and leaves it untouched. A file
//!   it cannot read is not corrupt: it is never moved aside, and no message in it is lost.
//!
//! Releases before format 4 know nothing of this and refuse any file with a migration they
//! lack (sqlx's own check): the same outcome, with a less helpful message.

use sqlx::SqliteConnection;

/// This release's queue format: the number of its migrations.
pub const FORMAT: i64 = 5;

/// The oldest format that can read a file this release wrote. Format 3 cannot (it refuses any
/// migration it does not know); from here on, additive changes keep this value.
///
/// Format 5 (the commit journal, `journal.rs`) is additive: after a clean stop (an update
/// stops the service first) the database holds every message and format 4 reads it as before.
/// After a crash the last seconds of appends are in the journal only, which format 4 does not
/// read: it goes on without them, and they are applied when a release with the journal opens
/// the queue again (with new ids where format 4 has used theirs meanwhile).
pub const READABLE_FROM: i64 = 4;

/// What a file says of its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) version: i64,
    pub(crate) readable_from: i64,
}

/// The format recorded in the file, if it has the record (files from before format 4 do not).
pub(crate) async fn recorded(conn: &mut SqliteConnection) -> Result<Option<Recorded>, sqlx::Error> {
    let has_table: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'format')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !has_table {
        return Ok(None);
    }
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, readable_from FROM format WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(version, readable_from)| Recorded {
        version,
        readable_from,
    }))
}

/// Records that this release wrote the file (after its migrations): the highest of what was
/// there and of ours, so a newer release's record is never lowered by an older one.
pub(crate) async fn record(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO format (id, version, readable_from) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET
             version = max(version, excluded.version),
             readable_from = max(readable_from, excluded.readable_from)",
    )
    .bind(FORMAT)
    .bind(READABLE_FROM)
    .execute(conn)
    .await?;
    Ok(())
}
