//! The gateway's files are private whatever the umask: with umask 022 and a data directory
//! someone made 0755, the real binary leaves the data and runtime directories 0700 and the
//! queue's database, WAL and shared-memory files and `status.json` 0600.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn queue_and_status_files_are_private_with_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    for open_dir in [&data, &run] {
        std::fs::create_dir(open_dir).unwrap();
        std::fs::set_permissions(open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let port = free_port();
    let config = dir.path().join("fieldlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n\
             [[broker.listeners]]\nbind = \"127.0.0.1\"\nport = {port}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
            data.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    // umask 022, as most shells and service managers set it.
    let mut gateway = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 022; exec {BIN} --config {} run",
            config.display()
        ))
        .env("RUNTIME_DIRECTORY", &run)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-t", "site/boiler/temp", "-m", "21.5"])
        .status()
        .unwrap();
    assert!(published.success());

    let status = run.join("status.json");
    let wal = data.join("queue.db-wal");
    let start = Instant::now();
    while !(status.exists() && wal.exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no status file or WAL: {}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let files = [
        (data.clone(), 0o700),
        (run.clone(), 0o700),
        (data.join("queue.db"), 0o600),
        (wal, 0o600),
        (data.join("queue.db-shm"), 0o600),
        (data.join("queue.journal"), 0o600),
        (status, 0o600),
    ];
    let modes: Vec<(String, u32, u32)> = files
        .iter()
        .map(|(path, want)| (path.display().to_string(), mode(path), *want))
        .collect();
    let _ = gateway.kill();
    let _ = gateway.wait();
    for (path, got, want) in modes {
        assert_eq!(got, want, "{path}: mode {got:o}, want {want:o}");
    }
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(
        log.contains("made it 0700"),
        "tightening the open data directory is logged: {log}"
    );
}
