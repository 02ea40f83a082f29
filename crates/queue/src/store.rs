//! The SQLite side: opening (with corruption recovery), and the statements the writer runs.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::OutboxEntry;
use fieldlink_core::topic::TopicName;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection as _, QueryBuilder, Row as _, Sqlite, SqliteConnection};

use crate::QueueError;
use crate::clock::Saved;
use crate::config::Durability;

/// The rows of one stream deleted together, counted: enough to keep the depth counters exact.
pub(crate) struct StreamRemoval {
    pub(crate) stream: String,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

/// A row deleted by a statement: enough to keep the depth counters exact.
pub(crate) struct Removed {
    pub(crate) stream: String,
    pub(crate) bytes: u64,
    pub(crate) id: i64,
}

/// A message read back for leasing or peeking.
pub type Leased = fieldlink_core::ports::StoredMessage;

/// What a row costs against the byte limits.
pub(crate) fn entry_bytes(entry: &OutboxEntry) -> u64 {
    let properties = entry.properties.as_ref().map_or(0, Vec::len);
    (entry.message.payload.len() + entry.message.topic.as_str().len() + properties) as u64
}

/// The same cost, computed by SQLite (`length` of a BLOB is its size in bytes). A macro, so
/// that the statements using it stay compile-time constants.
macro_rules! size_sql {
    () => {
        "length(payload) + length(CAST(topic AS BLOB)) + COALESCE(length(properties), 0)"
    };
}

/// Makes the queue's directory 0700 and its database, WAL and shared-memory files 0600
/// (created or tightened), whatever the umask: they hold every payload bound for the cloud.
/// SQLite gives the WAL and -shm files it creates the database file's mode.
pub(crate) fn make_private(dir: &Path, path: &Path) -> Result<(), QueueError> {
    use fieldlink_core::private_fs::{Outcome, private_dir, private_file, tighten_if_present};
    let mut outcomes = vec![(dir.to_owned(), private_dir(dir)?)];
    outcomes.push((path.to_owned(), private_file(path)?));
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        outcomes.push((side.clone(), tighten_if_present(&side)?));
    }
    for (path, outcome) in outcomes {
        if let Outcome::Tightened { from } = outcome {
            tracing::warn!(
                path = %path.display(),
                "Other users could read the queue's files (mode {from:o}): made private"
            );
        }
    }
    Ok(())
}

/// An open database: the connection, where a corrupt file was moved (if one was), and the
/// depth saved by the last close if it was clean (see [`take_clean_close`]).
pub(crate) struct OpenStore {
    pub(crate) conn: SqliteConnection,
    pub(crate) corrupt_moved_to: Option<PathBuf>,
    pub(crate) clean_depth: Option<Vec<StreamDepth>>,
}

/// How much the WAL holds before SQLite folds it into the database file (a checkpoint) and
/// writes it again from its start. A checkpoint writes every page the WAL changed since the
/// last one, each as a whole file-system block (4 KiB for a 1 KiB page): the longer the
/// cycle, the more often a page (an index leaf, a reused free page) changed several times is
/// written once. Measured at 1000 msgs/s: 4 MiB writes about a quarter less to the device than
/// SQLite's default (1000 pages, 1 MiB here); longer cycles gain little more.
const WAL_CHECKPOINT_BYTES: u64 = 4 << 20;
/// The WAL's size on disk from the start: the checkpoint size and room for the commit that
/// crosses it: up to 10,000 deletions of delivered messages at once, about 2 MiB.
pub(crate) const WAL_WORKING_SIZE: u64 = WAL_CHECKPOINT_BYTES + (2 << 20);

/// Sets SQLite's checkpoint cycle (in pages of this file's size) and gives the WAL its
/// working size at once, in zeros after its frames. A WAL that grows costs the file system a
/// metadata journal commit at every fdatasync (the new size, the blocks allocated): about
/// 12 KiB more per SQLite commit, for the first megabytes after every start. Zeros after the
/// last frame are never read as frames (each frame carries the WAL's salt and a running
/// checksum), and SQLite overwrites them in place; `journal_size_limit` (8 MiB) is above this
/// size, so it does not cut them off. Writing (not fallocate) matters: blocks allocated
/// unwritten would need a journal commit when first written too. The writer task owns the
/// only connection and has not started yet, so nothing writes the WAL meanwhile. With
/// `prefill` false (a disk short of room) nothing changes: SQLite's own cycle (1000 pages)
/// keeps the WAL small.
pub(crate) async fn size_wal(
    conn: &mut SqliteConnection,
    path: &Path,
    prefill: bool,
) -> Result<(), QueueError> {
    if !prefill {
        return Ok(());
    }
    let db = |source| QueueError::Database {
        path: path.to_owned(),
        source,
    };
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let pages = WAL_CHECKPOINT_BYTES / u64::try_from(page_size.max(512)).unwrap_or(1024);
    // A number we computed: nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA wal_autocheckpoint = {pages}"
    )))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let io = |source| QueueError::Io {
        path: wal.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < WAL_WORKING_SIZE {
        use std::io::{Seek as _, SeekFrom, Write as _};
        file.seek(SeekFrom::Start(size)).map_err(io)?;
        let zeros = vec![0u8; usize::try_from(WAL_WORKING_SIZE - size).unwrap_or(0)];
        file.write_all(&zeros).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    Ok(())
}

/// Opens the database at `path`. A corrupt file is moved aside and replaced by a fresh one;
/// the returned path says where it went.
pub(crate) async fn open(path: &Path, durability: Durability) -> Result<OpenStore, QueueError> {
    match open_checked(path, durability).await {
        Ok((conn, clean_depth)) => Ok(OpenStore {
            conn,
            corrupt_moved_to: None,
            clean_depth,
        }),
        Err(Opened::Corrupt(why)) => {
            let aside = move_aside(path)?;
            tracing::error!(
                path = %path.display(), moved_to = %aside.display(), reason = %why,
                "Queue database is corrupt: moved it aside and started a fresh one; \
                 the messages in it are not forwarded"
            );
            // The fresh file is as private as the one moved aside.
            fieldlink_core::private_fs::private_file(path)?;
            let (conn, clean_depth) =
                open_checked(path, durability).await.map_err(|e| match e {
                    Opened::Corrupt(why) => QueueError::Io {
                        path: path.to_owned(),
                        source: std::io::Error::other(format!(
                            "fresh database still corrupt: {why}"
                        )),
                    },
                    Opened::Failed(e) => e,
                })?;
            Ok(OpenStore {
                conn,
                corrupt_moved_to: Some(aside),
                clean_depth,
            })
        }
        Err(Opened::Failed(e)) => Err(e),
    }
}

enum Opened {
    Corrupt(String),
    Failed(QueueError),
}

/// Connects, migrates and checks: the full integrity check (which reads the whole file) runs
/// only when the last close was not clean, i.e. after a power cut or a kill, when damage can
/// have happened; after a clean close the saved depth is returned instead.
async fn open_checked(
    path: &Path,
    durability: Durability,
) -> Result<(SqliteConnection, Option<Vec<StreamDepth>>), Opened> {
    let db_err = |source| {
        Opened::Failed(QueueError::Database {
            path: path.to_owned(),
            source,
        })
    };
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(db_err)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // Takes effect when the file is created (a WAL database keeps its page size). A commit
        // writes every page it touches (a table leaf, two index leaves, the sequence): with 1
        // KiB pages a small commit writes a few KiB instead of 16-20 KiB, which is what wears an
        // SD card. Rows are small (a sensor reading), so leaves stay well filled.
        .page_size(1024)
        .synchronous(match durability {
            // FULL: the WAL is fsynced at every commit. NORMAL loses acknowledged commits on
            // power loss (measured: 25-45% of them), which this queue exists to prevent.
            Durability::PowerSafe => SqliteSynchronous::Full,
            // The operator chose to survive a crash of the process only (a board on a UPS).
            Durability::ProcessCrash => SqliteSynchronous::Normal,
        })
        // Takes effect when the file is created. No auto-vacuum: its pointer-map pages would be
        // rewritten by every commit that allocates a page; free pages are reused by the next
        // inserts, and a drained queue is compacted with VACUUM once writes pause (`reclaim`).
        // Files made by earlier releases keep incremental auto-vacuum, which `reclaim` uses.
        .auto_vacuum(SqliteAutoVacuum::None)
        // After a checkpoint the WAL file is truncated back to at most this size: above its
        // working size (`size_wal`), which it keeps.
        .pragma("journal_size_limit", "8388608")
        // Room for what the open transaction changes between folds (`FOLD_ROWS` rows of
        // sensor size touch well under 2,000 pages) next to the pages leases read: 4 MiB
        // instead of SQLite's 2 MiB.
        .pragma("cache_size", "-4096")
        // The savepoint of each round keeps the original of every page the round changes in
        // a statement journal. SQLite spills it to a temporary file past 64 KiB: during a
        // drain that was a third of this connection's writes, thousands of 1 KiB pages a
        // second to a file deleted at the round's end (CPU, and SD-card traffic where the
        // temporary directory is on the card). In memory it holds the pages a round changes
        // that existed before it, once each: for its deletions a few hundred KiB at most
        // (MAX_DELETE_PER_ROUND rows), for its appends (into free pages) about the appended
        // rows' own bytes, which the round holds in memory anyway. A statement journal is
        // never needed for crash recovery (the WAL is).
        .pragma("temp_store", "memory")
        .busy_timeout(Duration::from_secs(5));
    let mut conn = match SqliteConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(e) if is_corruption(&e) => return Err(Opened::Corrupt(e.to_string())),
        Err(e) => return Err(db_err(e)),
    };
    // A newer release's file that this one cannot read is refused before anything is written.
    match crate::format::recorded(&mut conn).await {
        Ok(Some(found)) if found.readable_from > crate::format::FORMAT => {
            // Closed cleanly: SQLite removes the -wal and -shm files it made for this look.
            let _ = sqlx::Connection::close(conn).await;
            return Err(Opened::Failed(QueueError::TooNew {
                path: path.to_owned(),
                version: found.version,
                readable_from: found.readable_from,
                ours: crate::format::FORMAT,
            }));
        }
        Ok(_) => {}
        Err(e) if is_corruption(&e) => return Err(Opened::Corrupt(e.to_string())),
        Err(e) => return Err(db_err(e)),
    }
    let mut migrator = sqlx::migrate!("./migrations");
    // Migrations of a newer release that keeps this one able to read (additive) are ignored.
    migrator.set_ignore_missing(true);
    match migrator.run(&mut conn).await {
        Ok(()) => {}
        Err(sqlx::migrate::MigrateError::Execute(e)) if is_corruption(&e) => {
            return Err(Opened::Corrupt(e.to_string()));
        }
        Err(source) => {
            return Err(Opened::Failed(QueueError::Migration {
                path: path.to_owned(),
                source,
            }));
        }
    }
    match crate::format::record(&mut conn).await {
        Ok(()) => {}
        Err(e) if is_corruption(&e) => return Err(Opened::Corrupt(e.to_string())),
        Err(e) => return Err(db_err(e)),
    }
    let clean_depth = match take_clean_close(&mut conn).await {
        Ok(depth) => depth,
        Err(e) if is_corruption(&e) => return Err(Opened::Corrupt(e.to_string())),
        Err(e) => return Err(db_err(e)),
    };
    if clean_depth.is_none() {
        match sqlx::query_scalar::<_, String>("PRAGMA quick_check(1)")
            .fetch_one(&mut conn)
            .await
        {
            Ok(result) if result == "ok" => {}
            Ok(result) => return Err(Opened::Corrupt(result)),
            Err(e) if is_corruption(&e) => return Err(Opened::Corrupt(e.to_string())),
            Err(e) => return Err(db_err(e)),
        }
    }
    Ok((conn, clean_depth))
}

/// SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), with or without an extended code.
fn is_corruption(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    matches!(code & 0xff, 11 | 26)
}

fn move_aside(path: &Path) -> Result<PathBuf, QueueError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    std::fs::rename(path, &aside).map_err(|source| QueueError::Io {
        path: path.to_owned(),
        source,
    })?;
    // The WAL and shared-memory files belong to the corrupt database: move them along.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
        }
    }
    Ok(aside)
}

/// Inserts `entries` (at most 100 per statement) and returns their ids, in order.
pub(crate) async fn insert(
    conn: &mut SqliteConnection,
    entries: &[OutboxEntry],
    enqueued_ms: i64,
    queue_ms: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(100) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages \
             (stream, priority, topic, payload, qos, retain, properties, enqueued_ms, queue_ms) ",
        );
        insert.push_values(chunk, |mut row, entry| {
            row.push_bind(entry.stream.as_str())
                .push_bind(entry.priority as i64)
                .push_bind(entry.message.topic.as_str())
                .push_bind(entry.message.payload.as_slice())
                .push_bind(entry.message.qos as i64)
                .push_bind(entry.message.retain)
                .push_bind(entry.properties.as_deref())
                .push_bind(enqueued_ms)
                .push_bind(queue_ms);
        });
        insert.push(" RETURNING id");
        let rows = insert.build().fetch_all(&mut *conn).await?;
        ids.extend(rows.iter().map(|r| r.get::<i64, _>(0)));
    }
    // RETURNING order follows the VALUES order in practice; sort to make it a guarantee.
    ids.sort_unstable();
    Ok(ids)
}

/// Inserts messages read back from the journal with the ids they were given, except those
/// at or below `fresh_at_or_below`, an id given meanwhile (a release without the journal
/// wrote the file after a crash): those get new ids, after the others. Returns how many
/// needed new ids.
pub(crate) async fn insert_replayed(
    conn: &mut SqliteConnection,
    commit: &crate::journal::Commit,
    fresh_at_or_below: i64,
) -> Result<u64, sqlx::Error> {
    let mut renumbered = 0;
    // Those that keep their ids first: a new id is above every id given, theirs included.
    let (keep, renumber): (Vec<_>, Vec<_>) = commit
        .messages
        .iter()
        .partition(|(id, _)| *id > fresh_at_or_below);
    let renumber = renumber.into_iter().map(|(_, entry)| (None, entry));
    for (id, entry) in keep
        .into_iter()
        .map(|(id, e)| (Some(*id), e))
        .chain(renumber)
    {
        renumbered += u64::from(id.is_none());
        sqlx::query(
            "INSERT INTO messages \
             (id, stream, priority, topic, payload, qos, retain, properties, enqueued_ms, queue_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(entry.stream.as_str())
        .bind(entry.priority as i64)
        .bind(entry.message.topic.as_str())
        .bind(entry.message.payload.as_slice())
        .bind(entry.message.qos as i64)
        .bind(entry.message.retain)
        .bind(entry.properties.as_deref())
        .bind(commit.enqueued_ms)
        .bind(commit.queue_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(renumbered)
}

/// The highest id ever given (AUTOINCREMENT's record), 0 for none.
pub(crate) async fn last_id_given(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'messages'")
        .fetch_optional(&mut *conn)
        .await
        .map(|seq: Option<i64>| seq.unwrap_or(0))
}

/// The generation of the journal whose commits the database holds (see migration 0005).
pub(crate) async fn folded_generation(
    conn: &mut SqliteConnection,
) -> Result<Option<u64>, sqlx::Error> {
    sqlx::query_scalar("SELECT generation FROM journal_folded WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map(|g: Option<i64>| g.map(|g| g as u64))
}

/// Records, in the fold's transaction, that the database holds the commits of `generation`.
pub(crate) async fn set_folded_generation(
    conn: &mut SqliteConnection,
    generation: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT OR REPLACE INTO journal_folded (id, generation) VALUES (1, ?)")
        .bind(generation as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs one statement of transaction control (`BEGIN IMMEDIATE`, `SAVEPOINT round`, ...). The
/// writer keeps a transaction open between folds, which sqlx's `Transaction` (a borrow of the
/// connection) cannot express; nothing else begins one while it is open.
pub(crate) async fn control(
    conn: &mut SqliteConnection,
    sql: &'static str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut *conn).await.map(drop)
}

/// Deletes the rows with these ids, and says how many rows and bytes each stream lost. A
/// drain acknowledges long runs of consecutive ids: each run of at least [`MIN_RUN`] goes as
/// one range (a walk along the table instead of a lookup per id, and no parameter per id); the
/// rest in lists of at most 500. The rows are counted by SQLite, a row per stream, rather than
/// returned one by one: each row returned crosses from SQLite's thread to ours, and a drain
/// deletes tens of thousands a second.
pub(crate) async fn delete_ids(
    conn: &mut SqliteConnection,
    ids: &[i64],
) -> Result<Vec<StreamRemoval>, sqlx::Error> {
    let mut removed = Vec::new();
    let (runs, singles) = runs_of(ids);
    for (first, last) in runs {
        let counted = sqlx::query(concat!(
            "SELECT stream, COUNT(*), SUM(",
            size_sql!(),
            ") FROM messages WHERE id BETWEEN ? AND ? GROUP BY stream"
        ))
        .bind(first)
        .bind(last)
        .fetch_all(&mut *conn)
        .await?;
        removed.extend(counted.iter().map(stream_removal));
        sqlx::query("DELETE FROM messages WHERE id BETWEEN ? AND ?")
            .bind(first)
            .bind(last)
            .execute(&mut *conn)
            .await?;
    }
    for chunk in singles.chunks(500) {
        let counted = with_id_list(
            concat!(
                "SELECT stream, COUNT(*), SUM(",
                size_sql!(),
                ") FROM messages WHERE id IN ("
            ),
            chunk,
            ") GROUP BY stream",
        )
        .build()
        .fetch_all(&mut *conn)
        .await?;
        removed.extend(counted.iter().map(stream_removal));
        with_id_list("DELETE FROM messages WHERE id IN (", chunk, ")")
            .build()
            .execute(&mut *conn)
            .await?;
    }
    Ok(removed)
}

/// `head`, the ids as bound parameters separated by commas, `tail`.
fn with_id_list(head: &str, ids: &[i64], tail: &str) -> QueryBuilder<Sqlite> {
    let mut query = QueryBuilder::<Sqlite>::new(head);
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(tail);
    query
}

fn stream_removal(row: &SqliteRow) -> StreamRemoval {
    StreamRemoval {
        stream: row.get(0),
        messages: u64::try_from(row.get::<i64, _>(1)).unwrap_or(0),
        bytes: u64::try_from(row.get::<i64, _>(2)).unwrap_or(0),
    }
}

/// Deletes every row in the ranges (first, last): ranges in which every id was deleted.
pub(crate) async fn delete_ranges(
    conn: &mut SqliteConnection,
    ranges: &[(i64, i64)],
) -> Result<(), sqlx::Error> {
    for (first, last) in ranges {
        sqlx::query("DELETE FROM messages WHERE id BETWEEN ? AND ?")
            .bind(first)
            .bind(last)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `ids` as ranges of consecutive ids, (first, last) each.
pub(crate) fn ranges_of(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for id in sorted {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == id => *last = id,
            _ => ranges.push((id, id)),
        }
    }
    ranges
}

/// Runs shorter than this are deleted by a list.
const MIN_RUN: usize = 8;

/// Splits `ids` into ranges of consecutive ids (every id of a range is in `ids`, so a range
/// deletes nothing else) of at least [`MIN_RUN`], and the ids left.
fn runs_of(ids: &[i64]) -> (Vec<(i64, i64)>, Vec<i64>) {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let (mut runs, mut singles) = (Vec::new(), Vec::new());
    let mut start = 0;
    for i in 1..=sorted.len() {
        if i < sorted.len() && sorted[i] == sorted[i - 1] + 1 {
            continue;
        }
        let run = &sorted[start..i];
        if run.len() >= MIN_RUN {
            runs.push((run[0], run[run.len() - 1]));
        } else {
            singles.extend_from_slice(run);
        }
        start = i;
    }
    (runs, singles)
}

/// Deletes up to `n` of the oldest rows: of `stream` if given, else of the lowest priority lane.
pub(crate) async fn delete_oldest(
    conn: &mut SqliteConnection,
    stream: Option<&str>,
    n: i64,
) -> Result<Vec<Removed>, sqlx::Error> {
    let rows = match stream {
        Some(stream) => {
            sqlx::query(concat!(
                "DELETE FROM messages WHERE id IN \
                 (SELECT id FROM messages WHERE stream = ? ORDER BY id LIMIT ?) \
                 RETURNING stream, ",
                size_sql!(),
                ", id"
            ))
            .bind(stream)
            .bind(n)
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(concat!(
                "DELETE FROM messages WHERE id IN \
                 (SELECT id FROM messages ORDER BY priority, id LIMIT ?) \
                 RETURNING stream, ",
                size_sql!(),
                ", id"
            ))
            .bind(n)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    Ok(rows.iter().map(removed_row).collect())
}

/// Deletes rows appended before queue time `cutoff_ms`, looking at no more than the 1000
/// oldest (queue time never decreases with id).
pub(crate) async fn delete_expired(
    conn: &mut SqliteConnection,
    cutoff_ms: i64,
) -> Result<Vec<Removed>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "DELETE FROM messages WHERE id IN \
         (SELECT id FROM (SELECT id, queue_ms FROM messages ORDER BY id LIMIT 1000) \
          WHERE queue_ms < ?) \
         RETURNING stream, ",
        size_sql!(),
        ", id"
    ))
    .bind(cutoff_ms)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(removed_row).collect())
}

fn removed_row(row: &SqliteRow) -> Removed {
    Removed {
        stream: row.get(0),
        bytes: u64::try_from(row.get::<i64, _>(1)).unwrap_or(0),
        id: row.get(2),
    }
}

/// The streams that hold messages.
pub(crate) async fn streams(conn: &mut SqliteConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT stream FROM messages")
        .fetch_all(&mut *conn)
        .await
}

/// One page of a stream: up to `limit` rows after id `after`, in id order, through the
/// (stream, id) index; how many rows were read and the last id read (damaged rows, which are
/// skipped, count: the next page starts after them).
pub(crate) struct StreamPage {
    pub(crate) rows: Vec<Leased>,
    pub(crate) read: usize,
    pub(crate) last_id: Option<i64>,
}

/// Reads one [`StreamPage`].
pub(crate) async fn select_stream_after(
    conn: &mut SqliteConnection,
    stream: &str,
    after: i64,
    limit: i64,
) -> Result<StreamPage, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, stream, priority, topic, payload, qos, retain, properties, enqueued_ms \
         FROM messages WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
    )
    .bind(stream)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(StreamPage {
        read: rows.len(),
        last_id: rows.last().map(|r| r.get(0)),
        rows: rows.iter().filter_map(leased_row).collect(),
    })
}

fn leased_row(row: &SqliteRow) -> Option<Leased> {
    let id: i64 = row.get(0);
    let topic: String = row.get(3);
    let Ok(topic) = TopicName::new(topic) else {
        // Only validated topics are ever inserted; a bad one means a damaged row.
        tracing::error!(id, "Queue row has an invalid topic; skipped");
        return None;
    };
    Some(Leased {
        id,
        stream: row.get(1),
        priority: match row.get::<i64, _>(2) {
            0 => Priority::Low,
            2 => Priority::High,
            _ => Priority::Normal,
        },
        message: Message {
            topic,
            payload: row.get(4),
            qos: QoS::from_u8(row.get::<i64, _>(5).try_into().unwrap_or(1))
                .unwrap_or(QoS::AtLeastOnce),
            retain: row.get(6),
        },
        properties: row.get(7),
        enqueued_ms: row.get(8),
    })
}

/// Messages and bytes per stream, as stored.
pub(crate) async fn depth_by_stream(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, u64, u64)>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "SELECT stream, COUNT(*), COALESCE(SUM(",
        size_sql!(),
        "), 0) FROM messages GROUP BY stream"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let n: i64 = r.get(1);
            let bytes: i64 = r.get(2);
            (r.get(0), n.max(0) as u64, bytes.max(0) as u64)
        })
        .collect())
}

/// The queue time at which the oldest message was appended, if there is one.
pub(crate) async fn oldest_queue_ms(
    conn: &mut SqliteConnection,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT queue_ms FROM messages ORDER BY id LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map(Option::flatten)
}

/// The queue time at which the newest message was appended, if there is one.
pub(crate) async fn newest_queue_ms(
    conn: &mut SqliteConnection,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT queue_ms FROM messages ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await
        .map(Option::flatten)
}

/// Gives rows written by a release that predates queue time (before an upgrade, or after a
/// rollback) the queue time `now_ms`: their age counts from this start. Found through the
/// partial index `messages_unclocked`, so it costs nothing when there are none.
pub(crate) async fn stamp_unclocked(
    conn: &mut SqliteConnection,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("UPDATE messages SET queue_ms = ? WHERE queue_ms IS NULL")
            .bind(now_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    )
}

/// The saved queue clock, if one was ever saved.
pub(crate) async fn load_clock(conn: &mut SqliteConnection) -> Result<Option<Saved>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT queue_ms, anchor_wall_ms, anchor_queue_ms FROM queue_clock WHERE id = 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| Saved {
        queue_ms: r.get(0),
        anchor: r.get::<Option<i64>, _>(1).zip(r.get::<Option<i64>, _>(2)),
    }))
}

/// Persists the queue clock.
pub(crate) async fn save_clock(
    conn: &mut SqliteConnection,
    saved: Saved,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO queue_clock (id, queue_ms, anchor_wall_ms, anchor_queue_ms) \
         VALUES (1, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET queue_ms = excluded.queue_ms, \
         anchor_wall_ms = excluded.anchor_wall_ms, anchor_queue_ms = excluded.anchor_queue_ms",
    )
    .bind(saved.queue_ms)
    .bind(saved.anchor.map(|a| a.0))
    .bind(saved.anchor.map(|a| a.1))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Folds the WAL into the database file; the next commit writes the WAL from its start again.
/// The file keeps its size (at most `journal_size_limit`): a WAL that is truncated and then
/// grows again costs the file system a metadata journal commit at every fsync while it grows.
pub(crate) async fn checkpoint(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

/// The database file's pages: bytes in use, and bytes of free pages that new rows reuse.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileSpace {
    pub(crate) used: u64,
    pub(crate) free: u64,
}

/// Reads [`FileSpace`] from the database header (no scan).
pub(crate) async fn file_space(conn: &mut SqliteConnection) -> Result<FileSpace, sqlx::Error> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut *conn)
        .await?;
    let bytes = |n: i64| (n.max(0) as u64).saturating_mul(page_size.max(0) as u64);
    Ok(FileSpace {
        used: bytes(pages - free),
        free: bytes(free),
    })
}

/// Depth of each stream: name, messages, bytes.
pub(crate) type StreamDepth = (String, u64, u64);

/// Records a clean close and the depth of each stream then, in one transaction: the last write
/// before the connection closes (see migration 0003).
pub(crate) async fn save_clean_close(
    conn: &mut SqliteConnection,
    depth: &[StreamDepth],
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM clean_close_depth")
        .execute(&mut *tx)
        .await?;
    for (stream, messages, bytes) in depth {
        sqlx::query("INSERT INTO clean_close_depth (stream, messages, bytes) VALUES (?, ?, ?)")
            .bind(stream)
            .bind(i64::try_from(*messages).unwrap_or(i64::MAX))
            .bind(i64::try_from(*bytes).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    sqlx::query("INSERT OR REPLACE INTO clean_close (id, closed_ms) VALUES (1, ?)")
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The depth saved by the last close if it was clean, forgotten in the same step (committed
/// before the queue takes any write), so that an unclean stop from now on is noticed.
pub(crate) async fn take_clean_close(
    conn: &mut SqliteConnection,
) -> Result<Option<Vec<StreamDepth>>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let clean: Option<i64> = sqlx::query_scalar("SELECT closed_ms FROM clean_close")
        .fetch_optional(&mut *tx)
        .await?;
    if clean.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query("SELECT stream, messages, bytes FROM clean_close_depth")
        .fetch_all(&mut *tx)
        .await?;
    let depth = rows
        .iter()
        .map(|r| {
            let (messages, bytes): (i64, i64) = (r.get(1), r.get(2));
            (r.get(0), messages.max(0) as u64, bytes.max(0) as u64)
        })
        .collect();
    sqlx::query("DELETE FROM clean_close")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM clean_close_depth")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(depth))
}

/// Folds the WAL into the database file and truncates it: at shutdown, nothing is left in it.
pub(crate) async fn checkpoint_and_truncate(
    conn: &mut SqliteConnection,
) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

/// Gives free pages back to the file system. A file with incremental auto-vacuum (made by an
/// earlier release) gives back every free page, a bounded number per transaction. Any other is
/// compacted with VACUUM, which rewrites the live pages: only when at least half of the file is
/// free and what is live is small (a drained queue), so it never rewrites a large backlog.
pub(crate) async fn reclaim(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let incremental: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&mut *conn)
        .await?;
    if incremental == 2 {
        for _ in 0..100 {
            if free_pages(conn).await? == 0 {
                break;
            }
            sqlx::query("PRAGMA incremental_vacuum(4096)")
                .execute(&mut *conn)
                .await?;
        }
        return Ok(());
    }
    let free = free_pages(conn).await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await?;
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    let live_bytes = (pages - free) * page_size;
    if free >= 256 && free * 2 >= pages && live_bytes <= VACUUM_LIVE_BYTES {
        // VACUUM builds its copy of the database as temporary storage: in a file, not in
        // memory as the statement journals are (`open`), so that it never holds up to
        // VACUUM_LIVE_BYTES of RAM on a small board.
        temporary_storage_in_memory(conn, false).await?;
        let vacuumed = sqlx::query("VACUUM").execute(&mut *conn).await.map(drop);
        temporary_storage_in_memory(conn, true).await?;
        vacuumed?;
    }
    Ok(())
}

/// `PRAGMA temp_store`: where SQLite keeps temporary storage (statement journals, VACUUM's
/// copy). Changed only outside a transaction (drops temporary tables: the queue has none).
async fn temporary_storage_in_memory(
    conn: &mut SqliteConnection,
    in_memory: bool,
) -> Result<(), sqlx::Error> {
    let sql = if in_memory {
        "PRAGMA temp_store = MEMORY"
    } else {
        "PRAGMA temp_store = FILE"
    };
    sqlx::query(sql).execute(&mut *conn).await.map(drop)
}

/// VACUUM rewrites what is live: never for more than this.
const VACUUM_LIVE_BYTES: i64 = 16 << 20;

async fn free_pages(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut *conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::runs_of;

    #[test]
    fn only_runs_of_consecutive_ids_become_ranges() {
        let mut ids: Vec<i64> = (10..30).collect();
        ids.extend([3, 5, 6, 40]);
        ids.extend(50..58);
        ids.push(12); // twice
        let (runs, mut singles) = runs_of(&ids);
        singles.sort_unstable();
        assert_eq!(runs, [(10, 29), (50, 57)]);
        assert_eq!(singles, [3, 5, 6, 40]);
        assert_eq!(runs_of(&[]), (vec![], vec![]));
        assert_eq!(runs_of(&[1, 2, 3]), (vec![], vec![1, 2, 3]));
    }

    /// A round's statement journal stays in memory (a file would take a write per page it
    /// holds, on the SD card where the temporary directory is), and a VACUUM (run with
    /// temporary storage in a file, which is not observable here) leaves it so.
    #[tokio::test]
    async fn temporary_storage_is_in_memory_before_and_after_a_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let mut store = super::open(&path, super::Durability::PowerSafe)
            .await
            .unwrap();
        let conn = &mut store.conn;
        let place = async |conn: &mut sqlx::SqliteConnection| -> i64 {
            sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(conn)
                .await
                .unwrap()
        };
        const MEMORY: i64 = 2;
        assert_eq!(place(conn).await, MEMORY);
        // Half the file free and little live: reclaim VACUUMs.
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(concat!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) ",
            "INSERT INTO filler SELECT zeroblob(1000) FROM n"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query("DROP TABLE filler")
            .execute(&mut *conn)
            .await
            .unwrap();
        assert!(super::free_pages(conn).await.unwrap() >= 256);
        super::reclaim(conn).await.unwrap();
        assert_eq!(super::free_pages(conn).await.unwrap(), 0, "VACUUM ran");
        assert_eq!(place(conn).await, MEMORY);
    }

    #[test]
    fn ids_become_ranges_of_consecutive_ids() {
        assert_eq!(
            super::ranges_of(&[7, 3, 4, 5, 9, 4]),
            [(3, 5), (7, 7), (9, 9)]
        );
        assert!(super::ranges_of(&[]).is_empty());
    }
}
