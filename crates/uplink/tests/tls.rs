//! Each TLS mode delivers to a real mosquitto, and each bad case is refused with a clear error
//! while the messages stay queued.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use fieldlink_core::config::MqttVersion;
use fieldlink_test_support::certs::{Leaf, TestCa};
use fieldlink_uplink::Uplink;
use fieldlink_uplink::config::UplinkTls;

use common::{Cloud, Subscriber, fill, queue, settings, start_uplink};

const LIMIT: Duration = Duration::from_secs(20);

/// Starts an uplink over `tls`, fills 20 messages, checks they all arrive in order.
async fn delivers(cloud: &Cloud, tls: UplinkTls, mqtt: MqttVersion) {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let sub = Subscriber::start(cloud.broker.addr().port(), "cloud/#", "observer", false).await;
    fill(&queue, "t", 20).await;
    let mut settings = settings(cloud.tls_port, tls);
    settings.mqtt = mqtt;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    sub.wait_for(20, LIMIT).await;
    let expected: Vec<String> = (0..20).map(|i| format!("t-{i}")).collect();
    assert_eq!(sub.payloads(), expected);
    assert_eq!(
        sub.got.lock().unwrap()[0].0,
        "cloud/site/t",
        "topic prefix applied"
    );
    // Acked rows leave the queue.
    let start = std::time::Instant::now();
    while queue.stats().await.unwrap().messages > 0 {
        assert!(start.elapsed() < LIMIT, "the queue was not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(uplink.status().state.is_connected());
    assert_eq!(uplink.status().last_error, None);
    let start = std::time::Instant::now();
    while uplink.status().acked_total < 20 || uplink.status().backlog != 0 {
        assert!(
            start.elapsed() < LIMIT,
            "status not updated: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.drain(Duration::from_secs(5)).await;
}

/// Starts an uplink that must fail: waits for an error containing `expected`, and checks that
/// nothing arrived and the message is still queued.
async fn refused(
    settings: fieldlink_uplink::config::UplinkSettings,
    observer_port: Option<u16>,
    expected: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let sub = match observer_port {
        Some(port) => Some(Subscriber::start(port, "cloud/#", "observer", false).await),
        None => None,
    };
    fill(&queue, "t", 1).await;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    error_saying(&uplink, expected).await;
    assert!(!uplink.status().state.is_connected());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sub.map_or(0, |s| s.count()), 0, "nothing may arrive");
    shutdown.drain(Duration::from_secs(5)).await;
    assert_eq!(
        queue.stats().await.unwrap().messages,
        1,
        "the message stays queued"
    );
}

/// Waits until the uplink's last error contains `expected`.
async fn error_saying(uplink: &Uplink, expected: &str) {
    let start = std::time::Instant::now();
    while !uplink
        .status()
        .last_error
        .is_some_and(|e| e.contains(expected))
    {
        assert!(
            start.elapsed() < LIMIT,
            "no error saying {expected:?}: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn server_auth(cloud: &Cloud, ca: &TestCa) -> UplinkTls {
    UplinkTls::ServerAuth {
        ca_file: Some(cloud.file("trusted-ca.pem", ca.pem())),
    }
}

#[tokio::test]
async fn server_auth_tls_delivers_in_order() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(&ca, &ca.issue("cloud", &["localhost"]), "");
    delivers(&cloud, server_auth(&cloud, &ca), MqttVersion::V311).await;
}

#[tokio::test]
async fn mutual_tls_delivers_over_mqtt5() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(
        &ca,
        &ca.issue("cloud", &["localhost"]),
        "require_certificate true\nuse_identity_as_username true",
    );
    let client = ca.issue("gateway-7", &[]);
    let tls = UplinkTls::Mutual {
        ca_file: Some(cloud.file("trusted-ca.pem", ca.pem())),
        cert_file: cloud.file("client.pem", &client.cert_pem),
        key: fieldlink_core::tls::KeyRef::File(cloud.file("client.key", &client.key_pem)),
    };
    delivers(&cloud, tls, MqttVersion::V5).await;
}

#[tokio::test]
async fn mutual_tls_without_our_certificate_is_refused() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(
        &ca,
        &ca.issue("cloud", &["localhost"]),
        "require_certificate true",
    );
    let tls = server_auth(&cloud, &ca);
    refused(
        settings(cloud.tls_port, tls),
        Some(cloud.broker.addr().port()),
        "client certificate",
    )
    .await;
}

fn psk_cloud(tls_version: &str) -> (fieldlink_test_support::Mosquitto, u16, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let psk_file = files.path().join("cloud.psk");
    std::fs::write(&psk_file, "gateway-7:00112233445566778899aabbccddeeff\n").unwrap();
    let port = fieldlink_test_support::free_port();
    let broker = fieldlink_test_support::Mosquitto::start(&format!(
        "listener {port} 127.0.0.1\npsk_hint fieldlink\npsk_file {}\nuse_identity_as_username true\ntls_version {tls_version}\n",
        psk_file.display()
    ));
    fieldlink_test_support::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10));
    (broker, port, files)
}

fn our_psk(dir: &std::path::Path, line: &str) -> UplinkTls {
    let path = dir.join("uplink.psk");
    std::fs::write(&path, line).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    UplinkTls::Psk { psk_file: path }
}

#[tokio::test]
async fn psk_delivers_over_tls12_and_tls13() {
    for version in ["tlsv1.2", "tlsv1.3"] {
        let (broker, port, files) = psk_cloud(version);
        let cloud = Cloud {
            broker,
            tls_port: port,
            files,
        };
        let tls = our_psk(
            cloud.files.path(),
            "gateway-7:00112233445566778899aabbccddeeff",
        );
        delivers(&cloud, tls, MqttVersion::V311).await;
    }
}

#[tokio::test]
async fn a_wrong_psk_is_refused() {
    let (broker, port, files) = psk_cloud("tlsv1.2");
    let tls = our_psk(files.path(), "gateway-7:ffeeddccbbaa99887766554433221100");
    refused(
        settings(port, tls),
        Some(broker.addr().port()),
        "PSK identity or key rejected",
    )
    .await;
}

#[tokio::test]
async fn an_untrusted_server_ca_is_refused() {
    let (ca, other) = (TestCa::new("cloud CA"), TestCa::new("someone else"));
    let cloud = Cloud::start(&ca, &ca.issue("cloud", &["localhost"]), "");
    let tls = UplinkTls::ServerAuth {
        ca_file: Some(cloud.file("wrong-ca.pem", other.pem())),
    };
    refused(
        settings(cloud.tls_port, tls),
        Some(cloud.broker.addr().port()),
        "not trusted",
    )
    .await;
}

#[tokio::test]
async fn a_hostname_mismatch_is_refused() {
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(&ca, &ca.issue("cloud", &["mqtt.example.com"]), "");
    refused(
        settings(cloud.tls_port, server_auth(&cloud, &ca)),
        Some(cloud.broker.addr().port()),
        "does not match uplink.host",
    )
    .await;
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let ca = TestCa::new("cloud CA");
    let server = ca.issue_with(
        "cloud",
        &["localhost"],
        Leaf {
            expired: true,
            ..Leaf::default()
        },
    );
    let cloud = Cloud::start(&ca, &server, "");
    refused(
        settings(cloud.tls_port, server_auth(&cloud, &ca)),
        Some(cloud.broker.addr().port()),
        "expired",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_server_certificate_is_refused() {
    let ca = TestCa::new("cloud CA");
    let server = ca.issue_with(
        "cloud",
        &["localhost"],
        Leaf {
            serial: Some(4242),
            ..Leaf::default()
        },
    );
    let cloud = Cloud::start(&ca, &server, "");
    let mut settings = settings(cloud.tls_port, server_auth(&cloud, &ca));
    settings.crl_files = vec![cloud.file("ca.crl", &ca.crl(&[4242]))];
    refused(settings, Some(cloud.broker.addr().port()), "revoked").await;
}

#[tokio::test]
async fn a_stale_crl_refuses_the_server_and_raises_an_alarm() {
    let ca = TestCa::new("stale cloud CA");
    let server = ca.issue("cloud", &["localhost"]);
    let cloud = Cloud::start(&ca, &server, "");
    let mut settings = settings(cloud.tls_port, server_auth(&cloud, &ca));
    let crl = cloud.file("stale.crl", &ca.crl_until(&[], (2025, 6, 1)));
    settings.crl_files = vec![crl.clone()];
    refused(
        settings,
        Some(cloud.broker.addr().port()),
        "CRL in uplink.crl_files expired",
    )
    .await;
    let alarm = fieldlink_core::crl::alarms()
        .into_iter()
        .find(|a| a.contains(&crl.display().to_string()))
        .unwrap_or_default();
    assert!(
        alarm.contains("CN=stale cloud CA") && alarm.contains("expired on 2025-06-01"),
        "alarm: {alarm:?}"
    );
}

#[tokio::test]
async fn stale_crl_warn_still_connects() {
    let ca = TestCa::new("cloud CA");
    let server = ca.issue("cloud", &["localhost"]);
    let cloud = Cloud::start(&ca, &server, "");
    let tls = server_auth(&cloud, &ca);
    let crl = cloud.file("stale.crl", &ca.crl_until(&[], (2025, 6, 1)));
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let sub = Subscriber::start(cloud.broker.addr().port(), "cloud/#", "observer", false).await;
    fill(&queue, "t", 3).await;
    let mut settings = settings(cloud.tls_port, tls);
    settings.crl_files = vec![crl];
    settings.stale_crl = fieldlink_core::crl::StaleCrl::Warn;
    let (_uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    sub.wait_for(3, LIMIT).await;
    shutdown.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_crl_that_no_longer_lists_the_server_lets_it_connect_without_a_restart() {
    let ca = TestCa::new("cloud CA");
    let server = ca.issue_with(
        "cloud",
        &["localhost"],
        Leaf {
            serial: Some(77),
            ..Leaf::default()
        },
    );
    let cloud = Cloud::start(&ca, &server, "");
    let crl = cloud.file("ca.crl", &ca.crl(&[77]));
    let mut settings = settings(cloud.tls_port, server_auth(&cloud, &ca));
    settings.crl_files = vec![crl.clone()];
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let sub = Subscriber::start(cloud.broker.addr().port(), "cloud/#", "observer", false).await;
    fill(&queue, "t", 3).await;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    error_saying(&uplink, "revoked").await;
    // The CA publishes a CRL without serial 77; the uplink reads it on its next attempt.
    std::fs::write(&crl, ca.crl(&[1])).unwrap();
    sub.wait_for(3, LIMIT).await;
    shutdown.drain(Duration::from_secs(5)).await;
}

/// An `openssl s_server` speaking only what our policy refuses; killed on drop (its
/// certificate files live as long as it does).
struct LegacyServer(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl LegacyServer {
    fn start(ca: &TestCa, protocol: &str) -> (Self, u16) {
        let server = ca.issue("legacy", &["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let cert = fieldlink_test_support::certs::write(dir.path(), "s.pem", &server.cert_pem);
        let key = fieldlink_test_support::certs::write(dir.path(), "s.key", &server.key_pem);
        let port = fieldlink_test_support::free_port();
        let child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            // CBC with SHA-1 MACs, no AEAD; seclevel 0 lets OpenSSL 3 offer TLS 1.1 at all.
            .args([protocol, "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl is installed (the README's test command installs it)");
        fieldlink_test_support::wait_for_port(
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(10),
        );
        (Self(child, dir), port)
    }
}

impl Drop for LegacyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A legacy server speaking `protocol` (an `openssl s_server` flag) is refused.
async fn legacy_refused(protocol: &str) {
    let ca = TestCa::new("cloud CA");
    let (_server, port) = LegacyServer::start(&ca, protocol);
    let files = tempfile::tempdir().unwrap();
    let ca_file = fieldlink_test_support::certs::write(files.path(), "ca.pem", ca.pem());
    let tls = UplinkTls::ServerAuth {
        ca_file: Some(ca_file),
    };
    refused(
        settings(port, tls),
        None,
        "shares no TLS version or cipher suite",
    )
    .await;
}

#[tokio::test]
async fn a_server_with_only_weak_cipher_suites_is_refused() {
    legacy_refused("-tls1_2").await;
}

#[tokio::test]
async fn a_tls11_only_server_is_refused() {
    legacy_refused("-tls1_1").await;
}

#[tokio::test]
async fn a_client_certificate_near_expiry_raises_an_alarm_on_the_cloud() {
    // Alarms are raised only from a synchronized clock (CI machines report none).
    fieldlink_core::clock::use_source(fieldlink_core::clock::SyncSource::Fixed(true));
    let ca = TestCa::new("cloud CA");
    let cloud = Cloud::start(
        &ca,
        &ca.issue("cloud", &["localhost"]),
        "require_certificate true",
    );
    let client = ca.issue_with("gateway-7", &[], Leaf::expiring_in_days(5));
    let tls = UplinkTls::Mutual {
        ca_file: Some(cloud.file("trusted-ca.pem", ca.pem())),
        cert_file: cloud.file("client.pem", &client.cert_pem),
        key: fieldlink_core::tls::KeyRef::File(cloud.file("client.key", &client.key_pem)),
    };
    let mut settings = settings(cloud.tls_port, tls);
    settings.alarm_topic = Some(fieldlink_core::topic::TopicName::new("cloud/alarms").unwrap());
    let sub = Subscriber::start(
        cloud.broker.addr().port(),
        "cloud/alarms",
        "observer",
        false,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    sub.wait_for(1, LIMIT).await;
    let alarm = sub.payloads().remove(0);
    assert!(
        alarm.contains("\"alarm\":\"certificate_expiry\""),
        "{alarm}"
    );
    assert!(alarm.contains("\"certificate\":\"client\""), "{alarm}");
    assert!(
        alarm.contains("\"days_left\":4") || alarm.contains("\"days_left\":5"),
        "{alarm}"
    );
    assert!(
        uplink
            .status()
            .certificates
            .iter()
            .any(|(role, _)| role == "client")
    );
    // Once per threshold: no second alarm for the same level.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sub.count(), 1);
    shutdown.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_cloud_certificate_near_expiry_is_monitored_and_raises_an_alarm() {
    // Alarms are raised only from a synchronized clock (CI machines report none).
    fieldlink_core::clock::use_source(fieldlink_core::clock::SyncSource::Fixed(true));
    let ca = TestCa::new("cloud CA");
    let server = ca.issue_with("cloud", &["localhost"], Leaf::expiring_in_days(6));
    let cloud = Cloud::start(&ca, &server, "");
    let mut settings = settings(cloud.tls_port, server_auth(&cloud, &ca));
    settings.alarm_topic = Some(fieldlink_core::topic::TopicName::new("cloud/alarms").unwrap());
    let sub = Subscriber::start(
        cloud.broker.addr().port(),
        "cloud/alarms",
        "observer",
        false,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    sub.wait_for(1, LIMIT).await;
    let alarm = sub.payloads().remove(0);
    assert!(alarm.contains("\"certificate\":\"server\""), "{alarm}");
    assert!(
        alarm.contains("\"days_left\":5") || alarm.contains("\"days_left\":6"),
        "{alarm}"
    );
    let certificates = uplink.status().certificates;
    let server_expiry = certificates
        .iter()
        .find(|(role, _)| role == "server")
        .map(|(_, not_after)| *not_after)
        .expect("the server's certificate is monitored");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Leaf::expiring_in_days sets a date (midnight), so 5 to 6 days from now.
    let days_left = (server_expiry - now) as f64 / 86_400.0;
    assert!((4.9..=6.1).contains(&days_left), "{certificates:?}");
    shutdown.drain(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_crl_that_revokes_the_server_while_connected_ends_the_session() {
    let ca = TestCa::new("cloud CA");
    let server = ca.issue_with(
        "cloud",
        &["localhost"],
        Leaf {
            serial: Some(99),
            ..Leaf::default()
        },
    );
    let cloud = Cloud::start(&ca, &server, "");
    let crl = cloud.file("ca.crl", &ca.crl(&[1]));
    let mut settings = settings(cloud.tls_port, server_auth(&cloud, &ca));
    settings.crl_files = vec![crl.clone()];
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    let start = std::time::Instant::now();
    while !uplink.status().state.is_connected() {
        assert!(
            start.elapsed() < LIMIT,
            "never connected: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The CA revokes the server's certificate: the next CRL check ends the session.
    std::fs::write(&crl, ca.crl(&[99])).unwrap();
    error_saying(&uplink, "revoked").await;
    assert!(!uplink.status().state.is_connected());
    shutdown.drain(Duration::from_secs(5)).await;
}

/// The status counts the backlog while the cloud cannot be reached, not only while connected.
#[tokio::test]
async fn the_backlog_is_counted_while_the_cloud_is_unreachable() {
    let ca = TestCa::new("cloud CA");
    let dir = tempfile::tempdir().unwrap();
    let queue = queue(dir.path()).await;
    fill(&queue, "t", 30).await;
    // Nobody listens on this port.
    let settings = settings(
        fieldlink_test_support::free_port(),
        UplinkTls::ServerAuth {
            ca_file: Some(fieldlink_test_support::certs::write(
                dir.path(),
                "ca.pem",
                ca.pem(),
            )),
        },
    );
    let (uplink, shutdown) = start_uplink(settings, &queue, dir.path());
    let start = std::time::Instant::now();
    while uplink.status().backlog != 30 {
        assert!(
            start.elapsed() < LIMIT,
            "backlog not counted while disconnected: {:?}",
            uplink.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!uplink.status().state.is_connected());
    assert_eq!(uplink.status().time_to_empty, None, "nothing drains");
    shutdown.drain(Duration::from_secs(5)).await;
}
