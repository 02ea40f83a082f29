//! Modbus TCP polling against pymodbus's TCP server: polls per second, and end-to-end latency
//! from "register changed in the server" to "MQTT message seen by a subscriber" (fieldlink) or
//! "change seen by the polling loop" (pymodbus's own client), p50 and p99.
//!
//! `cargo bench -p fieldlink --bench poll` (needs the venv that scripts/test makes; `FIELDLINK_PYTHON`
//! or target/pyenv/bin/python). The server is one Python process, so it bounds every figure.

#![allow(missing_docs, clippy::print_stdout)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldlink::config::parse;
use fieldlink_broker::RunningBroker;
use fieldlink_core::config::Origin;
use fieldlink_core::message::Message;
use fieldlink_core::ports::{BoxFuture, Ingress, IngressError, LocalBus, StatusBoard};
use fieldlink_core::shutdown::Shutdown;
use fieldlink_core::topic::TopicFilter;
use fieldlink_serial::Bridge;
use tokio_modbus::client::Reader as _;

const PHASE: Duration = Duration::from_secs(5);
/// How often the register changes during a latency phase.
const CHANGE_EVERY: Duration = Duration::from_millis(50);

fn python() -> PathBuf {
    std::env::var_os("FIELDLINK_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python"),
        PathBuf::from,
    )
}

fn peers() -> PathBuf {
    // The Modbus peers are the field-device bridge's test peers.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../serial/tests/peers")
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: std_mpsc::Receiver<String>,
}

impl Peer {
    fn start(port: u16) -> Self {
        let mut child = Command::new(python())
            .arg(peers().join("modbus_peer.py"))
            .args(["tcp", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the python peer starts (run scripts/test once to make the venv)");
        let stdin = child.stdin.take().expect("stdin");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let peer = Self {
            child,
            stdin,
            lines,
        };
        while peer.line() != "ready" {}
        peer
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the peer answers")
    }

    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("peer stdin");
        self.line()
    }

    fn reads(&mut self) -> u64 {
        let answer = self.cmd("count");
        answer
            .split_whitespace()
            .find_map(|w| w.strip_prefix("reads="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Changes register 0 every CHANGE_EVERY for `phase`; returns value → when (unix ns).
    fn change_for(&mut self, phase: Duration, first: u16) -> HashMap<u16, u128> {
        let start = Instant::now();
        let mut set = HashMap::new();
        let mut value = first;
        while start.elapsed() < phase {
            let at = now_ns();
            self.cmd(&format!("set hr 0 {value}"));
            set.insert(value, at);
            value = value.wrapping_add(1);
            std::thread::sleep(CHANGE_EVERY);
        }
        set
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(out: impl std::io::Read + Send + 'static) -> std_mpsc::Receiver<String> {
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Ingress without routes: straight onto the local broker, as the gateway does for values no
/// route takes (the queue's fsync is measured by the queue's own bench).
struct BusIngress(Arc<dyn LocalBus>);

impl Ingress for BusIngress {
    fn publish(&self, messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>> {
        Box::pin(async move {
            for m in messages {
                self.0.publish(m).await?;
            }
            Ok(())
        })
    }

    fn takes(&self, _topic: &fieldlink_core::topic::TopicName) -> bool {
        false
    }

    fn store(&self, _messages: Vec<Message>) -> BoxFuture<'_, Result<(), IngressError>> {
        Box::pin(async { Ok(()) })
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latencies(set: &HashMap<u16, u128>, seen: &[(u16, u128)]) -> Vec<f64> {
    let mut out: Vec<f64> = seen
        .iter()
        .filter_map(|(v, at)| Some((at.checked_sub(*set.get(v)?)? as f64) / 1e6))
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

struct Row {
    name: &'static str,
    polls_per_s: f64,
    lat: Vec<f64>,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let port = free_port();
    let mut peer = Peer::start(port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let mut rows = Vec::new();

    // 1. fieldlink's Modbus client (tokio-modbus, as the bridge uses it) in a tight loop.
    let polls = rt.block_on(async {
        let mut ctx = tokio_modbus::client::tcp::connect(addr)
            .await
            .expect("connects");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < PHASE {
            let _ = ctx.read_holding_registers(0, 10).await;
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    });
    rows.push(Row {
        name: "tokio-modbus client, tight loop (10 registers)",
        polls_per_s: polls,
        lat: Vec::new(),
    });

    // 2. pymodbus's own client, tight loop, while register 0 changes.
    let mut client = Command::new(python())
        .arg(peers().join("bench_client.py"))
        .args([port.to_string(), format!("{}", PHASE.as_secs_f64())])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the pymodbus client starts");
    let client_lines = lines_of(client.stdout.take().expect("stdout"));
    std::thread::sleep(Duration::from_millis(300));
    let set = peer.change_for(PHASE - Duration::from_millis(500), 1000);
    let _ = client.wait();
    let mut seen = Vec::new();
    let mut py_polls = 0.0;
    for line in client_lines.try_iter() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["seen", v, t] => seen.push((v.parse().unwrap_or(0), t.parse().unwrap_or(0))),
            ["polls", n, s] => {
                py_polls = n.parse::<f64>().unwrap_or(0.0) / s.parse::<f64>().unwrap_or(1.0)
            }
            _ => {}
        }
    }
    rows.push(Row {
        name: "pymodbus ModbusTcpClient, tight loop (10 registers)",
        polls_per_s: py_polls,
        lat: latencies(&set, &seen),
    });

    // 3. fieldlink's bridge: 10 points, coalesced into one read, polled every 10 ms (the
    //    smallest interval the config allows), values published on the local broker.
    let config = format!(
        "[bridge]\nsite = \"bench\"\n[[devices]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\n\
         address = \"{addr}\"\ninterval = \"10ms\"\ntimeout = \"1s\"\n{}",
        (0..10)
            .map(|i| format!(
                "[[devices.points]]\nname = \"r{i}\"\ntable = \"holding\"\naddress = {i}\ntype = \"u16\"\n"
            ))
            .collect::<String>()
    );
    let mut settings = parse(&config, Origin::BuiltIn).expect("valid bench config");
    settings.broker.listeners[0].addr.set_port(free_port());
    let shutdown = Shutdown::new();
    let (bridge_polls, seen) = rt.block_on(async {
        let broker = RunningBroker::start(&settings.broker).expect("broker starts");
        let bus: Arc<dyn LocalBus> = Arc::new(broker.bus(shutdown.clone()).expect("bus"));
        let mut rx = bus
            .subscribe(&TopicFilter::new("bench/plc/r0").expect("filter"), 4096)
            .expect("subscription");
        let board = StatusBoard::default();
        Bridge::start(
            settings.bridge.clone(),
            settings.devices.clone(),
            Arc::new(BusIngress(bus.clone())),
            bus,
            board.register("devices"),
            shutdown.clone(),
        )
        .expect("bridge starts");
        let collector = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(m) = rx.recv().await {
                let at = now_ns();
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                if let Some(v) = v["value"].as_u64() {
                    seen.push((v as u16, at));
                }
            }
            seen
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = tokio::task::block_in_place(|| peer.reads());
        let start = Instant::now();
        let set = tokio::task::block_in_place(|| peer.change_for(PHASE, 2000));
        let after = tokio::task::block_in_place(|| peer.reads());
        let polls = (after - before) as f64 / start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = shutdown.drain(Duration::from_secs(3)).await;
        drop(broker);
        let seen = collector.await.unwrap_or_default();
        (polls, latencies(&set, &seen))
    });
    rows.push(Row {
        name: "fieldlink bridge, interval 10ms, to a bus subscriber",
        polls_per_s: bridge_polls,
        lat: seen,
    });

    println!();
    println!(
        "| client (pymodbus 3.11.4 TCP server on loopback) | polls/s | latency p50 | latency p99 | changes seen |"
    );
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        let (p50, p99) = (percentile(&row.lat, 0.5), percentile(&row.lat, 0.99));
        let fmt = |v: f64| {
            if v.is_nan() {
                "–".to_owned()
            } else {
                format!("{v:.2} ms")
            }
        };
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            row.name,
            row.polls_per_s,
            fmt(p50),
            fmt(p99),
            row.lat.len()
        );
    }
}
