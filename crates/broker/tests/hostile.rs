//! The edge against hostile clients (issue #10): raw sockets where a library would refuse to
//! misbehave, the broker in this process, mosquitto's clients as the honest peers.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::raw::{self, Connect, Raw, Read, panics};
use common::{Edge, Pki, mosquitto, path_str, text};
use fieldlink_test_support::free_port;

const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;
const SUBACK: u8 = 9;
const DISCONNECT: u8 = 14;
const SECOND: Duration = Duration::from_secs(1);

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The CONNACK's session-present flag and code.
fn connack(read: &Read) -> (bool, u8) {
    match read {
        Read::Packet(0x20, body) if body.len() >= 2 => (body[0] & 1 == 1, body[1]),
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

/// Reads until a PUBLISH comes (other packets skipped); its topic and payload.
async fn next_publish(client: &mut Raw, limit: Duration, v5: bool) -> Option<(String, Vec<u8>)> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = client.read(left).await;
        match read.kind() {
            Some(PUBLISH) => {
                let Read::Packet(first, body) = read else {
                    unreachable!()
                };
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).unwrap();
                let mut at = 2 + topic_len;
                if (first >> 1) & 3 > 0 {
                    at += 2;
                }
                if v5 {
                    let (props, used) = varint_at(&body[at..]);
                    at += used + props;
                }
                return Some((topic, body[at..].to_vec()));
            }
            Some(_) => {}
            None => return None,
        }
    }
}

fn varint_at(bytes: &[u8]) -> (usize, usize) {
    let mut n = 0;
    for (i, b) in bytes.iter().take(4).enumerate() {
        n |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    (n, 4)
}

/// Item 1: an anonymous client on the plain listener that uses a device's client id meets
/// none of the device's session: not its queued messages, not its live connection, not its
/// `%c` rights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_belongs_to_its_identity_across_listeners() {
    let pki = Pki::new();
    let (cert, key) = pki.device("dev-a", &pki.ca.issue("dev-a", &[]));
    let (plain, mtls) = (free_port(), free_port());
    let edge = Edge::start(&format!(
        "[[broker.acl]]\npublish = [\"cmd/#\", \"devices/%c/up/#\"]\nsubscribe = [\"cmd/%c\"]\n\
         [[broker.listeners]]\nname = \"plain\"\nport = {plain}\n\
         [[broker.listeners]]\nname = \"mtls\"\nport = {mtls}\n{}",
        pki.tls_keys("mutual"),
    ))
    .await;
    let device_args = move |extra: &[&str]| {
        let mut args: Vec<String> = [
            "-h",
            "localhost",
            "-p",
            &mtls.to_string(),
            "--cafile",
            &path_str(&pki.ca_file),
            "--cert",
            &path_str(&cert),
            "--key",
            &path_str(&key),
            "-i",
            "dev-a",
            "-c",
            "-q",
            "1",
            "-t",
            "cmd/dev-a",
            "-V",
            "311",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // The device's persistent session, subscribed to its commands, then offline.
    let args = device_args(&["-E"]);
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mosquitto("mosquitto_sub", &args)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "device subscribes: {}", text(&out));
    // A command for the device, queued in its session.
    let p = plain.to_string();
    let out = tokio::task::spawn_blocking(move || {
        mosquitto(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-t",
                "cmd/dev-a",
                "-m",
                "open-valve",
                "-q",
                "1",
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // An anonymous client asks for the device's session by its client id.
    let thief = Connect {
        level: 5,
        client_id: b"dev-a",
        clean: false,
        ..Connect::default()
    };
    let (mut anonymous, ack) = Raw::connect(plain, &thief).await;
    let (session_present, code) = connack(&ack);
    assert_eq!(code, 0);
    assert!(
        !session_present,
        "the device's session was handed to an anonymous client"
    );
    assert_eq!(
        next_publish(&mut anonymous, SECOND, true).await,
        None,
        "the device's queued command reached an anonymous client"
    );
    // `%c` does not give it the device's rights.
    anonymous
        .send(&raw::publish(
            "devices/dev-a/up/x",
            b"forged",
            1,
            1,
            false,
            Some(&[]),
        ))
        .await;
    let ack = anonymous.read(5 * SECOND).await;
    assert_eq!(ack.kind(), Some(PUBACK), "{ack:?}");
    assert_eq!(
        ack.body().get(2),
        Some(&0x87),
        "publish with the device's %c rights"
    );
    assert!(edge.ingress.stored.lock().unwrap().is_empty());
    drop(anonymous);

    // The device comes back and gets its command.
    let args = device_args(&["-C", "1", "-W", "10"]);
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        mosquitto("mosquitto_sub", &args)
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "open-valve",
        "{}",
        text(&out)
    );
    edge.stop().await;
}

/// Item 2: what a connection may make the edge hold before it has authenticated is bounded:
/// a CONNECT too large for `max_connect_size` is refused as soon as its header says so, one
/// whose length never ends at its fifth byte, one that trickles in is dropped at
/// `connect_timeout` (the whole CONNECT, not its first bytes), and each source address has a
/// share of the unauthenticated connections: past it, or past the cap, the oldest gives way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_unbounded_before_authentication() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nconnect_timeout = \"3s\"\nmax_connect_size = 1024\nmax_packet_size = 1048576\n\
         max_unauthenticated = 6\nmax_unauthenticated_per_address = 3\n\
         [[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let local = ip(1);

    // An MQTT 5 CONNECT announcing 100 KiB: refused at once with 0x95, nothing more read.
    let mut big = Raw::open(port, local).await;
    let mut head = vec![0x10];
    head.extend(raw::varint(100 * 1024));
    head.extend(raw::string(b"MQTT"));
    head.push(5);
    big.send(&head).await;
    let ack = big.read(2 * SECOND).await;
    assert_eq!(
        connack(&ack),
        (false, 0x95),
        "too large a CONNECT is refused at once"
    );
    assert!(big.closed_within(2 * SECOND).await);

    // A remaining length that never ends: closed at its fifth byte, whatever follows.
    let mut endless = Raw::open(port, local).await;
    endless.send(&[0x10, 0xff, 0xff, 0xff, 0xff]).await;
    endless.send(&[0xff; 4096]).await;
    assert!(
        endless.closed_within(2 * SECOND).await,
        "an endless length is held"
    );

    // A CONNECT that trickles in: its level arrives at once, the rest never does.
    let connect = Connect::default().bytes();
    let mut slow = Raw::open(port, local).await;
    slow.send(&connect[..9]).await;
    let started = Instant::now();
    let closed = tokio::time::timeout(8 * SECOND, async {
        for byte in &connect[9..connect.len() - 1] {
            slow.send(&[*byte]).await;
            if slow.closed_within(SECOND / 5).await {
                return true;
            }
        }
        slow.closed_within(8 * SECOND).await
    })
    .await
    .unwrap_or(false);
    assert!(
        closed && started.elapsed() < 6 * SECOND,
        "a trickling CONNECT is held past connect_timeout"
    );
    edge.stop().await;

    // Connections that stall within a long connect_timeout.
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nconnect_timeout = \"30s\"\n\
         max_unauthenticated = 6\nmax_unauthenticated_per_address = 3\n\
         [[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    // Stalled sockets from one address: past its share, its own oldest gives way...
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = Raw::open(port, local).await;
        s.send(&[0x10]).await;
        stalled.push(s);
    }
    assert!(
        stalled[0].closed_within(2 * SECOND).await,
        "past the address's share"
    );
    // ...and past the cap, the oldest of all: a real client always gets in.
    for last in [2, 3, 4, 5] {
        let mut s = Raw::open(port, ip(last)).await;
        s.send(&[0x10]).await;
        stalled.push(s);
    }
    assert!(
        stalled[1].closed_within(2 * SECOND).await,
        "the oldest gave way"
    );
    assert!(
        !stalled[3].closed_within(SECOND / 5).await,
        "a newer one stays"
    );
    let mut real = Raw::open(port, ip(9)).await;
    real.send(&Connect::default().bytes()).await;
    assert_eq!(connack(&real.read(2 * SECOND).await), (false, 0));
    edge.stop().await;
}

/// Item 8: refusals a 3.1.1 client provokes are answered in 3.1.1 (rumqttd's 3.1.1 CONNACK
/// writer panics on MQTT 5 codes), and an MQTT 5 publish with properties reaches a 3.1.1
/// subscriber without them (its writer panics on properties), the subscriber staying
/// connected. No panic anywhere in the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_makes_the_edge_panic() {
    panics::count();
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_packet_size = 1024\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    // A 3.1.1 CONNECT larger than max_packet_size: closed without a CONNACK (3.1.1 has no
    // code for it).
    let big = vec![b'x'; 2000];
    let too_large = Connect {
        client_id: &big,
        ..Connect::default()
    };
    let (mut client, read) = Raw::connect(port, &too_large).await;
    assert_eq!(read, Read::Closed, "{read:?}");
    drop(client);
    // A 3.1.1 client id that is not UTF-8: malformed, closed.
    let malformed = Connect {
        client_id: &[0xff, 0xfe],
        ..Connect::default()
    };
    (client, _) = Raw::connect(port, &malformed).await;
    assert!(client.closed_within(SECOND).await);

    // Packets only a server sends, from an MQTT 5 client (rumqttd's reader panics on some):
    // the connection ends.
    for packet in [[0xb0, 1, 0], [0x20, 1, 0]] {
        let v5 = Connect {
            level: 5,
            ..Connect::default()
        };
        (client, _) = Raw::connect(port, &v5).await;
        client.send(&packet).await;
        assert!(client.closed_within(5 * SECOND).await);
    }

    // A 3.1.1 subscriber and an MQTT 5 publisher whose publish carries properties.
    let (mut subscriber, ack) = Raw::connect(port, &Connect::default()).await;
    assert_eq!(connack(&ack), (false, 0));
    subscriber
        .send(&raw::subscribe(1, &["t/#"], 0, false))
        .await;
    assert_eq!(subscriber.read(5 * SECOND).await.kind(), Some(SUBACK));
    let v5 = Connect {
        level: 5,
        ..Connect::default()
    };
    let (mut publisher, ack) = Raw::connect(port, &v5).await;
    assert_eq!(connack(&ack), (false, 0));
    // A payload format indicator and a user property.
    let mut props = vec![0x01, 0x01, 0x26];
    props.extend(raw::string(b"origin"));
    props.extend(raw::string(b"sensor-7"));
    publisher
        .send(&raw::publish(
            "t/a",
            b"with-properties",
            0,
            0,
            false,
            Some(&props),
        ))
        .await;
    publisher
        .send(&raw::publish("t/b", b"plain", 0, 0, false, Some(&[])))
        .await;
    assert_eq!(
        next_publish(&mut subscriber, 5 * SECOND, false).await,
        Some(("t/a".into(), b"with-properties".to_vec()))
    );
    assert_eq!(
        next_publish(&mut subscriber, 5 * SECOND, false).await,
        Some(("t/b".into(), b"plain".to_vec())),
        "the 3.1.1 subscriber stays connected"
    );
    edge.stop().await;
    assert_eq!(panics::seen(), 0, "something panicked");
}

/// Item 3: inbound QoS 2 is ended by the edge: a duplicate (same packet id, DUP) is answered
/// again and neither stored nor delivered twice, PUBREL completes the packet id it names, and
/// more unacknowledged publishes than the Receive Maximum end an MQTT 5 session (DISCONNECT
/// 0x93); a 3.1.1 client, told no maximum, is slowed down instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_qos2_is_bounded_and_completed_at_the_edge() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_inflight = 4\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let (mut subscriber, _) = Raw::connect(port, &Connect::default()).await;
    subscriber
        .send(&raw::subscribe(1, &["site/#"], 0, false))
        .await;
    assert_eq!(subscriber.read(5 * SECOND).await.kind(), Some(SUBACK));

    let v5 = Connect {
        level: 5,
        ..Connect::default()
    };
    let (mut client, _) = Raw::connect(port, &v5).await;
    let pubrec = |read: &Read| {
        assert_eq!(read.kind(), Some(PUBREC), "{read:?}");
        u16::from_be_bytes([read.body()[0], read.body()[1]])
    };
    for pkid in 1..=4u16 {
        client
            .send(&raw::publish(
                "site/q2",
                &pkid.to_be_bytes(),
                2,
                pkid,
                false,
                Some(&[]),
            ))
            .await;
        assert_eq!(pubrec(&client.read(5 * SECOND).await), pkid);
    }
    // Packet id 2 again, flagged DUP (its PUBREC was "lost"): answered, not routed.
    client
        .send(&raw::publish(
            "site/q2",
            &2u16.to_be_bytes(),
            2,
            2,
            true,
            Some(&[]),
        ))
        .await;
    assert_eq!(pubrec(&client.read(5 * SECOND).await), 2);
    // PUBREL 3 completes 3.
    client.send(&raw::pubrel(3)).await;
    let comp = client.read(5 * SECOND).await;
    assert_eq!(comp.kind(), Some(PUBCOMP));
    assert_eq!(&comp.body()[..2], &3u16.to_be_bytes());
    let mut delivered = Vec::new();
    while let Some((_, payload)) = next_publish(&mut subscriber, SECOND, false).await {
        delivered.push(u16::from_be_bytes([payload[0], payload[1]]));
    }
    assert_eq!(delivered, [1, 2, 3, 4], "each delivered once");
    assert_eq!(
        edge.ingress.stored.lock().unwrap().len(),
        4,
        "each stored once"
    );

    // One more in flight fits (3 was completed), the one after does not.
    client
        .send(&raw::publish("site/q2", b"5", 2, 5, false, Some(&[])))
        .await;
    assert_eq!(pubrec(&client.read(5 * SECOND).await), 5);
    client
        .send(&raw::publish("site/q2", b"6", 2, 6, false, Some(&[])))
        .await;
    let bye = client.read(5 * SECOND).await;
    assert_eq!(bye.kind(), Some(DISCONNECT), "{bye:?}");
    assert_eq!(bye.body().first(), Some(&0x93));
    assert!(client.closed_within(5 * SECOND).await);

    // 3.1.1 (told no Receive Maximum): more in flight than max_inflight is slowed down, not
    // cut off; every publish gets its PUBACK.
    let (mut old, _) = Raw::connect(port, &Connect::default()).await;
    for pkid in 1..=20u16 {
        old.send(&raw::publish("site/v4", b"x", 1, pkid, false, None))
            .await;
    }
    for _ in 1..=20 {
        assert_eq!(old.read(5 * SECOND).await.kind(), Some(PUBACK));
    }
    edge.stop().await;
}

/// A subscriber to `filter` that stops reading at once, with a small receive buffer.
async fn stalled_subscriber(port: u16, filter: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(&Connect::default().bytes()).await.unwrap();
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.unwrap();
    stream
        .write_all(&raw::subscribe(1, &[filter], 0, false))
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await.unwrap();
    stream
}

/// Floods `topic` with 64 KiB publishes from a fresh client.
async fn flood(port: u16, topic: &str, count: usize) {
    let (mut publisher, _) = Raw::connect(port, &Connect::default()).await;
    let payload = vec![7u8; 64 * 1024];
    for _ in 0..count {
        publisher
            .send(&raw::publish(topic, &payload, 0, 0, false, None))
            .await;
    }
}

/// Item 6: a subscriber that stops reading loses its connection after `write_timeout`
/// instead of holding its slot, and a write pending on it does not hold shutdown up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_cannot_hold_its_slot() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nwrite_timeout = \"1s\"\nmax_packet_size = 100000\n\
         [[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let stalled = stalled_subscriber(port, "big/#").await;
    flood(port, "big/x", 200).await;
    tokio::time::sleep(3 * SECOND).await;
    // Now read: what the kernel kept comes, then the end of the connection.
    let mut reader = Raw::over(stalled);
    assert!(
        reader.closed_within(10 * SECOND).await,
        "the stalled subscriber still holds its session"
    );
    edge.stop().await;

    // Shutdown while a write is pending (the default write_timeout, 30 s): still prompt.
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_packet_size = 100000\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let _stalled = stalled_subscriber(port, "big/#").await;
    flood(port, "big/x", 200).await;
    tokio::time::sleep(SECOND).await;
    assert!(
        edge.shutdown.drain(Duration::from_secs(5)).await,
        "shutdown waited for a client that does not read"
    );
}

/// Item 6: the rate limit's pause stops reading only: deliveries to the paused client go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_pause_does_not_hold_back_deliveries() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_message_rate = 1\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let (mut fast, _) = Raw::connect(port, &Connect::default()).await;
    fast.send(&raw::subscribe(1, &["to-fast"], 0, false)).await;
    assert_eq!(fast.read(5 * SECOND).await.kind(), Some(SUBACK));
    // Six publishes at 1/s: five seconds of pause.
    for _ in 0..6 {
        fast.send(&raw::publish("other", b"x", 0, 0, false, None))
            .await;
    }
    tokio::time::sleep(SECOND / 2).await;
    let (mut other, _) = Raw::connect(port, &Connect::default()).await;
    other
        .send(&raw::publish("to-fast", b"hello", 0, 0, false, None))
        .await;
    assert_eq!(
        next_publish(&mut fast, 2 * SECOND, false).await,
        Some(("to-fast".into(), b"hello".to_vec())),
        "a delivery waited for the publisher's pause"
    );
    edge.stop().await;
}

/// Item 7: a flood of wrong passwords from one address cannot queue up in front of a real
/// login from another: that address gets a few checks at a time, the rest are told "busy" at
/// once. Counted, not timed: how many of the flood's passwords were checked before the real
/// login's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_does_not_starve_a_real_login() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    fieldlink_broker::access::set_user(&credentials, "real", b"real-pw", &[]).unwrap();
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\ncredentials_file = \"{}\"\nmax_unauthenticated = 1000\n\
         max_unauthenticated_per_address = 1000\n\
         [[broker.listeners]]\nport = {port}\nanonymous = false\n",
        credentials.display()
    ))
    .await;
    let wrong = Connect {
        login: Some(("real", "guess")),
        ..Connect::default()
    }
    .bytes();
    let checked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..150 {
        let mut attacker = Raw::open(port, ip(1)).await;
        attacker.send(&wrong).await;
        let checked = checked.clone();
        flood.push(tokio::spawn(async move {
            let read = attacker.read(60 * SECOND).await;
            if let Read::Packet(0x20, body) = &read
                && body.get(1) == Some(&4)
            {
                checked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            read
        }));
    }
    let mut real = Raw::open(port, ip(2)).await;
    // Only the flood's checks from here on count (earlier ones were not in its way).
    let baseline = checked.load(std::sync::atomic::Ordering::SeqCst);
    real.send(
        &Connect {
            login: Some(("real", "real-pw")),
            ..Connect::default()
        }
        .bytes(),
    )
    .await;
    let ack = real.read(60 * SECOND).await;
    let before = checked.load(std::sync::atomic::Ordering::SeqCst) - baseline;
    assert_eq!(connack(&ack), (false, 0));
    assert!(
        before <= 10,
        "{before} wrong passwords were checked before the real login"
    );
    let mut busy = 0;
    for attempt in flood {
        if let Read::Packet(0x20, body) = attempt.await.unwrap()
            && body.get(1) == Some(&3)
        {
            busy += 1;
        }
    }
    assert!(busy > 0, "none of the flood was told the server is busy");
    edge.stop().await;
}

/// Item 4: delayed wills are capped in count (past it a will goes out at once, counted) and
/// in delay (`max_will_delay`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_wills_are_capped_in_count_and_delay() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_delayed_wills = 2\nmax_will_delay = \"3s\"\n\
         [[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let (mut watcher, _) = Raw::connect(port, &Connect::default()).await;
    watcher
        .send(&raw::subscribe(1, &["wills/#"], 0, false))
        .await;
    assert_eq!(watcher.read(5 * SECOND).await.kind(), Some(SUBACK));
    let started = Instant::now();
    for n in 0..3u8 {
        let id = format!("leaver-{n}");
        let topic = format!("wills/{n}");
        let leaver = Connect {
            level: 5,
            client_id: id.as_bytes(),
            clean: false,
            will: Some((&topic, b"gone")),
            // An hour: far past max_will_delay.
            will_delay: Some(3600),
            ..Connect::default()
        };
        let (client, ack) = Raw::connect(port, &leaver).await;
        assert_eq!(connack(&ack).1, 0);
        // Dropped without DISCONNECT: the will is due.
        drop(client);
        tokio::time::sleep(SECOND / 5).await;
    }
    // The third found the two places taken: its will is out at once.
    let first = next_publish(&mut watcher, 2 * SECOND, false).await;
    assert_eq!(first.map(|(t, _)| t).as_deref(), Some("wills/2"));
    // The two others after max_will_delay, not an hour.
    let mut later = Vec::new();
    while let Some((topic, _)) = next_publish(&mut watcher, 5 * SECOND, false).await {
        later.push(topic);
        if later.len() == 2 {
            break;
        }
    }
    assert_eq!(later, ["wills/0", "wills/1"]);
    assert!(started.elapsed() >= 3 * SECOND);
    edge.stop().await;
}

/// Item 5: one identity cannot use the filter pool up: its new filters count against its own
/// share, and the others can still subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_use_up_the_filter_pool() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    for user in ["greedy", "other"] {
        fieldlink_broker::access::set_user(&credentials, user, b"pw", &[]).unwrap();
    }
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\ncredentials_file = \"{}\"\nmax_filters = 6\nmax_filters_per_identity = 3\n\
         [[broker.listeners]]\nport = {port}\nclient_id = \"prefix\"\n",
        credentials.display()
    ))
    .await;
    let codes = |read: Read| read.body()[3..].to_vec();
    let login = |user: &'static str, id: &'static [u8]| Connect {
        level: 5,
        client_id: id,
        login: Some((user, "pw")),
        ..Connect::default()
    };
    // Two connections of the same identity share its quota.
    let (mut greedy, _) = Raw::connect(port, &login("greedy", b"greedy:1")).await;
    greedy
        .send(&raw::subscribe(1, &["g/1", "g/2"], 0, true))
        .await;
    assert_eq!(codes(greedy.read(5 * SECOND).await), [0, 0]);
    let (mut greedy2, _) = Raw::connect(port, &login("greedy", b"greedy:2")).await;
    greedy2
        .send(&raw::subscribe(1, &["g/3", "g/4", "g/1"], 0, true))
        .await;
    assert_eq!(
        codes(greedy2.read(5 * SECOND).await),
        [0, 0x97, 0],
        "a fourth new filter is past the identity's share; a known one is free"
    );
    let (mut other, _) = Raw::connect(port, &login("other", b"other")).await;
    other
        .send(&raw::subscribe(1, &["o/1", "o/2", "o/3"], 0, true))
        .await;
    assert_eq!(codes(other.read(5 * SECOND).await), [0, 0, 0]);
    edge.stop().await;
}
