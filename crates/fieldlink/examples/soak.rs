//! The soak run behind `scripts/soak DURATION` (not run by CI): the release gateway under a
//! steady load for a long time, with its cloud going away and the gateway killed, checking at
//! the end that every message a client was told is stored reached the cloud.
//!
//! - `--clients` MQTT clients (200) publish QoS 1 to the gateway's broker, one message every
//!   `--interval` each (1 s), and remember which ones were PUBACKed;
//! - a Modbus TCP peer (pymodbus, `$FIELDLINK_PYTHON`) is polled every second;
//! - the uplink forwards everything over TLS to a real mosquitto, which is stopped (SIGTERM,
//!   with persistence) for 20 s every 3 minutes;
//! - the gateway is killed with SIGKILL twice (at 2 and 4 minutes, or a fifth and two fifths of
//!   a shorter run) and started again at once;
//! - a subscriber on the cloud (persistent session) counts what arrives.
//!
//! At the end: PUBACKed messages missing at the cloud (must be 0), duplicates, Modbus readings,
//! and the gateway's RSS (start, at minute 5, peak, end). Exit status 1 if anything was lost.

// A report for a person at a terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{free_port, wait_for_port};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const CLOUD_DOWN_EVERY: Duration = Duration::from_secs(180);
const CLOUD_DOWN_FOR: Duration = Duration::from_secs(20);
const BASELINE_AT: Duration = Duration::from_secs(300);

struct Options {
    duration: Duration,
    clients: usize,
    interval: Duration,
    bin: PathBuf,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        duration: Duration::from_secs(1800),
        clients: 200,
        interval: Duration::from_secs(1),
        bin: PathBuf::from("target/release/fieldlink"),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the option");
        match arg.as_str() {
            "--clients" => o.clients = value().parse().expect("--clients N"),
            "--interval-ms" => {
                o.interval = Duration::from_millis(value().parse().expect("--interval-ms N"));
            }
            "--bin" => o.bin = PathBuf::from(value()),
            duration => o.duration = parse_duration(duration),
        }
    }
    o
}

fn parse_duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let n: u64 = number.parse().expect("a duration like 30m, 90s or 1h");
    Duration::from_secs(match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        other => panic!("unknown unit {other:?}: use s, m or h"),
    })
}

/// The cloud: mosquitto with TLS for the gateway, plain TCP for the observer, and persistence
/// so that a stop (SIGTERM) keeps what the observer has not received yet.
struct Cloud {
    conf: PathBuf,
    child: Option<Child>,
    tls_port: u16,
    plain_port: u16,
}

impl Cloud {
    fn new(dir: &Path, ca: &TestCa) -> Self {
        let server = ca.issue("localhost", &["localhost"]);
        let tls_port = free_port();
        let plain_port = free_port();
        let text = format!(
            "user root\nlog_dest file {log}\npersistence true\npersistence_location {dir}/\n\
             max_queued_messages 0\nmax_inflight_messages 0\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
            log = dir.join("cloud.log").display(),
            dir = dir.display(),
            ca = write(dir, "ca.pem", ca.pem()).display(),
            cert = write(dir, "cloud.pem", &server.cert_pem).display(),
            key = write(dir, "cloud.key", &server.key_pem).display(),
        );
        let mut cloud = Self {
            conf: write(dir, "cloud.conf", &text),
            child: None,
            tls_port,
            plain_port,
        };
        cloud.start();
        cloud
    }

    fn start(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed");
        self.child = Some(child);
        wait_for_port(
            ([127, 0, 0, 1], self.plain_port).into(),
            Duration::from_secs(10),
        );
    }

    /// SIGTERM: mosquitto saves its persistent sessions on the way out.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            let _ = child.wait();
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop();
    }
}

fn terminate(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// The gateway process, started again after each kill.
struct Gateway {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Gateway {
    fn start(bin: &Path, config: PathBuf, log: PathBuf, port: u16) -> Self {
        let child = Self::spawn(bin, &config, &log);
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(60));
        Self {
            bin: bin.to_owned(),
            config,
            log,
            child,
        }
    }

    fn spawn(bin: &Path, config: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the gateway's log");
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the fieldlink binary (scripts/soak builds it)")
    }

    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.bin, &self.config, &self.log);
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        terminate(&self.child);
        let _ = self.child.wait();
    }
}

/// The pymodbus TCP peer the gateway polls.
fn modbus_peer(port: u16) -> Child {
    let python =
        std::env::var("FIELDLINK_PYTHON").unwrap_or_else(|_| "target/pyenv/bin/python".to_owned());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../serial/tests/peers/modbus_peer.py");
    let child = Command::new(python)
        .arg(script)
        .args(["tcp", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the Python venv with pymodbus (scripts/test makes it)");
    // Its stdin stays open with the child: at EOF the peer quits.
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(20));
    child
}

/// What the clients were told is stored: (client, sequence number).
type Acked = Arc<Mutex<Vec<(usize, u64)>>>;

/// One client: a message every `interval`, one at a time (the next waits for the PUBACK of
/// the one before, so a PUBACK always says which message it is for). A broken connection is
/// given up with what it had in flight, which was not acknowledged, and a fresh one made.
async fn client(port: u16, c: usize, interval: Duration, acked: Acked) {
    let mut next = 0u64;
    let mut tick = tokio::time::interval(interval);
    // Spread the clients over the interval.
    tokio::time::sleep(interval.mul_f64((c % 200) as f64 / 200.0)).await;
    loop {
        let mut options = MqttOptions::new(format!("soak-{c}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (mqtt, mut events) = AsyncClient::new(options, 10);
        let mut outstanding: Option<u64> = None;
        loop {
            tokio::select! {
                _ = tick.tick(), if outstanding.is_none() => {
                    if mqtt.try_publish(format!("site/soak/{c}"), QoS::AtLeastOnce, false, next.to_string()).is_ok() {
                        outstanding = Some(next);
                        next += 1;
                    }
                }
                event = events.poll() => match event {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        if let Some(n) = outstanding.take() {
                            acked.lock().unwrap().push((c, n));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What reached the cloud: topic → payload → times.
type Seen = Arc<Mutex<HashMap<String, HashMap<String, u32>>>>;

async fn observer(port: u16, seen: Seen) {
    let mut options = MqttOptions::new("soak-observer", "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (mqtt, mut events) = AsyncClient::new(options, 100);
    mqtt.subscribe("cloud/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                *seen
                    .lock()
                    .unwrap()
                    .entry(p.topic)
                    .or_default()
                    .entry(payload)
                    .or_default() += 1;
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn missing(acked: &Acked, seen: &Seen) -> Vec<(usize, u64)> {
    let seen = seen.lock().unwrap();
    acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, n)| {
            !seen
                .get(&format!("cloud/site/soak/{c}"))
                .is_some_and(|p| p.contains_key(&n.to_string()))
        })
        .copied()
        .collect()
}

fn say(start: Instant, what: &str) {
    eprintln!("[{:>6.0} s] {what}", start.elapsed().as_secs_f64());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("soak CA");
    let mut cloud = Cloud::new(dir.path(), &ca);
    let modbus_port = free_port();
    let mut peer = modbus_peer(modbus_port);
    let port = free_port();
    let config = write(
        dir.path(),
        "fieldlink.toml",
        &format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"5s\"\n\
             [broker]\nmax_connections = {max}\n\
             [[broker.listeners]]\nname = \"local\"\nbind = \"127.0.0.1\"\nport = {port}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
             [[routes]]\nname = \"plant\"\nfilter = \"plant/#\"\n\
             [uplink]\nhost = \"localhost\"\nport = {cloud}\nclient_id = \"soak-gateway\"\n\
             ca_file = \"{ca}\"\ntopic_prefix = \"cloud/\"\n\
             reconnect_min = \"200ms\"\nreconnect_max = \"2s\"\n\
             [bridge]\nsite = \"plant\"\n[[devices]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{modbus_port}\"\n\
             interval = \"1s\"\ntimeout = \"500ms\"\nheartbeat = \"5s\"\n\
             [[devices.points]]\nname = \"level\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n",
            data = dir.path().join("data").display(),
            max = o.clients + 50,
            cloud = cloud.tls_port,
            ca = dir.path().join("ca.pem").display(),
        ),
    );
    let log = dir.path().join("gateway.log");
    let start = Instant::now();
    let mut gateway = Gateway::start(&o.bin, config, log.clone(), port);
    say(
        start,
        &format!(
            "gateway up; {} clients, one message every {:?} each, for {:?}",
            o.clients, o.interval, o.duration
        ),
    );

    let seen: Seen = Arc::default();
    let observing = tokio::spawn(observer(cloud.plain_port, seen.clone()));
    let acked: Acked = Arc::default();
    let clients: Vec<_> = (0..o.clients)
        .map(|c| tokio::spawn(client(port, c, o.interval, acked.clone())))
        .collect();

    let kills = [
        (o.duration / 5).min(Duration::from_secs(120)),
        (o.duration * 2 / 5).min(Duration::from_secs(240)),
    ];
    let baseline_at = BASELINE_AT.min(o.duration / 2);
    let (mut killed, mut cloud_stops) = (0, 0);
    let mut next_cloud_stop = CLOUD_DOWN_EVERY.min(o.duration / 3);
    let mut cloud_back_at: Option<Duration> = None;
    let (mut rss_start, mut rss_baseline, mut rss_peak, mut rss_end) = (None, None, 0u64, None);
    while start.elapsed() < o.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = start.elapsed();
        if killed < kills.len() && now >= kills[killed] {
            say(start, "kill -9 of the gateway, started again");
            gateway.kill_and_restart();
            killed += 1;
        }
        if cloud_back_at.is_none() && now >= next_cloud_stop {
            say(start, "cloud stopped");
            cloud.stop();
            cloud_stops += 1;
            cloud_back_at = Some(now + CLOUD_DOWN_FOR);
        }
        if cloud_back_at.is_some_and(|at| now >= at) {
            cloud.start();
            say(start, "cloud started again");
            cloud_back_at = None;
            next_cloud_stop = now + CLOUD_DOWN_EVERY;
        }
        // (A process just started has not exec'd yet: a few KiB.)
        let rss = gateway.rss_kib().filter(|&kib| kib > 1024);
        if let Some(rss) = rss.filter(|_| killed == kills.len()) {
            rss_start.get_or_insert(rss);
            if now >= baseline_at {
                rss_baseline.get_or_insert(rss);
            }
            rss_peak = rss_peak.max(rss);
            rss_end = Some(rss);
        }
        if now.as_secs().is_multiple_of(60) {
            say(
                start,
                &format!(
                    "{} acknowledged so far, RSS {} KiB",
                    acked.lock().unwrap().len(),
                    gateway.rss_kib().unwrap_or(0)
                ),
            );
        }
    }
    if cloud.child.is_none() {
        cloud.start();
    }
    for c in clients {
        c.abort();
    }
    say(
        start,
        "load stopped; waiting for the cloud to have every acknowledged message",
    );
    let waited = Instant::now();
    while !missing(&acked, &seen).is_empty() && waited.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    observing.abort();
    let _ = peer.kill();
    let _ = peer.wait();

    let lost = missing(&acked, &seen);
    let seen = seen.lock().unwrap();
    let acked_total = acked.lock().unwrap().len();
    let duplicates: u32 = seen
        .iter()
        .filter(|(t, _)| t.starts_with("cloud/site/"))
        .flat_map(|(_, p)| p.values())
        .map(|n| n - 1)
        .sum();
    let readings: u32 = seen
        .iter()
        .filter(|(t, _)| t.starts_with("cloud/plant/"))
        .flat_map(|(_, p)| p.values())
        .sum();
    let errors = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .count();
    println!(
        "soak: {:?}, {} clients, one message every {:?} each",
        o.duration, o.clients, o.interval
    );
    println!("  gateway killed (SIGKILL): {killed}; cloud stopped and started: {cloud_stops}");
    println!("  PUBACKed by the gateway: {acked_total}");
    println!("  lost (PUBACKed, never at the cloud): {}", lost.len());
    println!("  duplicates at the cloud: {duplicates}");
    println!("  Modbus readings at the cloud: {readings}");
    println!("  ERROR lines in the gateway's log: {errors}");
    let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{v} KiB"));
    println!(
        "  gateway RSS after the last restart: start {}, at {:?} {}, peak {rss_peak} KiB, end {}",
        kib(rss_start),
        baseline_at,
        kib(rss_baseline),
        kib(rss_end)
    );
    if let (Some(b), Some(e)) = (rss_baseline, rss_end) {
        println!(
            "  RSS growth from {:?} to the end: {:+} KiB",
            baseline_at,
            e as i64 - b as i64
        );
    }
    if !lost.is_empty() {
        println!("  e.g. lost: {:?}", &lost[..lost.len().min(10)]);
        std::process::exit(1);
    }
}
