//! The broker's edge with real MQTT clients (mosquitto_pub/sub, MQTT 3.1.1 and 5): every
//! transport carries messages; every refusal is the right one; idle sockets cannot starve a
//! TLS client; a CRL replaced on disk refuses the revoked device and keeps the others; a slow
//! outbox holds the PUBACK back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fieldlink_test_support::certs::{Leaf, write};
use fieldlink_test_support::{Subscriber, free_port};

const PSK_HEX: &str = "00112233445566778899aabbccddeeff";

fn psk_file(pki: &Pki) -> String {
    let path = write(
        pki.dir.path(),
        "devices.psk",
        &format!("# devices\ndevice-p:{PSK_HEX}\n"),
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path_str(&path)
}

/// Subscribes with `sub_args`, publishes one message with `pub_args`, returns what arrived.
async fn round_trip(common: Vec<String>, sub_id: &str, pub_id: &str, topic: &str) -> String {
    let mut sub: Vec<String> = common.clone();
    sub.extend(["-i", sub_id, "-t", topic, "-C", "1", "-W", "10", "-v"].map(String::from));
    let mut publ: Vec<String> = common;
    publ.extend(["-i", pub_id, "-t", topic, "-m", "hello", "-q", "1"].map(String::from));
    let subscriber = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = sub.iter().map(String::as_str).collect();
        Subscriber::start(&args)
    })
    .await
    .unwrap();
    let published = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = publ.iter().map(String::as_str).collect();
        mosquitto("mosquitto_pub", &args)
    })
    .await
    .unwrap();
    assert!(
        published.status.success(),
        "publish to {topic} failed: {}",
        text(&published)
    );
    let finished = tokio::task::spawn_blocking(|| subscriber.finish())
        .await
        .unwrap();
    format!("{}{}", finished.stdout, finished.stderr)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tls_mutual_tls_and_psk_listeners_carry_messages_for_3_1_1_and_5() {
    let pki = Pki::new();
    let (dev_cert, dev_key) = pki.device("device-a", &pki.ca.issue("device-a", &[]));
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nname = \"plain\"\nport = {}\n\
         [[broker.listeners]]\nname = \"tls\"\nport = {}\nanonymous = true\n{}\
         [[broker.listeners]]\nname = \"mtls\"\nport = {}\nclient_id = \"prefix\"\n{}\
         [[broker.listeners]]\nname = \"psk\"\nport = {}\nclient_id = \"prefix\"\ntls = \"psk\"\npsk_file = \"{}\"\n",
        ports[0],
        ports[1],
        pki.tls_keys("server-auth"),
        ports[2],
        pki.tls_keys("mutual"),
        ports[3],
        psk_file(&pki),
    ))
    .await;
    let ca = path_str(&pki.ca_file);
    for version in ["311", "5"] {
        let host =
            |port: u16| strings(&["-h", "localhost", "-p", &port.to_string(), "-V", version]);
        let plain = host(ports[0]);
        let got = round_trip(plain, "plain-sub", "plain-pub", "site/plain").await;
        assert!(got.contains("site/plain hello"), "plain v{version}: {got}");

        let mut tls = host(ports[1]);
        tls.extend(strings(&["--cafile", &ca]));
        let got = round_trip(tls, "tls-sub", "tls-pub", "site/tls").await;
        assert!(got.contains("site/tls hello"), "TLS v{version}: {got}");

        let mut mtls = host(ports[2]);
        mtls.extend(strings(&[
            "--cafile",
            &ca,
            "--cert",
            &path_str(&dev_cert),
            "--key",
            &path_str(&dev_key),
        ]));
        let got = round_trip(mtls, "device-a:sub", "device-a:pub", "site/mtls").await;
        assert!(got.contains("site/mtls hello"), "mTLS v{version}: {got}");

        for tls_version in ["tlsv1.2", "tlsv1.3"] {
            let mut psk = host(ports[3]);
            psk.extend(strings(&[
                "--psk",
                PSK_HEX,
                "--psk-identity",
                "device-p",
                "--tls-version",
                tls_version,
            ]));
            let got = round_trip(psk, "device-p:sub", "device-p:pub", "site/psk").await;
            assert!(
                got.contains("site/psk hello"),
                "PSK {tls_version} v{version}: {got}"
            );
        }
    }
    // Every routed publish went through ingress: 2 versions × (plain, TLS, mTLS, 2 × PSK).
    assert_eq!(edge.ingress.stored.lock().unwrap().len(), 10);
    edge.stop().await;
}

/// A broker with one TLS listener that admits clients without credentials.
async fn anonymous_tls_edge(pki: &Pki) -> (Edge, u16) {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nport = {port}\nanonymous = true\n{}",
        pki.tls_keys("server-auth")
    ))
    .await;
    (edge, port)
}

/// Connects with mosquitto_pub -d and returns its output (CONNACK codes, TLS errors).
fn attempt(args: &[&str]) -> String {
    let mut all = vec!["-d", "-t", "site/x", "-m", "x", "-q", "1"];
    all.extend_from_slice(args);
    text(&mosquitto("mosquitto_pub", &all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_get_the_right_connack_or_tls_alert() {
    let pki = Pki::new();
    let (a_cert, a_key) = pki.device("device-a", &pki.ca.issue("device-a", &[]));
    let other_ca = fieldlink_test_support::certs::TestCa::new("rogue CA");
    let (rogue_cert, rogue_key) = pki.device("rogue", &other_ca.issue("device-a", &[]));
    let (old_cert, old_key) = pki.device(
        "expired",
        &pki.ca.issue_with(
            "device-e",
            &[],
            Leaf {
                expired: true,
                ..Leaf::default()
            },
        ),
    );
    let (revoked_cert, revoked_key) = pki.device(
        "revoked",
        &pki.ca.issue_with(
            "device-r",
            &[],
            Leaf {
                serial: Some(77),
                ..Leaf::default()
            },
        ),
    );
    let crl = write(pki.dir.path(), "devices.crl", &pki.ca.crl(&[77]));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nname = \"mtls\"\nport = {}\n{}crl_files = [\"{}\"]\n\
         [[broker.listeners]]\nname = \"psk\"\nport = {}\ntls = \"psk\"\npsk_file = \"{}\"\n\
         [[broker.listeners]]\nname = \"closed\"\nport = {}\nbind = \"127.0.0.1\"\nanonymous = false\n",
        ports[0],
        pki.tls_keys("mutual"),
        path_str(&crl),
        ports[1],
        psk_file(&pki),
        ports[2],
    ))
    .await;
    let ca = path_str(&pki.ca_file);
    let mtls_port = ports[0].to_string();
    let device = move |cert: &std::path::Path, key: &std::path::Path, id: &str, v: &str| {
        attempt(&[
            "-h",
            "localhost",
            "-p",
            &mtls_port,
            "--cafile",
            &ca,
            "--cert",
            &path_str(cert),
            "--key",
            &path_str(key),
            "-i",
            id,
            "-V",
            v,
        ])
    };
    let out = tokio::task::spawn_blocking({
        let (a_cert, a_key) = (a_cert.clone(), a_key.clone());
        move || {
            // Device A's certificate with device B's client id: 2 (3.1.1), 0x85 (5).
            vec![
                ("a-as-b-311", device(&a_cert, &a_key, "device-b", "311")),
                ("a-as-b-5", device(&a_cert, &a_key, "device-b", "5")),
                ("a-as-a", device(&a_cert, &a_key, "device-a", "5")),
                ("rogue", device(&rogue_cert, &rogue_key, "device-a", "311")),
                ("expired", device(&old_cert, &old_key, "device-e", "311")),
                (
                    "revoked",
                    device(&revoked_cert, &revoked_key, "device-r", "311"),
                ),
            ]
        }
    })
    .await
    .unwrap();
    let get = |name: &str| out.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    assert!(
        get("a-as-b-311").contains("received CONNACK (2)"),
        "{}",
        get("a-as-b-311")
    );
    assert!(
        get("a-as-b-5").contains("received CONNACK (133)"),
        "{}",
        get("a-as-b-5")
    );
    assert!(
        get("a-as-a").contains("received CONNACK (0)"),
        "{}",
        get("a-as-a")
    );
    for refused in ["rogue", "expired", "revoked"] {
        let text = get(refused);
        assert!(!text.contains("received CONNACK"), "{refused}: {text}");
        assert!(
            text.contains("alert"),
            "{refused} is refused in the handshake: {text}"
        );
    }
    assert!(get("revoked").contains("revoked"), "{}", get("revoked"));
    assert!(get("expired").contains("expired"), "{}", get("expired"));
    assert!(get("rogue").contains("unknown ca"), "{}", get("rogue"));

    let psk_port = ports[1].to_string();
    let closed_port = ports[2].to_string();
    let out = tokio::task::spawn_blocking(move || {
        let wrong_key = attempt(&[
            "-h",
            "127.0.0.1",
            "-p",
            &psk_port,
            "--psk",
            "ffeeddccbbaa99887766554433221100",
            "--psk-identity",
            "device-p",
            "-i",
            "device-p",
        ]);
        let unknown = attempt(&[
            "-h",
            "127.0.0.1",
            "-p",
            &psk_port,
            "--psk",
            PSK_HEX,
            "--psk-identity",
            "nobody",
            "-i",
            "nobody",
        ]);
        let anonymous_311 = attempt(&["-h", "127.0.0.1", "-p", &closed_port, "-V", "311"]);
        let anonymous_5 = attempt(&["-h", "127.0.0.1", "-p", &closed_port, "-V", "5"]);
        (wrong_key, unknown, anonymous_311, anonymous_5)
    })
    .await
    .unwrap();
    assert!(!out.0.contains("received CONNACK"), "wrong PSK: {}", out.0);
    assert!(
        !out.1.contains("received CONNACK"),
        "unknown PSK identity: {}",
        out.1
    );
    assert!(
        out.2.contains("received CONNACK (5)"),
        "no credentials, 3.1.1: {}",
        out.2
    );
    assert!(
        out.3.contains("received CONNACK (135)"),
        "no credentials, 5: {}",
        out.3
    );
    assert!(
        edge.ingress.stored.lock().unwrap().len() == 1,
        "only device A's own publish"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_1_client_is_refused() {
    let pki = Pki::new();
    let (edge, port) = anonymous_tls_edge(&pki).await;
    let out = tokio::task::spawn_blocking(move || {
        text(
            &Command::new("openssl")
                .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
                .args(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap(),
        )
    })
    .await
    .unwrap();
    // The client offered only TLS 1.1; the server (rustls) refuses with a handshake alert.
    assert!(
        out.contains("alert handshake failure") || out.contains("alert protocol version"),
        "{out}"
    );
    assert!(out.contains("Cipher is (NONE)"), "no session: {out}");
    edge.stop().await;
}

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_delay_a_real_tls_client() {
    let pki = Pki::new();
    let port = free_port();
    // Idle sockets are given up after the handshake timeout: a client served only after them
    // would wait at least that long.
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nport = {port}\nanonymous = true\nhandshake_timeout = \"30s\"\n{}",
        pki.tls_keys("server-auth")
    ))
    .await;
    // 500 connections that never send a ClientHello.
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ca = path_str(&pki.ca_file);
    let (elapsed, out) = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let out = attempt(&["-h", "localhost", "-p", &port.to_string(), "--cafile", &ca]);
        (start.elapsed(), out)
    })
    .await
    .unwrap();
    assert!(out.contains("received CONNACK (0)"), "{out}");
    assert!(
        elapsed < Duration::from_secs(30),
        "served only after the idle sockets' handshake timeout: {elapsed:?}"
    );
    drop(idle);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_crl_refuses_the_revoked_device_and_keeps_the_others() {
    let pki = Pki::new();
    let (a_cert, a_key) = pki.device(
        "device-a",
        &pki.ca.issue_with(
            "device-a",
            &[],
            Leaf {
                serial: Some(10),
                ..Leaf::default()
            },
        ),
    );
    let (b_cert, b_key) = pki.device(
        "device-b",
        &pki.ca.issue_with(
            "device-b",
            &[],
            Leaf {
                serial: Some(11),
                ..Leaf::default()
            },
        ),
    );
    let crl = write(pki.dir.path(), "devices.crl", &pki.ca.crl(&[]));
    let port = free_port();
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nport = {port}\nclient_id = \"prefix\"\n{}crl_files = [\"{}\"]\n",
        pki.tls_keys("mutual"),
        path_str(&crl)
    ))
    .await;
    let ca = path_str(&pki.ca_file);
    let args = |cert: &std::path::Path, key: &std::path::Path, id: &str| {
        strings(&[
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "--cafile",
            &ca,
            "--cert",
            &path_str(cert),
            "--key",
            &path_str(key),
            "-i",
            id,
        ])
    };
    // Device B stays subscribed through the change.
    let mut b_sub = args(&b_cert, &b_key, "device-b:sub");
    b_sub.extend(strings(&["-t", "site/after", "-C", "1", "-W", "20", "-v"]));
    let b = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = b_sub.iter().map(String::as_str).collect();
        Subscriber::start(&args)
    })
    .await
    .unwrap();

    let a_args = args(&a_cert, &a_key, "device-a");
    let before = tokio::task::spawn_blocking({
        let a_args = a_args.clone();
        move || attempt(&a_args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(before.contains("received CONNACK (0)"), "{before}");

    // The CA revokes A: the file is replaced (a new inode, as tools do).
    let fresh = write(pki.dir.path(), "devices.crl.new", &pki.ca.crl(&[10]));
    std::fs::rename(&fresh, &crl).unwrap();
    let after = tokio::task::spawn_blocking({
        let a_args = a_args.clone();
        move || attempt(&a_args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(
        after.contains("revoked"),
        "A's next connection is refused: {after}"
    );

    // B's session is still up and still receives.
    let b_pub = args(&b_cert, &b_key, "device-b:pub");
    let published = tokio::task::spawn_blocking(move || {
        let mut all: Vec<&str> = b_pub.iter().map(String::as_str).collect();
        all.extend(["-t", "site/after", "-m", "still here"]);
        mosquitto("mosquitto_pub", &all)
    })
    .await
    .unwrap();
    assert!(published.status.success(), "{}", text(&published));
    let got = tokio::task::spawn_blocking(|| b.finish().stdout)
        .await
        .unwrap();
    assert!(got.contains("site/after still here"), "B's session: {got}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_outbox_holds_the_puback_back() {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let port = free_port();
    let edge = Edge::start(&format!("[[broker.listeners]]\nport = {port}\n")).await;
    *edge.ingress.delay.lock().unwrap() = Duration::from_millis(1500);
    let mut options = MqttOptions::new("slow-outbox", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .publish("site/slow", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let sent = Instant::now();
    let acked = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => break Instant::now(),
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK: {other:?}"),
        }
    };
    let stored_at = edge.ingress.stored.lock().unwrap()[0].1;
    assert!(
        acked >= stored_at,
        "the PUBACK came before the outbox said durable"
    );
    assert!(
        acked - sent >= Duration::from_millis(1400),
        "the PUBACK waited for the outbox: {:?}",
        acked - sent
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_packet_size_and_rate_limits_hold() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_connections = 2\nmax_packet_size = 1024\nmax_message_rate = 100\n\
         [[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let p = port.to_string();
    // Two clients hold the two places.
    let holders: Vec<Subscriber> = ["holder-1", "holder-2"]
        .iter()
        .map(|id| {
            Subscriber::start(&["-h", "127.0.0.1", "-p", &p, "-i", id, "-t", "x", "-W", "20"])
        })
        .collect();
    let (busy_311, busy_5) = tokio::task::spawn_blocking({
        let p = p.clone();
        move || {
            (
                attempt(&["-h", "127.0.0.1", "-p", &p, "-V", "311", "-i", "third"]),
                attempt(&["-h", "127.0.0.1", "-p", &p, "-V", "5", "-i", "third"]),
            )
        }
    })
    .await
    .unwrap();
    assert!(
        busy_311.contains("received CONNACK (3)"),
        "server unavailable: {busy_311}"
    );
    assert!(
        busy_5.contains("received CONNACK (137)"),
        "server busy: {busy_5}"
    );
    drop(holders);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A packet over the limit ends the connection (MQTT 5: DISCONNECT 0x95) and is not stored.
    let big = "x".repeat(2000);
    let too_large = tokio::task::spawn_blocking({
        let p = p.clone();
        move || {
            text(&mosquitto(
                "mosquitto_pub",
                &[
                    "-d",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &p,
                    "-V",
                    "5",
                    "-t",
                    "site/big",
                    "-m",
                    &big,
                    "-q",
                    "1",
                ],
            ))
        }
    })
    .await
    .unwrap();
    assert!(!too_large.contains("received PUBACK"), "{too_large}");

    // 300 messages at 100/s (a burst of 100 allowed) take at least two seconds.
    let started = Instant::now();
    let lines = (0..300).map(|n| format!("m{n}\n")).collect::<String>();
    let sent = tokio::task::spawn_blocking({
        let p = p.clone();
        move || {
            let mut child = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &p,
                    "-t",
                    "site/rate",
                    "-q",
                    "1",
                    "-l",
                ])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(lines.as_bytes())
                .unwrap();
            child.wait().unwrap()
        }
    })
    .await
    .unwrap();
    assert!(sent.success());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800),
        "the rate limit held the client back: {elapsed:?}"
    );
    {
        let stored = edge.ingress.stored.lock().unwrap();
        let rate = stored
            .iter()
            .filter(|(m, _)| m.topic.as_str() == "site/rate")
            .count();
        assert_eq!(rate, 300, "nothing lost");
        assert!(stored.iter().all(|(m, _)| m.topic.as_str() != "site/big"));
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_filters_beyond_max_filters_are_refused_known_ones_are_not() {
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_filters = 2\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let p = port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let subscribe = |id: &str, filters: &[&str]| {
            let mut args = vec![
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-V",
                "5",
                "-i",
                id,
                "-W",
                "1",
            ];
            for f in filters {
                args.extend(["-t", f]);
            }
            text(&mosquitto("mosquitto_sub", &args))
        };
        (
            subscribe("first", &["a/#", "b/#", "c/#"]),
            subscribe("second", &["b/#", "d/#"]),
        )
    })
    .await
    .unwrap();
    // Quota exceeded (0x97) for the third distinct filter; a known filter is still granted.
    assert!(
        out.0.contains("Subscribed (mid: 1): 0, 0, 151"),
        "{}",
        out.0
    );
    assert!(out.1.contains("Subscribed (mid: 1): 0, 151"), "{}", out.1);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_alias_is_refused_and_nothing_is_stored() {
    let port = free_port();
    let edge = Edge::start(&format!("[[broker.listeners]]\nport = {port}\n")).await;
    let p = port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        text(&mosquitto(
            "mosquitto_pub",
            &[
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-V",
                "5",
                "-t",
                "site/aliased",
                "-m",
                "x",
                "-q",
                "1",
                "-D",
                "publish",
                "topic-alias",
                "1",
            ],
        ))
    })
    .await
    .unwrap();
    assert!(!out.contains("received PUBACK"), "{out}");
    assert!(
        out.contains("Received DISCONNECT (148)"),
        "topic alias invalid (0x94): {out}"
    );
    assert!(edge.ingress.stored.lock().unwrap().is_empty());
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_retained_messages_and_persistent_sessions_work_through_the_edge() {
    let port = free_port();
    let edge = Edge::start(&format!("[[broker.listeners]]\nport = {port}\n")).await;
    let p = port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let run = |program: &str, args: &[&str]| {
            let mut all = vec!["-h", "127.0.0.1", "-p", &p];
            all.extend_from_slice(args);
            text(&mosquitto(program, &all))
        };
        // Retained: a later subscriber gets it.
        run(
            "mosquitto_pub",
            &["-t", "site/kept", "-m", "kept", "-r", "-q", "1"],
        );
        let retained = run(
            "mosquitto_sub",
            &["-t", "site/kept", "-v", "-C", "1", "-W", "5"],
        );
        // Persistent session: what was published while away is delivered on return (3.1.1, 5).
        let mut away = Vec::new();
        for (version, id) in [("311", "persist-4"), ("5", "persist-5")] {
            let topic = format!("site/away/{id}");
            let mut sub = vec!["-V", version, "-t", &topic, "-q", "1", "-c", "-i", id];
            if version == "5" {
                sub.extend(["-x", "300"]);
            }
            let mut first = sub.clone();
            first.extend(["-W", "1"]);
            run("mosquitto_sub", &first);
            run(
                "mosquitto_pub",
                &["-t", &topic, "-m", "while-away", "-q", "1"],
            );
            let mut back = sub.clone();
            back.extend(["-v", "-C", "1", "-W", "5"]);
            away.push(run("mosquitto_sub", &back));
        }
        (retained, away)
    })
    .await
    .unwrap();
    assert!(out.0.contains("site/kept kept"), "{}", out.0);
    for got in &out.1 {
        assert!(got.contains("while-away"), "{got}");
    }

    // A will is published when the connection is lost (killed), not after a DISCONNECT.
    let p = port.to_string();
    let watcher = Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "site/will/#",
        "-v",
        "-W",
        "4",
    ]);
    let dying = Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "x",
        "-i",
        "dying",
        "--will-topic",
        "site/will/dying",
        "--will-payload",
        "gone",
    ]);
    let polite = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            "x",
            "-m",
            "bye",
            "-i",
            "polite",
        ])
        .args([
            "--will-topic",
            "site/will/polite",
            "--will-payload",
            "never",
        ])
        .status()
        .unwrap();
    assert!(polite.success());
    // Killed: the connection is lost without a DISCONNECT.
    drop(dying);
    let seen = tokio::task::spawn_blocking(move || watcher.finish().stdout)
        .await
        .unwrap();
    assert!(seen.contains("site/will/dying gone"), "{seen}");
    assert!(
        !seen.contains("never"),
        "a clean DISCONNECT drops the will: {seen}"
    );
    // The will went through ingress like any publish (routed: stored).
    assert!(
        edge.ingress
            .stored
            .lock()
            .unwrap()
            .iter()
            .any(|(m, _)| m.topic.as_str() == "site/will/dying")
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_will_waits_for_its_delay_and_is_dropped_when_the_client_returns() {
    let port = free_port();
    let edge = Edge::start(&format!("[[broker.listeners]]\nport = {port}\n")).await;
    let p = port.to_string();
    let watcher = Subscriber::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "site/will/#",
        "-v",
        "-C",
        "1",
        "-W",
        "8",
    ]);
    // Returns once connected (its will registered) and subscribed.
    let dying = |id: &str, topic: &str| {
        Subscriber::start(&[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-V",
            "5",
            "-t",
            "x",
            "-i",
            id,
            "-x",
            "60",
            "--will-topic",
            topic,
            "--will-payload",
            "gone",
            "-D",
            "will",
            "will-delay-interval",
            "2",
        ])
    };
    // This one comes back within the delay: its will is never sent.
    drop(dying("returns", "site/will/returns"));
    let again = dying("returns", "site/will/returns");
    // This one does not.
    let gone = dying("gone-for-good", "site/will/gone");
    let killed_at = Instant::now();
    drop(gone);
    let seen = tokio::task::spawn_blocking(move || watcher.finish().stdout)
        .await
        .unwrap();
    let waited = killed_at.elapsed();
    assert!(seen.contains("site/will/gone gone"), "{seen}");
    assert!(
        waited >= Duration::from_millis(1800),
        "the will waited its 2 s: {waited:?}"
    );
    drop(again);
    assert!(
        !edge
            .ingress
            .stored
            .lock()
            .unwrap()
            .iter()
            .any(|(m, _)| m.topic.as_str() == "site/will/returns"),
        "the returning client's will was sent"
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_connack_announces_the_assigned_id_and_the_limits() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let port = free_port();
    let edge = Edge::start(&format!(
        "[broker]\nmax_packet_size = 4096\nmax_inflight = 20\n[[broker.listeners]]\nport = {port}\n"
    ))
    .await;
    let mut options = MqttOptions::new("", "127.0.0.1", port);
    options.set_clean_start(true);
    let (_client, mut events) = AsyncClient::new(options, 10);
    let props = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                break ack.properties.expect("properties");
            }
            Ok(Ok(_)) => {}
            other => panic!("no CONNACK: {other:?}"),
        }
    };
    let assigned = props
        .assigned_client_identifier
        .expect("an assigned client id");
    assert!(assigned.starts_with("fieldlink-auto-"), "{assigned}");
    assert_eq!(props.max_packet_size, Some(4096));
    assert_eq!(props.receive_max, Some(20));
    assert_eq!(props.topic_alias_max, Some(0));
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ca_in_the_trust_file_is_trusted() {
    let pki = Pki::new();
    let second = fieldlink_test_support::certs::TestCa::new("second devices CA");
    // The trust file holds both CAs; the device's certificate comes from the second.
    std::fs::write(&pki.ca_file, format!("{}{}", pki.ca.pem(), second.pem())).unwrap();
    let (cert, key) = pki.device("device-2", &second.issue("device-2", &[]));
    let port = free_port();
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nport = {port}\n{}",
        pki.tls_keys("mutual")
    ))
    .await;
    // The server's own certificate is from the first CA: the client trusts that one.
    let server_ca = write(pki.dir.path(), "server-ca.pem", pki.ca.pem());
    let out = tokio::task::spawn_blocking(move || {
        attempt(&[
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "--cafile",
            &path_str(&server_ca),
            "--cert",
            &path_str(&cert),
            "--key",
            &path_str(&key),
            "-i",
            "device-2",
        ])
    })
    .await
    .unwrap();
    assert!(out.contains("received CONNACK (0)"), "{out}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let port = free_port();
    let edge = Edge::start(&format!("[[broker.listeners]]\nport = {port}\n")).await;
    let connect = || {
        let mut options = MqttOptions::new("same-id", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        AsyncClient::new(options, 10)
    };
    let (_first, mut first_events) = connect();
    loop {
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = first_events.poll().await {
            break;
        }
    }
    let (second, mut second_events) = connect();
    second
        .subscribe("t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let second_driver = tokio::spawn(async move {
        loop {
            match second_events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return p.payload.to_vec(),
                Ok(_) => {}
                Err(e) => panic!("the new session failed: {e}"),
            }
        }
    });
    // The first connection is closed (rumqttd's router ends it without a reason the edge could
    // pass on, so there is no DISCONNECT 0x8E).
    tokio::time::timeout(Duration::from_secs(10), async {
        while first_events.poll().await.is_ok() {}
    })
    .await
    .expect("the first connection ends");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = port.to_string();
    tokio::task::spawn_blocking(move || {
        mosquitto(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-t",
                "t",
                "-m",
                "to-second",
                "-q",
                "1",
            ],
        )
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), second_driver)
        .await
        .expect("the new session receives")
        .unwrap();
    assert_eq!(got, b"to-second");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_named_by_its_dns_san_and_a_psk_added_while_running() {
    let pki = Pki::new();
    let (cert, key) = pki.device(
        "meter",
        &pki.ca
            .issue("a CN that is not the name", &["meter-7.plant"]),
    );
    let psk = psk_file(&pki);
    let (mtls, psk_port) = (free_port(), free_port());
    let edge = Edge::start(&format!(
        "[[broker.listeners]]\nport = {mtls}\n{}identity = \"san\"\n\
         [[broker.listeners]]\nport = {psk_port}\ntls = \"psk\"\npsk_file = \"{psk}\"\n",
        pki.tls_keys("mutual")
    ))
    .await;
    let ca = path_str(&pki.ca_file);
    let san = tokio::task::spawn_blocking(move || {
        attempt(&[
            "-h",
            "localhost",
            "-p",
            &mtls.to_string(),
            "--cafile",
            &ca,
            "--cert",
            &path_str(&cert),
            "--key",
            &path_str(&key),
            "-i",
            "meter-7.plant",
        ])
    })
    .await
    .unwrap();
    assert!(
        san.contains("received CONNACK (0)"),
        "the SAN is the identity: {san}"
    );

    // A device added to the PSK file is admitted without a restart.
    let new_key = "0f0e0d0c0b0a09080706050403020100";
    let try_new = move || {
        attempt(&[
            "-h",
            "127.0.0.1",
            "-p",
            &psk_port.to_string(),
            "--psk",
            new_key,
            "--psk-identity",
            "device-q",
            "-i",
            "device-q",
        ])
    };
    let before = tokio::task::spawn_blocking(try_new).await.unwrap();
    assert!(!before.contains("received CONNACK"), "{before}");
    // A different modification time, even on a coarse-grained file system.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut text = std::fs::read_to_string(&psk).unwrap();
    text.push_str(&format!("device-q:{new_key}\n"));
    std::fs::write(&psk, text).unwrap();
    let after = tokio::task::spawn_blocking(try_new).await.unwrap();
    assert!(after.contains("received CONNACK (0)"), "{after}");
    edge.stop().await;
}
