//! A cloud for the uplink to talk to: a real mosquitto with a TLS listener (certificates made
//! at test time) and a plain one for the test's own subscriber; and the backlog it drains.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldlink_core::config::MqttVersion;
use fieldlink_core::message::{Message, Priority, QoS};
use fieldlink_core::ports::{LocalBus, OutboxEntry};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::tls::MinTlsVersion;
use fieldlink_core::topic::TopicName;
use fieldlink_test_support::MemoryBacklog;
use fieldlink_test_support::certs::{Issued, TestCa, write};
use fieldlink_test_support::{Mosquitto, RecordingBus, free_port, wait_for_port};
use fieldlink_uplink::Uplink;
use fieldlink_uplink::config::{OnRejected, UplinkSettings, UplinkTls};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions};

/// A mosquitto with a plain listener (for the test's subscriber) and a TLS one.
pub struct Cloud {
    pub broker: Mosquitto,
    pub tls_port: u16,
    pub files: tempfile::TempDir,
}

impl Cloud {
    /// `tls_extra` goes into the TLS listener's section (e.g. `require_certificate true`).
    pub fn start(ca: &TestCa, server: &Issued, tls_extra: &str) -> Self {
        Self::start_on(free_port(), free_port(), ca, server, tls_extra, "")
    }

    pub fn start_on(
        plain: u16,
        tls_port: u16,
        ca: &TestCa,
        server: &Issued,
        tls_extra: &str,
        global: &str,
    ) -> Self {
        let files = tempfile::tempdir().unwrap();
        write(files.path(), "ca.pem", ca.pem());
        write(files.path(), "server.pem", &server.cert_pem);
        write(files.path(), "server.key", &server.key_pem);
        Self::launch(plain, tls_port, files, tls_extra, global)
    }

    /// Starts again on the same ports with the same certificates (after `Mosquitto::stop`).
    pub fn start_on_files(
        plain: u16,
        tls_port: u16,
        files: tempfile::TempDir,
        global: &str,
    ) -> Self {
        Self::launch(plain, tls_port, files, "", global)
    }

    fn launch(
        plain: u16,
        tls_port: u16,
        files: tempfile::TempDir,
        tls_extra: &str,
        global: &str,
    ) -> Self {
        let ca_file = files.path().join("ca.pem");
        let cert = files.path().join("server.pem");
        let key = files.path().join("server.key");
        let extra = format!(
            "{global}\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{tls_extra}\n",
            ca_file.display(),
            cert.display(),
            key.display()
        );
        let broker = Mosquitto::start_on(plain, &extra);
        wait_for_port(([127, 0, 0, 1], tls_port).into(), Duration::from_secs(10));
        Self {
            broker,
            tls_port,
            files,
        }
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        write(self.files.path(), name, contents)
    }
}

/// Uplink settings for a cloud on 127.0.0.1 whose certificate names "localhost".
pub fn settings(port: u16, tls: UplinkTls) -> UplinkSettings {
    UplinkSettings {
        host: "localhost".into(),
        port,
        client_id: "fieldlink-test".into(),
        mqtt: MqttVersion::V311,
        keep_alive: Duration::from_secs(30),
        stall_timeout: fieldlink_uplink::config::DEFAULT_STALL_TIMEOUT,
        connect_timeout: fieldlink_uplink::config::DEFAULT_CONNECT_TIMEOUT,
        clean_session: true,
        inflight: 50,
        topic_prefix: "cloud/".into(),
        device_id: "fieldlink-test".into(),
        rewrites: Vec::new(),
        commands: Vec::new(),
        tls,
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
    }
}

/// Starts an uplink draining `queue`; the shutdown stops it.
pub fn start_uplink(
    settings: UplinkSettings,
    queue: &MemoryBacklog,
    dir: &Path,
) -> (Uplink, Shutdown) {
    start_uplink_with_bus(settings, queue, dir, Arc::new(RecordingBus::new().0))
}

/// Starts an uplink draining `queue` and publishing commands on `bus`.
pub fn start_uplink_with_bus(
    settings: UplinkSettings,
    queue: &MemoryBacklog,
    dir: &Path,
    bus: Arc<dyn LocalBus>,
) -> (Uplink, Shutdown) {
    let shutdown = Shutdown::new();
    let uplink = Uplink::start(
        settings,
        Arc::new(queue.clone()),
        bus,
        dir,
        shutdown.clone(),
    )
    .unwrap();
    (uplink, shutdown)
}

/// The backlog the uplink drains: the queue's contract in memory (the real queue behind the
/// real uplink is tested in `crates/fieldlink`). `_dir` is where a queue would keep its file.
pub async fn queue(_dir: &Path) -> MemoryBacklog {
    MemoryBacklog::new()
}

/// Appends `n` messages on `site/<stream>`, payloads `<stream>-<i>`.
pub async fn fill(queue: &MemoryBacklog, stream: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let entries = chunk
            .iter()
            .map(|i| OutboxEntry {
                stream: stream.into(),
                priority: Priority::Normal,
                message: Message {
                    topic: TopicName::new(format!("site/{stream}")).unwrap(),
                    payload: format!("{stream}-{i}").into_bytes(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                },
                properties: None,
            })
            .collect();
        queue.append(entries).await.unwrap();
    }
}

/// First-seen order of the indices of `stream` in what the subscriber got, and how many
/// duplicates there were.
pub fn first_seen(payloads: &[String], stream: &str) -> (Vec<usize>, usize) {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut duplicates = 0;
    for p in payloads {
        let Some(i) = p
            .strip_prefix(&format!("{stream}-"))
            .and_then(|i| i.parse().ok())
        else {
            continue;
        };
        if seen.insert(i) {
            order.push(i);
        } else {
            duplicates += 1;
        }
    }
    (order, duplicates)
}

/// A subscriber on the cloud's plain listener, collecting (topic, payload).
pub struct Subscriber {
    pub got: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribed (SUBACK received) when this returns. A persistent session survives a broker
    /// restart when the broker persists.
    pub async fn start(port: u16, filter: &str, client_id: &str, persistent: bool) -> Self {
        Self::start_as(port, filter, client_id, persistent, None).await
    }

    /// [`Subscriber::start`], logging in with `login` (user name, password).
    pub async fn start_as(
        port: u16,
        filter: &str,
        client_id: &str,
        persistent: bool,
        login: Option<(&str, &str)>,
    ) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(!persistent)
            .set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 64);
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no SUBACK from the cloud");
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {}
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => sink.lock().unwrap().push((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    )),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { got, task }
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    pub fn payloads(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Waits until at least `n` messages arrived; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.count() < n {
            assert!(
                start.elapsed() < limit,
                "{} of {n} messages after {limit:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A private key made by openssl (`genpkey` arguments), mode 0600, and its public key (PEM).
pub fn key_pair(dir: &Path, name: &str, genpkey: &[&str]) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(genpkey)
        .arg("-out")
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, public)
}

/// `openssl genpkey` arguments for a P-256 key.
pub const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
