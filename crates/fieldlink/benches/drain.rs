//! Drain benchmark: a backlog of 100k (and 1M) messages of 64 B drained to a real mosquitto
//! over TLS on loopback, next to the same backlog forwarded by a mosquitto → mosquitto bridge
//! (persistence on, QoS 1) in the same run. Both are timed the same way: from the first to the
//! last message seen by a subscriber on the cloud broker.
//!
//! Run: `cargo bench -p fieldlink --bench drain` (`FIELDLINK_BENCH_SIZES=100000` to pick
//! sizes).
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fieldlink_core::config::MqttVersion;
use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::OutboxEntry;
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::tls::MinTlsVersion;
use fieldlink_core::topic::TopicName;
use fieldlink_queue::config::QueueSettings;
use fieldlink_queue::{Queue, StatvfsDisk};
use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{Mosquitto, free_port, wait_for_port};
use fieldlink_uplink::Uplink;
use fieldlink_uplink::config::{OnRejected, UplinkSettings, UplinkTls};

fn main() {
    let sizes: Vec<u64> = std::env::var("FIELDLINK_BENCH_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("backlog  fieldlink msgs/s  mosquitto-bridge msgs/s  bridge delivered  ratio");
    for n in sizes {
        let ours = runtime.block_on(fieldlink_drain(n));
        let (delivered, bridge) = runtime.block_on(bridge_drain(n));
        println!(
            "{n:>7}  {ours:>16.0}  {bridge:>23.0}  {delivered:>16}  {:>5.2}x",
            ours / bridge
        );
    }
}

struct Cloud {
    broker: Mosquitto,
    tls: u16,
    ca_file: std::path::PathBuf,
    _files: tempfile::TempDir,
}

fn cloud_on(plain: u16, tls: u16) -> Cloud {
    let ca = TestCa::new("bench CA");
    let server = ca.issue("cloud", &["localhost"]);
    let files = tempfile::tempdir().unwrap();
    let ca_file = write(files.path(), "ca.pem", ca.pem());
    let cert = write(files.path(), "s.pem", &server.cert_pem);
    let key = write(files.path(), "s.key", &server.key_pem);
    let broker = Mosquitto::start_on(
        plain,
        &format!(
            "max_queued_messages 0\nlistener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca_file.display(),
            cert.display(),
            key.display()
        ),
    );
    wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
    Cloud {
        broker,
        tls,
        ca_file,
        _files: files,
    }
}

/// Counts messages on `bench/#` at the cloud; returns (count, first, last) arrival times.
struct Counter {
    count: Arc<AtomicU64>,
    first: Arc<std::sync::Mutex<Option<Instant>>>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
}

async fn counter(port: u16) -> Counter {
    let mut options = rumqttc::MqttOptions::new("bench-counter", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    client
        .subscribe("#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    loop {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) = events.poll().await {
            break;
        }
    }
    let (count, first, last) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::Mutex::new(None)),
        Arc::new(std::sync::Mutex::new(None)),
    );
    let (c, f, l) = (count.clone(), first.clone(), last.clone());
    tokio::spawn(async move {
        let _client = client;
        // Ends with its broker (after the run), instead of retrying for ever.
        let mut failures = 0;
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(_))) => {
                    let now = Instant::now();
                    f.lock().unwrap().get_or_insert(now);
                    *l.lock().unwrap() = Some(now);
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) if failures > 20 => break,
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Counter { count, first, last }
}

impl Counter {
    /// For a peer that may lose part of the backlog: waits until nothing has arrived for 3 s,
    /// then returns (messages received, their rate).
    async fn rate_until_idle(&self) -> (u64, f64) {
        let mut last = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.count.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() > Duration::from_secs(3) {
                break;
            } else if now == 0 && last.1.elapsed() > Duration::from_secs(60) {
                return (0, 0.0);
            }
        }
        let span = self.last.lock().unwrap().unwrap() - self.first.lock().unwrap().unwrap();
        (last.0, last.0 as f64 / span.as_secs_f64())
    }

    async fn rate_when(&self, n: u64) -> f64 {
        let start = Instant::now();
        while self.count.load(Ordering::Relaxed) < n {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "only {} of {n}",
                self.count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let span = self.last.lock().unwrap().unwrap() - self.first.lock().unwrap().unwrap();
        n as f64 / span.as_secs_f64()
    }
}

async fn fieldlink_drain(n: u64) -> f64 {
    let cloud = cloud_on(free_port(), free_port());
    let counter = counter(cloud.broker.addr().port()).await;
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let settings = QueueSettings {
        disk_reserve: 0,
        max_messages: u64::MAX >> 1,
        max_bytes: 1 << 40,
        ..QueueSettings::default()
    };
    let queue = Queue::open(
        dir.path(),
        settings,
        HashMap::new(),
        Arc::new(StatvfsDisk),
        &fieldlink_core::shutdown::Shutdown::new(),
    )
    .await
    .unwrap();
    for batch in 0..n.div_ceil(1000) {
        let entries = (0..1000.min(n - batch * 1000))
            .map(|i| OutboxEntry {
                stream: "bench".into(),
                priority: Priority::Normal,
                message: Message {
                    topic: TopicName::new("site/bench").unwrap(),
                    payload: format!("{:064}", batch * 1000 + i).into_bytes(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                },
                properties: None,
            })
            .collect();
        queue.append(entries).await.unwrap();
    }
    let uplink = UplinkSettings {
        host: "localhost".into(),
        port: cloud.tls,
        client_id: "bench-gw".into(),
        mqtt: MqttVersion::V311,
        keep_alive: Duration::from_secs(30),
        stall_timeout: fieldlink_uplink::config::DEFAULT_STALL_TIMEOUT,
        connect_timeout: fieldlink_uplink::config::DEFAULT_CONNECT_TIMEOUT,
        clean_session: true,
        inflight: 1000,
        topic_prefix: "bench/".into(),
        device_id: "bench".into(),
        rewrites: Vec::new(),
        commands: Vec::new(),
        tls: UplinkTls::ServerAuth {
            ca_file: Some(cloud.ca_file.clone()),
        },
        min_tls_version: MinTlsVersion::Tls12,
        crl_files: Vec::new(),
        stale_crl: Default::default(),
        alpn: Vec::new(),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        on_rejected: OnRejected::Retry,
        alarm_topic: None,
        message_id_property: None,
        credentials: None,
    };
    let shutdown = Shutdown::new();
    let _uplink = Uplink::start(
        uplink,
        Arc::new(queue.clone()),
        Arc::new(fieldlink_test_support::RecordingBus::new().0),
        dir.path(),
        shutdown.clone(),
    )
    .unwrap();
    let rate = counter.rate_when(n).await;
    shutdown.drain(Duration::from_secs(5)).await;
    queue.close().await;
    rate
}

/// Returns (messages the bridge delivered, rate): stock mosquitto may not hold the whole
/// backlog.
async fn bridge_drain(n: u64) -> (u64, f64) {
    let (cloud_plain, cloud_tls) = (free_port(), free_port());
    // The cloud's CA must exist before the bridge config names it: make the cloud, note its
    // CA, stop it, and start it again on the same ports once the backlog is built.
    let cloud = cloud_on(cloud_plain, cloud_tls);
    let ca = std::fs::read_to_string(&cloud.ca_file).unwrap();
    let state = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
    let bridge_ca = write(state.path(), "cloud-ca.pem", &ca);
    let local = Mosquitto::start(&format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 1000\n\
         connection bench-bridge\naddress 127.0.0.1:{cloud_tls}\nbridge_cafile {}\nbridge_insecure true\n\
         cleansession false\nrestart_timeout 1\ntopic # out 1 \"\" bench/\n",
        state.path().display(),
        bridge_ca.display()
    ));
    // Stop the cloud so the backlog builds up in the bridge's queue.
    let _keep_files = cloud._files;
    cloud.broker.stop();
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &local.addr().port().to_string(),
            "-q",
            "1",
            "-t",
            "site/bench",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(publisher.stdin.take().unwrap());
        for i in 0..n {
            writeln!(stdin, "{i:064}").unwrap();
        }
    }
    // mosquitto may refuse part of the backlog (it disconnects the publisher); go on with
    // what it took.
    let _ = publisher.wait();
    // The cloud comes back with the same CA and certificate files.
    let files_dir = _keep_files.path().to_owned();
    let broker = Mosquitto::start_on(
        cloud_plain,
        &format!(
            "max_queued_messages 0\nlistener {cloud_tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            files_dir.join("ca.pem").display(),
            files_dir.join("s.pem").display(),
            files_dir.join("s.key").display()
        ),
    );
    let counter = counter(cloud_plain).await;
    let (received, rate) = counter.rate_until_idle().await;
    drop(broker);
    drop(local);
    (received, rate)
}
