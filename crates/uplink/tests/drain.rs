//! Draining behaviour against a real mosquitto: outages, refusals, and brokers that kick.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldlink_core::config::MqttVersion;
use fieldlink_test_support::certs::TestCa;
use fieldlink_test_support::free_port;
use fieldlink_uplink::config::{OnRejected, UplinkTls};
use rustls::pki_types::pem::PemObject as _;

use common::{Cloud, Subscriber, fill, first_seen, queue, settings, start_uplink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_nothing_and_keeps_order() {
    let ca = TestCa::new("cloud CA");
    let server = ca.issue("cloud", &["localhost"]);
    let state = tempfile::tempdir().unwrap();
    // The cloud keeps the observer's session (and its queued messages) across the restart.
    let global = format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 100",
        state.path().display()
    );
    let (plain, tls) = (free_port(), free_port());
    let cloud = Cloud::start_on(plain, tls, &ca, &server, "", &global);
    let sub = Subscriber::start(plain, "cloud/#", "observer", true).await;

    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    fill(&queue, "a", 5000).await;
    let ca_file = cloud.file("trusted-ca.pem", ca.pem());
    let tls_settings = settings(
        tls,
        UplinkTls::ServerAuth {
            ca_file: Some(ca_file),
        },
    );
    let (uplink, shutdown) = start_uplink(tls_settings, &queue, dir.path());
    sub.wait_for(500, Duration::from_secs(30)).await;

    // The cloud goes away in the middle of the drain; more readings arrive meanwhile.
    let files = cloud.files;
    cloud.broker.stop();
    for chunk in 0..10 {
        let entries = (0..500)
            .map(|i| entry("a", 5000 + chunk * 500 + i))
            .collect();
        queue.append(entries).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!uplink.status().state.is_connected());

    // Back on the same ports, with the same state.
    let cloud = Cloud::start_on_files(plain, tls, files, &global);
    // Duplicates count towards the subscriber's total: wait for 10 000 distinct messages.
    let start = Instant::now();
    while first_seen(&sub.payloads(), "a").0.len() < 10_000
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (order, duplicates) = first_seen(&sub.payloads(), "a");
    let missing: Vec<usize> = (0..10_000)
        .filter(|i| !order.contains(i))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}…");
    let disorder: Vec<(usize, usize)> = order
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .take(10)
        .collect();
    assert!(disorder.is_empty(), "out of order: {disorder:?}…");
    let reconnects = uplink.status().reconnects.max(1) as usize;
    assert!(
        duplicates <= 50 * reconnects,
        "{duplicates} duplicates over {reconnects} reconnects"
    );
    let start = Instant::now();
    while queue.stats().await.unwrap().messages > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "queue not drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.drain(Duration::from_secs(5)).await;
    drop(cloud);
}

fn entry(stream: &str, i: usize) -> fieldlink_core::ports::OutboxEntry {
    use fieldlink_core::message::{Message, Priority, QoS};
    use fieldlink_core::topic::TopicName;
    fieldlink_core::ports::OutboxEntry {
        stream: stream.into(),
        priority: Priority::Normal,
        message: Message {
            topic: TopicName::new(format!("site/{stream}")).unwrap(),
            payload: format!("{stream}-{i}").into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        properties: None,
    }
}

/// A cloud whose ACL forbids `cloud/site/denied`: mosquitto answers such a publish with a
/// negative MQTT 5 PUBACK (0x87 not authorized).
fn acl_cloud(ca: &TestCa) -> Cloud {
    let acl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(acl.path(), "topic read #\ntopic write cloud/site/ok\n").unwrap();
    let (_, path) = acl.keep().unwrap();
    Cloud::start_on(
        free_port(),
        free_port(),
        ca,
        &ca.issue("cloud", &["localhost"]),
        "",
        &format!("acl_file {}", path.display()),
    )
}

async fn refused_by_acl(policy: OnRejected) -> (u64, u64, fieldlink_uplink::UplinkStatus) {
    let ca = TestCa::new("cloud CA");
    let cloud = acl_cloud(&ca);
    let sub = Subscriber::start(cloud.broker.addr().port(), "cloud/#", "observer", false).await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    fill(&queue, "denied", 1).await;
    fill(&queue, "ok", 1).await;
    let mut settings = settings(
        cloud.tls_port,
        UplinkTls::ServerAuth {
            ca_file: Some(cloud.file("ca.pem", ca.pem())),
        },
    );
    settings.mqtt = MqttVersion::V5;
    settings.on_rejected = policy;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    sub.wait_for(1, Duration::from_secs(20)).await;
    let start = Instant::now();
    while uplink.status().rejected_total == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no refusal seen: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sub.payloads(),
        ["ok-0"],
        "the denied message never reaches a subscriber"
    );
    let status = uplink.status();
    shutdown.drain(Duration::from_secs(5)).await;
    let left = queue.stats().await.unwrap().messages;
    let denied_left = queue
        .peek(10)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.stream == "denied")
        .count() as u64;
    (left, denied_left, status)
}

#[tokio::test]
async fn a_negative_puback_keeps_the_message_queued() {
    let (left, denied_left, status) = refused_by_acl(OnRejected::Retry).await;
    assert_eq!(
        (left, denied_left),
        (1, 1),
        "only the acknowledged message was deleted"
    );
    assert_eq!(status.acked_total, 1);
}

#[tokio::test]
async fn a_negative_puback_drops_the_message_only_when_told_to_and_counts_it() {
    let (left, _, status) = refused_by_acl(OnRejected::Drop).await;
    assert_eq!(left, 0);
    assert!(status.rejected_total >= 1);
}

#[tokio::test]
async fn a_broker_that_kicks_right_after_connack_sees_growing_jittered_delays() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let ca = TestCa::new("kicker CA");
    let server = ca.issue("kicker", &["localhost"]);
    let files = tempfile::tempdir().unwrap();
    let cert = fieldlink_test_support::certs::write(files.path(), "s.pem", &server.cert_pem);
    let key = fieldlink_test_support::certs::write(files.path(), "s.key", &server.key_pem);
    let config = fieldlink_core::tls::TlsPolicy::default()
        .server_config(
            fieldlink_core::tls::read_certs(&cert).unwrap(),
            rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = accepts.clone();
    let kicker = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut connect = [0u8; 256];
            if tls.read(&mut connect).await.unwrap_or(0) == 0 {
                continue;
            }
            seen.lock().unwrap().push(Instant::now());
            // CONNACK, accepted; then the door.
            let _ = tls.write_all(&[0x20, 2, 0, 0]).await;
            let _ = tls.flush().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let mut settings = settings(
        port,
        UplinkTls::ServerAuth {
            ca_file: Some(fieldlink_test_support::certs::write(
                files.path(),
                "ca.pem",
                ca.pem(),
            )),
        },
    );
    settings.reconnect_min = Duration::from_millis(50);
    settings.reconnect_max = Duration::from_secs(2);
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    let start = Instant::now();
    while accepts.lock().unwrap().len() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "only {} connections",
            accepts.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.drain(Duration::from_secs(5)).await;
    kicker.abort();
    let times = accepts.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let early: Duration = gaps[..4].iter().sum();
    let late: Duration = gaps[gaps.len() - 4..].iter().sum();
    assert!(late > early * 2, "delays grow: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(2300)),
        "capped at reconnect_max: {gaps:?}"
    );
    let distinct: HashSet<u128> = gaps.iter().map(|g| g.as_millis() / 5).collect();
    assert!(
        distinct.len() >= gaps.len() - 2,
        "jittered, not a fixed schedule: {gaps:?}"
    );
    let reconnects = uplink.status().reconnects;
    assert!(
        reconnects + 1 >= times.len() as u64,
        "{reconnects} reconnects counted for {} connections",
        times.len()
    );
}
