//! A board without a real-time clock, emulated with libfaketime: only the wall clock moves
//! (`DONT_FAKE_MONOTONIC=1`), stepped while the gateway runs through `FAKETIME_TIMESTAMP_FILE`
//! (`FAKETIME_NO_CACHE=1`), as an NTP step does. Whether the clock counts as synchronized comes
//! from the gateway's test seam (`FIELDLINK_CLOCK_SYNC_FILE`): libfaketime cannot fake
//! `adjtimex`. The real binary, real MQTT clients, a real mosquitto as the cloud.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{Leaf, TestCa, write};
use fieldlink_test_support::{Mosquitto, free_port, wait_for_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");
const LIMIT: Duration = Duration::from_secs(20);

/// libfaketime's multithreaded library (Debian's `faketime` package; scripts/test installs it).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime not found: install Debian's faketime package (scripts/test does)")
}

/// A gateway whose wall clock and clock state the test sets.
struct Board {
    dir: tempfile::TempDir,
    local: u16,
    child: Option<Child>,
}

impl Board {
    /// `extra` is appended to a config with one plain listener and a route for `site/#`.
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let local = free_port();
        let config = format!(
            "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nport = {local}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n{extra}",
            dir.path().join("data").display()
        );
        write(dir.path(), "fieldlink.toml", &config);
        let board = Self {
            dir,
            local,
            child: None,
        };
        board.set_clock("+0", false);
        board
    }

    /// Moves the wall clock (libfaketime's offset syntax: "-8d", "+0") and says whether it
    /// counts as synchronized.
    fn set_clock(&self, offset: &str, synchronized: bool) {
        write(self.dir.path(), "faketime", offset);
        write(
            self.dir.path(),
            "sync",
            if synchronized { "synced" } else { "unsynced" },
        );
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("run")
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", self.dir.path().join("faketime"))
            .env("FAKETIME_NO_CACHE", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .env("FIELDLINK_CLOCK_SYNC_FILE", self.dir.path().join("sync"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(([127, 0, 0, 1], self.local).into(), LIMIT);
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
    }

    /// `count` QoS 1 messages `0`, `1`, … on `site/meter`, each acknowledged (mosquitto_pub
    /// returns once its PUBACKs are in).
    fn publish(&self, first: usize, count: usize) {
        let lines: String = (first..first + count).map(|n| format!("{n}\n")).collect();
        let mut publisher = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.local.to_string()])
            .args(["-t", "site/meter", "-q", "1", "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        publisher
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        assert!(publisher.wait().unwrap().success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The gateway's status file, once `ok` holds for it; panics after `LIMIT`.
    fn status_until(
        &self,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let path = fieldlink::status::find_status_file(&self.dir.path().join("data"));
        let deadline = Instant::now() + LIMIT;
        loop {
            let status: serde_json::Value = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            if ok(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: status never got there: {status:#}\ngateway log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A status written at least `after` after the previous one was read, so that several
    /// maintenance passes of the queue (one a second) ran in between.
    fn status_after(&self, after: Duration) -> serde_json::Value {
        let first = self.status_until("a status", |s| s["written_ms"].is_u64());
        let seen = first["written_ms"].as_u64().unwrap();
        let start = Instant::now();
        self.status_until("a later status", |s| {
            start.elapsed() >= after && s["written_ms"].as_u64().is_some_and(|w| w != seen)
        })
    }

    /// The payloads queued, in delivery order (read with the gateway stopped).
    fn queued_payloads(&self) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let queue = fieldlink_queue::Queue::open(
                &self.dir.path().join("data"),
                fieldlink_queue::config::QueueSettings::default(),
                Default::default(),
                std::sync::Arc::new(fieldlink_queue::StatvfsDisk),
                &fieldlink_core::shutdown::Shutdown::new(),
            )
            .await
            .unwrap();
            let payloads = queue
                .peek(1000)
                .await
                .unwrap()
                .into_iter()
                .map(|m| String::from_utf8(m.message.payload).unwrap())
                .collect();
            queue.close().await;
            payloads
        })
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn messages(status: &serde_json::Value) -> u64 {
    status["queue"]["messages"].as_u64().unwrap_or(0)
}

fn dropped(status: &serde_json::Value) -> u64 {
    status["queue"]["dropped_total"].as_u64().unwrap_or(0)
}

#[test]
fn messages_acknowledged_eight_days_behind_survive_a_restart_with_the_right_time() {
    let mut board = Board::new("");
    board.set_clock("-8d", false);
    board.start();
    board.publish(0, 100);
    let status = board.status_until("100 queued", |s| messages(s) == 100);
    assert_eq!(status["clock_synchronized"], false, "{status:#}");
    board.stop();

    // Time sync has happened meanwhile: the clock is right and synchronized.
    board.set_clock("+0", true);
    board.start();
    let status = board.status_after(Duration::from_secs(3));
    assert_eq!(messages(&status), 100, "{status:#}\n{}", board.log());
    assert_eq!(dropped(&status), 0, "{status:#}");
    assert_eq!(status["clock_synchronized"], true, "{status:#}");
    assert!(!board.log().contains("longer than queue.max_age"));
}

#[test]
fn clock_steps_while_running_neither_drop_nor_reorder() {
    let mut board = Board::new("");
    board.set_clock("-8d", false);
    board.start();
    board.publish(0, 100);
    board.status_until("100 queued", |s| messages(s) == 100);

    // Time sync steps the clock 8 days forward.
    board.set_clock("+0", true);
    let status = board.status_after(Duration::from_secs(3));
    assert_eq!(messages(&status), 100, "{status:#}\n{}", board.log());
    assert_eq!(dropped(&status), 0);

    // A step back by a day, with more messages after it.
    board.set_clock("-1d", true);
    board.publish(100, 20);
    let status = board.status_after(Duration::from_secs(3));
    assert_eq!(messages(&status), 120, "{status:#}");
    assert_eq!(dropped(&status), 0);
    board.stop();
    let expected: Vec<String> = (0..120).map(|n| n.to_string()).collect();
    assert_eq!(
        board.queued_payloads(),
        expected,
        "order kept across the steps"
    );
}

#[test]
fn max_age_is_time_in_the_queue_whichever_way_the_clock_steps() {
    let mut board = Board::new("[queue]\nmax_age = \"6s\"\n");
    board.start();

    // Stepped back two days: still expired after 6 s in the queue, and counted.
    board.publish(0, 5);
    board.status_until("5 queued", |s| messages(s) == 5);
    board.set_clock("-2d", false);
    board.status_until("5 expired", |s| dropped(s) == 5 && messages(s) == 0);

    // Stepped forward thirty days: not expired at once (the wall clock says a month old),
    // expired once they have been queued 6 s.
    board.set_clock("+28d", true);
    board.publish(5, 5);
    let status = board.status_after(Duration::from_secs(2));
    assert_eq!(messages(&status), 5, "{status:#}\n{}", board.log());
    assert_eq!(dropped(&status), 5, "{status:#}");
    board.status_until("10 expired", |s| dropped(s) == 10 && messages(s) == 0);
}

/// A cloud (TLS, its certificate from `leaf`), an observer subscribed to `cloud/#`.
struct Cloud {
    broker: Mosquitto,
    tls_port: u16,
    ca_file: PathBuf,
    observed: PathBuf,
    observer: Child,
}

impl Cloud {
    fn start(dir: &Path, leaf: Leaf) -> Self {
        let ca = TestCa::new("cloud CA");
        let server = ca.issue_with("cloud", &["localhost"], leaf);
        let ca_file = write(dir, "ca.pem", ca.pem());
        let cert = write(dir, "server.pem", &server.cert_pem);
        let key = write(dir, "server.key", &server.key_pem);
        let tls_port = free_port();
        let broker = Mosquitto::start(&format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca_file.display(),
            cert.display(),
            key.display()
        ));
        wait_for_port(([127, 0, 0, 1], tls_port).into(), LIMIT);
        let observed = dir.join("observed.txt");
        let observer = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.addr().port().to_string()])
            .args(["-t", "cloud/#", "-q", "1", "-v", "-i", "observer"])
            .stdout(std::fs::File::create(&observed).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The observer is subscribed once a retained probe comes back to it.
        let probe = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.addr().port().to_string()])
            .args(["-t", "cloud/probe", "-m", "ready", "-q", "1", "-r"])
            .status()
            .unwrap();
        assert!(probe.success());
        let cloud = Self {
            broker,
            tls_port,
            ca_file,
            observed,
            observer,
        };
        cloud.wait_until("the observer", |lines| {
            lines.iter().any(|l| l == "cloud/probe ready")
        });
        cloud
    }

    fn uplink(&self) -> String {
        format!(
            "[uplink]\nhost = \"localhost\"\nport = {}\nclient_id = \"gw-clock\"\n\
             ca_file = \"{}\"\ntopic_prefix = \"cloud/\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nalarm_topic = \"cloud/alarms\"\n",
            self.tls_port,
            self.ca_file.display()
        )
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.observed)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn wait_until(&self, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let lines = self.lines();
            if ok(&lines) {
                return lines;
            }
            assert!(Instant::now() < deadline, "{what}: the cloud saw {lines:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.observer.kill();
        let _ = self.observer.wait();
        let _ = &self.broker;
    }
}

#[test]
fn the_uplink_waits_for_time_sync_instead_of_blaming_the_certificate() {
    let cloud_dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(cloud_dir.path(), Leaf::valid_from_today());
    let mut board = Board::new(&cloud.uplink());
    // fake-hwclock's time from the last shutdown, 8 days ago, and no time sync yet.
    board.set_clock("-8d", false);
    board.start();
    board.publish(0, 10);
    // The status file is a snapshot: wait for one taken after the ten were stored.
    let status = board.status_until("the clock named, ten queued", |s| {
        messages(s) == 10
            && s["uplink"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("clock is not synchronized"))
    });
    assert_eq!(status["uplink"]["connected"], false, "{status:#}");
    assert_eq!(
        status["uplink"]["state"], "clock_unsynchronized",
        "{status:#}"
    );
    assert!(
        !board.log().contains("Uplink connection failed"),
        "a wrong clock is not reported as a failed certificate:\n{}",
        board.log()
    );

    // Time sync arrives: the certificate is valid by the right clock; everything goes.
    board.set_clock("+0", true);
    cloud.wait_until("10 delivered", |lines| {
        lines
            .iter()
            .filter(|l| l.starts_with("cloud/site/meter "))
            .count()
            == 10
    });
    board.status_until("connected", |s| s["uplink"]["connected"] == true);
}

#[test]
fn expiry_alarms_wait_for_a_synchronized_clock() {
    let cloud_dir = tempfile::tempdir().unwrap();
    let cloud = Cloud::start(cloud_dir.path(), Leaf::expiring_in_days(6));
    let mut board = Board::new(&cloud.uplink());
    board.set_clock("+0", false);
    board.start();
    board.publish(0, 20);
    cloud.wait_until("20 delivered", |lines| {
        lines
            .iter()
            .filter(|l| l.starts_with("cloud/site/meter "))
            .count()
            == 20
    });
    // Connected and delivering for a while, and no alarm from a clock that may be wrong.
    board.status_after(Duration::from_secs(2));
    let lines = cloud.lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("cloud/alarms ")),
        "{lines:?}"
    );

    board.set_clock("+0", true);
    let lines = cloud.wait_until("the alarm", |lines| {
        lines.iter().any(|l| l.starts_with("cloud/alarms "))
    });
    let alarm = lines
        .iter()
        .find(|l| l.starts_with("cloud/alarms "))
        .unwrap();
    assert!(alarm.contains("\"certificate\":\"server\""), "{alarm}");
    // The alarm took no queue row's place: the messages after it still arrive, once each.
    board.publish(20, 20);
    let lines = cloud.wait_until("40 delivered", |lines| {
        lines
            .iter()
            .filter(|l| l.starts_with("cloud/site/meter "))
            .count()
            >= 40
    });
    let delivered: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("cloud/site/meter "))
        .collect();
    let expected: Vec<String> = (0..40).map(|n| n.to_string()).collect();
    assert_eq!(delivered, expected);
}
