//! The field-device bridge in an in-process gateway, against real peers: a pymodbus RTU slave on
//! a socat pty pair, pymodbus's TCP server, and a pty the test writes NMEA lines into. Commands
//! go in with `mosquitto_pub`; values, responses and status are read from the local bus.
//!
//! The peers run in the Python venv that `scripts/test` makes (`FIELDLINK_PYTHON`, else
//! `target/pyenv/bin/python`); without it these tests fail and say how to make it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use fieldlink::Gateway;
use fieldlink::config::parse;
use fieldlink_core::config::Origin;
use fieldlink_core::message::Message;
use fieldlink_core::ports::Health;
use fieldlink_core::topic::TopicFilter;
use fieldlink_test_support::{free_port, within};
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);

fn python() -> PathBuf {
    let path = std::env::var_os("FIELDLINK_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the Python venv with pymodbus is missing at {}: run scripts/test (it makes it), or \
         python3 -m venv target/pyenv && target/pyenv/bin/pip install -r \
         crates/serial/tests/peers/requirements.txt",
        path.display()
    );
    path
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../serial/tests/peers/modbus_peer.py")
}

/// A pymodbus slave driven over stdin/stdout; killed on drop.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl Peer {
    fn start(mode: &str, at: &str) -> Self {
        let mut child = Command::new(python())
            .arg(peer_script())
            .args([mode, at])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the python peer starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Self {
            child,
            stdin,
            lines,
        };
        peer.expect_line("ready");
        peer
    }

    fn expect_line(&mut self, want: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("the peer did not say {want:?}"));
            if line == want {
                return;
            }
        }
    }

    /// Sends a command line and returns its one-line answer.
    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("peer stdin");
        self.stdin.flush().expect("peer stdin");
        let answer = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the peer did not answer {line:?}"));
        assert!(!answer.starts_with("error"), "{line}: {answer}");
        answer
    }

    /// Requests received per function code, e.g. `count(3)`.
    fn count(&mut self, fc: u8) -> u64 {
        let answer = self.cmd("count");
        answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("fc{fc}=")))
            .map_or(0, |n| n.parse().expect("a count"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A socat pty pair with stable link paths `dir/dev` (the gateway's end) and `dir/peer`.
struct Pty {
    child: Child,
    dev: PathBuf,
    peer: PathBuf,
}

impl Pty {
    fn start(dir: &Path, name: &str) -> Self {
        let dev = dir.join(format!("{name}-dev"));
        let peer = dir.join(format!("{name}-peer"));
        let mut child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", peer.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat runs (apt-get install socat)");
        for _ in 0..200 {
            if dev.exists() && peer.exists() {
                return Self { child, dev, peer };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("socat made no pty links in {}", dir.display());
    }

    fn dev(&self) -> String {
        self.dev.display().to_string()
    }

    fn peer(&self) -> String {
        self.peer.display().to_string()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..200 {
            if !self.dev.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn gateway(dir: &Path, port: u16, devices: &str) -> Gateway {
    let text = format!(
        "[gateway]\ndata_dir = \"{}\"\n\
         [[broker.listeners]]\nname = \"local\"\nbind = \"127.0.0.1\"\nport = {port}\n\
         [[routes]]\nname = \"telemetry\"\nfilter = \"plant/#\"\n\
         [bridge]\nsite = \"plant\"\n{devices}",
        dir.join("data").display()
    );
    let settings = parse(&text, Origin::BuiltIn).unwrap_or_else(|e| panic!("{e}"));
    Gateway::start(settings).await.expect("gateway starts")
}

fn watch(gateway: &Gateway, filter: &str) -> Watch {
    let rx = gateway
        .bus()
        .subscribe(&TopicFilter::new(filter).unwrap(), 1024)
        .expect("bus subscription");
    Watch {
        rx,
        held: Vec::new(),
    }
}

/// Messages seen on the bus, kept per topic until a test asks for them.
struct Watch {
    rx: Receiver<Message>,
    held: Vec<(String, String)>,
}

impl Watch {
    /// The payload of the next message on `topic` that `accept` takes (earlier ones on that
    /// topic are dropped; other topics' are kept).
    async fn next(&mut self, topic: &str, what: &str, accept: impl Fn(&str) -> bool) -> String {
        within(WAIT, what, async {
            loop {
                if let Some(i) = self.held.iter().position(|(t, _)| t == topic) {
                    let (_, payload) = self.held.remove(i);
                    if accept(&payload) {
                        return payload;
                    }
                    continue;
                }
                let m = self.rx.recv().await.expect("the bus is open");
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                self.held.push((m.topic.as_str().to_owned(), payload));
                if self.held.len() > 10_000 {
                    self.held.drain(..5_000);
                }
            }
        })
        .await
    }
}

/// A good reading of `want` (numbers compared to within 1e-9: scaling is floating point).
fn value_is(want: serde_json::Value) -> impl Fn(&str) -> bool {
    move |payload: &str| {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
            return false;
        };
        let same = match (v["value"].as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-9,
            _ => v["value"] == want,
        };
        same && v["quality"] == "good"
    }
}

fn mosquitto_pub(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn rtu_values_arrive_scaled_and_word_ordered_in_coalesced_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pty = Pty::start(dir.path(), "rtu");
    let mut peer = Peer::start("rtu", &pty.peer());
    // 23.7 °C as 237 tenths (237 × 0.1 is 23.700000000000003 in floating point); 0x12345678
    // low word first; 1.5f32 = 0x3FC00000.
    peer.cmd("set hr 0 237 22136 4660 0 16320 0");
    peer.cmd("set co 0 1");
    peer.cmd("set ir 7 1234");
    let devices = format!(
        "[[devices]]\nname = \"boiler\"\nprotocol = \"modbus-rtu\"\nport = \"{0}\"\nunit = 1\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nmax_gap = 2\nheartbeat = \"300ms\"\n\
         [[devices.points]]\nname = \"temp\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n\
         scale = 0.1\nunit = \"°C\"\n\
         [[devices.points]]\nname = \"energy\"\ntable = \"holding\"\naddress = 1\ntype = \"u32\"\n\
         word_order = \"little\"\n\
         [[devices.points]]\nname = \"flow\"\ntable = \"holding\"\naddress = 4\ntype = \"f32\"\n\
         [[devices.points]]\nname = \"pump\"\ntable = \"coil\"\naddress = 0\ntype = \"bool\"\n\
         [[devices]]\nname = \"burner\"\nprotocol = \"modbus-rtu\"\nport = \"{0}\"\nunit = 2\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nheartbeat = \"300ms\"\n\
         [[devices.points]]\nname = \"hours\"\ntable = \"input\"\naddress = 7\ntype = \"u16\"\n",
        pty.dev()
    );
    let gateway = gateway(dir.path(), free_port(), &devices).await;
    // Values may be published before this subscription: the heartbeat repeats them.
    let mut rx = watch(&gateway, "plant/#");

    let temp = rx
        .next(
            "plant/boiler/temp",
            "temp = 23.7",
            value_is(serde_json::json!(23.7)),
        )
        .await;
    assert!(temp.contains("\"unit\":\"°C\""), "{temp}");
    assert!(
        temp.contains("\"value\":23.7,"),
        "the scale's decimals, no float noise: {temp}"
    );
    rx.next(
        "plant/boiler/energy",
        "energy",
        value_is(serde_json::json!(0x1234_5678u32)),
    )
    .await;
    rx.next(
        "plant/boiler/flow",
        "flow",
        value_is(serde_json::json!(1.5)),
    )
    .await;
    rx.next(
        "plant/boiler/pump",
        "pump",
        value_is(serde_json::json!(true)),
    )
    .await;
    assert_eq!(gateway.status().snapshot()["devices"], Health::Up);
    // A second slave on the same line (its own unit id) is served by the same port's task.
    rx.next(
        "plant/burner/hours",
        "hours",
        value_is(serde_json::json!(1234)),
    )
    .await;

    // A register changed in the slave reaches MQTT.
    peer.cmd("set hr 0 300");
    rx.next(
        "plant/boiler/temp",
        "temp = 30",
        value_is(serde_json::json!(30.0)),
    )
    .await;

    // The three holding-register points (0, 1-2, 4-5) are read in one request per poll: as
    // many holding reads (fc 3) as coil reads (fc 1), not three times as many.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (holding, coils) = (peer.count(3), peer.count(1));
    assert!(coils >= 3, "polled {coils} times");
    assert!(
        holding <= coils + 1,
        "{holding} holding reads for {coils} polls: not coalesced"
    );
    // Routed values are durable in the queue too.
    assert!(gateway.queue().stats().await.unwrap().messages >= 5);
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_writes_change_the_slave_and_out_of_range_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let modbus_port = free_port();
    let mut peer = Peer::start("tcp", &modbus_port.to_string());
    let port = free_port();
    let devices = format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{modbus_port}\"\n\
         interval = \"100ms\"\ntimeout = \"500ms\"\nsnapshot = true\n\
         [[devices.points]]\nname = \"setpoint\"\ntable = \"holding\"\naddress = 10\ntype = \"i16\"\n\
         scale = 0.5\nwritable = true\nmin = -10\nmax = 100\n\
         [[devices.points]]\nname = \"ratio\"\ntable = \"holding\"\naddress = 20\ntype = \"f32\"\n\
         word_order = \"little\"\nwritable = true\n\
         [[devices.points]]\nname = \"valve\"\ntable = \"coil\"\naddress = 5\ntype = \"bool\"\nwritable = true\n\
         [[devices.points]]\nname = \"level\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n\
         [[devices.points]]\nname = \"ghost\"\ntable = \"holding\"\naddress = 900\ntype = \"u16\"\n\
         writable = true\n"
    );
    let gateway = gateway(dir.path(), port, &devices).await;
    let mut rx = watch(&gateway, "plant/plc/#");
    peer.cmd("set ir 0 42");
    rx.next("plant/plc/level", "level", value_is(serde_json::json!(42)))
        .await;
    // Snapshots carry every value of a poll, deadband or not.
    let snapshot = rx
        .next("plant/plc/snapshot", "a snapshot with the level", |p| {
            p.contains("\"level\":42")
        })
        .await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert!(snapshot["values"]["valve"].is_boolean(), "{snapshot}");

    mosquitto_pub(
        port,
        "plant/plc/setpoint/set",
        r#"{"value": 21.5, "id": "c1"}"#,
    );
    let ok = rx
        .next("plant/plc/setpoint/set/result", "write result", |_| true)
        .await;
    let ok: serde_json::Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(
        (ok["result"].as_str(), ok["id"].as_str()),
        (Some("ok"), Some("c1")),
        "{ok}"
    );
    assert_eq!(
        peer.cmd("get hr 10 1"),
        "43",
        "21.5 / 0.5 written with fc 6"
    );
    rx.next(
        "plant/plc/setpoint",
        "the new setpoint is read back",
        value_is(serde_json::json!(21.5)),
    )
    .await;

    mosquitto_pub(port, "plant/plc/ratio/set", "0.25");
    rx.next("plant/plc/ratio/set/result", "f32 write", |p| {
        p.contains("\"ok\"")
    })
    .await;
    // 0.25f32 = 0x3E800000, low word first, written with fc 16.
    assert_eq!(peer.cmd("get hr 20 2"), "0 16000");
    mosquitto_pub(port, "plant/plc/valve/set", "true");
    rx.next("plant/plc/valve/set/result", "coil write", |p| {
        p.contains("\"ok\"")
    })
    .await;
    assert_eq!(peer.cmd("get co 5 1"), "1");

    // The slave has no register 900: it answers with exception 2 (illegal data address).
    mosquitto_pub(port, "plant/plc/ghost/set", "7");
    let exception = rx
        .next("plant/plc/ghost/set/result", "exception result", |_| true)
        .await;
    assert!(
        exception.contains("\"exception\"") && exception.contains("\"code\":2"),
        "{exception}"
    );
    let writes_before = peer.cmd("count");
    mosquitto_pub(port, "plant/plc/setpoint/set", "500");
    let bad = rx
        .next("plant/plc/setpoint/set/result", "invalid result", |_| true)
        .await;
    assert!(
        bad.contains("\"invalid\"") && bad.contains("maximum"),
        "{bad}"
    );
    mosquitto_pub(port, "plant/plc/setpoint/set", "\"warm\"");
    let bad = rx
        .next("plant/plc/setpoint/set/result", "invalid result", |_| true)
        .await;
    assert!(
        bad.contains("\"invalid\"") && bad.contains("number"),
        "{bad}"
    );
    mosquitto_pub(port, "plant/plc/level/set", "1");
    let bad = rx
        .next("plant/plc/level/set/result", "read-only point", |_| true)
        .await;
    assert!(
        bad.contains("\"invalid\"") && bad.contains("not writable"),
        "{bad}"
    );
    assert_eq!(peer.cmd("get hr 10 1"), "43", "nothing was written");
    let writes_after = peer.cmd("count");
    let writes = |s: &str| {
        s.split_whitespace()
            .find(|w| w.starts_with("writes="))
            .map(str::to_owned)
    };
    assert_eq!(writes(&writes_before), writes(&writes_after));
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_slave_goes_offline_and_a_recreated_pty_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = Pty::start(dir.path(), "line");
    let mut peer = Peer::start("rtu", &pty.peer());
    peer.cmd("set hr 0 1");
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-rtu\"\nport = \"{}\"\nunit = 3\n\
         interval = \"100ms\"\ntimeout = \"200ms\"\nretries = 1\noffline_after = 2\n\
         offline_interval = \"300ms\"\nheartbeat = \"300ms\"\n\
         [[devices.points]]\nname = \"kwh\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n\
         [[devices.points]]\nname = \"tariff\"\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\n\
         writable = true\n",
        pty.dev()
    );
    let port = free_port();
    let gateway = gateway(dir.path(), port, &devices).await;
    let mut rx = watch(&gateway, "plant/meter/#");
    // The first values may be published before this subscription: the heartbeat repeats them.
    rx.next("plant/meter/kwh", "kwh = 1", value_is(serde_json::json!(1)))
        .await;

    // The slave stops answering.
    drop(peer);
    rx.next("plant/meter/kwh", "a bad reading", |p| {
        p.contains("\"quality\":\"bad\"")
    })
    .await;
    rx.next("plant/meter/status", "offline", |p| p == "offline")
        .await;
    // A write to a silent slave: timeout, after the retries.
    mosquitto_pub(port, "plant/meter/tariff/set", "2");
    rx.next("plant/meter/tariff/set/result", "timeout result", |p| {
        p.contains("\"timeout\"")
    })
    .await;
    assert!(
        matches!(gateway.status().snapshot()["devices"], Health::Degraded(ref s) if s.contains("meter")),
        "{:?}",
        gateway.status().snapshot()
    );

    // It answers again.
    let mut peer = Peer::start("rtu", &pty.peer());
    peer.cmd("set hr 0 2");
    rx.next("plant/meter/status", "online again", |p| p == "online")
        .await;
    rx.next("plant/meter/kwh", "kwh = 2", value_is(serde_json::json!(2)))
        .await;
    assert_eq!(gateway.status().snapshot()["devices"], Health::Up);

    // The pty vanishes (socat killed) and comes back at the same path: the port is reopened.
    drop(peer);
    pty.kill();
    rx.next("plant/meter/status", "offline while the pty is gone", |p| {
        p == "offline"
    })
    .await;
    let pty = Pty::start(dir.path(), "line");
    let mut peer = Peer::start("rtu", &pty.peer());
    peer.cmd("set hr 0 3");
    rx.next("plant/meter/status", "online on the new pty", |p| {
        p == "online"
    })
    .await;
    rx.next("plant/meter/kwh", "kwh = 3", value_is(serde_json::json!(3)))
        .await;
    assert!(gateway.stop().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn nmea_ascii_and_json_lines_are_published_and_garbage_is_counted_not_fatal() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test process");

    let dir = tempfile::tempdir().unwrap();
    let pty = Pty::start(dir.path(), "gps");
    let ascii = Pty::start(dir.path(), "scale");
    let json = Pty::start(dir.path(), "meteo");
    let devices = format!(
        "[[devices]]\nname = \"gps\"\nprotocol = \"lines\"\nport = \"{}\"\nbaud = 4800\n\
         format = \"nmea\"\nmax_line = 82\n\
         pattern = '^GPGGA,[^,]*,(?P<lat>[0-9.]+),N,(?P<lon>[0-9.]+),E,(?P<fix>[0-9]),(?P<sats>[0-9]+)'\n\
         [[devices.points]]\nname = \"sats\"\ntype = \"u16\"\n\
         [[devices.points]]\nname = \"lat\"\nunit = \"ddmm.mmm\"\n\
         [[devices]]\nname = \"scale\"\nprotocol = \"lines\"\nport = \"{}\"\nformat = \"regex\"\n\
         pattern = '^W=(?P<weight>-?[0-9.]+) *kg'\n\
         [[devices.points]]\nname = \"weight\"\nunit = \"kg\"\nscale = 1000\n\
         [[devices]]\nname = \"meteo\"\nprotocol = \"lines\"\nport = \"{}\"\nformat = \"json\"\n\
         [[devices.points]]\nname = \"temp\"\nfield = \"t.c\"\n",
        pty.dev(),
        ascii.dev(),
        json.dev(),
    );
    let gateway = gateway(dir.path(), free_port(), &devices).await;
    let mut rx = watch(&gateway, "plant/#");
    let mut tty = std::fs::OpenOptions::new()
        .write(true)
        .open(&pty.peer)
        .expect("the pty opens");
    let sentence = |body: &str| {
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        format!("${body}*{sum:02X}\r\n")
    };
    let good = sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
    // The gateway drops what arrived before it opened its end: the sentence is repeated until
    // its values are seen (readiness, not a guessed delay).
    let repeating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let repeater = {
        let (mut tty, good, repeating) =
            (tty.try_clone().unwrap(), good.clone(), repeating.clone());
        std::thread::spawn(move || {
            while repeating.load(std::sync::atomic::Ordering::SeqCst) {
                tty.write_all(good.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let lat = rx
        .next(
            "plant/gps/lat",
            "lat",
            value_is(serde_json::json!(4807.038)),
        )
        .await;
    repeating.store(false, std::sync::atomic::Ordering::SeqCst);
    repeater.join().unwrap();
    assert!(lat.contains("ddmm.mmm"), "{lat}");
    rx.next("plant/gps/sats", "sats", value_is(serde_json::json!(8)))
        .await;

    // Garbage, a bad checksum, an overlong line and bytes that are not UTF-8: counted, and the
    // next good line still gets through.
    tty.write_all(b"hello world\r\n").unwrap();
    tty.write_all(good.replace('*', "*0").as_bytes()).unwrap();
    tty.write_all(&[b'x'; 300]).unwrap();
    tty.write_all(b"\n\xff\xfe\x00\n").unwrap();
    tty.write_all(
        sentence("GPGGA,123520,4807.100,N,01131.000,E,1,09,0.9,545.4,M,46.9,M,,").as_bytes(),
    )
    .unwrap();
    rx.next(
        "plant/gps/sats",
        "sats after garbage",
        value_is(serde_json::json!(9)),
    )
    .await;

    // An ASCII line parsed by a regular expression, and a JSON line.
    let mut scale = std::fs::OpenOptions::new()
        .write(true)
        .open(&ascii.peer)
        .unwrap();
    scale.write_all(b"W=1.25 kg\r\n").unwrap();
    rx.next(
        "plant/scale/weight",
        "weight in grams",
        value_is(serde_json::json!(1250.0)),
    )
    .await;
    let mut meteo = std::fs::OpenOptions::new()
        .write(true)
        .open(&json.peer)
        .unwrap();
    meteo
        .write_all(b"{\"t\":{\"c\":-4.5},\"rh\":80}\n")
        .unwrap();
    rx.next(
        "plant/meteo/temp",
        "temperature",
        value_is(serde_json::json!(-4.5)),
    )
    .await;

    // A snapshot drains the counters: take one, then read it.
    let snapshot = snapshotter.snapshot().into_vec();
    let errors = |kind: &str| {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                let key = key.key();
                key.name() == fieldlink_core::metrics::SERIAL_ERRORS_TOTAL
                    && key.labels().any(|l| l.key() == "kind" && l.value() == kind)
                    && key
                        .labels()
                        .any(|l| l.key() == "device" && l.value() == "gps")
            })
            .map(|(.., value)| match value {
                metrics_util::debugging::DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum::<u64>()
    };
    assert_eq!(errors("garbage"), 2, "hello world, and the non-UTF-8 line");
    assert_eq!(errors("checksum"), 1);
    assert_eq!(errors("overlong"), 1);
    assert!(gateway.stop().await);
}
