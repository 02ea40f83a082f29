//! The real `fieldlink` binary, driven as a user would: real MQTT clients (mosquitto_pub and
//! mosquitto_sub), real signals, real exit codes.

use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::{free_port, wait_for_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

/// A gateway process with its own config and data directory, killed on drop.
struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start(config: &str, env: &[(&str, &OsStr)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[gateway]\ndata_dir = \"{}\"\nshutdown_grace = \"3s\"\n{config}",
            dir.path().join("data").display()
        );
        let path = write(dir.path(), "fieldlink.toml", &config);
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&path)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        Self {
            child: command.spawn().unwrap(),
            dir,
        }
    }

    fn config(&self) -> String {
        self.dir.path().join("fieldlink.toml").display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn listeners(ports: &[(u16, &str)]) -> String {
    ports
        .iter()
        .map(|(port, mqtt)| {
            format!("[[broker.listeners]]\nname = \"l{port}\"\nbind = \"127.0.0.1\"\nport = {port}\nmqtt = \"{mqtt}\"\n")
        })
        .collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Subscribes with mosquitto_sub, then publishes with mosquitto_pub until the subscriber has
/// its message (a subscription is not instant), and returns what the subscriber printed.
fn exchange(sub_port: u16, sub_version: &str, pub_port: u16, pub_version: &str, qos: u8) -> String {
    let topic = format!("test/{sub_port}/{pub_port}/q{qos}");
    let payload = format!("reading-{qos}");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &sub_port.to_string(),
            "-V",
            sub_version,
        ])
        .args([
            "-t",
            &topic,
            "-q",
            &qos.to_string(),
            "-C",
            "1",
            "-W",
            "20",
            "-v",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub is installed");
    let start = Instant::now();
    let mut sub = sub;
    loop {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pub_port.to_string(),
                "-V",
                pub_version,
            ])
            .args(["-t", &topic, "-q", &qos.to_string(), "-m", &payload])
            .status()
            .expect("mosquitto_pub is installed");
        assert!(status.success(), "mosquitto_pub failed: {status}");
        if sub.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the subscriber got nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sub.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    assert_eq!(got.trim(), format!("{topic} {payload}"));
    got
}

#[test]
fn real_clients_exchange_qos0_and_qos1_and_sigterm_stops_it_cleanly() {
    let (v4, v5) = (free_port(), free_port());
    let mut gateway = Gateway::start(&listeners(&[(v4, "3.1.1"), (v5, "5")]), &[]);
    wait_for_port(addr(v4), Duration::from_secs(20));
    wait_for_port(addr(v5), Duration::from_secs(20));

    for qos in [0, 1] {
        exchange(v4, "mqttv311", v4, "mqttv311", qos);
        exchange(v5, "mqttv5", v5, "mqttv5", qos);
        // One broker behind both listeners: a 5 client reaches a 3.1.1 client.
        exchange(v4, "mqttv311", v5, "mqttv5", qos);
    }

    gateway.signal(Signal::SIGTERM);
    let status = gateway
        .wait(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", gateway.log());
    let log = gateway.log();
    // Everything stopped before the grace period ran out.
    assert!(
        log.contains("Shutting down") && log.contains("Stopped cleanly"),
        "{log}"
    );
    assert!(
        TcpStream::connect(addr(v4)).is_err(),
        "the listener is closed after exit"
    );
}

#[test]
fn sigint_stops_it_too_even_with_a_client_connected() {
    let port = free_port();
    let mut gateway = Gateway::start(&listeners(&[(port, "3.1.1")]), &[]);
    wait_for_port(addr(port), Duration::from_secs(20));
    // A raw MQTT 3.1.1 client: CONNECT, CONNACK, then idle.
    let mut client = TcpStream::connect(addr(port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .write_all(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'x',
        ])
        .unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK, accepted");

    gateway.signal(Signal::SIGINT);
    let status = gateway
        .wait(Duration::from_secs(5))
        .expect("exits within the grace period");
    assert_eq!(status.code(), Some(0), "log:\n{}", gateway.log());
    // The gateway closed the connection rather than leaving it dangling.
    let mut rest = [0u8; 1];
    assert_eq!(client.read(&mut rest).unwrap(), 0, "EOF from the gateway");
}

#[test]
fn it_tells_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let mut gateway = Gateway::start(
        &listeners(&[(port, "3.1.1")]),
        &[("NOTIFY_SOCKET", socket_path.as_os_str())],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the broker already accepts connections.
    assert!(TcpStream::connect(addr(port)).is_ok());
    gateway.signal(Signal::SIGTERM);
    let n = socket.recv(&mut buf).expect("STOPPING=1 arrives");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(
        gateway.wait(Duration::from_secs(5)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn it_pings_the_systemd_watchdog_while_every_component_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    // systemd passes the period in microseconds; fieldlink pings at half of it.
    let mut gateway = Gateway::start(
        &listeners(&[(port, "3.1.1")]),
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("200000")),
        ],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 arrives");
    assert_eq!(&buf[..n], b"READY=1");
    // At half the period (a unit test of systemd.rs checks the arithmetic).
    for _ in 0..3 {
        let n = socket.recv(&mut buf).expect("a watchdog ping arrives");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
    gateway.signal(Signal::SIGTERM);
    assert_eq!(
        gateway.wait(Duration::from_secs(5)).and_then(|s| s.code()),
        Some(0)
    );
}

fn fieldlink(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn check_config_names_all_three_mistakes_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "three.toml",
        "[gateway]\nshutdown_grace = \"soon\"\n\n[broker]\nmax_conections = 10\n\n\
         [[broker.listeners]]\nbind = \"127.0.0.1\"\nport = 99999\n",
    );
    let out = fieldlink(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("3 problems"), "{stderr}");
    for expected in [
        "three.toml:2:18: key `gateway.shutdown_grace` = \"soon\": not a duration",
        "three.toml:5:1: key `broker.max_conections` = 10: unknown key",
        "three.toml:9:8: key `broker.listeners[0].port` = 99999: out of range",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/fieldlink.toml");
    let out = fieldlink(&["check-config", "--config", shipped]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("configuration is valid")
    );
}

#[test]
fn run_refuses_a_bad_config_with_exit_64_and_a_missing_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "[broker]\nmax_connections = -1\n");
    let out = fieldlink(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.max_connections"));

    let missing = dir.path().join("missing.toml");
    let out = fieldlink(&["run", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing.toml") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn a_port_already_in_use_is_a_clear_error_not_a_hang() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut gateway = Gateway::start(&listeners(&[(port, "3.1.1")]), &[]);
    let status = gateway.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let log = gateway.log();
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(log.contains("Address already in use"), "{log}");
}

#[test]
fn a_queue_from_a_newer_release_stops_the_start_with_exit_65_and_is_left_as_it_is() {
    let port = free_port();
    let mut first = Gateway::start(&listeners(&[(port, "3.1.1")]), &[]);
    wait_for_port(addr(port), Duration::from_secs(20));
    first.signal(Signal::SIGTERM);
    assert_eq!(
        first.wait(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    let data = first.dir.path().join("data");
    let db = data.join("queue.db");
    // What a newer release that changed the format in a way this one cannot read leaves.
    let python = std::env::var("FIELDLINK_PYTHON").unwrap_or_else(|_| "python3".into());
    let edited = Command::new(python)
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
              c.execute('UPDATE format SET version=99, readable_from=99'); c.commit(); c.close()",
        )
        .arg(&db)
        .status()
        .unwrap();
    assert!(edited.success());
    let before = std::fs::read(&db).unwrap();

    let mut second = Gateway {
        child: Command::new(BIN)
            .arg("--config")
            .arg(first.config())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(first.dir.path().join("second.log")).unwrap())
            .spawn()
            .unwrap(),
        dir: tempfile::tempdir().unwrap(),
    };
    let status = second
        .wait(Duration::from_secs(20))
        .expect("it stops by itself");
    let log = std::fs::read_to_string(first.dir.path().join("second.log")).unwrap();
    assert_eq!(status.code(), Some(65), "{log}");
    assert!(
        log.contains("written by a newer fieldlink (queue format 99)"),
        "{log}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file is untouched");
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert!(aside.is_empty(), "not moved aside: {aside:?}");
}

#[test]
fn version_prints_the_version() {
    let out = fieldlink(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("fieldlink {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn routed_messages_are_queued_in_priority_order_and_the_cli_shows_and_purges_them() {
    let port = free_port();
    let config = format!(
        "{}[[routes]]\nname = \"telemetry\"\nfilter = \"site/+/temp\"\n\
         [[routes]]\nname = \"alarms\"\nfilter = \"site/+/alarm\"\npriority = \"high\"\n",
        listeners(&[(port, "3.1.1")])
    );
    let mut gateway = Gateway::start(&config, &[]);
    wait_for_port(addr(port), Duration::from_secs(20));
    let publish = |topic: &str, payload: &str| {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                payload,
            ])
            .status()
            .unwrap();
        assert!(status.success());
    };
    for n in 0..3 {
        publish("site/boiler/temp", &format!("t{n}"));
    }
    publish("site/boiler/alarm", "overheat");
    publish("elsewhere/not/routed", "ignored");

    let cfg = gateway.config();
    let stats =
        || String::from_utf8(fieldlink(&["queue", "stats", "--config", &cfg]).stdout).unwrap();
    let start = Instant::now();
    while !stats().contains("messages: 4 ") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not queued: {}",
            stats()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gateway.signal(Signal::SIGTERM);
    assert_eq!(
        gateway.wait(Duration::from_secs(5)).and_then(|s| s.code()),
        Some(0),
        "{}",
        gateway.log()
    );

    let shown = stats();
    assert!(
        shown.contains("stream alarms: 1 messages")
            && shown.contains("stream telemetry: 3 messages"),
        "{shown}"
    );
    let peek = String::from_utf8(fieldlink(&["queue", "peek", "--config", &cfg]).stdout).unwrap();
    let topics: Vec<&str> = peek
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(
        topics,
        [
            "site/boiler/alarm",
            "site/boiler/temp",
            "site/boiler/temp",
            "site/boiler/temp"
        ],
        "{peek}"
    );

    let refused = fieldlink(&["queue", "purge", "--config", &cfg]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert!(
        stats().contains("messages: 4 "),
        "nothing purged without --yes"
    );
    let purged = fieldlink(&["queue", "purge", "--yes", "--config", &cfg]);
    assert!(
        String::from_utf8(purged.stdout)
            .unwrap()
            .contains("purged 4 messages")
    );
    assert!(stats().contains("messages: 0 "));
}
