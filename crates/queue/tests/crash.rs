//! Crash safety: a child process appends as fast as it can and is killed with SIGKILL at a
//! random moment, 20 times. Every append that returned Ok must be there afterwards, in order,
//! with no duplicate id. Some kills come before the first fold of the commit journal, some
//! after one (see `src/journal.rs`). And a message the cloud acknowledged is not sent again
//! once a later append has returned (its deletion went into that append's journal commit).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{entry, open, settings};

const DIR_VAR: &str = "FIELDLINK_QUEUE_CRASH_DIR";
/// "deliver": the child also leases, acknowledges and reports what is deleted for good.
const MODE_VAR: &str = "FIELDLINK_QUEUE_CRASH_MODE";
/// The journal is folded into the database every 5 s: a wait past it.
const PAST_A_FOLD: Duration = Duration::from_millis(5_300);

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
        if std::env::var_os(MODE_VAR).is_some_and(|m| m == "deliver") {
            producers.push(tokio::spawn(courier(queue.clone())));
        }
        for p in producers {
            p.await.unwrap();
        }
    });
}

/// Plays the uplink: leases, says which ids it acknowledges (`K id`), acknowledges them,
/// appends one message of its own and, once that returned, says they are gone (`D id`).
async fn courier(queue: fieldlink_queue::Queue) {
    for n in 0.. {
        let leased = queue.lease(20).await.unwrap();
        let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
        {
            let mut out = std::io::stdout().lock();
            for id in &ids {
                writeln!(out, "K {id}").unwrap();
            }
            out.flush().unwrap();
        }
        queue.ack(ids.clone()).await.unwrap();
        let own = queue.append(vec![entry("courier", n)]).await.unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", own[0]).unwrap();
        for id in &ids {
            writeln!(out, "D {id}").unwrap();
        }
        out.flush().unwrap();
    }
}

/// What a killed child said: appends confirmed, ids it was about to acknowledge, ids deleted.
#[derive(Default)]
struct Said {
    appended: BTreeSet<i64>,
    acking: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
}

/// Runs the child in `dir` and kills it with SIGKILL after `wait` (counted from its first
/// confirmed append).
fn run_and_kill(dir: &std::path::Path, mode: &str, wait: Duration, round: usize) -> Said {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(MODE_VAR, mode)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("child.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // The kill comes once appends are being confirmed (opening takes a varying time, and a
    // kill before the first append would test nothing).
    let first = said.recv_timeout(Duration::from_secs(20));
    assert!(
        first.is_ok(),
        "round {round}: the child confirmed no append within 20 s: {}",
        std::fs::read_to_string(dir.join("child.log")).unwrap_or_default()
    );
    std::thread::sleep(wait);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    let mut out = Said::default();
    for line in first.into_iter().chain(said.try_iter()) {
        let line = line.trim();
        if let Some(id) = line.strip_prefix("K ") {
            out.acking.insert(id.parse().unwrap());
        } else if let Some(id) = line.strip_prefix("D ") {
            out.deleted.insert(id.parse().unwrap());
        } else if let Ok(id) = line.parse() {
            out.appended.insert(id);
        }
    }
    out
}

/// The ids the queue in `dir` holds, in delivery order, with their streams.
fn stored_in(dir: &std::path::Path) -> Vec<(String, i64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let queue = open(dir, settings()).await;
        let held = queue
            .peek(usize::MAX >> 1)
            .await
            .unwrap()
            .iter()
            .map(|l| (l.stream.clone(), l.id))
            .collect();
        queue.close().await;
        held
    })
}

#[test]
fn acknowledged_messages_are_not_sent_again_after_sigkill_once_a_later_append_returned() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = seed();
    let mut deleted_in_total = 0;
    for round in 0..8 {
        let wait = if round % 4 == 3 {
            PAST_A_FOLD + Duration::from_millis(next(&mut seed) % 1000)
        } else {
            Duration::from_millis(next(&mut seed) % 500)
        };
        let said = run_and_kill(dir.path(), "deliver", wait, round);
        let stored: BTreeSet<i64> = stored_in(dir.path())
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let again: Vec<&i64> = said.deleted.intersection(&stored).collect();
        assert!(
            again.is_empty(),
            "round {round}: {} deleted messages came back, e.g. {:?}",
            again.len(),
            &again[..again.len().min(5)]
        );
        // What was confirmed and never acknowledged is all there.
        let lost: Vec<&i64> = said
            .appended
            .iter()
            .filter(|id| !said.acking.contains(id) && !stored.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: confirmed appends lost: {lost:?}"
        );
        deleted_in_total += said.deleted.len();
    }
    assert!(
        deleted_in_total > 100,
        "only {deleted_in_total} deletions seen"
    );
}

fn seed() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    )
}

fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn appends_that_returned_ok_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed = BTreeSet::new();
    let mut seed = seed();
    for round in 0..20 {
        let wait = if round % 5 == 4 {
            PAST_A_FOLD + Duration::from_millis(next(&mut seed) % 1000)
        } else {
            Duration::from_millis(next(&mut seed) % 500)
        };
        confirmed.extend(run_and_kill(dir.path(), "append", wait, round).appended);
        let stored = stored_in(dir.path());
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
