//! Kind to SD cards: an idle gateway writes nothing to its data directory (the status file
//! lives on tmpfs), the status tells how much the gateway writes, and the durability barriers
//! (counted by strace, a real tracer) stay bounded by the commit interval whatever the rate.

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
    /// Run by a wrapper (strace), whose child is the gateway.
    wrapped: bool,
}

impl Gateway {
    fn start() -> Self {
        Self::start_with(&[], "")
    }

    /// The gateway run by `wrapper` (e.g. strace and its arguments), with `queue` as the
    /// `[queue]` section's keys.
    fn start_with(wrapper: &[&str], queue: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "[gateway]\ndata_dir = \"{}\"\n[[broker.listeners]]\nport = {port}\n\
             [queue]\n{queue}\n[[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n",
            dir.path().join("data").display()
        );
        write(dir.path(), "fieldlink.toml", &config);
        let mut command = match wrapper {
            [] => Command::new(BIN),
            [program, args @ ..] => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
        };
        let child = command
            .arg("--config")
            .arg(dir.path().join("fieldlink.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
        Self {
            child,
            dir,
            port,
            wrapped: !wrapper.is_empty(),
        }
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
        if self.wrapped {
            // A killed strace detaches and leaves the gateway running: kill it first.
            let pid = self.child.id();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for child in children.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", child]).status();
            }
        }
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

/// The durability barriers the gateway makes while one publisher sends `messages` QoS 1
/// messages, one every few milliseconds, under `queue` settings: (barriers in that window,
/// those on the WAL that were a full fsync, the window's length).
fn barriers_while_publishing(queue: &str, messages: usize) -> (usize, usize, Duration) {
    let trace = tempfile::NamedTempFile::new().unwrap();
    let trace_path = trace.path().display().to_string();
    let gateway = Gateway::start_with(
        &[
            "strace",
            "-f",
            "-qq",
            "-y",
            "-ttt",
            "-e",
            "trace=fsync,fdatasync,sync_file_range",
            "-o",
            &trace_path,
        ],
        queue,
    );
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &gateway.port.to_string()])
        .args(["-t", "site/meter", "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let started = SystemTime::now();
    {
        use std::io::Write as _;
        let mut stdin = publisher.stdin.take().unwrap();
        for n in 0..messages {
            writeln!(stdin, "{n:064}").unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(publisher.wait().unwrap().success());
    let ended = SystemTime::now();
    drop(gateway);
    let epoch = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let (from, to) = (epoch(started), epoch(ended));
    let text = std::fs::read_to_string(trace.path()).unwrap();
    let mut barriers = 0;
    let mut wal_fsyncs = 0;
    for line in text.lines() {
        // PID SECONDS.MICROS call(fd</path>) = 0
        let mut fields = line.split_whitespace();
        let (Some(_pid), Some(at), Some(call)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(at) = at.parse::<f64>() else { continue };
        if at < from || at > to || !call.contains('(') {
            continue;
        }
        barriers += 1;
        if call.starts_with("fsync(") && call.contains("queue.db-wal") {
            wal_fsyncs += 1;
        }
    }
    let window = ended.duration_since(started).unwrap();
    eprintln!("queue {queue:?}: {barriers} barriers ({wal_fsyncs} WAL fsyncs) in {window:?}");
    (barriers, wal_fsyncs, window)
}

#[test]
fn durability_barriers_are_bounded_by_the_commit_interval_whatever_the_rate() {
    // 300 messages, one every 5 ms or more: with commits at most every 100 ms (the default),
    // at most one barrier per interval of the window, plus a few for maintenance.
    let (barriers, wal_fsyncs, window) = barriers_while_publishing("", 300);
    let bound = (window.as_millis() / 100) as usize + 5;
    assert!(
        barriers <= bound,
        "{barriers} barriers in {window:?}: more than one commit per 100 ms ({bound})"
    );
    // A full fsync also writes the WAL's new mtime: one file-system journal commit per
    // SQLite commit. SQLite must be built to use fdatasync (.cargo/config.toml).
    assert_eq!(
        wal_fsyncs, 0,
        "SQLite synced its WAL with fsync, not fdatasync"
    );
    // The counting works: commits at once (commit_interval = "0s") cost a barrier for
    // nearly every message of the same run.
    let (eager, _, window) = barriers_while_publishing("commit_interval = \"0s\"", 300);
    let bound = (window.as_millis() / 100) as usize + 5;
    assert!(
        eager > bound,
        "only {eager} barriers in {window:?} with commit_interval = 0s: the count is broken"
    );
}
