//! Drain benchmark: what a user gets after an outage. The release `fieldlink` binary runs with
//! a config file whose `[uplink]` is the annotated default (only host, port, CA file and
//! client id set; `inflight` too for the larger-window row); a backlog of 64 B messages is
//! published through its local broker while the cloud (a real mosquitto, TLS on loopback,
//! logging as a production broker does rather than every packet) is down; then the cloud
//! comes back and a subscriber on it counts until it has everything.
//! The reference, in the same run: the same backlog forwarded by a mosquitto → mosquitto
//! bridge (persistence on, QoS 1), built and timed the same way.
//!
//! Three figures per row: the time from the cloud's return until the subscriber has every
//! message (what the operator waits), of which the wait for the reconnection (the uplink's
//! backoff: up to `reconnect_max`, 2 min by default, with full jitter; the bridge's
//! `restart_timeout`, 1 s), and the drain rate from the first to the last message.
//!
//! Run: `cargo bench -p fieldlink --bench drain`; `FIELDLINK_BENCH_SIZES=100000,1000000`
//! picks the backlogs, `FIELDLINK_BENCH_WINDOWS=default,1000` the uplink windows, and
//! `FIELDLINK_BENCH_OTHER=name=/path/to/fieldlink` adds rows for another build (an earlier
//! release, say) in the same run (`FIELDLINK_BENCH_REFERENCE=off` leaves the bridge out, to
//! profile one build alone).
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{Mosquitto, free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");
/// Publishers building the backlog at once (each with 1000 in flight): enough to build a
/// million messages in a minute or two, which is not what is measured.
const PUBLISHERS: u64 = 4;

fn main() {
    let sizes: Vec<u64> = list("FIELDLINK_BENCH_SIZES", "100000,1000000")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let windows: Vec<Option<u16>> = list("FIELDLINK_BENCH_WINDOWS", "default,1000")
        .iter()
        .map(|w| w.parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "backlog  sender                    delivered  cloud back → all  reconnect wait  first → last msgs/s  vs bridge"
    );
    let mut binaries = vec![("fieldlink".to_owned(), PathBuf::from(BIN))];
    if let Ok(other) = std::env::var("FIELDLINK_BENCH_OTHER")
        && let Some((name, path)) = other.split_once('=')
    {
        binaries.push((name.to_owned(), PathBuf::from(path)));
    }
    // For profiling one build alone: FIELDLINK_BENCH_REFERENCE=off.
    let reference = std::env::var("FIELDLINK_BENCH_REFERENCE").map_or(true, |v| v != "off");
    for n in sizes {
        let bridge = reference.then(|| runtime.block_on(bridge_drain(n)));
        for window in &windows {
            for (name, binary) in &binaries {
                let ours = runtime.block_on(fieldlink_drain(binary, n, *window));
                let name = match window {
                    None => format!("{name} (default)"),
                    Some(w) => format!("{name} inflight={w}"),
                };
                ours.print(n, &name, bridge.as_ref());
            }
        }
        if let Some(bridge) = bridge {
            bridge.print(n, "mosquitto bridge", None);
        }
    }
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

struct Outcome {
    delivered: u64,
    /// From the cloud's return to the last message.
    total: Duration,
    /// From the cloud's return to the first message.
    reconnect: Duration,
    /// Messages per second from the first to the last.
    rate: f64,
}

impl Outcome {
    fn print(&self, n: u64, name: &str, reference: Option<&Outcome>) {
        let ratio = reference.map_or(String::new(), |r| format!("{:.2}x", self.rate / r.rate));
        println!(
            "{n:>7}  {name:<24}  {:>9}  {:>14.2} s  {:>12.2} s  {:>19.0}  {ratio:>9}",
            self.delivered,
            self.total.as_secs_f64(),
            self.reconnect.as_secs_f64(),
            self.rate,
        );
    }
}

/// The cloud's certificate files, kept across its restarts.
struct CloudFiles {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
}

impl CloudFiles {
    fn new() -> Self {
        let ca = TestCa::new("bench CA");
        let server = ca.issue("cloud", &["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = write(dir.path(), "ca.pem", ca.pem());
        write(dir.path(), "s.pem", &server.cert_pem);
        write(dir.path(), "s.key", &server.key_pem);
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Self { dir, ca_file }
    }

    /// The cloud: plain on `plain` for the counter, TLS on `tls`. Persistent, so that the
    /// counter's session (and what is queued for it while it reconnects) survives a restart;
    /// QoS 0 messages are queued for it too, so none is missed whoever connects first.
    fn start(&self, plain: u16, tls: u16) -> Mosquitto {
        let d = self.dir.path();
        let broker = Mosquitto::start_on_quietly(
            plain,
            &format!(
                "persistence true\npersistence_location {}/\nqueue_qos0_messages true\n\
                 max_queued_messages 0\nlistener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                d.join("state").display(),
                self.ca_file.display(),
                d.join("s.pem").display(),
                d.join("s.key").display()
            ),
        );
        wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
        broker
    }
}

/// Counts what reaches the cloud on a persistent session: from its CONNACK on (queued
/// messages come before the SUBACK).
struct Counter {
    count: Arc<AtomicU64>,
    first: Arc<std::sync::Mutex<Option<Instant>>>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl Counter {
    async fn start(port: u16) -> Self {
        let mut options = rumqttc::MqttOptions::new("bench-counter", "127.0.0.1", port);
        options
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_clean_session(false);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        client
            .subscribe("#", rumqttc::QoS::AtMostOnce)
            .await
            .unwrap();
        let counter = Self {
            count: Arc::new(AtomicU64::new(0)),
            first: Arc::new(std::sync::Mutex::new(None)),
            last: Arc::new(std::sync::Mutex::new(None)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let (c, f, l, stop, s) = (
            counter.count.clone(),
            counter.first.clone(),
            counter.last.clone(),
            counter.stop.clone(),
            subscribed.clone(),
        );
        tokio::spawn(async move {
            let _client = client;
            while !stop.load(Ordering::Relaxed) {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(_))) => {
                        let now = Instant::now();
                        f.lock().unwrap().get_or_insert(now);
                        *l.lock().unwrap() = Some(now);
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) => s.notify_one(),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed.notified())
            .await
            .expect("the counter's SUBACK");
        counter
    }

    /// Waits for `n` messages (or, with `n` = None, for 3 s without one: a peer that may have
    /// lost part of the backlog), measured from `back`.
    async fn until(&self, n: Option<u64>, back: Instant) -> Outcome {
        let limit = Duration::from_secs(900);
        let mut moved = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.count.load(Ordering::Relaxed);
            assert!(
                back.elapsed() < limit,
                "only {now} of {n:?} after {limit:?}"
            );
            match n {
                Some(n) if now >= n => break,
                Some(_) => {}
                None if now != moved.0 => moved = (now, Instant::now()),
                None if now > 0 && moved.1.elapsed() > Duration::from_secs(3) => break,
                None => {}
            }
        }
        let (first, last) = (
            self.first.lock().unwrap().unwrap(),
            self.last.lock().unwrap().unwrap(),
        );
        let delivered = self.count.load(Ordering::Relaxed);
        Outcome {
            delivered,
            total: last - back,
            reconnect: first - back,
            rate: delivered as f64 / (last - first).as_secs_f64(),
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Publishes `n` messages of 64 B on `site/bench` at QoS 1 to `port`, from [`PUBLISHERS`]
/// MQTT clients at once (1000 in flight each); returns how many the broker acknowledged (all,
/// unless it cut a publisher off). Not `mosquitto_pub -l`: at the end of its input it may
/// disconnect with messages still queued, and report success.
async fn backlog(port: u16, n: u64) -> u64 {
    let per = n.div_ceil(PUBLISHERS);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let range = (p * per).min(n)..((p + 1) * per).min(n);
            tokio::spawn(publish_range(port, p, range))
        })
        .collect();
    let mut acked = 0;
    for p in publishers {
        acked += p.await.unwrap();
    }
    acked
}

async fn publish_range(port: u16, p: u64, range: std::ops::Range<u64>) -> u64 {
    let mut options = rumqttc::MqttOptions::new(format!("bench-pub-{p}"), "127.0.0.1", port);
    options
        .set_inflight(1000)
        .set_keep_alive(Duration::from_secs(60));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 1000);
    let count = range.end - range.start;
    let sender = tokio::spawn(async move {
        for i in range {
            let payload = format!("{i:064}").into_bytes();
            if client
                .publish("site/bench", rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut acked = 0;
    while acked < count {
        match events.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => {
                eprintln!("publisher {p} cut off after {acked} acknowledged: {e}");
                break;
            }
        }
    }
    sender.abort();
    acked
}

async fn fieldlink_drain(binary: &Path, n: u64, window: Option<u16>) -> Outcome {
    let files = CloudFiles::new();
    let (plain, tls) = (free_port(), free_port());
    // The counter's session is made while the cloud is up, then the cloud goes down.
    let cloud = files.start(plain, tls);
    drop(Counter::start(plain).await);
    cloud.stop();

    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let local = free_port();
    let inflight = window.map_or(String::new(), |w| format!("inflight = {w}\n"));
    // The broker lets the bench's few publishers go fast (building the backlog is not what is
    // measured); the uplink section is the shipped default but for the four keys a site sets.
    let config = format!(
        "[gateway]\ndata_dir = \"{data}\"\n\
         [broker]\nmax_inflight = 1000\nmax_message_rate = 1000000\n\
         [[broker.listeners]]\nport = {local}\n\
         [[routes]]\nname = \"bench\"\nfilter = \"site/#\"\n\
         [uplink]\nhost = \"localhost\"\nport = {tls}\nca_file = \"{ca}\"\n\
         client_id = \"bench-gw\"\n{inflight}",
        data = dir.path().join("data").display(),
        ca = files.ca_file.display(),
    );
    let config_file = write(dir.path(), "fieldlink.toml", &config);
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut gateway = Command::new(binary)
        .arg("--config")
        .arg(&config_file)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_port(([127, 0, 0, 1], local).into(), Duration::from_secs(30));
    let built = Instant::now();
    let acked = backlog(local, n).await;
    assert_eq!(acked, n, "the gateway refused part of the backlog");
    eprintln!(
        "fieldlink: {n} queued in {:.1} s",
        built.elapsed().as_secs_f64()
    );

    let back = Instant::now();
    let _cloud = files.start(plain, tls);
    let counter = Counter::start(plain).await;
    let outcome = counter.until(Some(n), back).await;
    stop(&mut gateway, dir.path());
    outcome
}

/// SIGTERM, and the gateway's log if it did not end well.
fn stop(gateway: &mut Child, dir: &Path) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(gateway.id().to_string())
        .status();
    let status = gateway.wait().unwrap();
    if !status.success() {
        eprintln!(
            "gateway exited {status}:\n{}",
            std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
        );
    }
}

/// The same with a mosquitto → mosquitto bridge: stock mosquitto may not hold the whole
/// backlog, so the counter waits until nothing more comes.
async fn bridge_drain(n: u64) -> Outcome {
    let files = CloudFiles::new();
    let (plain, tls) = (free_port(), free_port());
    let cloud = files.start(plain, tls);
    drop(Counter::start(plain).await);
    cloud.stop();

    let state = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let local = Mosquitto::start_on_quietly(
        free_port(),
        &format!(
            "persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 1000\n\
         connection bench-bridge\naddress 127.0.0.1:{tls}\nbridge_cafile {}\nbridge_insecure true\n\
         cleansession false\nrestart_timeout 1\ntopic # out 1\n",
            state.path().display(),
            files.ca_file.display()
        ),
    );
    let built = Instant::now();
    let acked = backlog(local.addr().port(), n).await;
    if acked < n {
        eprintln!("mosquitto acknowledged {acked} of {n}");
    }
    eprintln!(
        "bridge: {n} published in {:.1} s",
        built.elapsed().as_secs_f64()
    );
    let back = Instant::now();
    let _cloud = files.start(plain, tls);
    let counter = Counter::start(plain).await;
    counter.until(None, back).await
}
