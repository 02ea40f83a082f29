//! Inspection commands (`queue stats`, `queue peek`, `status`) only read: run next to a
//! running service or after it, they change no file of the gateway's state and run none of its
//! maintenance (clock saves, expiry, checkpoints, migrations).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

fn fieldlink(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Every file in `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (std::fs::read(e.path()).unwrap(), meta.modified().unwrap()),
            )
        })
        .collect()
}

fn config(dir: &Path, port: u16, extra: &str) -> String {
    let path = dir.join("fieldlink.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"3s\"\n{extra}\n\
             [[broker.listeners]]\nname = \"l\"\nbind = \"127.0.0.1\"\nport = {port}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Runs a gateway, publishes `n` routed messages through a real client, stops it cleanly.
fn queue_some(dir: &Path, n: usize) {
    let port = free_port();
    let cfg = config(dir, port, "");
    let mut child = Command::new(BIN)
        .args(["--config", &cfg, "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    for i in 0..n {
        let ok = Command::new("mosquitto_pub")
            .args(["-p", &port.to_string(), "-q", "1", "-t", "site/a/t", "-m"])
            .arg(format!("m{i}"))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "no clean stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn queue_stats_and_peek_change_no_file_and_expire_nothing() {
    let dir = tempfile::tempdir().unwrap();
    queue_some(dir.path(), 3);
    // The shortest age limit: a service opening this queue would save its clock at once and
    // expire the messages within a second.
    let cfg = config(dir.path(), free_port(), "[queue]\nmax_age = \"1s\"");
    let data = dir.path().join("data");
    let before = snapshot(&data);
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        let stats = fieldlink(&["queue", "stats", "--config", &cfg]);
        let out = String::from_utf8_lossy(&stats.stdout);
        assert!(stats.status.success(), "{stats:?}");
        assert!(out.contains("messages: 3 "), "{out}");
        assert!(out.contains("stream telemetry: 3 messages"), "{out}");
        let peek = fieldlink(&["queue", "peek", "--config", &cfg]);
        assert_eq!(
            String::from_utf8_lossy(&peek.stdout).lines().count(),
            3,
            "{peek:?}"
        );
    }
    let after = snapshot(&data);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "files created or removed"
    );
    for (name, (bytes, modified)) in &before {
        assert!(after[name].0 == *bytes, "{name} was written");
        assert_eq!(after[name].1, *modified, "{name} was touched");
    }
}

#[test]
fn queue_stats_without_a_queue_creates_none_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), free_port(), "");
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let stats = fieldlink(&["queue", "stats", "--config", &cfg]);
    assert_eq!(stats.status.code(), Some(1));
    let err = String::from_utf8_lossy(&stats.stderr);
    assert!(err.contains("no queue there"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("data")).unwrap().count(),
        0
    );
}

#[test]
fn status_without_a_running_gateway_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), free_port(), "");
    let status = fieldlink(&["status", "--config", &cfg]);
    assert_eq!(status.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("is the gateway running?"),
        "{status:?}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "status made the data directory"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let bash = fieldlink(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("check-config") && script.contains("credentials"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let man = fieldlink(&["man", dir.path().to_str().unwrap()]);
    assert!(man.status.success(), "{man:?}");
    let page = std::fs::read_to_string(dir.path().join("fieldlink.1")).unwrap();
    assert!(
        page.contains(".TH fieldlink 1") && page.contains("queue"),
        "{page}"
    );
    assert!(dir.path().join("fieldlink-queue-stats.1").is_file());
    let bad = fieldlink(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}
