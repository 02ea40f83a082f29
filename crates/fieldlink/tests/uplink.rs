//! End to end with the real binary: mosquitto_pub → fieldlink's local broker → queue → uplink
//! (TLS) → a real mosquitto as the cloud → mosquitto_sub; and a `kill -9` in the middle of a
//! drain loses nothing.

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::certs::{TestCa, write};
use fieldlink_test_support::{Mosquitto, Proxy, Subscriber, free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

struct Site {
    cloud: Mosquitto,
    dir: tempfile::TempDir,
    local: u16,
    observer: Subscriber,
}

impl Site {
    /// A cloud (TLS for the uplink, plain for the observer), an observer subscribed to
    /// `cloud/#` writing to a file, and a gateway config pointing at the cloud.
    fn new(inflight: u16) -> Self {
        Self::with_uplink(inflight, |tls| tls, "")
    }

    /// [`Site::new`], the uplink going to the port `via` gives for the cloud's TLS port (a
    /// proxy), with `extra` lines in `[uplink]`.
    fn with_uplink(inflight: u16, via: impl FnOnce(u16) -> u16, extra: &str) -> Self {
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
        let observer = Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &cloud.addr().port().to_string(),
            "-t",
            "cloud/#",
            "-q",
            "1",
        ]);
        let local = free_port();
        let uplink_port = via(tls);
        let config = format!(
            "[gateway]\ndata_dir = \"{data}\"\nshutdown_grace = \"3s\"\n\
             [[broker.listeners]]\nport = {local}\n\
             [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n\
             [uplink]\nhost = \"localhost\"\nport = {uplink_port}\nclient_id = \"gw-e2e\"\n\
             ca_file = \"{ca}\"\ntopic_prefix = \"cloud/\"\ninflight = {inflight}\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n{extra}\n\
             [[uplink.commands]]\ncloud = \"cmd/{{device_id}}/#\"\nlocal = \"site/cmd/{{#}}\"\n",
            data = dir.path().join("data").display(),
            ca = ca_file.display(),
        );
        write(dir.path(), "fieldlink.toml", &config);
        Self {
            cloud,
            dir,
            local,
            observer,
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

    fn observed(&self) -> Vec<String> {
        self.observer.received()
    }

    fn status_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--config")
            .arg(self.dir.path().join("fieldlink.toml"))
            .arg("status")
            .args(args)
            .output()
            .unwrap()
    }

    /// `fieldlink status` once its text satisfies `ok`; panics after 20 s.
    fn status_until(&self, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.status_cli(&[]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && ok(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "status never got there: {text}{}\ngateway log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn wait_observed(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        while distinct(&self.observed()) < n {
            assert!(
                start.elapsed() < limit,
                "{} of {n} arrived; log:\n{}",
                distinct(&self.observed()),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn distinct(lines: &[String]) -> usize {
    lines.iter().collect::<HashSet<_>>().len()
}

/// Publishes `m-<from>` .. `m-<to>` at QoS 1 on `site/line` with one mosquitto_pub.
fn publish(port: u16, range: std::ops::Range<usize>) {
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "site/line",
            "-l",
            // Many in flight, as a busy client has: the queue commits them together.
            "-M",
            "1000",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
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

#[test]
fn readings_published_locally_reach_the_cloud_over_tls() {
    let site = Site::new(100);
    let gateway = site.gateway();
    publish(site.local, 0..3);
    site.wait_observed(3, Duration::from_secs(20));
    assert_eq!(site.observed(), ["m-0", "m-1", "m-2"]);

    // `fieldlink status` shows the connection and what was delivered.
    let text = site.status_until(|t| t.contains("3 delivered"));
    assert!(text.contains("uplink   connected"), "{text}");
    assert!(text.contains("uplink   up"), "{text}");
    assert!(text.contains("queue    0 messages"), "{text}");
    assert!(text.contains("certificate ca-0"), "{text}");
    let json = site.status_cli(&["--json"]);
    assert!(json.status.success());
    let json = String::from_utf8(json.stdout).unwrap();
    assert!(json.contains("\"connected\": true"), "{json}");
    assert!(json.contains("\"state\": \"connected\""), "{json}");
    assert!(json.contains("\"state_text\": \"connected\""), "{json}");
    assert!(!json.contains("\"last_ack_ms\": null"), "{json}");
    assert!(text.contains("last acknowledged by the cloud: "), "{text}");
    stop(gateway);

    let after = site.status_cli(&[]);
    assert!(!after.status.success(), "a stopped gateway has no status");
    let err = String::from_utf8(after.stderr).unwrap();
    assert!(err.contains("is the gateway running?"), "{err}");
}

#[test]
fn status_says_why_the_uplink_is_down() {
    let site = Site::new(100);
    // The gateway is told to trust another CA than the cloud's.
    write(
        site.dir.path(),
        "ca.pem",
        TestCa::new("some other CA").pem(),
    );
    let gateway = site.gateway();
    let text = site.status_until(|t| t.contains("last error"));
    assert!(
        text.contains("uplink   refused: server certificate not trusted"),
        "{text}"
    );
    assert!(
        text.contains("last acknowledged by the cloud: never"),
        "{text}"
    );
    // Degraded, not down: the watchdog keeps the gateway alive through a cloud outage.
    assert!(
        text.contains("uplink   degraded: refused: server certificate not trusted"),
        "{text}"
    );
    let json = String::from_utf8(site.status_cli(&["--json"]).stdout).unwrap();
    assert!(json.contains("\"state\": \"refused\""), "{json}");
    assert!(json.contains("\"last_ack_ms\": null"), "{json}");
    stop(gateway);
}

#[test]
fn cloud_commands_reach_local_subscribers_and_never_loop_back() {
    let site = Site::new(100);
    let gateway = site.gateway();
    let mut local_sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &site.local.to_string()])
        .args(["-t", "site/cmd/#", "-v", "-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cloud_port = site.cloud.addr().port().to_string();
    // The uplink subscribes after its CONNACK: publish until the command comes through.
    let deadline = Instant::now() + Duration::from_secs(20);
    while local_sub.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no command reached the local broker; gateway log:\n{}",
            site.log()
        );
        let sent = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &cloud_port, "-q", "1"])
            .args(["-t", "cmd/gw-e2e/valve/3", "-m", "open-valve"])
            .status()
            .unwrap();
        assert!(sent.success());
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = local_sub.wait_with_output().unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.trim(), "site/cmd/valve/3 open-valve");
    // The local topic matches the `site/#` route, but a command is never sent back up.
    publish(site.local, 0..1);
    site.wait_observed(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        site.observed(),
        ["m-0"],
        "a command looped back to the cloud"
    );
    stop(gateway);
}

#[test]
fn kill_9_in_the_middle_of_a_drain_loses_nothing() {
    // One message in flight at a time: the drain takes long enough to be interrupted.
    let site = Site::new(1);
    let mut gateway = site.gateway();
    publish(site.local, 0..2000);
    site.wait_observed(400, Duration::from_secs(30));
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    let before = distinct(&site.observed());
    assert!(
        before < 2000,
        "the drain was not interrupted ({before} already delivered)"
    );

    let gateway = site.gateway();
    site.wait_observed(2000, Duration::from_secs(60));
    let mut seen = HashSet::new();
    let first_seen: Vec<usize> = site
        .observed()
        .iter()
        .filter(|l| seen.insert((*l).clone()))
        .map(|l| l.trim_start_matches("m-").parse().unwrap())
        .collect();
    assert_eq!(first_seen, (0..2000).collect::<Vec<_>>(), "all, in order");
    stop(gateway);
}

#[test]
fn status_tells_of_a_stalled_link_and_when_the_cloud_last_acknowledged() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut proxy = None;
    let site = Site::with_uplink(
        10,
        |tls| {
            let p = runtime.block_on(Proxy::start(([127, 0, 0, 1], tls).into()));
            let port = p.addr().port();
            proxy = Some(p);
            port
        },
        "stall_timeout = \"3s\"\nkeep_alive = \"5s\"",
    );
    let proxy = proxy.unwrap();
    let gateway = site.gateway();
    publish(site.local, 0..3);
    site.wait_observed(3, Duration::from_secs(20));
    site.status_until(|t| t.contains("uplink   connected"));

    // The link goes silent with messages in flight: a stall, a reconnect, nothing lost.
    proxy.black_hole();
    publish(site.local, 3..6);
    let text = site.status_until(|t| t.contains("1 stalls"));
    assert!(
        text.contains("last error: stalled: nothing from the cloud for 3 s"),
        "{text}"
    );
    site.wait_observed(6, Duration::from_secs(20));
    let text = site.status_until(|t| t.contains("uplink   connected") && t.contains("6 delivered"));
    assert!(text.contains("last acknowledged by the cloud: "), "{text}");
    assert!(
        !text.contains("last acknowledged by the cloud: never"),
        "{text}"
    );
    let json = String::from_utf8(site.status_cli(&["--json"]).stdout).unwrap();
    assert!(json.contains("\"stalls\": 1"), "{json}");
    assert_eq!(proxy.connections(), 2);
    stop(gateway);
}
