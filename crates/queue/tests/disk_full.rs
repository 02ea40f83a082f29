//! A queue on a small, real file system (a 4 MiB tmpfs mounted for the test; root only, as CI
//! runs): when the disk fills, the queue's policy applies (reject refuses, drop_oldest lets the
//! oldest go, counted), an alarm is raised once, nothing fails, and intake resumes when space
//! comes back.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::entry;
use fieldlink_core::ports::OutboxEntry;
use fieldlink_queue::config::{FullPolicy, QueueSettings};
use fieldlink_queue::{Full, Queue, QueueError, StatvfsDisk};

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        // /proc/self belongs to the effective user.
        let root =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if !root {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs");
        Some(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("queue")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// 1 KiB payloads: a few thousand fill the disk.
fn big(n: u64) -> OutboxEntry {
    let mut e = entry("t", n);
    e.message.payload = format!("{n:08}").repeat(128).into_bytes();
    e
}

async fn open(path: &Path, when_full: FullPolicy) -> Queue {
    let settings = QueueSettings {
        when_full,
        disk_reserve: 1 << 20,
        commit_interval: Duration::ZERO,
        ..QueueSettings::default()
    };
    Queue::open(
        path,
        settings,
        HashMap::new(),
        Arc::new(StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap()
}

fn disk_alarm(path: &Path) -> Option<String> {
    fieldlink_core::alarms::all()
        .into_iter()
        .find(|a| a.contains(&path.display().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_under_reject_and_intake_resumes_when_space_returns() {
    refuses_and_resumes("4m", false).await;
}

/// With room for the WAL's and the journal's working size at open, the queue runs with its
/// commit journal and one SQLite transaction per fold (on 4 MiB it commits every round):
/// the same refusal, nothing confirmed lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_under_reject_with_the_commit_journal_too() {
    refuses_and_resumes("40m", true).await;
}

/// `journal`: the queue runs with its commit journal on a disk of `size`.
async fn refuses_and_resumes(size: &str, journal: bool) {
    let Some(disk) = SmallDisk::mount(size) else {
        return;
    };
    let queue = open(&disk.path(), FullPolicy::Reject).await;
    let mut stored = 0u64;
    let refusal = loop {
        let batch = (stored..stored + 20).map(big).collect();
        match queue.append(batch).await {
            Ok(ids) => stored += ids.len() as u64,
            Err(e) => break e,
        }
        assert!(stored < 100_000, "the disk never filled");
    };
    assert!(
        matches!(refusal, QueueError::Full(Full::DiskReserve { .. })),
        "{refusal}"
    );
    assert!(stored > 500, "a few MB were taken before: {stored}");
    let alarm = disk_alarm(&disk.path()).expect("an alarm in the status");
    assert!(
        alarm.contains("is full") && alarm.contains("refused"),
        "{alarm}"
    );
    // The free space it gives is the file system's (the journal's headroom said apart).
    let said: u64 = alarm
        .split(" MB free")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no free space in: {alarm}"));
    let free =
        fieldlink_queue::DiskSpace::available(&StatvfsDisk, &disk.path()).unwrap() / 1_000_000;
    assert!(
        said.abs_diff(free) <= 1,
        "{said} MB said, {free} MB free: {alarm}"
    );
    assert_eq!(alarm.contains("more stay free"), journal, "{alarm}");
    // Refused again, nothing lost from what was stored, no failure in between.
    assert!(queue.append(vec![big(0)]).await.is_err());
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.messages, stored);
    assert!(stats.refused_total["disk_reserve"] >= 21);

    // The cloud takes half of it: their pages are free for new messages.
    let leased = queue.lease(stored as usize / 2).await.unwrap();
    queue
        .ack(leased.iter().map(|l| l.id).collect())
        .await
        .unwrap();
    // Deletions ride along with the next commits (every 5 s at most).
    let mut resumed = false;
    for attempt in 0..100 {
        if queue.append(vec![big(attempt)]).await.is_ok() {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "intake resumes once there is room");
    for n in 0..20 {
        queue.append(vec![big(n)]).await.unwrap();
    }
    assert_eq!(disk_alarm(&disk.path()), None, "the alarm clears");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_lets_the_oldest_go_under_drop_oldest() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let queue = open(&disk.path(), FullPolicy::DropOldest).await;
    // Twice what the disk holds: every append is taken.
    for n in (0..6_000u64).step_by(20) {
        let batch = (n..n + 20).map(big).collect();
        queue.append(batch).await.unwrap();
    }
    let stats = queue.stats().await.unwrap();
    let dropped = stats.dropped_total.get("drop_oldest").copied().unwrap_or(0);
    assert!(dropped > 1_500, "the oldest made way: {stats:?}");
    assert_eq!(stats.messages + dropped, 6_000, "every message counted");
    // The newest are the ones kept, in order.
    let held = queue.peek(stats.messages as usize).await.unwrap();
    let last = held.last().unwrap();
    assert!(
        last.message.payload.starts_with(b"00005999"),
        "the newest is kept"
    );
    let alarm = disk_alarm(&disk.path()).expect("an alarm in the status");
    assert!(alarm.contains("oldest"), "{alarm}");
    queue.close().await;
}
