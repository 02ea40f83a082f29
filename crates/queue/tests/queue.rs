//! The queue's public behaviour, on a real SQLite file in a temporary directory.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fieldlink_core::fault::Fault;
use fieldlink_core::message::Priority;
use fieldlink_core::ports::{Outbox, OutboxError};
use fieldlink_queue::config::{FullPolicy, QueueSettings, StreamLimits};
use fieldlink_queue::{DiskSpace, Full, Queue, QueueError, StatvfsDisk};

use common::{entry, open, settings};

async fn open_with(
    dir: &Path,
    settings: QueueSettings,
    streams: HashMap<String, StreamLimits>,
) -> Queue {
    Queue::open(
        dir,
        settings,
        streams,
        Arc::new(StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap()
}

fn payloads(leased: &[fieldlink_queue::Leased]) -> Vec<String> {
    leased
        .iter()
        .map(|l| String::from_utf8(l.message.payload.clone()).unwrap())
        .collect()
}

#[tokio::test]
async fn leased_but_unacked_messages_come_back_after_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    let ids = queue
        .append((0..5).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let first = queue.lease(3).await.unwrap();
    assert_eq!(payloads(&first), ["00000000", "00000001", "00000002"]);
    // Leased messages are not handed out twice.
    assert_eq!(
        payloads(&queue.lease(10).await.unwrap()),
        ["00000003", "00000004"]
    );
    queue.ack(vec![first[0].id]).await.unwrap();
    // A clean stop, as in the model test: the acked row's deletion is committed by then. A
    // dropped handle's writer finishes in the background and raced the reopen (the test failed
    // now and then under load: 5 messages held instead of 4).
    queue.close().await;
    drop(queue);

    let queue = open(dir.path(), settings()).await;
    let again = queue.lease(10).await.unwrap();
    assert_eq!(
        payloads(&again),
        ["00000001", "00000002", "00000003", "00000004"]
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.messages, stats.leased), (4, 4));
    // New ids keep growing past the acked one: ids are never reused.
    let next = queue.append(vec![entry("t", 9)]).await.unwrap();
    assert!(next[0] > ids[4]);
}

#[tokio::test]
async fn nacked_messages_are_leased_again_before_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    queue
        .append((0..4).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    let leased = queue.lease(2).await.unwrap();
    queue.nack(vec![leased[1].id]).await.unwrap();
    assert_eq!(
        payloads(&queue.lease(10).await.unwrap()),
        ["00000001", "00000002", "00000003"]
    );
}

#[tokio::test]
async fn high_priority_is_served_before_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    queue
        .append((0..3).map(|n| entry("bulk", n)).collect())
        .await
        .unwrap();
    let mut alarm = entry("alarm", 7);
    alarm.priority = Priority::High;
    queue.append(vec![alarm]).await.unwrap();
    let order: Vec<String> = queue
        .lease(10)
        .await
        .unwrap()
        .iter()
        .map(|l| l.stream.clone())
        .collect();
    assert_eq!(order, ["alarm", "bulk", "bulk", "bulk"]);
}

#[tokio::test]
async fn reject_policy_refuses_and_stores_nothing_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        dir.path(),
        QueueSettings {
            max_messages: 3,
            ..settings()
        },
    )
    .await;
    queue
        .append((0..2).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    let err = queue
        .append((2..4).map(|n| entry("t", n)).collect())
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Full(Full::Queue)), "{err}");
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.messages, 2, "all or none");
    assert_eq!(stats.refused_total.get("full"), Some(&2));
    // Through the port, the producer learns the same typed cause, and whose fault it is.
    let err = Outbox::append(&queue, vec![entry("t", 5), entry("t", 6)])
        .await
        .unwrap_err();
    assert_eq!(err, OutboxError::Full(Full::Queue));
    assert_eq!(err.fault(), Fault::Environment);
    queue.append(vec![entry("t", 2)]).await.unwrap();
}

#[tokio::test]
async fn drop_oldest_makes_room_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        dir.path(),
        QueueSettings {
            max_messages: 3,
            when_full: FullPolicy::DropOldest,
            ..settings()
        },
    )
    .await;
    for n in 0..5 {
        queue.append(vec![entry("t", n)]).await.unwrap();
    }
    assert_eq!(
        payloads(&queue.peek(10).await.unwrap()),
        ["00000002", "00000003", "00000004"]
    );
    assert_eq!(
        queue
            .stats()
            .await
            .unwrap()
            .dropped_total
            .get("drop_oldest"),
        Some(&2)
    );
}

#[tokio::test]
async fn drop_newest_keeps_the_backlog_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        dir.path(),
        QueueSettings {
            max_bytes: 1024,
            when_full: FullPolicy::DropNewest,
            ..settings()
        },
    )
    .await;
    let mut big = entry("t", 0);
    big.message.payload = vec![b'x'; 600];
    queue.append(vec![big.clone()]).await.unwrap();
    let ids = queue.append(vec![big]).await.unwrap();
    assert!(ids.is_empty(), "the new message is dropped, not stored");
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.messages, stats.dropped_total.get("drop_newest")),
        (1, Some(&1))
    );
}

#[tokio::test]
async fn a_stream_limit_applies_to_its_stream_only() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StreamLimits {
        max_messages: Some(2),
        max_bytes: None,
        when_full: Some(FullPolicy::DropOldest),
    };
    let queue = open_with(
        dir.path(),
        settings(),
        HashMap::from([("noisy".to_owned(), limits)]),
    )
    .await;
    for n in 0..5 {
        queue
            .append(vec![entry("noisy", n), entry("quiet", n)])
            .await
            .unwrap();
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.streams["noisy"].messages, 2);
    assert_eq!(stats.streams["quiet"].messages, 5);
    let noisy: Vec<String> = queue
        .peek(20)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.stream == "noisy")
        .map(|l| String::from_utf8(l.message.payload).unwrap())
        .collect();
    assert_eq!(noisy, ["00000003", "00000004"]);
}

#[tokio::test]
async fn messages_older_than_max_age_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(
        dir.path(),
        QueueSettings {
            max_age: Some(Duration::from_millis(300)),
            ..settings()
        },
    )
    .await;
    queue
        .append((0..3).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    queue.append(vec![entry("t", 3)]).await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.dropped_total.get("age"), Some(&3));
    assert_eq!(payloads(&queue.peek(10).await.unwrap()), ["00000003"]);
}

/// A file system whose free space the test sets.
struct FakeDisk(AtomicU64);

impl DiskSpace for FakeDisk {
    fn available(&self, _: &Path) -> std::io::Result<u64> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn intake_stops_at_the_disk_reserve_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(FakeDisk(AtomicU64::new(10 << 20)));
    let queue = Queue::open(
        dir.path(),
        QueueSettings {
            disk_reserve: 8 << 20,
            ..QueueSettings::default()
        },
        HashMap::new(),
        disk.clone(),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap();
    queue.append(vec![entry("t", 0)]).await.unwrap();
    disk.0.store(7 << 20, Ordering::SeqCst);
    let err = queue.append(vec![entry("t", 1)]).await.unwrap_err();
    assert!(
        matches!(err, QueueError::Full(Full::DiskReserve { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("queue.disk_reserve"), "{err}");
    disk.0.store(9 << 20, Ordering::SeqCst);
    queue.append(vec![entry("t", 2)]).await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.messages, stats.refused_total.get("disk_reserve")),
        (2, Some(&1))
    );
}

#[tokio::test]
async fn a_corrupt_database_is_moved_aside_and_a_fresh_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    queue.append(vec![entry("t", 0)]).await.unwrap();
    drop(queue);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let db = dir.path().join(fieldlink_queue::DB_FILE);
    std::fs::write(&db, vec![0x5a; 64 * 1024]).unwrap();

    let queue = open(dir.path(), settings()).await;
    let stats = queue.stats().await.unwrap();
    let aside = stats
        .corrupt_file_moved_to
        .expect("the corrupt file was moved aside");
    assert!(aside.exists(), "kept for inspection: {aside:?}");
    assert_eq!(std::fs::read(&aside).unwrap(), vec![0x5a; 64 * 1024]);
    assert_eq!(stats.messages, 0);
    queue.append(vec![entry("t", 1)]).await.unwrap();
    assert_eq!(queue.peek(5).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_file_shrinks_as_the_queue_drains() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    let mut big = entry("t", 0);
    big.message.payload = vec![7; 4096];
    for _ in 0..50 {
        queue.append(vec![big.clone(); 20]).await.unwrap();
    }
    let db = dir.path().join(fieldlink_queue::DB_FILE);
    loop {
        let leased = queue.lease(500).await.unwrap();
        if leased.is_empty() {
            break;
        }
        queue
            .ack(leased.iter().map(|l| l.id).collect())
            .await
            .unwrap();
    }
    drop(queue);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Reopen: maintenance runs at once and gives the free pages back.
    let queue = open(dir.path(), settings()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(
        size < 1 << 20,
        "4 MB were written and drained; the file is {size} bytes"
    );
    drop(queue);
}

/// Ages are queue time: wall-clock stamps (a clock stepped by days, as on a board without an
/// RTC) neither expire a message nor keep it; rows an earlier release wrote (no queue time)
/// count from the start that finds them.
#[tokio::test]
async fn ages_are_queue_time_not_wall_clock_stamps() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let max_age = QueueSettings {
        max_age: Some(Duration::from_secs(2)),
        ..settings()
    };
    let queue = open(dir.path(), max_age.clone()).await;
    queue
        .append((0..3).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    queue.close().await;

    // Wall stamps 30 days in the past, and one row without a queue time.
    let url = format!(
        "sqlite://{}",
        dir.path().join(fieldlink_queue::DB_FILE).display()
    );
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE messages SET enqueued_ms = enqueued_ms - 2592000000")
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET queue_ms = NULL WHERE id = (SELECT MAX(id) FROM messages)")
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    let queue = open(dir.path(), max_age).await;
    // Two maintenance passes: a wall-clock age would have dropped all three by now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.messages, 3, "{stats:?}");
    assert!(
        stats.oldest_age.unwrap() < Duration::from_secs(2),
        "{stats:?}"
    );
    // Held longer than max_age in queue time: dropped and counted, the unstamped row too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.messages, 0, "{stats:?}");
    assert_eq!(stats.dropped_total.get("age"), Some(&3));
}

/// After a clean close the start takes the saved depth instead of scanning, and the numbers are
/// the ones a scan gives; without a clean close (a kill, a power cut) it scans and checks.
#[tokio::test]
async fn the_depth_saved_at_a_clean_close_is_the_scanned_depth() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    assert!(!queue.stats().await.unwrap().opened_after_clean_close);
    for stream in ["a", "b", "c"] {
        let batch = (0..7).map(|n| entry(stream, n)).collect();
        queue.append(batch).await.unwrap();
    }
    let leased = queue.lease(5).await.unwrap();
    queue
        .ack(leased.iter().map(|l| l.id).collect())
        .await
        .unwrap();
    queue.close().await;

    let queue = open(dir.path(), settings()).await;
    let saved = queue.stats().await.unwrap();
    assert!(saved.opened_after_clean_close);
    assert_eq!(saved.messages, 16);
    // A stop without a clean close: the process is gone before its writer could close.
    let db = dir.path().join(fieldlink_queue::DB_FILE);
    drop(queue);
    tokio::time::sleep(Duration::from_millis(300)).await;
    forget_clean_close(&db).await;

    let queue = open(dir.path(), settings()).await;
    let scanned = queue.stats().await.unwrap();
    assert!(
        !scanned.opened_after_clean_close,
        "no clean close: a full check and a scan"
    );
    assert_eq!(
        (saved.messages, saved.bytes, &saved.streams),
        (scanned.messages, scanned.bytes, &scanned.streams)
    );
    queue.close().await;
}

/// What a kill leaves: no record of a clean close.
async fn forget_clean_close(db: &std::path::Path) {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM clean_close")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// A WAL that grows costs the file system a journal commit at every fdatasync: it has its
/// working size from the open on, keeps it under commits and checkpoints, and a clean close
/// truncates it.
#[tokio::test]
async fn the_wal_has_its_working_size_from_the_start_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join(format!("{}-wal", fieldlink_queue::DB_FILE));
    let queue = open(dir.path(), settings()).await;
    let working = std::fs::metadata(&wal).unwrap().len();
    assert!(working >= 6 << 20, "WAL of {working} bytes at open");
    // Far more than one checkpoint cycle (4 MiB) of commits: SQLite writes the WAL again from
    // its start instead of growing it.
    for round in 0..300u64 {
        let batch = (0..40)
            .map(|n| entry("telemetry", round * 40 + n))
            .collect();
        queue.append(batch).await.unwrap();
        let leased = queue.lease(40).await.unwrap();
        queue
            .ack(leased.iter().map(|m| m.id).collect())
            .await
            .unwrap();
    }
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), working);
    queue.close().await;
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
}

#[tokio::test]
async fn streams_take_turns_so_a_live_message_is_not_held_behind_another_streams_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    queue
        .append((0..1000).map(|n| entry("bulk", n)).collect())
        .await
        .unwrap();
    assert_eq!(queue.lease(10).await.unwrap().len(), 10);
    queue.append(vec![entry("live", 5000)]).await.unwrap();
    let next = queue.lease(4).await.unwrap();
    let streams: Vec<&str> = next.iter().map(|l| l.stream.as_str()).collect();
    // The oldest head goes first in a turn: bulk's 11th, then the live one, then bulk again.
    assert_eq!(streams, ["bulk", "live", "bulk", "bulk"]);
    assert_eq!(
        payloads(&next),
        ["00000010", "00005000", "00000011", "00000012"]
    );
}

#[tokio::test]
async fn a_lease_after_a_nack_moves_past_a_long_run_of_leased_rows() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    queue
        .append((0..300).map(|n| entry("t", n)).collect())
        .await
        .unwrap();
    let first = queue.lease(200).await.unwrap();
    queue.nack(vec![first[0].id]).await.unwrap();
    // The nacked row first, then what follows the 199 still leased: never an empty lease.
    let next = queue.lease(3).await.unwrap();
    assert_eq!(payloads(&next), ["00000000", "00000200", "00000201"]);
}

/// Two writers on one queue would each take the other's journal commits for their own: the
/// second is refused with what to do, and the queue opens once the first has closed it.
#[tokio::test]
async fn a_queue_open_in_another_writer_is_refused_until_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), settings()).await;
    first.append(vec![entry("s", 1)]).await.unwrap();
    let second = Queue::open(
        dir.path(),
        settings(),
        HashMap::new(),
        Arc::new(StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await;
    let Err(refused) = second else {
        panic!("a second writer was let in");
    };
    assert!(matches!(refused, QueueError::InUse { .. }), "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains(&dir.path().display().to_string()) && text.contains("stop it first"),
        "{text}"
    );
    // The first one is untouched by the attempt.
    first.append(vec![entry("s", 2)]).await.unwrap();
    first.close().await;
    let again = open(dir.path(), settings()).await;
    assert_eq!(
        payloads(&again.peek(10).await.unwrap()),
        ["00000001", "00000002"]
    );
    again.close().await;
}
