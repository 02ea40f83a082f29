//! Crash safety: a child process appends as fast as it can and is killed with SIGKILL at a
//! random moment, 20 times. Every append that returned Ok must be there afterwards, in order,
//! with no duplicate id.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{entry, open, settings};

const DIR_VAR: &str = "FIELDLINK_QUEUE_CRASH_DIR";

/// The child: not a test on its own (ignored), run by the test below with `--ignored`.
#[test]
#[ignore = "run as a child process by appends_that_returned_ok_survive_sigkill"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // The shipped commit interval: batching appends must not weaken the guarantee.
        let shipped = fieldlink_queue::config::QueueSettings {
            disk_reserve: 0,
            ..Default::default()
        };
        let queue = open(dir.as_ref(), shipped).await;
        let mut producers = Vec::new();
        for p in 0..8u64 {
            let queue = queue.clone();
            producers.push(tokio::spawn(async move {
                for n in 0.. {
                    let ids = queue
                        .append(vec![entry(&format!("p{p}"), n)])
                        .await
                        .unwrap();
                    // Only now is the append durable: report it.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", ids[0]).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for p in producers {
            p.await.unwrap();
        }
    });
}

#[test]
fn appends_that_returned_ok_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut confirmed = BTreeSet::new();
    let mut seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    );
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("child.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ids, reported) = std::sync::mpsc::channel::<i64>();
        let reader = std::thread::spawn(move || {
            for id in BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.trim().parse::<i64>().ok())
            {
                let _ = ids.send(id);
            }
        });
        // The kill comes at a pseudo-random moment once appends are being confirmed (opening
        // takes a varying time, and a kill before the first append would test nothing).
        let first = reported.recv_timeout(Duration::from_secs(20));
        assert!(
            first.is_ok(),
            "round {round}: the child confirmed no append within 20 s: {}",
            std::fs::read_to_string(dir.path().join("child.log")).unwrap_or_default()
        );
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 500));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let reported: Vec<i64> = first.into_iter().chain(reported.try_iter()).collect();
        confirmed.extend(reported.iter().copied());

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stored: Vec<(String, i64)> = runtime.block_on(async {
            let queue = open(dir.path(), settings()).await;
            queue
                .peek(usize::MAX >> 1)
                .await
                .unwrap()
                .iter()
                .map(|l| (l.stream.clone(), l.id))
                .collect()
        });
        // Delivery order: each producer's stream in id order (streams take turns).
        let mut last: std::collections::HashMap<&str, i64> = Default::default();
        for (stream, id) in &stored {
            let before = last.insert(stream, *id).unwrap_or(0);
            assert!(before < *id, "round {round}: {stream} in id order");
        }
        let count = stored.len();
        let stored: BTreeSet<i64> = stored.into_iter().map(|(_, id)| id).collect();
        assert_eq!(stored.len(), count, "round {round}: no duplicate");
        let lost: Vec<&i64> = confirmed.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} confirmed appends lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    assert!(
        confirmed.len() > 100,
        "only {} appends confirmed over 20 rounds",
        confirmed.len()
    );
}
