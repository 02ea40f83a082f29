//! The web UI's cost: `cargo bench -p fieldlink --bench web`.
//!
//! The release binary runs as a user runs it (`fieldlink run`, a route, a broker listener),
//! once with `[web]` and once without, on loopback:
//! - page weight: every page and the assets it loads, in bytes (no page loads anything from
//!   another origin: the Content-Security-Policy is `default-src 'self'`);
//! - dashboard latency: 300 sequential `GET /` over fresh TLS connections, p50/p99, with no live
//!   stream open and with 20 browser sessions each holding the dashboard's live stream;
//! - what the component adds: RSS (VmRSS) after start and after the 20 sessions, and CPU time
//!   over 20 s idle with no browser, the gateway with `[web]` against the same gateway without.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fieldlink_test_support::web_client::{WebClient, form};
use fieldlink_test_support::{free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_fieldlink");

struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    web: Option<u16>,
}

impl Gateway {
    fn start(with_web: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mqtt, web) = (free_port(), free_port());
        let config = dir.path().join("fieldlink.toml");
        let web_section = if with_web {
            format!("[web]\nport = {web}\n")
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "[gateway]\ndata_dir = \"{}\"\n\
                 [[broker.listeners]]\nname = \"l\"\nbind = \"127.0.0.1\"\nport = {mqtt}\n\
                 [[routes]]\nname = \"telemetry\"\nfilter = \"site/#\"\n{web_section}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        if with_web {
            let mut add = Command::new(BIN)
                .arg("--config")
                .arg(&config)
                .args(["users", "add", "ada", "--role", "admin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            std::io::Write::write_all(add.stdin.as_mut().unwrap(), b"bench-password\n").unwrap();
            assert!(add.wait().unwrap().success());
        }
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(([127, 0, 0, 1], mqtt).into(), Duration::from_secs(20));
        if with_web {
            wait_for_port(([127, 0, 0, 1], web).into(), Duration::from_secs(20));
        }
        Self {
            child,
            dir,
            web: with_web.then_some(web),
        }
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    fn rss_kib(&self) -> u64 {
        self.proc_field("status", "VmRSS:")
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = stat.rsplit(')').next().unwrap();
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    fn client(&self) -> WebClient {
        WebClient::new(
            ([127, 0, 0, 1], self.web.unwrap()).into(),
            &self.dir.path().join("data/web/cert.pem"),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn dashboard_latency(client: &mut WebClient, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let answer = client.get("/").await;
        times.push(start.elapsed());
        assert_eq!(answer.status, 200);
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

#[tokio::main]
async fn main() {
    println!("fieldlink web UI bench (release binary, loopback)\n");

    // Idle cost: the same gateway with and without [web], no browser.
    let plain = Gateway::start(false);
    let web = Gateway::start(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_plain, rss_web) = (plain.rss_kib(), web.rss_kib());
    let (cpu_plain, cpu_web) = (plain.cpu_ticks(), web.cpu_ticks());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_plain = plain.cpu_ticks() - cpu_plain;
    let idle_web = web.cpu_ticks() - cpu_web;
    drop(plain);
    println!(
        "RSS after start: without [web] {rss_plain} KiB, with [web] {rss_web} KiB: +{} KiB",
        rss_web as i64 - rss_plain as i64
    );
    println!(
        "CPU over 20 s idle (clock ticks of 10 ms): without [web] {idle_plain}, with [web] {idle_web}"
    );

    // Page weight.
    let mut client = web.client();
    let login = client
        .post_form(
            "/login",
            &form(&[("username", "ada"), ("password", "bench-password")]),
        )
        .await;
    assert_eq!(login.status, 303);
    let mut asset_bytes = 0;
    for path in ["/static/app.css", "/static/app.js"] {
        asset_bytes += client.get(path).await.body.len();
    }
    println!(
        "\npage weight (HTML; every page also loads app.css + app.js = {asset_bytes} B, cached a day):"
    );
    for path in [
        "/",
        "/devices",
        "/queue",
        "/live?filter=site%2F%23",
        "/certificates",
        "/users",
        "/login",
    ] {
        let answer = client.get(path).await;
        println!(
            "  {path:<28} {:>6} B  (total with assets {} B)",
            answer.body.len(),
            answer.body.len() + asset_bytes
        );
    }

    // Dashboard latency, then again with 20 live sessions.
    let (p50, p99) = dashboard_latency(&mut client, 300).await;
    println!(
        "\nGET / (new TLS connection each): no live stream   p50 {:.2} ms  p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let mut browsers = Vec::new();
    for _ in 0..20 {
        let mut browser = web.client();
        let login = browser
            .post_form(
                "/login",
                &form(&[("username", "ada"), ("password", "bench-password")]),
            )
            .await;
        assert_eq!(login.status, 303);
        browsers.push(browser);
    }
    println!(
        "RSS after 20 more logins: {} KiB (+{} KiB over the gateway without [web])",
        web.rss_kib(),
        web.rss_kib() as i64 - rss_plain as i64
    );
    let mut sessions = Vec::new();
    for mut browser in browsers {
        sessions.push(tokio::spawn(async move {
            browser
                .stream_until("/events", Duration::from_secs(3600), || {}, |_| false)
                .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (p50, p99) = dashboard_latency(&mut client, 300).await;
    println!(
        "GET / with 20 sessions on the live stream:        p50 {:.2} ms  p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    println!(
        "RSS with 20 live sessions: {} KiB (+{} KiB over the gateway without [web])",
        web.rss_kib(),
        web.rss_kib() as i64 - rss_plain as i64
    );
    for s in sessions {
        s.abort();
    }
}
