//! `fieldlink status --config X` reads X's gateway, never another's: a status file in
//! `$RUNTIME_DIRECTORY` (set for whatever systemd started) counts only if it says it belongs to
//! X's data directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

fn config(dir: &Path, name: &str, port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n[[broker.listeners]]\nbind = \"127.0.0.1\"\nport = {port}\n",
            dir.join(name).display()
        ),
    )
    .unwrap();
    path
}

fn status(config: &Path, runtime: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .env("RUNTIME_DIRECTORY", runtime)
        .output()
        .unwrap()
}

#[test]
fn status_with_another_instances_runtime_directory_does_not_read_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let port = free_port();
    let a = config(dir.path(), "a", port);
    let b = config(dir.path(), "b", free_port());
    let mut gateway = Command::new(BIN)
        .arg("--config")
        .arg(&a)
        .arg("run")
        .env("RUNTIME_DIRECTORY", &runtime)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    let start = Instant::now();
    while !runtime.join("status.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no status file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let own = status(&a, &runtime);
    let other = status(&b, &runtime);
    let _ = gateway.kill();
    let _ = gateway.wait();

    assert!(own.status.success(), "{own:?}");
    let own: serde_json::Value = serde_json::from_slice(&own.stdout).unwrap();
    assert_eq!(
        own["data_dir"].as_str(),
        Some(dir.path().join("a").to_str().unwrap())
    );
    assert!(
        !other.status.success() && other.stdout.is_empty(),
        "B's status must not be A's: {}",
        String::from_utf8_lossy(&other.stdout)
    );
}
