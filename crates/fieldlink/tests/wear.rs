//! Kind to SD cards: an idle gateway writes nothing to its data directory (the status file
//! lives on tmpfs), and the status tells how much the gateway writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fieldlink_test_support::certs::write;
use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Gateway {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "[gateway]\ndata_dir = \"{}\"\n[[broker.listeners]]\nport = {port}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
            dir.path().join("data").display()
        );
        write(dir.path(), "fieldlink.toml", &config);
        let child = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("fieldlink.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
        Self { child, dir, port }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn status(&self) -> String {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("status")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.insert(
                    entry.path().display().to_string(),
                    (meta.len(), meta.modified().unwrap()),
                );
            }
        }
    }
    out
}

#[test]
fn an_idle_gateway_writes_nothing_to_its_data_directory() {
    let gateway = Gateway::start();
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gateway.port.to_string()])
        .args(["-t", "site/meter", "-m", "1", "-q", "1"])
        .status()
        .unwrap();
    assert!(published.success());
    // Once writes pause, the queue folds its WAL in once (after a few seconds); from then on
    // nothing may change, whatever the status file and the maintenance ticks do.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = snapshot(&gateway.data());
    loop {
        // Longer than the queue waits before that checkpoint (5 s).
        std::thread::sleep(Duration::from_secs(7));
        let now = snapshot(&gateway.data());
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the data directory never settled"
        );
        before = now;
    }
    // Several status rewrites (every 2 s) and maintenance passes (every 1 s) later.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        snapshot(&gateway.data()),
        before,
        "an idle gateway wrote to its data directory"
    );
    assert!(
        gateway.status().contains("queue    1 messages"),
        "{}",
        gateway.status()
    );
}

#[test]
fn the_status_says_how_much_the_gateway_writes() {
    let gateway = Gateway::start();
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gateway.port.to_string()])
        .args(["-t", "site/meter", "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = publisher.stdin.take().unwrap();
        for n in 0..500 {
            writeln!(stdin, "{n:064}").unwrap();
        }
    }
    assert!(publisher.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = gateway.status();
        let line = status.lines().find(|l| l.starts_with("disk")).unwrap_or("");
        // 500 durable messages cannot have cost nothing.
        if line.contains("written since start") && !line.starts_with("disk     0 B written") {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
