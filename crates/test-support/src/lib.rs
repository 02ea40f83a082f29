//! Test helpers for fieldlink (a dev-dependency only, never shipped).
//!
//! - [`free_port`]: a loopback port nobody holds;
//! - [`Mosquitto`]: a real mosquitto on loopback, configured per test, killed on drop;
//! - [`Subscriber`]: a real mosquitto_sub, returned once its subscription is acknowledged;
//! - [`RabbitMq`]: a real RabbitMQ (MQTT plugin, OAuth 2.0 backend) as a second cloud broker;
//! - [`certs`]: a CA and certificates made at test time (no key is ever committed);
//! - [`within`]: an await that fails the test instead of hanging it;
//! - [`RecordingBus`]: a local bus that records what is published;
//! - [`MemoryBacklog`]: the queue's backlog contract in memory (for the uplink's tests);
//! - [`metrics::metric_values`]: what a metrics recorder saw;
//! - [`Proxy`]: a TCP proxy that black-holes or throttles, and [`SilentAddress`], an address
//!   whose connection attempts hang;
//! - [`SoftHsm`]: a SoftHSM2 token made at test time, for keys in PKCS#11 tokens;
//! - [`HttpsFiles`]: an HTTPS file server with `Range`, cuts and throttling (OTA bundles);
//! - [`rauc::Rauc`]: a real `rauc service` on a private D-Bus, slots in files, signed bundles;
//! - [`web_client::WebClient`]: an HTTPS client of the web UI that keeps its session cookie.

mod backlog;
mod bus;
pub mod certs;
mod https;
pub mod metrics;
mod mosquitto;
pub mod mqtt_bytes;
mod proxy;
mod rabbitmq;
pub mod rauc;
mod softhsm;
mod softtpm;
mod subscriber;
pub mod web_client;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub use backlog::{BacklogStats, MemoryBacklog};
pub use bus::RecordingBus;
pub use https::{HttpsFiles, Served};
pub use mosquitto::Mosquitto;
pub use proxy::{Proxy, SilentAddress};
pub use rabbitmq::RabbitMq;
pub use softhsm::{SOFTHSM_MODULE, SoftHsm};
pub use softtpm::{SoftTpm, tpm2_pkcs11_module};
pub use subscriber::{Finished, Subscriber};

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

/// Awaits `future`, panicking with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Waits until something accepts TCP connections on `addr`; panics after `limit`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < limit,
            "nothing listens on {addr} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
