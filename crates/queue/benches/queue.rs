//! Queue benchmark: durable appends/s for 1, 8 and 64 concurrent producers at 100 B and
//! 1 KiB payloads, drain rate (lease + ack), and bytes written per message, next to this
//! disk's own fsync rate measured in the same run.
//!
//! Run: `cargo bench -p fieldlink-queue` (set `FIELDLINK_BENCH_DIR` to measure another disk;
//! the default is a temporary directory under `target/`; `FIELDLINK_BENCH_ONLY=drain` runs the
//! drains alone).
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::OutboxEntry;
use fieldlink_core::topic::TopicName;
use fieldlink_queue::config::QueueSettings;
use fieldlink_queue::{Queue, StatvfsDisk};

const RUN_FOR: Duration = Duration::from_secs(3);

fn main() {
    let base = std::env::var_os("FIELDLINK_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&base).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let fsyncs = fsync_rate(&base);
    println!(
        "disk: {fsyncs:.0} fsyncs/s (4 KiB write + fdatasync, one at a time) in {}",
        base.display()
    );
    println!(
        "{:>9} {:>9} {:>8} {:>12} {:>10} {:>14}",
        "commit", "producers", "payload", "appends/s", "x fsync", "bytes written/msg"
    );
    // The shipped interval (commits bounded to ~10/s: a producer that waits for each append
    // gets ~10/s) and none (each round at once: what the engine itself can do).
    // FIELDLINK_BENCH_ONLY=drain: the drain alone (to profile it).
    let appends_too = std::env::var("FIELDLINK_BENCH_ONLY").map_or(true, |only| only != "drain");
    let intervals = [Duration::from_millis(100), Duration::ZERO];
    for interval in intervals.into_iter().filter(|_| appends_too) {
        for payload in [100usize, 1024] {
            for producers in [1usize, 8, 64] {
                let dir = tempfile::tempdir_in(&base).unwrap();
                let (rate, written) =
                    runtime.block_on(appends(dir.path(), interval, producers, payload));
                println!(
                    "{:>7}ms {producers:>9} {payload:>7}B {rate:>12.0} {:>9.1}x {written:>14.0}",
                    interval.as_millis(),
                    rate / fsyncs
                );
            }
        }
    }
    // Three drains: one alone varies by 2-3x on a shared machine.
    for _ in 0..3 {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let (messages, rate) = runtime.block_on(drain(dir.path()));
        println!("drain: {messages} messages of 100 B, lease(1000) + ack: {rate:.0} msgs/s");
    }
}

fn entry(payload: usize, n: u64) -> OutboxEntry {
    let mut bytes = format!("{n:016}").into_bytes();
    bytes.resize(payload, b'x');
    OutboxEntry {
        stream: "bench".into(),
        priority: Priority::Normal,
        message: Message {
            topic: TopicName::new("site/bench/value").unwrap(),
            payload: bytes,
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        properties: None,
    }
}

async fn open(dir: &Path, commit_interval: Duration) -> Queue {
    let settings = QueueSettings {
        disk_reserve: 0,
        commit_interval,
        max_messages: u64::MAX >> 1,
        max_bytes: 1 << 40,
        ..QueueSettings::default()
    };
    Queue::open(
        dir,
        settings,
        HashMap::new(),
        Arc::new(StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap()
}

/// Each producer appends one message at a time, waiting for durability each time.
async fn appends(
    dir: &Path,
    commit_interval: Duration,
    producers: usize,
    payload: usize,
) -> (f64, f64) {
    let queue = open(dir, commit_interval).await;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let written_before = write_bytes();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (queue, stop, count) = (queue.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                queue.append(vec![entry(payload, n)]).await.unwrap();
                n += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(RUN_FOR).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed) as f64;
    let written = (write_bytes() - written_before) as f64;
    (n / elapsed, written / n)
}

/// Fills 200k messages in batches, then drains them as the uplink would.
async fn drain(dir: &Path) -> (u64, f64) {
    let queue = open(dir, Duration::ZERO).await;
    let total = 200_000u64;
    for batch in 0..total / 1000 {
        queue
            .append((0..1000).map(|n| entry(100, batch * 1000 + n)).collect())
            .await
            .unwrap();
    }
    let start = Instant::now();
    let mut drained = 0;
    loop {
        let leased = queue.lease(1000).await.unwrap();
        if leased.is_empty() {
            break;
        }
        drained += leased.len() as u64;
        queue
            .ack(leased.iter().map(|l| l.id).collect())
            .await
            .unwrap();
    }
    (drained, drained as f64 / start.elapsed().as_secs_f64())
}

/// Bytes this process caused to be written to storage (/proc/self/io).
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The disk's own rate of durable 4 KiB writes, one after the other, for a second.
fn fsync_rate(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = [7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}
