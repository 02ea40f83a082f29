//! A rollback never loses a queue: a file written by a newer release (emulated: the current
//! code's file with a newer release's migration and format record added) is read when the
//! change was additive, and refused, untouched, with every message kept, when it was not.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr as _;

use common::*;
use fieldlink_queue::format::{FORMAT, READABLE_FROM};
use fieldlink_queue::{DB_FILE, QueueError, QueueReader};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

/// A queue with ten messages, closed cleanly.
async fn queue_with_ten(dir: &Path) {
    let queue = open(dir, settings()).await;
    queue
        .append((0..10).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    queue.close().await;
}

/// What a newer release would leave: its own migration applied, its format recorded.
async fn written_by_a_newer_release(dir: &Path, readable_from: i64) {
    let mut conn = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(dir.join(DB_FILE))
        .connect()
        .await
        .unwrap();
    let newer = FORMAT + 1;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (?1, 'a newer release', TRUE, x'00', 0)",
    )
    .bind(newer)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE newer_release_thing (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE format SET version = ?1, readable_from = ?2")
        .bind(newer)
        .bind(readable_from)
        .execute(&mut conn)
        .await
        .unwrap();
    // Fold the WAL in, as a clean stop does, so that the file alone says it all.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn recorded_format(dir: &Path) -> (i64, i64) {
    let mut conn = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(dir.join(DB_FILE))
        .read_only(true)
        .connect()
        .await
        .unwrap();
    sqlx::query_as("SELECT version, readable_from FROM format")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Each file in `dir` and a digest of its bytes (FNV-1a: enough to see a change).
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let digest = std::fs::read(&p)
                .unwrap()
                .iter()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
                });
            (name, digest)
        })
        .collect();
    all.sort();
    all
}

#[tokio::test]
async fn a_new_file_records_this_releases_format() {
    let dir = tempfile::tempdir().unwrap();
    queue_with_ten(dir.path()).await;
    assert_eq!(recorded_format(dir.path()).await, (FORMAT, READABLE_FROM));
}

#[tokio::test]
async fn after_a_rollback_a_newer_additive_file_is_read_and_its_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    queue_with_ten(dir.path()).await;
    written_by_a_newer_release(dir.path(), READABLE_FROM).await;

    let queue = open(dir.path(), settings()).await;
    let leased = queue.lease(100).await.unwrap();
    assert_eq!(leased.len(), 10, "every message is there");
    queue.close().await;
    // This older release did not lower what the newer one recorded.
    assert_eq!(
        recorded_format(dir.path()).await,
        (FORMAT + 1, READABLE_FROM)
    );
}

#[tokio::test]
async fn after_a_rollback_a_file_this_release_cannot_read_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    queue_with_ten(dir.path()).await;
    written_by_a_newer_release(dir.path(), FORMAT + 1).await;
    let before = files(dir.path());

    let refused = fieldlink_queue::Queue::open(
        dir.path(),
        settings(),
        HashMap::new(),
        std::sync::Arc::new(fieldlink_queue::StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, QueueError::TooNew { .. }), "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains(&format!("queue format {}", FORMAT + 1))
            && text.contains(&format!("this release reads format {FORMAT}"))
            && text.contains("left untouched"),
        "{text}"
    );
    let inspected = QueueReader::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(inspected, QueueError::TooNew { .. }),
        "{inspected}"
    );
    // Not "corrupt": nothing moved aside, not a byte changed.
    assert_eq!(files(dir.path()), before);

    // The release that wrote it (emulated: the record lowered again) finds every message.
    written_by_a_newer_release_is_readable_again(dir.path()).await;
    let queue = open(dir.path(), settings()).await;
    assert_eq!(queue.lease(100).await.unwrap().len(), 10);
    queue.close().await;
}

async fn written_by_a_newer_release_is_readable_again(dir: &Path) {
    let mut conn = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(dir.join(DB_FILE))
        .connect()
        .await
        .unwrap();
    sqlx::query("UPDATE format SET readable_from = ?1")
        .bind(READABLE_FROM)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}
