//! A backlog draining through the real binary to a real mosquitto over TLS (behind a proxy
//! that limits the link's speed, so that the drain lasts): live messages on another route keep
//! flowing, the status's drain rate and time to empty match what the cloud receives, and a
//! `kill -9` in the middle of a drain with the default window loses nothing.

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{Mosquitto, Proxy, Subscriber, free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

struct Site {
    _cloud: Mosquitto,
    proxy: Proxy,
    dir: tempfile::TempDir,
    local: u16,
    observer: Subscriber,
    _runtime: tokio::runtime::Runtime,
}

impl Site {
    /// A cloud behind a proxy, an observer on `cloud/#` (topic and payload), and a gateway
    /// config with two routes (`site/bulk/#`, `site/live/#`) and the default uplink window.
    fn new() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let ca = TestCa::new("cloud CA");
        let server = ca.issue("cloud", &["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = write(dir.path(), "ca.pem", ca.pem());
        let cert = write(dir.path(), "server.pem", &server.cert_pem);
        let key = write(dir.path(), "server.key", &server.key_pem);
        let tls = free_port();
        let cloud = Mosquitto::start(&format!(
            "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            ca_file.display(),
            cert.display(),
            key.display()
        ));
        wait_for_port(([127, 0, 0, 1], tls).into(), Duration::from_secs(10));
        let proxy = runtime.block_on(Proxy::start(([127, 0, 0, 1], tls).into()));
        let observer = Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &cloud.addr().port().to_string(),
            "-t",
            "cloud/#",
            "-v",
        ]);
        let local = free_port();
        let config = format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [broker]\nmax_inflight = 1000\nmax_message_rate = 1000000\n\
             [[broker.listeners]]\nport = {local}\n\
             [[routes]]\nname = \"bulk\"\nfilter = \"site/bulk/#\"\n\
             [[routes]]\nname = \"live\"\nfilter = \"site/live/#\"\n\
             [uplink]\nhost = \"localhost\"\nport = {port}\nclient_id = \"gw-drain\"\n\
             ca_file = \"{ca}\"\ntopic_prefix = \"cloud/\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n",
            data = dir.path().join("data").display(),
            ca = ca_file.display(),
            port = proxy.addr().port(),
        );
        write(dir.path(), "fieldlink.toml", &config);
        Self {
            _cloud: cloud,
            proxy,
            dir,
            local,
            observer,
            _runtime: runtime,
        }
    }

    fn gateway(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(([127, 0, 0, 1], self.local).into(), Duration::from_secs(20));
        child
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Lines (`topic payload`) received on `topic`, duplicates included.
    fn observed(&self, topic: &str) -> Vec<String> {
        let prefix = format!("{topic} ");
        self.observer
            .received()
            .into_iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    fn wait_observed(&self, topic: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while distinct(&self.observed(topic)) < n {
            assert!(
                start.elapsed() < limit,
                "{} of {n} arrived on {topic}; log:\n{}",
                distinct(&self.observed(topic)),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status as JSON, once the gateway has written one.
    fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .args(["status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn distinct(lines: &[String]) -> usize {
    lines.iter().collect::<HashSet<_>>().len()
}

/// Each payload's first arrival, in order, as numbers.
fn first_seen(lines: &[String]) -> Vec<usize> {
    let mut seen = HashSet::new();
    lines
        .iter()
        .filter(|l| seen.insert((*l).clone()))
        .map(|l| l.trim_start_matches("m-").parse().unwrap())
        .collect()
}

/// Publishes `m-<from>` .. `m-<to>` at QoS 1 on `topic` with one mosquitto_pub; returns once
/// every one is acknowledged (stored in the queue).
fn publish(port: u16, topic: &str, range: std::ops::Range<usize>) {
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-q", "1", "-t", topic, "-l", "-M", "1000"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = std::io::BufWriter::new(publisher.stdin.take().unwrap());
    for i in range {
        writeln!(stdin, "m-{i}").unwrap();
    }
    drop(stdin);
    assert!(publisher.wait().unwrap().success());
}

fn stop(mut gateway: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(gateway.id().to_string())
        .status();
    let _ = gateway.wait();
}

/// A slow link (20 KB/s each way: some 500 of these small messages a second) keeps a backlog
/// of 5000 draining for about ten seconds.
const LINK_BYTES_PER_SECOND: u64 = 20_000;
const BACKLOG: usize = 5000;

#[test]
fn a_live_message_on_another_route_reaches_the_cloud_within_a_second_of_a_draining_backlog() {
    let site = Site::new();
    site.proxy.throttle(LINK_BYTES_PER_SECOND);
    let gateway = site.gateway();
    publish(site.local, "site/bulk/line", 0..BACKLOG);
    site.wait_observed("cloud/site/bulk/line", 200, Duration::from_secs(30));

    // In the middle of the drain, a live reading on the other route.
    let sent = Instant::now();
    publish(site.local, "site/live/alarm", 0..1);
    site.wait_observed("cloud/site/live/alarm", 1, Duration::from_secs(30));
    let took = sent.elapsed();
    let bulk_then = distinct(&site.observed("cloud/site/bulk/line"));
    eprintln!("live message after {took:?}, {bulk_then} of the backlog delivered then");
    assert!(
        took < Duration::from_secs(1),
        "the live message took {took:?} behind a backlog"
    );
    assert!(
        bulk_then < BACKLOG,
        "the backlog was drained before the live message arrived: nothing proven"
    );

    // The backlog carries on, in order.
    site.wait_observed("cloud/site/bulk/line", BACKLOG, Duration::from_secs(60));
    assert_eq!(
        first_seen(&site.observed("cloud/site/bulk/line")),
        (0..BACKLOG).collect::<Vec<_>>()
    );
    stop(gateway);
}

#[test]
fn the_status_drain_rate_and_time_to_empty_match_what_the_cloud_receives() {
    let site = Site::new();
    site.proxy.throttle(LINK_BYTES_PER_SECOND);
    let gateway = site.gateway();
    publish(site.local, "site/bulk/line", 0..BACKLOG);
    let topic = "cloud/site/bulk/line";
    // Past the first seconds, when the rate's window fills.
    site.wait_observed(topic, 1500, Duration::from_secs(30));

    // What the cloud receives, counted over three seconds.
    let (t0, c0) = (Instant::now(), distinct(&site.observed(topic)));
    std::thread::sleep(Duration::from_secs(3));
    let (t1, c1) = (Instant::now(), distinct(&site.observed(topic)));
    let status = site.status();
    let counted = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    let uplink = &status["uplink"];
    let rate = uplink["drain_rate"].as_f64().unwrap();
    let backlog = uplink["backlog"].as_u64().unwrap();
    let time_to_empty = uplink["time_to_empty_s"].as_u64().unwrap() as f64;
    eprintln!(
        "status: {rate:.0} msgs/s, {backlog} left, empty in {time_to_empty} s; cloud counted \
         {counted:.0} msgs/s, {} missing",
        BACKLOG - c1
    );
    assert!(
        (rate - counted).abs() <= 0.25 * counted,
        "status says {rate:.0} msgs/s, the cloud counted {counted:.0}: {uplink}"
    );
    // The status file is written every 2 s: it speaks of the moment when the cloud had
    // acknowledged `acked_total`. Its backlog is what was left then (give or take half a
    // window of acknowledgements not yet counted).
    let acked = uplink["acked_total"].as_u64().unwrap();
    assert!(acked as usize <= c1 + 100, "{uplink}");
    let left = BACKLOG as f64 - acked as f64;
    assert!(
        (backlog as f64 - left).abs() <= 100.0,
        "status says {backlog} left after {acked} delivered of {BACKLOG}: {uplink}"
    );
    // The time to empty, against how long the rest really took from that moment.
    site.wait_observed(topic, BACKLOG, Duration::from_secs(60));
    let status_age = (c1 as f64 - acked as f64).max(0.0) / counted;
    let took = t1.elapsed().as_secs_f64() + status_age;
    eprintln!("the rest took {took:.1} s from the status's moment");
    assert!(
        (time_to_empty - took).abs() <= 0.25 * took + 1.0,
        "status said {time_to_empty} s to empty, it took {took:.1} s: {uplink}"
    );
    stop(gateway);
}

#[test]
fn kill_9_in_the_middle_of_a_drain_with_the_default_window_loses_nothing() {
    let site = Site::new();
    site.proxy.throttle(LINK_BYTES_PER_SECOND);
    let mut gateway = site.gateway();
    publish(site.local, "site/bulk/line", 0..BACKLOG);
    site.wait_observed("cloud/site/bulk/line", 800, Duration::from_secs(30));
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    let before = distinct(&site.observed("cloud/site/bulk/line"));
    assert!(before < BACKLOG, "the drain was not interrupted");

    site.proxy.throttle(0);
    let gateway = site.gateway();
    site.wait_observed("cloud/site/bulk/line", BACKLOG, Duration::from_secs(60));
    assert_eq!(
        first_seen(&site.observed("cloud/site/bulk/line")),
        (0..BACKLOG).collect::<Vec<_>>(),
        "all, in order"
    );
    stop(gateway);
}
