//! Memory stays bounded while a million messages are appended and then drained: the queue
//! holds its backlog on disk, not in RAM. A benchmark rather than a test (about a minute, and
//! an RSS figure is a measurement): `cargo bench -p fieldlink-queue --bench memory`; it exits
//! non-zero if RSS grows by 48 MiB or more.
#![allow(clippy::print_stderr)] // a benchmark reports

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{entry, open, settings};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(a_million_messages_pass_through_in_bounded_memory());
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .expect("VmRSS in /proc/self/status")
}

async fn a_million_messages_pass_through_in_bounded_memory() {
    const TOTAL: u64 = 1_000_000;
    const BATCH: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), settings()).await;
    // Warm up: SQLite's page cache and sqlx's statement cache reach their working size.
    queue
        .append((0..BATCH).map(|n| entry("m", n)).collect())
        .await
        .unwrap();
    let ids: Vec<i64> = queue
        .lease(1000)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    queue.ack(ids).await.unwrap();
    let baseline = rss_kib();
    let mut peak = baseline;

    let start = Instant::now();
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let queue = queue.clone();
        producers.push(tokio::spawn(async move {
            let mut peak = 0;
            for b in (p..TOTAL / BATCH).step_by(4) {
                queue
                    .append((0..BATCH).map(|n| entry("m", b * BATCH + n)).collect())
                    .await
                    .unwrap();
                peak = peak.max(rss_kib());
            }
            peak
        }));
    }
    for p in producers {
        peak = peak.max(p.await.unwrap());
    }
    assert_eq!(queue.stats().await.unwrap().messages, TOTAL);
    let filled = start.elapsed();

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
        peak = peak.max(rss_kib());
    }
    assert_eq!(drained, TOTAL);
    let growth_mib = (peak - baseline) / 1024;
    eprintln!(
        "1M messages: filled in {filled:?}, drained in {:?}; RSS {} MiB at start, +{growth_mib} MiB at peak",
        start.elapsed() - filled,
        baseline / 1024
    );
    // ~100 MB of messages went through; the queue may hold a batch or two, never the backlog.
    assert!(growth_mib < 48, "RSS grew by {growth_mib} MiB");
}
