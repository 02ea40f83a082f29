//! The real `fieldlink` binary's memory under hostile clients (issue #10), read from
//! `/proc/<pid>/status`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fieldlink_test_support::{free_port, wait_for_port};

/// The gateway, killed on drop; its data directory goes with it.
struct Gateway(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(port: u16) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fieldlink.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = \"{}\"\n[[broker.listeners]]\nport = {port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fieldlink"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    Gateway(child, dir)
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Item 3: QoS 2 publishes whose PUBREL never comes cannot make the gateway hold their
/// payloads: one 3.1.1 client sending 2 000 of 60 KiB (117 MiB) without PUBREL leaves the
/// gateway's memory within 40 MiB of where it was, while connected and after (the edge ends
/// QoS 2 itself and keeps only the packet ids).
#[test]
fn qos2_publishes_without_pubrel_do_not_pile_up_in_memory() {
    let port = free_port();
    let gateway = start(port);
    let pid = gateway.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_mib(pid);
    let payload = vec![0x5a; 60 * 1024];
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    // CONNECT, 3.1.1, clean session, keep-alive 60 s, empty client id.
    let connect = frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0]);
    stream.write_all(&connect).unwrap();
    let mut sink = vec![0u8; 64 * 1024];
    for pkid in 1..=2000u16 {
        let mut body = vec![0, 2, b'q', b'2'];
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(&payload);
        if stream.write_all(&frame(0x34, &body)).is_err() {
            break;
        }
        // PUBRECs are read, never answered with PUBREL.
        let _ = stream.read(&mut sink);
    }
    std::thread::sleep(Duration::from_secs(1));
    let connected = rss_mib(pid);
    drop(stream);
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_mib(pid);
    eprintln!(
        "VmRSS before: {before} MiB, after 2000 publishes: {connected} MiB, client gone: {after} MiB"
    );
    assert!(
        connected < before + 40 && after < before + 40,
        "resident memory grew from {before} MiB to {connected} MiB, then {after} MiB"
    );
}

/// Item 2: a CONNECT whose remaining length never ends is not buffered: four sockets streaming
/// for two seconds after `10 ff ff ff ff` leave the gateway's memory within 40 MiB of where it
/// was.
#[test]
fn an_endless_connect_is_not_buffered() {
    let port = free_port();
    let gateway = start(port);
    let pid = gateway.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_mib(pid);
    let streamers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let _ = stream.write_all(&[0x10, 0xff, 0xff, 0xff, 0xff]);
                let chunk = vec![0xff; 1024 * 1024];
                let start = std::time::Instant::now();
                while start.elapsed() < Duration::from_secs(2) {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
                stream
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1800));
    let during = rss_mib(pid);
    let streams: Vec<TcpStream> = streamers.into_iter().map(|t| t.join().unwrap()).collect();
    drop(streams);
    eprintln!("VmRSS before: {before} MiB, while streaming: {during} MiB");
    assert!(
        during < before + 40,
        "resident memory grew from {before} MiB to {during} MiB"
    );
}
