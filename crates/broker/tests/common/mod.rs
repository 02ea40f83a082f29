#![allow(dead_code)] // each test file uses its own subset
//! A broker with its edge on loopback, an ingress that records what it stores (and can be
//! slow), and mosquitto's command-line clients as the real peers.

pub mod raw;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldlink_broker::RunningBroker;
use fieldlink_broker::access::Access;
use fieldlink_broker::config::parse;
use fieldlink_core::config::Origin;
use fieldlink_core::message::Message;
use fieldlink_core::ports::{BoxFuture, Ingress, IngressError, LocalBus};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::TopicName;
use fieldlink_test_support::certs::{Issued, TestCa, write};

/// Stores what a route would take (`site/...`), after `delay`; `publish` then hands the
/// messages to the local broker, as the gateway's ingress does.
#[derive(Default)]
pub struct RecordingIngress {
    pub delay: Mutex<Duration>,
    pub stored: Mutex<Vec<(Message, Instant)>>,
    pub bus: std::sync::OnceLock<Arc<dyn LocalBus>>,
}

impl Ingress for RecordingIngress {
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>> {
        Box::pin(async move {
            self.store(messages.clone()).await?;
            if let Some(bus) = self.bus.get() {
                for message in messages {
                    bus.publish(message).await?;
                }
            }
            Ok(())
        })
    }

    fn takes(&self, topic: &TopicName) -> bool {
        topic.as_str().starts_with("site/")
    }

    fn store(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>> {
        Box::pin(async move {
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            let now = Instant::now();
            let mut stored = self.stored.lock().unwrap();
            stored.extend(
                messages
                    .into_iter()
                    .filter(|m| self.takes(&m.topic))
                    .map(|m| (m, now)),
            );
            Ok(())
        })
    }
}

/// Certificates for a broker on "localhost" and its devices, written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub ca_file: PathBuf,
    pub server: Issued,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("devices CA");
        let server = ca.issue("broker", &["localhost"]);
        let ca_file = write(dir.path(), "ca.pem", ca.pem());
        write(dir.path(), "broker.pem", &server.cert_pem);
        write(dir.path(), "broker.key", &server.key_pem);
        Self {
            dir,
            ca,
            ca_file,
            server,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A device certificate and key, written as `<name>.pem` / `<name>.key`.
    pub fn device(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            write(self.dir.path(), &format!("{name}.pem"), &issued.cert_pem),
            write(self.dir.path(), &format!("{name}.key"), &issued.key_pem),
        )
    }

    /// `[[broker.listeners]]` keys for a TLS listener of `mode` with this PKI's files.
    pub fn tls_keys(&self, mode: &str) -> String {
        format!(
            "tls = \"{mode}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            self.path("broker.pem").display(),
            self.path("broker.key").display(),
            self.ca_file.display()
        )
    }
}

pub struct Edge {
    pub broker: RunningBroker,
    pub shutdown: Shutdown,
    pub ingress: Arc<RecordingIngress>,
}

impl Edge {
    /// A broker whose listeners are given as TOML (each with its `port`).
    pub async fn start(listeners: &str) -> Self {
        let settings = parse(listeners, Origin::BuiltIn).expect("valid listeners");
        let mut broker = RunningBroker::start(&settings).expect("broker starts");
        let shutdown = Shutdown::new();
        let ingress = Arc::new(RecordingIngress::default());
        let bus = broker.bus(shutdown.clone()).expect("bus");
        let _ = ingress.bus.set(Arc::new(bus));
        broker
            .serve(
                ingress.clone(),
                Arc::new(Access::new(&settings.access).expect("credentials")),
                shutdown.clone(),
            )
            .unwrap();
        Self {
            broker,
            shutdown,
            ingress,
        }
    }

    pub fn port(&self, i: usize) -> String {
        self.broker.listen_addrs()[i].port().to_string()
    }

    pub async fn stop(self) {
        assert!(self.shutdown.drain(Duration::from_secs(5)).await);
    }
}

/// Runs a mosquitto client (blocking: call from spawn_blocking or a plain thread).
pub fn mosquitto(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
